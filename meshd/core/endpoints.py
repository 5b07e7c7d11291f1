"""Which underlay endpoint to configure for a peer.

WireGuard roams: once a handshake succeeds, the peer's endpoint becomes the address its packets
last came from (whitepaper section 2.1), which is how NAT traversal works when the NAT'd side
initiates. So while the handshake is fresh, meshd leaves the endpoint WireGuard learnt alone,
also when the peer announces new endpoints, unless WireGuard still sends to one the peer
announced before (it moved away from it).
When it goes stale (no handshake for longer than WireGuard's rekey window), meshd walks through
the endpoints the peer announced, one per `retry_after` seconds, until one answers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Endpoint = tuple[str, int]

# WireGuard re-handshakes every REKEY_AFTER_TIME (120 s) while traffic flows and keepalives keep
# traffic flowing; REJECT_AFTER_TIME is 180 s. A handshake older than that means the endpoint
# in use no longer works.
STALE_HANDSHAKE_S = 180.0
# A handshake initiation is retried every REKEY_TIMEOUT (5 s); give each endpoint two tries.
RETRY_AFTER_S = 10.0
MOVE_GRACE_S = 0.5
"""How long a peer that announced new endpoints, while WireGuard still sends to one it
announced before, is left to WireGuard's roaming before its best new endpoint is set
(`EndpointChoice.update`). A node that moves tells every member at once through the tunnel
(`MeshNode.tell_members`), so its packet normally arrives within milliseconds of the news;
0.5 s also covers a reconcile pass on a busy host (0.26 s seen in 30-node labs on 2 cores)."""
FIRST_HANDSHAKE_DEFER_S = 0.25
"""How long the node with the larger WireGuard key leaves a new peer without an endpoint
(`first_endpoint`). The other node's initiation arrives within it when both added each other at
once (a round trip plus the other's reconcile, tens of milliseconds on a busy host); when that
initiation came too early and was dropped, the session waits this long, far short of
WireGuard's 5 s retry. Two wireguard-go in namespaces configured at once, 20 times: 0.03 s
when the initiation came in time, 0.28 s when it had been dropped; without this rule, 4 of 50
took 5.1-5.2 s."""


def first_endpoint(
    own_key: bytes, peer_key: bytes, known_for: float, endpoint: Endpoint | None, back: bool
) -> Endpoint | None:
    """The endpoint to configure for a peer first configured `known_for` seconds ago; `back`:
    the peer came back from dead (we held it dead, and so, most likely, did it us).

    Two nodes that learn of each other from the same gossip (a partition heal) add each
    other within a round trip, and WireGuard on both sides initiates a handshake (keepalive or
    first packet). Each then consumes the other's initiation, which replaces its own pending
    handshake, and drops the other's response as invalid: no session on either side until
    WireGuard's retry 5 s later. (Seen in wireguard-go's log: after a heal, 30 nodes saw each
    other alive in 3 s and had every handshake only after 6 s.)

    So only the node with the smaller key initiates at once. The other leaves the peer without
    an endpoint for FIRST_HANDSHAKE_DEFER_S: it cannot initiate, but answers an initiation (and
    WireGuard learns the endpoint from it). If none came (it arrived before we had the peer and
    was dropped), the peer still has no endpoint when the real one is set, and the plan then
    re-creates it (`plan_device`), which initiates at once rather than after WireGuard's wait.

    Only for a peer that came back: a new node learns of everyone at once from its first
    push-pull, the others of it by gossip later, and the node that learns last should initiate
    at once (the first initiation arrived too early and was dropped). Deferring there added
    half a second to `bench join` at N=10 (0.41 -> 0.93 s)."""
    if not back or own_key < peer_key or known_for >= FIRST_HANDSHAKE_DEFER_S:
        return endpoint
    return None


def preferred_order(
    announced: tuple[Endpoint, ...],
    local_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> tuple[Endpoint, ...]:
    """The peer's endpoints in the order to try them: those on a link we share first, IPv4
    before IPv6 among them; the others in the peer's order (IPv6 first: no NAT in the way on
    most networks).

    On a shared link both families work and IPv4 is cheaper: 20 bytes less on every packet,
    and ARP re-confirms a neighbour with frames of 42 bytes (60 with padding) where IPv6
    neighbour discovery sends 86. 30 idle nodes on one LAN (nftables counters, 120 s) sent
    575 B/s each over IPv6 and 408 over IPv4 (IP layer, ARP frames included)."""

    def on_link(endpoint: Endpoint) -> bool:
        try:
            ip = ipaddress.ip_address(endpoint[0])
        except ValueError:
            return False
        return any(ip in net for net in local_networks if net.version == ip.version)

    def rank(endpoint: Endpoint) -> tuple[bool, bool]:
        shared = on_link(endpoint)
        return (not shared, shared and ":" in endpoint[0])

    return tuple(sorted(announced, key=rank))


@dataclass
class EndpointChoice:
    """Per-peer selection state (mutable; owned by the daemon)."""

    known_since: float | None = None
    """When the peer was first configured (first `update`); a peer that goes and comes back
    gets a new EndpointChoice."""
    back: bool = False
    """The peer came back from dead (or left) for this choice (`first_endpoint`)."""
    announced: tuple[Endpoint, ...] = ()
    index: int = 0
    chosen_at: float = 0.0
    current: Endpoint | None = field(default=None)
    switch_at: float | None = None
    """When the peer moved away from `moved_from` (where WireGuard still sent) and the best
    new endpoint is set unless WireGuard roamed by then; None: no move pending."""
    moved_from: Endpoint | None = None

    def update(
        self,
        announced: tuple[Endpoint, ...],
        handshake_age: float | None,
        roamed: Endpoint | None,
        now: float,
        stale_after: float = STALE_HANDSHAKE_S,
        retry_after: float = RETRY_AFTER_S,
        move_grace: float = MOVE_GRACE_S,
    ) -> Endpoint | None:
        """The endpoint to configure now, or None for "leave WireGuard's as it is": while the
        handshake is fresh, WireGuard follows the peer's packets (roaming), and setting the
        address it had a moment ago would undo a roam that happened since (the plan sets any
        desired endpoint that differs from the actual one). `current` is what WireGuard uses
        then. `handshake_age` is None if there never was one; `roamed` is the endpoint
        WireGuard currently reports."""
        if self.known_since is None:
            self.known_since = now
        if announced != self.announced:
            previous = self.announced
            self.announced, self.index, self.chosen_at = announced, 0, now
            self.switch_at = self.moved_from = None
            fresh = handshake_age is not None and handshake_age < stale_after
            if fresh and roamed is not None and roamed not in previous:
                # WireGuard learnt this endpoint from the peer's own packets, and the peer
                # never announced it: its NAT's public address (what it announces is private),
                # or the address it moved to. Setting an announced one would cut the pair
                # until the peer's next packet roams it back.
                self.current = roamed
                return None
            if fresh and roamed is not None and roamed not in announced:
                # The peer moved away from where WireGuard sends. Its packet telling us so
                # roams WireGuard to where it now is, also to a NAT's address it cannot
                # announce; setting an announced endpoint just after that packet (the news
                # came first from another member) undid the roam and cut the pair until the
                # peer's next packet: 12-14 s in `bench faults` nat_move at N=30. So
                # WireGuard gets MOVE_GRACE_S to roam before the best new endpoint is set.
                self.current, self.switch_at, self.moved_from = roamed, now + move_grace, roamed
                return None
            # Our own order of its endpoints changed, or no working session: the best at once.
            self.current = announced[0] if announced else roamed
            return self.current
        if self.switch_at is not None:
            if roamed == self.moved_from and now < self.switch_at:
                return None
            moved, self.switch_at, self.moved_from = roamed == self.moved_from, None, None
            if moved and announced:
                self.current, self.chosen_at = announced[0], now
                return self.current
        if handshake_age is not None and handshake_age < stale_after and roamed is not None:
            self.current = roamed  # working: WireGuard follows the peer
            self.chosen_at = now
            return None
        if self.current is None and announced:
            self.current, self.chosen_at = announced[self.index], now
        elif announced and now - self.chosen_at >= retry_after:
            self.index = (self.index + 1) % len(announced)
            self.current, self.chosen_at = announced[self.index], now
        return self.current
