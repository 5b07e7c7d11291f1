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

import functools
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
RESTART_HANDSHAKE_AFTER_S = 1.0
"""How long the node with the smaller WireGuard key waits for the first handshake with a peer it
gave WireGuard before it re-creates the peer, which initiates again at once
(`handshake_restart_in`). The answer takes a round trip once the other node has us; 1 s also
covers that node's reconcile pass on a busy host (0.3-1 s after a 30-node heal on 2 cores)."""
RESTART_HANDSHAKE_TIMES = 4
"""Re-creations per peer, at most: an unreachable peer then costs four more initiations, after
which WireGuard's own retry (every 5 s) goes on."""

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_MAPPED_AND_COMPATIBLE = ipaddress.IPv6Network("::/8")


def endpoint_refusal(host: str) -> str | None:
    """Why `host` cannot be an announced underlay endpoint, or None when it can be.

    An endpoint is written into every peer's WireGuard configuration, so a member could
    otherwise aim every node's handshakes at any host, or smuggle text into the UAPI `set`
    transaction (issue #22): Python's `ipaddress` keeps an IPv6 zone ID ("%...") with almost
    any character in it, newlines included, and prints it back unchanged. Refused:

    * text that is not exactly the canonical form of an IP address (so no zone ID, no brackets,
      no IPv4-mapped form: peers know IPv4 endpoints in IPv4 form, `meshd.adapters.transport`);
    * addresses no peer can send handshakes to: unspecified, loopback (each peer's own host),
      multicast, link-local (needs a zone, which means nothing on another host), IPv4 reserved
      (240/4, including the limited broadcast 255.255.255.255) and 0/8, and IPv6 ::/8
      (IPv4-mapped and -compatible forms).

    These are the addresses `meshd.adapters.addresses.underlay_addresses` never offers as our
    own endpoints either. A unicast address of a third party cannot be told apart from a real
    endpoint here: that is left (docs/protocol.md, threat model); peers send it at most
    WireGuard's handshake initiations, one per 5 s, while `EndpointChoice` tries it."""
    if "%" in host:
        return "has a zone ID"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return "is not an IP address"
    if str(addr) != host:
        return "is not in canonical form"
    if addr.is_unspecified:
        return "is unspecified"
    if addr.is_loopback:
        return "is loopback"
    if addr.is_multicast:
        return "is multicast"
    if addr.is_link_local:
        return "is link-local"
    if isinstance(addr, ipaddress.IPv4Address) and addr.is_reserved:
        return "is reserved or broadcast"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _THIS_NETWORK:
        return "is in 0.0.0.0/8"
    if isinstance(addr, ipaddress.IPv6Address) and addr in _MAPPED_AND_COMPATIBLE:
        return "is an IPv4-mapped, IPv4-compatible or reserved IPv6 address"
    return None


def handshake_restart_in(
    own_key: bytes, peer_key: bytes, added_for: float | None, handshake_age: float | None
) -> float | None:
    """In how many seconds to re-create a peer that WireGuard was given `added_for` seconds ago
    (None: not yet) and that never had a handshake: 0 now, None never (a handshake happened, or
    the other node's key is the smaller: it does this).

    WireGuard retries an unanswered initiation only after REKEY_TIMEOUT (5 s), and a first
    initiation goes unanswered in two ways. It reached the other node before that node had us
    (it learns of us later), and was dropped. Or both nodes added each other at once (they
    learnt of each other from the same gossip, as after a partition heal) and both initiated:
    each consumed the other's initiation, which replaced its own pending handshake, and dropped
    the other's response as invalid. (Seen in wireguard-go's verbose log after 30-node heals:
    1-4 of 225 new pairs waited for the retry, and half the heals took 6.4-7.5 s.) A re-created
    peer initiates at once, and by then the other node has us and is not initiating itself
    (its own retry is seconds away). Only the smaller key does this, so the two nodes'
    re-creations never cross; the caller bounds them (RESTART_HANDSHAKE_TIMES)."""
    if own_key > peer_key or handshake_age is not None:
        return None
    if added_for is None:
        return RESTART_HANDSHAKE_AFTER_S
    return max(0.0, RESTART_HANDSHAKE_AFTER_S - added_for)


@functools.lru_cache(maxsize=65536)
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
    575 B/s each over IPv6 and 408 over IPv4 (IP layer, ARP frames included).

    Cached: the daemon asks for every member at every desired-state pass, with the same
    arguments, and parsing the addresses was a fifth of a pass's CPU."""

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
    """Per-peer selection state (mutable; owned by the daemon); a peer that goes and comes
    back gets a new one."""

    announced: tuple[Endpoint, ...] = ()
    index: int = 0
    chosen_at: float = 0.0
    current: Endpoint | None = field(default=None)
    switch_at: float | None = None
    """When the peer moved away from `moved_from` (where WireGuard still sent) and the best
    new endpoint is set unless WireGuard roamed by then; None: no move pending."""
    moved_from: Endpoint | None = None
    restarts: int = 0
    """How often the peer was re-created for a first handshake (`handshake_restart_in`)."""
    hold_until: float = 0.0
    """Until then `current` is kept even while WireGuard reports a fresh handshake elsewhere:
    set by `next_endpoint` for a degraded pair, whose session may look fresh while its path
    does not work."""

    def next_endpoint(self, now: float, hold: float = RETRY_AFTER_S) -> Endpoint | None:
        """Move on to the next announced endpoint now and keep it for `hold` seconds (repair of
        a degraded pair, meshd.core.pairrepair): every announced endpoint is tried in turn."""
        if not self.announced:
            return self.current
        self.index = (self.index + 1) % len(self.announced)
        self.current, self.chosen_at = self.announced[self.index], now
        self.switch_at = self.moved_from = None
        self.hold_until = now + hold
        return self.current

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
        if now < self.hold_until:
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
