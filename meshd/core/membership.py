"""Mesh membership: a sans-IO SWIM + Lifeguard state machine.

Theory of operation
===================

Every node holds a record per other node: its newest verified `Announcement` (whose `version`
is the SWIM incarnation number) and a state. The local node's own announcement is not a record;
only it may sign a newer one.

States and transitions (SWIM, Das et al. 2002, section 4.2 "suspicion mechanism")::

    (unknown) --announcement ALIVE--> ALIVE                       PeerJoined
    ALIVE   --probe failed / suspect claim v >= version--> SUSPECT  PeerSuspected
    SUSPECT --announcement version > v (refutation)--> ALIVE        PeerAlive
    SUSPECT --suspicion timer expires / dead claim--> DEAD          PeerDead
    ALIVE|SUSPECT --announcement LEFT (signed leave)--> LEFT        PeerLeft
    ALIVE|SUSPECT --newer announcement, content changed--> same     PeerUpdated
    DEAD|LEFT --announcement version > tombstone's--> ALIVE          PeerJoined (rejoin)
    DEAD|LEFT --tombstone_ttl elapsed--> (forgotten)

A claim or announcement older than the record is STALE and refused; one of the same version is
a duplicate and ignored. So replayed or stale gossip changes nothing, and a tombstone blocks a
dead node's old announcement; a restarted node signs version >= wall-clock milliseconds, which
outranks whatever it signed before.

Timers (all driven by `handle_timer(now)`; `get_timer()` gives the next deadline):

* probe, every `probe_interval` x local health (SWIM section 3.1, Lifeguard IV-A): ping the
  member we have the oldest first-hand evidence of, if that evidence is older than one probe
  cycle (live members x `cycle_interval`); otherwise skip the tick. Evidence is a ping or ack
  from the member itself (WireGuard authenticates the source) or our own probe of it. SWIM's
  shuffled round robin (section 4.3) probes each member once per cycle from each side, so
  every pair exchanges two pings and two acks per cycle although either exchange shows both
  nodes alive; with evidence, one exchange per pair and cycle suffices: half the idle traffic.
  Detection time is unchanged: a crashed node's evidence expires at each member at a
  uniformly random moment of the cycle after the crash, as its turn in a round robin would
  come. A new member starts with evidence at a phase of the cycle that both nodes of the pair
  derive from their ids (`_pair_phase`), so it is probed within one cycle, by each member at
  a different moment. The cycle's share per member is a little longer than the tick (D22):
  idle traffic follows the cycle, while the tick keeps due members and suspects probed
  promptly. No ack within `probe_timeout` x health ->
  ping-req through `indirect_checks` members, which nack if the target stays silent
  (Lifeguard IV-A). No ack by the end of the period -> suspect it.
* suspicion, per suspected node (Lifeguard IV-B, `suspicion.py`): starts at max, shrinks with
  each independent confirmation; on expiry the node is declared DEAD.
* gossip, every `gossip_interval` while the broadcast queue is not empty (SWIM 4.1,
  `queue.py`): queued items to `gossip_nodes` random members. Items also ride on every ping,
  ack and ping-req. Fresh news is in addition forwarded at once ("eager") to `eager_fanout`
  random members on first receipt, which makes joins and leaves reach 1,000 nodes in ~10 ms.
* push-pull, every `push_pull_interval`: state-hash comparison with one random member over a
  stream; on a mismatch digests are exchanged and only missing/newer announcements sent.
  A dead entry in a peer's digest about a member we hold alive is forwarded to that member
  (memberlist suspects it instead), so a node declared dead on the other side of a healed
  partition learns it and refutes.
* reconnect, every `reconnect_interval`: a join request over the underlay to one random DEAD
  member (and to the seeds when no member is alive). Dead members are unreachable in the
  tunnel, so without this a 50/50 partition would stay split forever (as in wesher). A node
  that refutes its own death asks its DEAD members at once (`_reconnect_all`).
* look across, every `merge_check_interval`: a small `MeshCheck` to one seed address or old
  contact that is not a live member (`lookout.py`); an answer from another mesh is joined and
  push-pulled, so meshes that formed apart merge (a cold start, a partition that outlived the
  tombstones, a replaced seed). Nothing is sent while every seed is a member.
* join retries and tombstone expiry.

Local health (Lifeguard IV-A): a score in [0, awareness_max - 1], +1 for a failed probe whose
relays did not nack, for each missing nack, and for having to refute; -1 for each successful
probe. Probe interval and timeout are multiplied by score + 1, so a node whose own network or
CPU is the problem slows down instead of accusing healthy peers.

Trust: only join messages are accepted from the underlay, and their content is signed. Inside
the tunnel WireGuard authenticates the source address, so unsigned content (acks, nacks,
suspect/dead claims, ping-reqs, digests) is only believed from a known member's overlay
address; announcements and revocations are accepted from anyone since they verify themselves.
A claim names its maker, but only the member that sent it is authenticated: a claim counts as a
Lifeguard confirmation, or declares a node dead at once, only first-hand (its maker sent it to
us); a relayed dead claim only suspects, with the relaying member's vote. Claims are
rate-limited per member, and a member whose claims are refuted soon after, again and again, is
ignored for a while (`claimguard.py`, issue #22).
Every check (size, structure, signature, certificate, revocation, version) runs before any
state changes; a refused message becomes a `MessageRejected` event and a counter, never an
exception.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from meshd.core import wire
from meshd.core.announce import (
    Announcement,
    AnnouncementVerifier,
    Endpoint,
    Status,
    sign_announcement,
)
from meshd.core.cert import (
    Certificate,
    Revocation,
    TrustAnchor,
    check_revocation,
    decode_revocation,
)
from meshd.core.claimguard import ClaimGuard
from meshd.core.config import MembershipConfig
from meshd.core.errors import LocalProtocolError, Reject, RemoteProtocolError
from meshd.core.identity import SigningKey
from meshd.core.lookout import Candidate, Lookout, mesh_tag
from meshd.core.queue import BroadcastQueue
from meshd.core.suspicion import Suspicion
from meshd.core.wire import (
    AnnounceItem,
    Channel,
    DeadItem,
    DigestEntry,
    Item,
    MemberState,
    RevocationItem,
    SuspectItem,
)

Address = tuple[str, int]
_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)

_SENT_KEY = {channel: f"sent.{channel}" for channel in Channel}
"""Counter name per channel (formatting an enum on every datagram shows in simulations)."""

_IPV4_HELLOS = 3
"""Empty gossip messages sent to a live member's IPv4 overlay address until it answers from
there (`MeshNode._use_ipv4`): one lost datagram does not keep a pair on IPv6, and a member that
never answers (an older meshd) costs three small datagrams."""
_IPV4_HELLO = wire.encode(wire.Gossip(()))

_STREAM_REFUSALS = 32
"""Refused announcements (or revocations) after which the rest of a push-pull message is
dropped (`_on_stream_announcements`)."""

_LEAVE_UNDERLAY = 4
"""Members a leaving node also tells over the underlay (`MeshNode.leave`)."""

_RECONNECT_ALL_MAX = 32
"""Members a node that was declared dead asks at once (`_reconnect_all`). Enough that every node
of the other side of a 50/50 split of 1,000 is asked by about 32 nodes; few enough that a node
holding many tombstones of nodes really gone does not send a burst of hundreds."""

# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerJoined:
    """A node became a member (first seen, or back after dead/left with a higher version)."""

    announcement: Announcement
    """Its current announcement: keys, endpoints, prefixes, certificate."""


@dataclass(frozen=True)
class PeerUpdated:
    """A member signed a new announcement whose content changed (keys, endpoints, prefixes)."""

    announcement: Announcement
    """The new announcement."""
    previous: Announcement
    """The one it replaces."""


@dataclass(frozen=True)
class PeerSuspected:
    """A member is suspected of having failed; it is still a member (keep its WireGuard peer)."""

    node_id: bytes
    """Identity key of the suspected member."""
    version: int
    """Announcement version the suspicion is about."""


@dataclass(frozen=True)
class PeerAlive:
    """A suspected member refuted the suspicion with a newer announcement."""

    announcement: Announcement
    """The refuting announcement."""


@dataclass(frozen=True)
class PeerDead:
    """A member was declared failed (suspicion expired, a dead claim, or its cert revoked)."""

    announcement: Announcement
    """Its last announcement (the tombstone)."""


@dataclass(frozen=True)
class PeerLeft:
    """A member left gracefully (signed LEFT announcement)."""

    announcement: Announcement
    """The signed LEFT announcement."""


@dataclass(frozen=True)
class PairDegraded:
    """Our direct probes of a live member keep failing while others reach it (indirect probes
    answer): the member is alive, but this pair cannot talk directly. The daemon repairs."""

    node_id: bytes
    """The member."""
    since: float
    """When its first direct probe of the series failed."""


@dataclass(frozen=True)
class PairRestored:
    """A direct probe of a member whose pair was degraded was answered directly again."""

    node_id: bytes
    """The member."""


@dataclass(frozen=True)
class HandshakeWanted:
    """A member asks us, through another member, to start a WireGuard handshake towards it:
    our pair with it is degraded on its side, and we may be the one behind a NAT. The daemon
    re-creates that WireGuard peer (at most once per `initiate_min_interval` per member)."""

    node_id: bytes
    """The member to initiate towards."""


@dataclass(frozen=True)
class RevocationAdded:
    """A new CA-signed revocation was accepted; certificates it names are refused from now."""

    revocation: Revocation
    """The revocation record (persist it)."""


@dataclass(frozen=True)
class MessageRejected:
    """A received message, or part of it, was refused and dropped."""

    reason: Reject
    """Stable label (metrics)."""
    source: Address
    """Where it came from (host, port)."""
    detail: str = field(default="", compare=False)
    """Human-readable detail for the log; not part of equality so tests compare reasons."""


@dataclass(frozen=True)
class ClaimsIgnored:
    """A member's suspect/dead claims were refuted too often: they are ignored for a while
    (`claimguard.py`). Log it: a member that keeps declaring live nodes dead is broken or
    hostile."""

    node_id: bytes
    """Identity key of the member whose claims are ignored."""
    until: float
    """Until when (the `now` timescale)."""


Event = (
    PeerJoined
    | PeerUpdated
    | PeerSuspected
    | PeerAlive
    | PeerDead
    | PeerLeft
    | PairDegraded
    | PairRestored
    | HandshakeWanted
    | RevocationAdded
    | MessageRejected
    | ClaimsIgnored
)


class Transmit(NamedTuple):
    """One message for the adapter to send."""

    destination: Address
    """(host, port): an overlay address + meshd port, or a seed's underlay address."""
    data: bytes
    """The encoded message."""
    channel: Channel
    """UNDERLAY/OVERLAY: one UDP datagram from that socket. STREAM: open (or reuse) a stream to
    the destination inside the tunnel, write a 4-byte big-endian length and the data; on the
    receiving side call `receive(data, peer_address, now, Channel.STREAM)` per framed message."""


# --- records ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 14)
def ipv4_overlay(addresses: tuple[str, ...]) -> str | None:
    """A certificate's IPv4 overlay address, if it grants one. Cached: asked at every probe."""
    for address in addresses:
        if ":" not in address:
            return address
    return None


class Member:
    """What this node knows about one other node."""

    __slots__ = ("ann", "claims", "expires", "hellos", "live_since", "overlay", "state",
                 "suspicion")  # fmt: skip

    def __init__(self, ann: Announcement, state: MemberState) -> None:
        self.ann = ann
        self.state = state
        self.overlay = ann.cert.addresses[0]
        """Where membership traffic to it goes: its IPv6 overlay address, or its IPv4 one once
        it sent us something from there (`MeshNode._use_ipv4`)."""
        self.hellos = 0
        """IPv4 hellos sent to it since it became live (`MeshNode._use_ipv4`)."""
        self.suspicion: Suspicion | None = None
        self.expires = math.inf
        """Tombstone expiry (DEAD/LEFT)."""
        self.live_since = -math.inf
        """When it last became live (joined or came back from dead)."""
        self.claims: dict[bytes, tuple[float, bool]] = {}
        """First-hand claimants about its current version -> (when, a dead claim): struck if
        it refutes soon after (`claimguard.py`)."""

    @property
    def address(self) -> Address:
        return (self.overlay, self.ann.meshd_port)

    @property
    def stream_address(self) -> Address:
        """Where streams to it go: always its IPv6 overlay address. meshd's stream listener is
        IPv6 only (asyncio sets IPV6_V6ONLY), and a TCP connection gains nothing from IPv4."""
        return (self.ann.cert.addresses[0], self.ann.meshd_port)

    @property
    def version(self) -> int:
        return self.ann.version


@dataclass(slots=True)
class _Probe:
    target: bytes
    seq: int
    indirect_at: float
    sent_at: float = 0.0
    indirect_sent: bool = False
    acked: bool = False
    direct: bool = False
    """The target itself answered (else only a relay did, or nobody)."""
    nacks_expected: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: Address
    requester_seq: int
    nack_at: float
    expires: float
    nacked: bool = False


@dataclass(slots=True)
class _PendingJoin:
    destination: Address
    deadline: float
    attempts: int
    hops: int
    retry: bool
    sync: bool = True
    """Push-pull with the answering node (a join); False for a mere notice (`tell_underlay`)."""
    merge: bool = False
    """Sent to a node of another mesh found by looking across (`_on_mesh_check_reply`)."""


@dataclass(frozen=True, slots=True)
class SplitSuspected:
    """A seed or contact answers from a node that is not a live member of ours."""

    address: Address
    """The underlay address that answered."""
    node_id: bytes
    """The node that answered there."""
    members: int
    """How many live members it reported (itself included)."""
    since: float
    """Since when its answers come from outside our mesh."""


class _Why(enum.Enum):
    GOSSIP = 1
    BOOTSTRAP = 2


def _content(ann: Announcement) -> tuple[object, ...]:
    return (ann.cert.raw, ann.wg_public_key, ann.next_wg_public_key, ann.next_wg_key_at,
            ann.endpoints, ann.prefixes, ann.meshd_port)  # fmt: skip


@functools.lru_cache(maxsize=1 << 16)
def _revocation_term(ca_key: bytes, serial: int) -> int:
    data = b"rev" + ca_key + serial.to_bytes(8, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


_LOW = (1 << 128) - 1


def _both_halves(term: int) -> int:
    return (term << 128) | term


@functools.lru_cache(maxsize=4096)
def _hash_term(node_id: bytes, version: int, raw: bytes) -> int:
    """A live record's term of the state hash: high 128 bits hash the announcement's signed
    bytes (content, D24), low 128 bits only (node, version), the hash of meshd before D24, kept
    so that an older node's state check is still recognised as agreement. Cached: every node
    of a simulated mesh loads the same announcements. 4096 entries cover a 1,000-node
    simulation and stay near 2 MB in a daemon (the key holds the raw bytes)."""
    v = hashlib.blake2b(node_id + version.to_bytes(8, "big"), digest_size=16).digest()
    c = hashlib.blake2b(raw, digest_size=16, person=b"meshd-state").digest()
    return (int.from_bytes(c, "big") << 128) | int.from_bytes(v, "big")


def _rank(raw: bytes) -> bytes:
    """Order of two announcements of one node with one version (an equivocation): the lower
    wins everywhere, so the mesh converges on one of them."""
    return hashlib.blake2b(raw, digest_size=16, person=b"meshd-equivoc").digest()


class MeshNode:
    """One node's membership state machine. See the module docstring.

    Inputs: `receive`, `handle_timer`, `join`, `leave`, `update_self`.
    Outputs: `datagrams_to_send`, `next_event`, `get_timer`.
    """

    def __init__(
        self,
        config: MembershipConfig,
        *,
        identity: SigningKey,
        certificate: Certificate,
        trust: TrustAnchor,
        wg_public_key: bytes,
        endpoints: Iterable[Endpoint],
        meshd_port: int,
        rng: random.Random,
        now: float,
        prefixes: Iterable[str] = (),
        last_version: int = 0,
        verifier: AnnouncementVerifier | None = None,
        peers: Iterable[Announcement] = (),
        revocations: Iterable[Revocation] = (),
        psk_ids: Iterable[bytes] = (),
        contacts: Iterable[Address] = (),
    ) -> None:
        """`last_version`: the highest version this node signed before (persisted); the new one
        is above it and above the wall clock in ms. `peers`: verified announcements from the
        store (known peers survive restarts); they start ALIVE and are probed. `verifier` may be
        shared between nodes (the simulator does): revocation is checked here, not there.
        `contacts`: underlay addresses of nodes known before (persisted `contacts()`), checked
        for another mesh like seeds (`lookout.py`)."""
        self.config = config
        self._identity = identity
        self._trust = trust
        self._rng = rng
        self._verifier = verifier or AnnouncementVerifier(trust)
        self.node_id = identity.public
        self._revoked: dict[tuple[bytes, int], bytes] = {}
        """Revoked (CA key, serial) -> the raw record, relayed in full push-pulls."""
        revocation_hash = 0
        for rev in revocations:
            if (rev.ca_key, rev.serial) not in self._revoked:
                self._revoked[(rev.ca_key, rev.serial)] = rev.raw
                revocation_hash ^= _revocation_term(rev.ca_key, rev.serial)

        self._members: dict[bytes, Member] = {}
        self._by_overlay: dict[str, bytes] = {}
        """Every overlay address of every record -> its node: a datagram or stream from any of
        them came from that node (WireGuard checked the source against its AllowedIPs)."""
        self._ipv4 = ipv4_overlay(certificate.addresses) is not None
        """We have an IPv4 overlay address: members that have one too are sent to it once they
        show they take it (`_use_ipv4`)."""
        self._live: list[bytes] = []
        self._live_pos: dict[bytes, int] = {}
        self._checked_at: dict[bytes, float] = {}
        """Live member -> last time it sent us a ping or ack, or we probed it (probe order)."""
        self._probe_heap: list[tuple[float, bytes]] = []
        """(checked_at when filed, member); entries are refiled lazily when they surface."""
        self._in_probe_heap: set[bytes] = set()
        self._probed_last: set[bytes] = set()
        """Members whose last exchange with us we started (see `_next_probe_target`)."""
        self._urgent: deque[bytes] = deque()
        """Suspects to probe at the next tick, ahead of the evidence order."""
        self._relayed_only: dict[bytes, tuple[int, float]] = {}
        """Live member -> (probes in a row answered only through relays, since when)."""
        self._degraded: dict[bytes, float] = {}
        self._initiate_after: dict[bytes, float] = {}
        """Member -> before when we do not initiate towards it again on its request."""
        self._answered_directly: dict[bytes, float] = {}
        """Member -> when it last answered one of our probes itself (a round trip works)."""
        """Members whose pair with us is degraded (`PairDegraded`) -> since when."""
        self._recheck: list[tuple[float, bytes]] = []
        """(when, member): probe it again then, ahead of the evidence order (a pair whose
        direct probe failed: confirm soon; a degraded pair: notice its repair soon)."""
        self._tombstones: set[bytes] = set()
        self._hash = 0

        self._queue = BroadcastQueue(
            lambda: config.retransmit_limit(len(self._live) + 1), config.queue_limit
        )
        self._fresh: list[Item] = []
        self._fresh_exclude: set[bytes] = set()
        self._events: deque[Event] = deque()
        self._out: list[Transmit] = []
        self.stats: Counter[str] = Counter()
        """Counters: sent/received messages and bytes, duplicates, and `rejected.<reason>`."""

        self._health = 0
        self._seq = rng.randrange(1 << 31)
        self._probe: _Probe | None = None
        self.answered: bytes | None = None
        """The member whose direct probe was answered last, until the adapter takes it (sets
        None): the answer came through the tunnel from the member's underlay endpoint, so it
        confirms the underlay neighbour on the way (the daemon tells the kernel, D21)."""
        self._rtt: dict[bytes, float] = {}
        self._relays: dict[int, _Relay] = {}
        self._suspect_heap: list[tuple[float, bytes]] = []
        self._joins: dict[bytes, _PendingJoin] = {}
        self._seeds: list[Address] = []
        self._lookout = Lookout(
            interval=config.merge_check_interval,
            seed_retry_max=config.seed_retry_max,
            contact_retry_max=config.contact_retry_max,
            covered_recheck=config.covered_recheck,
            contact_limit=config.contact_limit,
            rng=rng,
        )
        for contact in contacts:
            self._lookout.add_contact(contact, now)
        self._mesh_tag = mesh_tag(trust.mesh)
        self._checks: dict[bytes, tuple[Address, float]] = {}
        """Mesh checks sent and not yet answered: nonce -> (destination, expiry)."""
        self._joined = False
        self._joins_heard = 0
        """New members learnt since the last push-pull (`_heard_of_join`)."""
        self._bootstrap_from: set[bytes] = set()
        self._left = False
        self._underlay_refute_after = -math.inf
        self._claim_refute_after = -math.inf
        self._reconnect_all_after = -math.inf
        self._told: dict[tuple[str, bytes], float] = {}
        """(destination, subject) -> until when we do not tell that destination about that
        subject again: corrections and forwarded claims, at most one per probe interval."""
        self._last_reject: Reject | None = None
        self._claims = ClaimGuard(
            rate=config.claim_rate,
            burst=config.claim_burst,
            limit=config.claim_strikes,
            window=config.claim_strike_window,
            ignore_for=config.claim_ignore_for,
            refute_window=config.claim_refute_window,
        )
        self._next_cert_expiry = math.inf
        """Earliest certificate expiry among live members (Unix s), or later."""

        stagger = rng.random()  # desynchronise nodes started together
        self._next_probe = now + stagger * config.probe_interval
        self._next_gossip = now + stagger * config.gossip_interval
        self._next_push_pull = now + (0.5 + stagger) * config.push_pull_interval
        self._next_reconnect = now + (0.5 + stagger) * config.reconnect_interval
        self._next_reap = now + min(1.0, config.tombstone_ttl / 10)
        self._next_look = now + stagger * config.merge_check_interval

        self._me = sign_announcement(
            identity, certificate, version=max(last_version + 1, int(now * 1000)),
            wg_public_key=wg_public_key, endpoints=endpoints, meshd_port=meshd_port,
            issued_at=int(now * 1000), prefixes=prefixes, psk_ids=psk_ids,
        )  # fmt: skip
        self._hash ^= _hash_term(self.node_id, self._me.version, self._me.raw)
        self._hash ^= _both_halves(revocation_hash)
        # Bulk load (persisted peers, or a simulator's pre-converged mesh): the same steps as
        # `_add`, inlined because a 1,000-node simulation runs this a million times.
        members, by_overlay, live, live_pos = (self._members, self._by_overlay, self._live,
                                               self._live_pos)  # fmt: skip
        checked_at, heap = self._checked_at, self._probe_heap
        peers = list(peers)
        cycle = max(1, len(peers)) * config.cycle_interval
        for ann in peers:
            node_id = ann.cert.identity_key
            if node_id == self.node_id or ann.status is not Status.ALIVE or node_id in members:
                continue
            m = Member(ann, MemberState.ALIVE)
            members[node_id] = m
            for address in ann.cert.addresses:
                by_overlay[address] = node_id
            live_pos[node_id] = len(live)
            live.append(node_id)
            checked_at[node_id] = t = self._pair_phase(node_id, now, cycle)
            heap.append((t, node_id))
            self._hash ^= _hash_term(node_id, ann.version, ann.raw)
            self._next_cert_expiry = min(self._next_cert_expiry, ann.cert.not_after)
            self._events.append(PeerJoined(ann))
        heapq.heapify(heap)
        self._in_probe_heap.update(live)

    # --- public API: outputs -----------------------------------------------------------------

    @property
    def announcement(self) -> Announcement:
        """Our current signed announcement (persist `version` to survive restarts)."""
        return self._me

    @property
    def health(self) -> int:
        """Lifeguard local health score (0 = healthy)."""
        return self._health

    @property
    def leave_finished(self) -> bool:
        """After `leave`: our LEFT announcement has been sent its retransmit limit of times."""
        return self._left and all(
            not (isinstance(i, AnnounceItem) and i.announcement == self._me.raw)
            for i in self._queue.items()
        )

    def rtt(self, node_id: bytes) -> float | None:
        """Smoothed round-trip time of direct probes to a member, in seconds (None: no direct
        probe answered yet). Shown by `meshctl status`; also a hint for gateway choice."""
        return self._rtt.get(node_id)

    @property
    def live_count(self) -> int:
        """How many members are ALIVE or SUSPECT (cheap: for simulations polling many nodes)."""
        return len(self._live)

    def member(self, node_id: bytes) -> Member | None:
        return self._members.get(node_id)

    def members(self) -> list[Member]:
        """All records, including DEAD/LEFT tombstones."""
        return list(self._members.values())

    def live_members(self) -> list[Announcement]:
        """Announcements of ALIVE and SUSPECT members (the WireGuard peer set)."""
        return [self._members[n].ann for n in self._live]

    def datagrams_to_send(self) -> list[Transmit]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """Pop all pending events."""
        out = list(self._events)
        self._events.clear()
        return out

    def get_timer(self) -> float:
        """Next deadline at which `handle_timer` must run."""
        t = min(self._next_probe, self._next_push_pull, self._next_reconnect)
        if self._probe is not None and not self._probe.indirect_sent and not self._probe.acked:
            t = min(t, self._probe.indirect_at)
        if len(self._queue):
            t = min(t, self._next_gossip)
        if self._suspect_heap:
            t = min(t, self._suspect_heap[0][0])
        for relay in self._relays.values():
            t = min(t, relay.expires if relay.nacked else relay.nack_at)
        for pending in self._joins.values():
            t = min(t, pending.deadline)
        if self._tombstones:
            t = min(t, self._next_reap)
        if len(self._lookout):
            # Every look, not only when a candidate is due: a covered one whose node has just
            # died is due again at once (`Lookout.next_due`). The probe tick wakes as often.
            t = min(t, self._next_look)
        return t

    # --- public API: commands ----------------------------------------------------------------

    def join(self, seeds: Iterable[Address], now: float) -> None:
        """Send a join request to every seed address over the underlay (retried until one
        answers); they are looked across to from then on (`set_seeds`)."""
        self._seeds = [(h, p) for h, p in seeds]
        # Their first check waits for the join's answer, which covers them (`_on_join_reply`).
        self._lookout.set_seeds(self._seeds, now, first_at=now + self.config.join_timeout)
        for seed in self._seeds:
            self._send_join(seed, now, wire.MemberState.UNKNOWN, 0, hops=0, retry=True)

    def set_seeds(self, seeds: Iterable[Address], now: float) -> None:
        """The seed addresses now: every address of every seed name, our own left out by the
        caller (an answer from ourselves is recognised too). New ones are checked for another
        mesh at the next look (`lookout.py`)."""
        self._seeds = [(h, p) for h, p in seeds]
        self._lookout.set_seeds(self._seeds, now)

    def contacts(self) -> list[Address]:
        """Underlay addresses of nodes we knew and forgot, newest first: persist them and give
        them back at the next start (`contacts=`), so a restarted node still looks for them."""
        return self._lookout.contacts()

    @property
    def contacts_changed(self) -> int:
        """Grows whenever `contacts()` changed (cheap to poll; persist when it moves)."""
        return self._lookout.contacts_changed

    def split_suspected(self) -> list[SplitSuspected]:
        """Seeds and contacts that answer from a node outside our live members: another mesh
        we are merging with (for a moment) or cannot merge with (shown by `meshctl status`)."""
        return [
            SplitSuspected(c.address, c.owner, c.foreign_members, c.foreign_since)
            for c in self._lookout.split_suspected(self._covers)
            if c.owner is not None and c.foreign_since is not None
        ]

    def leave(self, now: float) -> None:
        """Sign and spread a LEFT announcement; stop probing. Keep calling `handle_timer` until
        `leave_finished` (or a deadline), so the leave reaches everyone before exit."""
        if self._left:
            return
        self._left = True
        self._resign(now, status=Status.LEFT)
        self._probe = None
        self._next_probe = math.inf
        self._flush_fresh()
        # Also over the underlay to a few members: inside the tunnel the leave waits for a
        # WireGuard handshake with each peer it goes to, and a node that leaves right after it
        # started has few sessions yet; its wireguard-go exits with the leave still queued
        # (seen in test_fault_nodes: all three remaining nodes declared the leaver dead). Each
        # receiver spreads it on through its own tunnels. A few datagrams, whatever N.
        for node_id in self._rng.sample(self._live, min(len(self._live), _LEAVE_UNDERLAY)):
            m = self._members[node_id]
            if m.ann.endpoints:
                dest = (m.ann.endpoints[0][0], m.ann.meshd_port)
                self._send_join(dest, now, m.state, m.version, hops=2, retry=False, sync=False)

    def update_self(
        self,
        now: float,
        *,
        endpoints: Iterable[Endpoint] | None = None,
        wg_public_key: bytes | None = None,
        next_wg_public_key: bytes | None = None,
        next_wg_key_at: int | None = None,
        prefixes: Iterable[str] | None = None,
        meshd_port: int | None = None,
        certificate: Certificate | None = None,
        psk_ids: Iterable[bytes] | None = None,
    ) -> Announcement:
        """Sign a new announcement with a higher version (new endpoints, keys, prefixes or a
        renewed certificate) and spread it. Raises `LocalProtocolError` on misuse."""
        if self._left:
            raise LocalProtocolError("updating the announcement of a node that left")
        self._resign(
            now, endpoints=endpoints, wg_public_key=wg_public_key,
            next_wg_public_key=next_wg_public_key, next_wg_key_at=next_wg_key_at,
            prefixes=prefixes, meshd_port=meshd_port, certificate=certificate, psk_ids=psk_ids,
        )  # fmt: skip
        self._flush_fresh()
        return self._me

    def tell_underlay(self, now: float) -> None:
        """Send our announcement to every live member over the underlay (a join request that
        asks for no state back). For the one change the tunnel cannot carry: after our
        WireGuard key switched, the tunnel to a peer works again only once that peer has our
        new key. One datagram per member, answered by one."""
        for node_id in self._live:
            m = self._members[node_id]
            if m.ann.endpoints:
                dest = (m.ann.endpoints[0][0], m.ann.meshd_port)
                self._send_join(dest, now, m.state, m.version, hops=2, retry=False, sync=False)

    def tell_members(self) -> None:
        """Send our announcement to every live member through the tunnel, one datagram each.
        After our underlay address changed: each member's WireGuard learns our new address
        from the packet (roaming; behind a NAT the only way, since the address we announce is
        not reachable from outside), and the member needs the announcement anyway; gossip
        would reach the last of them only after a few rounds and their probes of us only
        within a cycle."""
        data = wire.encode(wire.Gossip((AnnounceItem(self._me.raw),)))
        for node_id in self._live:
            self._send(self._members[node_id].address, data, Channel.OVERLAY)

    # --- public API: inputs ------------------------------------------------------------------

    def receive(
        self, data: bytes, source: Address, now: float, channel: Channel = Channel.OVERLAY
    ) -> None:
        """Handle one message. `channel` says which socket it came from; `source` is the
        sender's (host, port) (for a stream: the peer's address, port may be anything).
        Never raises for remote input: refusals become `MessageRejected` events."""
        self.stats["recv_msgs"] += 1
        self.stats["recv_bytes"] += len(data)
        try:
            msg = wire.decode(data, channel)
            self._dispatch(msg, data, source, now)
        except RemoteProtocolError as exc:
            self._reject(exc.reason, source, exc.detail)
        self._flush_fresh()

    def handle_timer(self, now: float) -> None:
        """Run everything due at `now`."""
        cfg = self.config
        p = self._probe
        if p is not None and not p.acked and not p.indirect_sent and now >= p.indirect_at:
            self._send_indirect(p)
        if now >= self._next_probe:
            self._probe_tick(now)
        if self._relays:
            self._relay_timers(now)
        while self._suspect_heap and self._suspect_heap[0][0] <= now:
            _, node_id = heapq.heappop(self._suspect_heap)
            m = self._members.get(node_id)
            if m is not None and m.state is MemberState.SUSPECT and m.suspicion is not None:
                if m.suspicion.deadline <= now:
                    self._on_dead(node_id, m.version, self.node_id, now)
                else:
                    heapq.heappush(self._suspect_heap, (m.suspicion.deadline, node_id))
        if now >= self._next_gossip:
            self._next_gossip = now + cfg.gossip_interval
            if len(self._queue):
                self._gossip_round()
        if now >= self._next_push_pull:
            self._next_push_pull = now + cfg.push_pull_interval * (0.75 + 0.5 * self._rng.random())
            self._joins_heard = 0
            if self._live and not self._left:
                target = self._members[self._rng.choice(self._live)]
                check = wire.StateCheck(self.state_hash())
                self._send(target.address, wire.encode(check), Channel.OVERLAY)
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval
            if not self._left:
                self._reconnect(now)
        for nonce, pending in list(self._joins.items()):
            if pending.deadline <= now:
                del self._joins[nonce]
                if pending.retry and not self._joined and pending.attempts < cfg.join_attempts:
                    self._send_join(pending.destination, now, MemberState.UNKNOWN, 0,
                                    hops=0, retry=True, attempts=pending.attempts + 1)  # fmt: skip
        if now >= self._next_reap:
            self._next_reap = now + min(1.0, cfg.tombstone_ttl / 10)
            self._reap(now)
            self._drop_expired(now)
        if now >= self._next_look:
            self._next_look = now + cfg.merge_check_interval
            if not self._left and len(self._lookout):
                self._look_across(now)
        self._flush_fresh()

    # --- membership table --------------------------------------------------------------------

    def _add(self, ann: Announcement, state: MemberState, now: float) -> Member:
        m = Member(ann, state)
        self._members[ann.node_id] = m
        for address in ann.cert.addresses:
            self._by_overlay[address] = ann.node_id
        if state in _LIVE:
            self._make_live(ann.node_id, m, now)
        return m

    def _make_live(self, node_id: bytes, m: Member, now: float) -> None:
        if node_id in self._live_pos:
            return
        self._next_cert_expiry = min(self._next_cert_expiry, m.ann.cert.not_after)
        self._live_pos[node_id] = len(self._live)
        self._live.append(node_id)
        self._hash ^= _hash_term(node_id, m.version, m.ann.raw)
        self._tombstones.discard(node_id)
        m.expires = math.inf
        m.live_since = now
        m.overlay, m.hellos = m.ann.cert.addresses[0], 0  # it may run another build now
        cycle = self._probe_cycle()
        # Due at its pair phase, but not before `first_probe_after` (config: the tunnel).
        t = max(self._pair_phase(node_id, now, cycle), now + self.config.first_probe_after - cycle)
        self._checked_at[node_id] = t
        if node_id not in self._in_probe_heap:
            self._in_probe_heap.add(node_id)
            heapq.heappush(self._probe_heap, (t, node_id))

    def _make_dead(self, node_id: bytes, m: Member, state: MemberState, now: float) -> None:
        self._checked_at.pop(node_id, None)  # its heap entry is dropped when it surfaces
        self._forget_pair(node_id)
        self._probed_last.discard(node_id)
        pos = self._live_pos.pop(node_id, None)
        if pos is not None:
            last = self._live.pop()
            if last != node_id:
                self._live[pos] = last
                self._live_pos[last] = pos
            self._hash ^= _hash_term(node_id, m.version, m.ann.raw)
        m.state = state
        m.suspicion = None
        m.expires = now + self.config.tombstone_ttl
        self._tombstones.add(node_id)

    def _set_ann(self, m: Member, ann: Announcement) -> None:
        if ann.node_id in self._live_pos:
            self._hash ^= _hash_term(ann.node_id, m.version, m.ann.raw)
            self._hash ^= _hash_term(ann.node_id, ann.version, ann.raw)
        if ann.cert.addresses != m.ann.cert.addresses:  # a renewed certificate
            self._forget_addresses(m)
            for address in ann.cert.addresses:
                self._by_overlay[address] = ann.node_id
            m.overlay, m.hellos = ann.cert.addresses[0], 0
        m.ann = ann
        m.claims = {}
        self._next_cert_expiry = min(self._next_cert_expiry, ann.cert.not_after)

    def _drop_expired(self, now: float) -> None:
        """A member whose certificate expired is dropped by everyone (its own meshd leaves
        just before; this covers one that does not). Scans only when the earliest expiry of a
        live member has come, which it tracks."""
        if now < self._next_cert_expiry:
            return
        self._next_cert_expiry = math.inf
        for node_id in list(self._live):
            m = self._members[node_id]
            if m.ann.cert.not_after <= now:
                self._make_dead(node_id, m, MemberState.DEAD, now)
                self._events.append(PeerDead(m.ann))
            else:
                self._next_cert_expiry = min(self._next_cert_expiry, m.ann.cert.not_after)

    def _reap(self, now: float) -> None:
        for node_id in [n for n in self._tombstones if self._members[n].expires <= now]:
            m = self._members.pop(node_id)
            self._tombstones.discard(node_id)
            self._rtt.pop(node_id, None)
            self._forget_addresses(m)
            if m.state is MemberState.DEAD:
                # Forgotten, but perhaps only cut off for longer than the tombstone lived: keep
                # asking its addresses for another mesh (`lookout.py`). A node that left
                # said goodbye; it comes back through the seeds if it does.
                for host, _ in m.ann.endpoints:
                    self._lookout.add_contact((host, m.ann.meshd_port), now, owner=node_id)

    def _forget_addresses(self, m: Member) -> None:
        # Only if still its own: a pool address may have gone to a newer node since.
        for address in m.ann.cert.addresses:
            if self._by_overlay.get(address) == m.ann.node_id:
                del self._by_overlay[address]

    def state_hash(self) -> bytes:
        """Order-independent hash of the live announcements (their signed bytes, D24), self
        included, and of the revocations held: two nodes that differ in either exchange
        digests, also when one node showed them different content under one version."""
        return (self._hash >> 128).to_bytes(16, "big")

    def version_hash(self) -> bytes:
        """The state hash of meshd before D24: live (node, version) pairs and revocations. An
        older node sends this one; equal to ours, it agrees with us."""
        return (self._hash & _LOW).to_bytes(16, "big")

    def _agrees(self, state_hash: bytes) -> bool:
        return state_hash == self.state_hash() or state_hash == self.version_hash()

    def digest(self) -> tuple[DigestEntry, ...]:
        out = [DigestEntry(self.node_id, self._me.version,
                           MemberState.LEFT if self._left else MemberState.ALIVE)]  # fmt: skip
        out.extend(DigestEntry(n, m.version, m.state) for n, m in self._members.items())
        return tuple(out)

    # --- sending -----------------------------------------------------------------------------

    def _send(self, destination: Address, data: bytes, channel: Channel) -> None:
        self.stats["sent_msgs"] += 1
        self.stats["sent_bytes"] += len(data)
        self.stats[_SENT_KEY[channel]] += 1
        self._out.append(Transmit(destination, data, channel))

    def _send_piggybacked(
        self, destination: Address, make: Callable[[tuple[Item, ...]], wire.Message],
        first: tuple[Item, ...] = (),
    ) -> None:  # fmt: skip
        data = wire.encode(make(first))
        if len(self._queue):
            # 2 bytes: the item array header may grow from 1 to 3 bytes.
            budget = self.config.max_datagram - len(data) - 2
            taken = self._queue.take(budget, max_count=wire.MAX_ITEMS - len(first))
            if taken:
                data = wire.encode(make(first + tuple(taken)))
        self._send(destination, data, Channel.OVERLAY)

    def _random_live(self, k: int, exclude: set[bytes]) -> list[bytes]:
        if k <= 0 or not self._live:
            return []
        sample = self._rng.sample(self._live, min(len(self._live), k + len(exclude)))
        return [n for n in sample if n not in exclude][:k]

    def _broadcast(self, key: bytes, item: Item, eager: bool = True) -> None:
        self._queue.push(key, item)
        if eager:
            self._fresh.append(item)

    def _flush_fresh(self) -> None:
        """Eager forwarding: fresh news goes at once to `eager_fanout` random members."""
        items, self._fresh = self._fresh, []
        exclude, self._fresh_exclude = self._fresh_exclude, set()
        if not items:
            return
        batches: list[tuple[Item, ...]] = []
        batch: list[Item] = []
        size = 8
        for item in items:
            s = wire.item_size(item)
            if batch and (size + s > self.config.max_datagram or len(batch) >= wire.MAX_ITEMS):
                batches.append(tuple(batch))
                batch, size = [], 8
            batch.append(item)
            size += s
        batches.append(tuple(batch))
        for node_id in self._random_live(self.config.eager_fanout, exclude):
            dest = self._members[node_id].address
            for b in batches:
                self._send(dest, wire.encode(wire.Gossip(b)), Channel.OVERLAY)

    def _gossip_round(self) -> None:
        for node_id in self._random_live(self.config.gossip_nodes, set()):
            items = self._queue.take(self.config.max_datagram - 8, max_count=wire.MAX_ITEMS)
            if not items:
                break
            self._send(self._members[node_id].address, wire.encode(wire.Gossip(tuple(items))),
                       Channel.OVERLAY)  # fmt: skip

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & wire.MAX_SEQ
        return self._seq

    # --- own announcement --------------------------------------------------------------------

    def _resign(
        self, now: float, *, status: Status | None = None, at_least: int = 0,
        endpoints: Iterable[Endpoint] | None = None, wg_public_key: bytes | None = None,
        next_wg_public_key: bytes | None = None, next_wg_key_at: int | None = None,
        prefixes: Iterable[str] | None = None, meshd_port: int | None = None,
        certificate: Certificate | None = None, psk_ids: Iterable[bytes] | None = None,
    ) -> None:  # fmt: skip
        old = self._me
        version = max(old.version + 1, at_least, int(now * 1000))
        if version > wire.MAX_VERSION:
            raise LocalProtocolError("announcement version space exhausted")
        next_key = old.next_wg_public_key if next_wg_public_key is None else next_wg_public_key
        next_at = old.next_wg_key_at if next_wg_key_at is None else next_wg_key_at
        if wg_public_key is not None and wg_public_key == next_key:
            next_key, next_at = None, 0  # the announced rotation happened
        self._me = sign_announcement(
            self._identity,
            certificate or old.cert,
            version=version,
            wg_public_key=wg_public_key or old.wg_public_key,
            endpoints=old.endpoints if endpoints is None else endpoints,
            meshd_port=meshd_port or old.meshd_port,
            issued_at=int(now * 1000),
            prefixes=old.prefixes if prefixes is None else prefixes,
            status=old.status if status is None else status,
            next_wg_public_key=next_key,
            next_wg_key_at=next_at,
            psk_ids=old.psk_ids if psk_ids is None else psk_ids,
        )
        self._hash ^= _hash_term(self.node_id, old.version, old.raw)
        self._hash ^= _hash_term(self.node_id, version, self._me.raw)
        if certificate is not None and certificate.addresses != old.cert.addresses:
            # A renewal that changed our overlay addresses: IPv4 may work no longer (or now).
            self._ipv4 = ipv4_overlay(certificate.addresses) is not None
            for m in self._members.values():
                m.overlay, m.hellos = m.ann.cert.addresses[0], 0
        self._broadcast(self.node_id, AnnounceItem(self._me.raw))

    def _refute(self, claimed_version: int, now: float, declared_dead: bool = False) -> None:
        """Someone believes we are suspect/dead (or holds a newer announcement of ours, after we
        lost state): sign a higher version (SWIM 4.2). Being suspected hints that our own link
        is bad, so local health worsens (Lifeguard IV-A)."""
        if claimed_version >= wire.MAX_VERSION:
            return  # cannot outrank it; only reachable with an announcement we signed
        self.stats["refutations"] += 1
        self._health = min(self._health + 1, self.config.awareness_max - 1)
        self._resign(now, at_least=claimed_version + 1)
        if declared_dead:
            self._reconnect_all(now)

    # --- dispatch ----------------------------------------------------------------------------

    def _reject(self, reason: Reject, source: Address, detail: str) -> None:
        self.stats[f"rejected.{reason.value}"] += 1
        self._events.append(MessageRejected(reason, source, detail))

    def _sender(self, source: Address) -> bytes | None:
        """The member whose overlay address sent this (WireGuard authenticated it), if any."""
        node_id = self._by_overlay.get(source[0])
        if node_id is None:
            return None
        if self._members[node_id].state is MemberState.LEFT:
            return None
        return node_id

    def _dispatch(self, msg: wire.Message, data: bytes, source: Address, now: float) -> None:
        if isinstance(msg, wire.JoinRequest):
            self._on_join_request(msg, len(data), source, now)
            return
        if isinstance(msg, wire.JoinReply):
            self._on_join_reply(msg, source, now)
            return
        if isinstance(msg, wire.MeshCheck):
            self._on_mesh_check(msg, len(data), source)
            return
        if isinstance(msg, wire.MeshCheckReply):
            self._on_mesh_check_reply(msg, source, now)
            return
        sender = self._sender(source)
        if sender is not None:
            self._fresh_exclude.add(sender)  # it knows the news it sent us
        if isinstance(msg, wire.Gossip | wire.Ping | wire.Ack | wire.PingReq):
            self._apply_items(msg.items, sender, source, now)
            sender = sender or self._sender(source)  # an announcement may have introduced it
        if sender is not None and ":" not in source[0] and self._ipv4:
            self._members[sender].overlay = source[0]  # it takes IPv4 (`_use_ipv4`)
        if isinstance(msg, wire.Ping | wire.Ack) and sender in self._checked_at:
            # First-hand evidence that it is alive. Only probe traffic counts: gossip and
            # push-pull come in bursts around events and would bunch the pairs' phases there.
            self._checked_at[sender] = now
            if isinstance(msg, wire.Ping):
                self._probed_last.discard(sender)
        if sender is None:
            if not isinstance(msg, wire.Gossip):
                raise RemoteProtocolError(
                    Reject.UNKNOWN_SENDER, f"{type(msg).__name__} from a non-member"
                )
            return
        if isinstance(msg, wire.Ping):
            self._send_piggybacked(source, lambda it: wire.Ack(msg.seq, it))
        elif isinstance(msg, wire.Ack):
            self._on_ack(msg.seq, now, sender)
        elif isinstance(msg, wire.PingReq):
            self._on_ping_req(msg, source, now)
        elif isinstance(msg, wire.Nack):
            p = self._probe
            if p is not None and p.seq == msg.seq:
                p.nacks += 1
        elif isinstance(msg, wire.StateCheck):
            self._check_state(msg.state_hash, sender)
        elif isinstance(msg, wire.Initiate):
            self._on_initiate(msg, sender, now)
        elif isinstance(msg, wire.PushPullRequest):
            self._on_push_pull_request(msg, sender, now)
        elif isinstance(msg, wire.PushPullReply):
            self._on_push_pull_reply(msg, sender, now)

    def _apply_items(
        self, items: tuple[Item, ...], sender: bytes | None, source: Address, now: float
    ) -> None:
        unsigned_refused = False
        for item in items:
            if isinstance(item, AnnounceItem):
                self._on_announcement(item.announcement, source, now, _Why.GOSSIP)
            elif isinstance(item, RevocationItem):
                self._on_revocation(item.revocation, source, now)
            elif sender is None:
                unsigned_refused = True
            elif isinstance(item, SuspectItem):
                self._on_suspect(item.node_id, item.version, item.sender, now, source, sender)
            else:
                self._on_dead(item.node_id, item.version, item.sender, now, source, sender)
        if unsigned_refused:
            self._reject(Reject.UNKNOWN_SENDER, source, "unsigned claims from a non-member")

    # --- announcements, claims, revocations --------------------------------------------------

    def _verify(self, raw: bytes, source: Address, now: float) -> Announcement | None:
        try:
            ann = self._verifier.verify(raw, now)
            if (ann.cert.ca_key, ann.cert.serial) in self._revoked:
                raise RemoteProtocolError(Reject.REVOKED, f"{ann.name!r} is revoked")
        except RemoteProtocolError as exc:
            self._reject(exc.reason, source, exc.detail)
            self._last_reject = exc.reason
            return None
        return ann

    def _on_announcement(self, raw: bytes, source: Address, now: float, why: _Why) -> bool:
        """Apply a relayed/received announcement; True if it was news."""
        ann = self._verify(raw, source, now)
        if ann is None:
            return False
        return self._apply_announcement(ann, source, now, why)

    def _apply_announcement(
        self, ann: Announcement, source: Address, now: float, why: _Why
    ) -> bool:
        node_id = ann.node_id
        if node_id == self.node_id:
            if ann.version > self._me.version:
                # A newer announcement of ours than we remember: we lost state. Outrank it.
                self._refute(ann.version, now)
            elif ann.version == self._me.version and ann.raw != self._me.raw:
                self._reject(Reject.CONFLICT, source, "another announcement of ours, same version")
            return False
        m = self._members.get(node_id)
        leaving = ann.status is Status.LEFT
        if m is None:
            m = self._add(ann, MemberState.LEFT if leaving else MemberState.ALIVE, now)
            if leaving:
                self._make_dead(node_id, m, MemberState.LEFT, now)
            else:
                self._events.append(PeerJoined(ann))
                self._heard_of_join(now)
        elif ann.version < m.version:
            self._reject(Reject.STALE, source, f"announcement {ann.version} < {m.version}")
            return False
        elif ann.version == m.version:
            if ann.raw == m.ann.raw:
                self.stats["duplicates"] += 1
                return False
            return self._equivocation(m, ann, source, now)
        else:
            previous, old_state = m.ann, m.state
            if m.claims and not leaving:
                self._strike_claimants(m, now)
            self._set_ann(m, ann)
            if leaving:
                if old_state in _LIVE:
                    self._events.append(PeerLeft(ann))
                self._make_dead(node_id, m, MemberState.LEFT, now)
            elif old_state in _LIVE:
                m.state = MemberState.ALIVE
                m.suspicion = None
                if old_state is MemberState.SUSPECT:
                    self._events.append(PeerAlive(ann))
                if _content(previous) != _content(ann):
                    self._events.append(PeerUpdated(ann, previous))
            else:
                m.state = MemberState.ALIVE
                self._make_live(node_id, m, now)
                self._events.append(PeerJoined(ann))
        if why is not _Why.BOOTSTRAP:
            self._broadcast(node_id, AnnounceItem(ann.raw), eager=True)
        return True

    def _equivocation(self, m: Member, ann: Announcement, source: Address, now: float) -> bool:
        """Two announcements of one node with one version and different content: the node
        signed both (nothing else can), to show different things to different peers. Counted
        as a `conflict` either way; the one of lower `_rank` is kept, here and everywhere, so
        the mesh converges on one of them (the state hash covers content, so anti-entropy
        finds nodes that hold the other). True when the new one replaced ours."""
        keep = _rank(m.ann.raw) <= _rank(ann.raw)
        self._reject(Reject.CONFLICT, source,
                     f"{ann.name!r} signed two announcements with version {ann.version}; "
                     f"{'kept ours' if keep else 'took the new one'}")  # fmt: skip
        if keep:
            return False
        previous = m.ann
        self._set_ann(m, ann)
        if m.state in _LIVE and _content(previous) != _content(ann):
            self._events.append(PeerUpdated(ann, previous))
        self._broadcast(ann.node_id, AnnounceItem(ann.raw), eager=True)
        return True

    def _heard_of_join(self, now: float) -> None:
        """Several new members within one push-pull period: a merge of two meshes, or a fleet
        starting at once. Their announcements travel as a burst of gossip, of which a node
        misses some (eager forwarding reaches all but ~e^-3 of the nodes per item, and members
        whose WireGuard lacks a sender drop its datagrams): compare states once the burst has
        passed instead of at the next push-pull, up to 45 s later. A single join costs
        nothing more; a burst one small datagram per node."""
        self._joins_heard += 1
        if self._joins_heard == 2:
            self._next_push_pull = min(self._next_push_pull, now + self.config.join_check_after)

    # Claims (issue #22, finding 5). A suspect or dead claim names its maker (`sender`), but
    # only the member whose overlay address sent the datagram (`via`) is authenticated, by
    # WireGuard. So: a claim is first-hand when its sender is `via` (or we made it: `via` None);
    # a Lifeguard confirmation counts only first-hand, once per member; a dead claim declares a
    # node dead at once only first-hand, and otherwise only suspects it, with the relaying
    # member's vote (it holds the node dead: it relays a dead claim only after applying it).
    # Every member's claims are rate-limited, and a member whose first-hand claims are refuted
    # soon after, again and again, is ignored for a while (`claimguard.py`). One member can
    # therefore add one confirmation at most to any suspicion and declare a node dead once;
    # gossip of a real failure still spreads from member to member as in SWIM.

    def _claim_allowed(self, via: bytes | None, source: Address, now: float) -> bool:
        if via is None:
            return True
        if self._claims.ignored(via, now):
            self.stats["claims_ignored"] += 1
            return False
        if not self._claims.allow(via, now):
            self._reject(Reject.RATE_LIMITED, source, "suspect/dead claims above the rate")
            return False
        return True

    def _strike(self, claimant: bytes, claimed_at: float, dead: bool, now: float) -> None:
        weight = self._claims.limit if dead else 1
        self.stats["claim_strikes"] += 1
        if self._claims.strike(claimant, now, claimed_at, weight):
            self.stats["claimants_ignored"] += 1
            self._events.append(ClaimsIgnored(claimant, now + self._claims.ignore_for))

    def _strike_claimants(self, m: Member, now: float) -> None:
        """`m` signed a higher version while first-hand claims about the old one stood: each
        claimant whose claim came within `claim_refute_window` gets a strike."""
        for claimant, (claimed_at, dead) in m.claims.items():
            self._strike(claimant, claimed_at, dead, now)
        m.claims = {}

    def _claimed_member(
        self, kind: str, node_id: bytes, version: int, claimer: bytes, via: bytes | None,
        now: float, source: Address,
    ) -> Member | None:  # fmt: skip
        """The member an unsigned `kind` (suspect/dead) claim is about, or None when the claim
        is handled already: about us (refuted, or corrected when stale), about a node we do not
        know, or about an older version than we hold (the sender gets the current one)."""
        if node_id == self.node_id:
            if version == self._me.version and not self._left:
                if via is not None and claimer == via:
                    self._strike(via, now, kind == "dead", now)  # we know it is false
                if now < self._claim_refute_after:
                    # Refuted a moment ago, and the claimer has our new version already: it
                    # suspects us again, probes us and tells us again (buddy system) after
                    # this. Bounds the re-signing (and its gossip) one member can cause.
                    self.stats["refutations_deferred"] += 1
                    return None
                self._claim_refute_after = now + self.config.probe_interval
                self._refute(version, now, declared_dead=kind == "dead")
            elif version < self._me.version:
                self._correct(source, self._me, now)
            else:
                # An unsigned claim about a version we never signed: believing it would let a
                # member push our version to the end of its range.
                self._reject(Reject.CONFLICT, source, f"{kind} claim about our future version")
            return None
        m = self._members.get(node_id)
        if m is None:
            self.stats["claims_unknown_node"] += 1
            return None
        if version < m.version:
            self._reject(Reject.STALE, source, f"{kind} {version} < {m.version}")
            self._correct(source, m.ann, now)
            return None
        return m

    def _on_suspect(
        self, node_id: bytes, version: int, sender: bytes, now: float,
        source: Address = ("", 0), via: bytes | None = None,
    ) -> None:  # fmt: skip
        """A suspect claim made by `sender`, received from member `via` (None: our own)."""
        if node_id != self.node_id and not self._claim_allowed(via, source, now):
            return  # claims about us are always heard: refuting one is safe
        m = self._claimed_member("suspect", node_id, version, sender, via, now, source)
        if m is None:
            return
        first_hand = via is None or sender == via
        if via is not None and first_hand and m.state in _LIVE:
            m.claims.setdefault(via, (now, False))
        if m.state is MemberState.SUSPECT and m.suspicion is not None:
            if first_hand and m.suspicion.confirm(sender):
                heapq.heappush(self._suspect_heap, (m.suspicion.deadline, node_id))
                # Our own confirmation goes out at once: only first-hand copies count.
                self._broadcast(node_id, SuspectItem(node_id, version, sender),
                                eager=sender == self.node_id)  # fmt: skip
            else:
                self.stats["duplicates"] += 1
            return
        if m.state is not MemberState.ALIVE:
            self.stats["duplicates"] += 1
            return
        self._start_suspicion(m, sender, now)

    def _start_suspicion(self, m: Member, sender: bytes, now: float) -> None:
        node_id = m.ann.node_id
        n = len(self._live) + 1
        lo, hi = self.config.suspicion_bounds(n)
        # memberlist: no confirmations can be expected when fewer than K others could send them
        k = self.config.suspicion_confirmations if n - 2 >= self.config.suspicion_confirmations \
            else 0  # fmt: skip
        m.state = MemberState.SUSPECT
        m.suspicion = Suspicion(sender, k, lo, hi, now)
        heapq.heappush(self._suspect_heap, (m.suspicion.deadline, node_id))
        if (
            sender != self.node_id
            and now - m.live_since >= self.config.first_probe_after
            and self._rng.random() < 2 * k / max(1, n - 2)
        ):
            # About 2K members check a rumoured suspect at once instead of at its turn: if it
            # crashed, the K confirmations that shorten the suspicion (Lifeguard IV-B) come
            # within a probe interval; if it is fine, they succeed and confirm nothing. Not a
            # member that only just became live: our tunnel to it may not be up yet (config
            # `first_probe_after`), and a failed check would confirm a false suspicion.
            self._urgent.append(node_id)
        self._events.append(PeerSuspected(node_id, m.version))
        self._broadcast(node_id, SuspectItem(node_id, m.version, sender))

    def _on_dead(
        self, node_id: bytes, version: int, sender: bytes, now: float,
        source: Address = ("", 0), via: bytes | None = None,
    ) -> None:  # fmt: skip
        """A dead claim made by `sender`, received from member `via` (None: our own timer)."""
        if node_id != self.node_id and not self._claim_allowed(via, source, now):
            return
        m = self._claimed_member("dead", node_id, version, sender, via, now, source)
        if m is None:
            return
        if m.state not in _LIVE:
            self.stats["duplicates"] += 1
            return
        if via is not None and sender != via:
            # Hearsay: `via` holds the node dead on someone's word. A suspicion, with its vote.
            self.stats["dead_claims_relayed"] += 1
            if m.state is MemberState.ALIVE:
                self._start_suspicion(m, sender, now)
            if m.suspicion is not None and m.suspicion.confirm(via):
                heapq.heappush(self._suspect_heap, (m.suspicion.deadline, node_id))
            return
        if via is not None:
            m.claims[via] = (now, True)
        heard_lately = now - self._checked_at.get(node_id, -math.inf) < self._probe_cycle()
        self._make_dead(node_id, m, MemberState.DEAD, now)
        self._events.append(PeerDead(m.ann))
        self._broadcast(node_id, DeadItem(node_id, m.version, sender))
        if (
            sender != self.node_id
            and heard_lately
            and m.ann.endpoints
            and self._rng.random() < 3 / max(1, len(self._live))
        ):
            # Someone declares dead a node we heard from within the cycle: typically a stale
            # death from the other side of a healed partition. Nobody gossips to a dead node,
            # so it would only learn of it at its next reconnect or push-pull; about three
            # members tell it at once on the underlay (it refutes, as to a reconnect).
            self.stats["death_notices"] += 1
            self._ask_dead(node_id, now, sync=False)

    def _correct(self, source: Address, ann: Announcement, now: float) -> None:
        """A member gossips a claim about an old version: send it the newer announcement.

        Dissemination is probabilistic: a node can hold a suspicion while every copy of the
        refutation missed it (about e^-10 per node per refutation at N=100, 10 % loss), and its
        timer would then declare a live node dead. Its own gossip of the stale claim reaches
        nodes that know better; they answer it directly. Rate-limited per (source, node) so a
        replayed flood cannot turn us into an amplifier."""
        if not source[0] or self._sender(source) is None:
            return
        if self._first_telling(source[0], ann.node_id, now):
            self.stats["corrections"] += 1
            self._send(source, wire.encode(wire.Gossip((AnnounceItem(ann.raw),))), Channel.OVERLAY)

    def _first_telling(self, destination: str, subject: bytes, now: float) -> bool:
        """True at most once per probe interval for a (destination, subject)."""
        key = (destination, subject)
        if self._told.get(key, -math.inf) > now:
            return False
        if len(self._told) > 4096:
            self._told = {k: t for k, t in self._told.items() if t > now}
        self._told[key] = now + self.config.probe_interval
        return True

    def _on_stream_announcements(
        self, raws: tuple[bytes, ...], source: Address, now: float, why: _Why
    ) -> None:
        """The announcements of one push-pull reply. An honest reply holds each node at most
        once and nothing refused but by a race; a hostile one may hold 16,384 (the decoder's
        bound) of garbage, bad signatures or versions of its sender's own. So identical copies
        are read once, and after `_STREAM_REFUSALS` refused ones (refused by the checks, or a
        second one of a node) the rest is dropped: one message costs the loop at most that
        many failed checks besides the news it brings (issue #22)."""
        refused = 0
        nodes: set[bytes] = set()
        unique = list(dict.fromkeys(raws))
        for i, raw in enumerate(unique):
            if refused >= _STREAM_REFUSALS:
                self._reject(Reject.MALFORMED, source,
                             f"push-pull: {len(unique) - i} announcements left unread after "
                             f"{refused} refused")  # fmt: skip
                return
            ann = self._verify(raw, source, now)
            if ann is None:
                refused += 1
                continue
            if ann.node_id in nodes:
                refused += 1
                self._reject(Reject.MALFORMED, source, f"push-pull: {ann.name!r} twice")
                continue
            # A stale one is no refusal here: after a partition a reply holds many, and counting
            # them dropped the news behind them (bench sim tombstone_merge_s 5.05 -> 8.45 s).
            nodes.add(ann.node_id)
            self._apply_announcement(ann, source, now, why)

    def _on_revocations(self, raws: tuple[bytes, ...], source: Address, now: float) -> None:
        """Revocations of one push-pull message: known ones cost nothing; checking stops after
        `_STREAM_REFUSALS` refused."""
        known = set(self._revoked.values())
        refused = 0
        for raw in dict.fromkeys(raws):
            if raw in known:
                continue
            if refused >= _STREAM_REFUSALS:
                self._reject(Reject.MALFORMED, source, "push-pull: revocations left unread")
                return
            before = len(self._revoked)
            self._on_revocation(raw, source, now)
            refused += len(self._revoked) == before

    def _on_revocation(self, raw: bytes, source: Address, now: float) -> None:
        try:
            rev = decode_revocation(raw)
            check_revocation(rev, self._trust)
        except RemoteProtocolError as exc:
            self._reject(exc.reason, source, exc.detail)
            return
        key = (rev.ca_key, rev.serial)
        if key in self._revoked:
            self.stats["duplicates"] += 1
            return
        self._revoked[key] = raw
        self._hash ^= _both_halves(_revocation_term(rev.ca_key, rev.serial))
        self._events.append(RevocationAdded(rev))
        self._broadcast(b"rev" + rev.ca_key + rev.serial.to_bytes(8, "big"), RevocationItem(raw))
        for node_id, m in list(self._members.items()):
            if (m.ann.cert.ca_key, m.ann.cert.serial) == key and m.state in _LIVE:
                self._make_dead(node_id, m, MemberState.DEAD, now)
                self._events.append(PeerDead(m.ann))

    def add_revocation(self, revocation: Revocation, now: float) -> None:
        """Operator input (meshctl): accept and spread a revocation."""
        self._on_revocation(revocation.raw, ("local", 0), now)
        self._flush_fresh()

    # --- probing (SWIM 3.1, Lifeguard IV-A) --------------------------------------------------

    def _scale(self) -> int:
        return self._health + 1

    def _pair_phase(self, node_id: bytes, now: float, cycle: float) -> float:
        """Initial evidence time of a new member: within the last cycle, at a phase both nodes
        of the pair derive alike from their ids. A pair exchanges when the first of the two
        finds its evidence a cycle old, so independent random phases would make that the
        earlier of two: pairs bunched early in the cycle, and a crash just after the bunch
        found late. A shared uniform phase spreads the pairs evenly over the cycle (and
        members probe a joiner at different moments, not all at once)."""
        lo, hi = (self.node_id, node_id) if self.node_id < node_id else (node_id, self.node_id)
        digest = hashlib.blake2b(lo + hi, digest_size=8, person=b"meshd-phase").digest()
        phase = int.from_bytes(digest, "big") / 2**64 * cycle
        return now - (now - phase) % cycle

    def _probe_cycle(self) -> float:
        """One check per live member: SWIM's round-robin round (section 4.3), with a member's
        share `cycle_interval` (a little longer than the probe tick, so that due members are
        probed at the next tick). Not scaled by local health: a node that slows its probes
        (Lifeguard) falls behind on due members and probes the oldest first, but keeps
        probing, and the successes bring its health back."""
        return max(1, len(self._live)) * self.config.cycle_interval

    def _next_probe_target(self, now: float) -> bytes | None:
        """The live member with the oldest evidence, if older than a cycle (module doc).

        Both nodes of a pair find their evidence due at the same moment, and the one whose
        tick comes first would start every exchange, leaving the other without RTT samples
        (status, gateway choice). So a node that started the last exchange files the member
        one probe interval later, and the pair takes turns; if the other stays silent (it
        crashed), the probe is only that interval late."""
        heap, checked_at = self._probe_heap, self._checked_at
        while self._recheck and self._recheck[0][0] <= now:
            _, node_id = heapq.heappop(self._recheck)
            if node_id in checked_at and node_id in self._relayed_only:
                checked_at[node_id] = now  # its heap entry is refiled when it surfaces
                self._probed_last.add(node_id)
                return node_id
        while self._urgent:
            node_id = self._urgent.popleft()
            m = self._members.get(node_id)
            if m is not None and m.state is MemberState.SUSPECT and node_id in checked_at:
                checked_at[node_id] = now  # its heap entry is refiled when it surfaces
                self._probed_last.add(node_id)
                return node_id
        cycle = self._probe_cycle()
        while heap:
            filed, node_id = heap[0]
            current = checked_at.get(node_id)
            if current is None:  # no longer live
                heapq.heappop(heap)
                self._in_probe_heap.discard(node_id)
                continue
            if node_id in self._probed_last:
                current += self.config.probe_interval
            if current > filed:  # heard from since it was filed
                heapq.heapreplace(heap, (current, node_id))
            elif now - filed < cycle:
                return None
            else:
                checked_at[node_id] = now
                self._probed_last.add(node_id)
                heapq.heapreplace(heap, (now + self.config.probe_interval, node_id))
                return node_id
        return None

    def _probe_tick(self, now: float) -> None:
        if self._probe is not None:
            self._finish_probe(now)
        scale = self._scale()
        self._next_probe = now + self.config.probe_interval * scale
        if self._left:
            self._next_probe = math.inf
            return
        target = self._next_probe_target(now)
        if target is None:
            return
        m = self._members[target]
        seq = self._next_seq()
        first: tuple[Item, ...] = ()
        if m.state is MemberState.SUSPECT:
            # Lifeguard IV-C ("buddy system"): tell a suspected node directly, so it can
            # refute before the timeout even if gossip missed it.
            first = (SuspectItem(target, m.version, self.node_id),)
        self._send_piggybacked(m.address, lambda it: wire.Ping(seq, it), first)
        self._probe = _Probe(target, seq, now + self.config.probe_timeout * scale, now)
        self._use_ipv4(m)

    def _use_ipv4(self, m: Member) -> None:
        """Move a member's membership traffic to its IPv4 overlay address when we both have one.

        Why: WireGuard pads what it encrypts to 16 bytes, and inner IPv6+UDP headers (48 bytes)
        put an 11-byte ping or ack at 64 bytes of plaintext where IPv4+UDP (28) put it at 48:
        108 instead of 124 bytes per probe on the wire (D21). Either address
        is the member's own (AllowedIPs come from its certificate), so WireGuard authenticates
        both. meshd before D21 refuses unsigned messages from IPv4 overlay addresses, so the
        switch is learnt, never assumed: along with its first probes of a member we send it an
        empty gossip message from our IPv4 address (`_IPV4_HELLOS` at most; an older meshd
        ignores it silently), and a member that receives anything from a member's IPv4 address
        sends to that address from then on (`_dispatch`). A direct probe over IPv4 that gets no
        answer is sent again over IPv6 beside the indirect probes, and the member stays on IPv6
        until it speaks IPv4 again (`_send_indirect`): a node that restarts with an older build
        is not suspected for it."""
        if not self._ipv4 or m.hellos >= _IPV4_HELLOS or ":" not in m.overlay:
            return
        address = ipv4_overlay(m.ann.cert.addresses)
        if address is not None:
            m.hellos += 1
            self._send((address, m.ann.meshd_port), _IPV4_HELLO, Channel.OVERLAY)

    def _send_indirect(self, p: _Probe) -> None:
        p.indirect_sent = True
        m = self._members.get(p.target)
        if m is None or m.state not in _LIVE:
            return
        if ":" not in m.overlay:
            # No answer over IPv4: perhaps it restarted with a meshd that refuses IPv4 (D21).
            # Back to IPv6 until it speaks IPv4 again, and the same ping there now, so that
            # costs no suspicion.
            m.overlay = m.ann.cert.addresses[0]
            self._send_piggybacked(m.address, lambda it: wire.Ping(p.seq, it))
        relays = self._random_live(self.config.indirect_checks, {p.target})
        p.nacks_expected = len(relays)
        for node_id in relays:
            self._send_piggybacked(
                self._members[node_id].address, lambda it: wire.PingReq(p.seq, p.target, it)
            )

    def _finish_probe(self, now: float) -> None:
        p, self._probe = self._probe, None
        assert p is not None
        if p.acked:
            self._health = max(0, self._health - 1)
            self._pair_result(p.target, p.direct, p.sent_at, now)
            return
        m = self._members.get(p.target)
        if m is None or m.state not in _LIVE or m.live_since > p.sent_at:
            # Gone, or declared dead and re-admitted while the probe ran: its silence was the
            # dead record's (a partition, a restart), and the new one is probed on its own
            # schedule (`first_probe_after`: its tunnel may not be up yet).
            return
        # Lifeguard IV-A: missing nacks mean our own network is suspect, not the target.
        delta = p.nacks_expected - p.nacks if p.nacks_expected else 1
        self._health = max(0, min(self._health + delta, self.config.awareness_max - 1))
        self.stats["probe_failures"] += 1
        self._on_suspect(p.target, m.version, self.node_id, now)
        # Lifeguard IV-C buddy system, at once: tell the suspect itself so it can refute even
        # when every gossiped copy misses it (the probe round may not reach it before timeout).
        claim = SuspectItem(p.target, m.version, self.node_id)
        self._send(m.address, wire.encode(wire.Gossip((claim,))), Channel.OVERLAY)

    def _on_ack(self, seq: int, now: float, sender: bytes) -> None:
        p = self._probe
        if p is not None and p.seq == seq:
            p.acked = True
            p.direct = p.direct or sender == p.target
            if not p.indirect_sent:
                self.answered = p.target
                # Round trip of a direct probe through the tunnel, smoothed as TCP's SRTT
                # (RFC 6298 section 2, alpha = 1/8). Indirect acks measure a detour: skipped.
                sample = now - p.sent_at
                old = self._rtt.get(p.target)
                self._rtt[p.target] = sample if old is None else old + (sample - old) / 8
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send_piggybacked(relay.requester, lambda it: wire.Ack(relay.requester_seq, it))

    # --- per-pair data-plane health ------------------------------------------------------------

    def degraded(self) -> dict[bytes, float]:
        """Live members whose pair with us is degraded (direct probes fail, others reach them)
        -> since when (the first failed direct probe of the series)."""
        return dict(self._degraded)

    def _pair_result(self, node_id: bytes, direct: bool, sent_at: float, now: float) -> None:
        """An answered probe: directly (the pair works) or only through relays (SWIM calls the
        member alive, rightly; but this pair cannot talk: a cut between the two, a stale
        endpoint, a NAT). `degraded_after` such probes in a row make the pair degraded; they
        are made `probe_interval` apart (`_recheck`) instead of a probe cycle apart, so a cut
        is known within about the failure detection time."""
        cfg = self.config
        if direct:
            self._answered_directly[node_id] = now
            self._relayed_only.pop(node_id, None)
            if self._degraded.pop(node_id, None) is not None:
                self._events.append(PairRestored(node_id))
            return
        count, since = self._relayed_only.get(node_id, (0, sent_at))
        count += 1
        self._relayed_only[node_id] = (count, since)
        self.stats["probes_relayed_only"] += 1
        if count >= cfg.degraded_after and node_id not in self._degraded:
            self._degraded[node_id] = since
            self.stats["pairs_degraded"] += 1
            self._events.append(PairDegraded(node_id, since))
        delay = cfg.degraded_recheck if node_id in self._degraded else cfg.probe_interval
        heapq.heappush(self._recheck, (now + delay, node_id))

    def ask_to_initiate(self, node_id: bytes, now: float) -> bool:
        """Ask a degraded member, through another live member, to start a WireGuard handshake
        towards us (repair step, meshd.core.pairrepair). False when no other member is live
        to carry it or the member is not live."""
        if node_id not in self._live_pos:
            return False
        relays = self._random_live(1, {node_id})
        if not relays:
            return False
        self.stats["initiate_requests"] += 1
        relay = self._members[relays[0]]
        self._send(relay.address, wire.encode(wire.Initiate(node_id, True)), Channel.OVERLAY)
        return True

    def _on_initiate(self, msg: wire.Initiate, sender: bytes, now: float) -> None:
        """As the relay (`forward`): pass the request on, naming the sender WireGuard
        authenticated, at most once per probe interval per pair; so a member can only ever
        get others to handshake with itself. As the target: ask the daemon to initiate, at
        most once per `initiate_min_interval` per member."""
        if msg.forward:
            target = self._members.get(msg.subject)
            if target is None or target.state not in _LIVE or msg.subject == sender:
                self.stats["initiate_dropped"] += 1
                return
            if self._first_telling(target.address[0], sender, now):
                self._send(target.address, wire.encode(wire.Initiate(sender, False)),
                           Channel.OVERLAY)  # fmt: skip
            return
        if msg.subject not in self._live_pos or msg.subject == self.node_id:
            self.stats["initiate_dropped"] += 1
            return
        # The request is unsigned and names a pair the relay is not in: honour it only when our
        # side shows the pair broken too (no direct answer from it for two probe cycles, the
        # longest a healthy pair goes without one, since the pair takes turns). So a member
        # cannot make us restart a pair that works (a re-created peer drops its session).
        answered = self._answered_directly.get(msg.subject, -math.inf)
        if now - answered < 2 * self._probe_cycle() + self.config.probe_interval:
            self.stats["initiate_dropped"] += 1
            return
        if self._initiate_after.get(msg.subject, -math.inf) > now:
            self.stats["initiate_dropped"] += 1
            return
        if len(self._initiate_after) > 4096:
            self._initiate_after = {k: t for k, t in self._initiate_after.items() if t > now}
        self._initiate_after[msg.subject] = now + self.config.initiate_min_interval
        self._events.append(HandshakeWanted(msg.subject))

    def _forget_pair(self, node_id: bytes) -> None:
        """A member that is no longer live has no pair health (dead is not degraded)."""
        self._answered_directly.pop(node_id, None)
        self._relayed_only.pop(node_id, None)
        self._degraded.pop(node_id, None)

    def _on_ping_req(self, msg: wire.PingReq, source: Address, now: float) -> None:
        m = self._members.get(msg.target)
        if m is None or m.state not in _LIVE:
            self._send(source, wire.encode(wire.Nack(msg.seq)), Channel.OVERLAY)
            return
        seq = self._next_seq()
        timeout = self.config.probe_timeout * self._scale()
        # Nack at 80 % of the requester's probe timeout (memberlist), so it arrives in time.
        self._relays[seq] = _Relay(source, msg.seq, now + 0.8 * timeout,
                                   now + self.config.probe_interval * self._scale())  # fmt: skip
        self._send_piggybacked(m.address, lambda it: wire.Ping(seq, it))

    def _relay_timers(self, now: float) -> None:
        for seq, relay in list(self._relays.items()):
            if not relay.nacked and now >= relay.nack_at:
                relay.nacked = True
                self._send(relay.requester, wire.encode(wire.Nack(relay.requester_seq)),
                           Channel.OVERLAY)  # fmt: skip
            if now >= relay.expires:
                del self._relays[seq]

    # --- join over the underlay ----------------------------------------------------------------

    def _send_join(
        self, destination: Address, now: float, target_state: MemberState, target_version: int,
        *, hops: int, retry: bool, attempts: int = 1, sync: bool = True, merge: bool = False,
    ) -> None:  # fmt: skip
        nonce = self._rng.randbytes(wire.NONCE_LEN)
        msg = wire.JoinRequest(nonce, self._me.raw, target_version, target_state)
        self._joins[nonce] = _PendingJoin(
            destination, now + self.config.join_timeout, attempts, hops, retry, sync, merge
        )
        self._send(destination, wire.encode(msg), Channel.UNDERLAY)

    def _on_join_request(
        self, msg: wire.JoinRequest, size: int, source: Address, now: float
    ) -> None:
        ann = self._verify(msg.announcement, source, now)
        if ann is None and self._last_reject is Reject.PSK_MISMATCH:
            # Refused, but answered: our announcement lets the joiner log why it cannot join
            # (it refuses us for the same reason) instead of retrying seeds in silence.
            self._reply_join(msg, size, source, None)
            return
        if ann is None or ann.node_id == self.node_id:
            return
        if (
            msg.target_state in (MemberState.SUSPECT, MemberState.DEAD)
            and msg.target_version == self._me.version
            and not self._left
            and now >= self._underlay_refute_after
        ):
            # The joiner declared us dead (it was on the other side of a partition). The claim
            # is unsigned, so it may only make us re-sign (at most once per probe interval).
            self._underlay_refute_after = now + self.config.probe_interval
            self._refute(self._me.version, now, msg.target_state is MemberState.DEAD)
        self._apply_announcement(ann, source, now, _Why.GOSSIP)
        self._reply_join(msg, size, source, self._members.get(ann.node_id))

    def _reply_join(
        self, msg: wire.JoinRequest, size: int, source: Address, m: Member | None
    ) -> None:
        reply = wire.JoinReply(
            msg.nonce,
            self._me.raw,
            m.version if m else 0,
            m.state if m else MemberState.UNKNOWN,
        )
        data = wire.encode(reply)
        if len(data) > size:  # RFC 9000 8.1: never answer with more than was received
            self.stats["join_reply_suppressed"] += 1
            return
        self._send(source, data, Channel.UNDERLAY)

    def _on_join_reply(self, msg: wire.JoinReply, source: Address, now: float) -> None:
        pending = self._joins.get(msg.nonce)
        if pending is None or pending.destination != source:
            raise RemoteProtocolError(Reject.UNKNOWN_SENDER, "join reply to no request of ours")
        del self._joins[msg.nonce]
        ann = self._verify(msg.announcement, source, now)
        if ann is None or ann.node_id == self.node_id:
            return
        self._apply_announcement(ann, source, now, _Why.GOSSIP)
        m = self._members[ann.node_id]
        self._lookout.answered(source, ann.node_id, False, 0, now)  # when it is a seed
        if (
            msg.requester_state in (MemberState.SUSPECT, MemberState.DEAD)
            and msg.requester_version == self._me.version
            and not self._left
        ):
            self._refute(msg.requester_version, now, msg.requester_state is MemberState.DEAD)
            if pending.hops < 2:
                self._send_join(source, now, m.state, m.version, hops=pending.hops + 1,
                                retry=False)  # fmt: skip
            return
        if m.state not in _LIVE:
            # It answered, but we hold it dead at this very version: ask it to refute.
            if pending.hops < 2 and m.state is MemberState.DEAD:
                self._send_join(source, now, m.state, m.version, hops=pending.hops + 1,
                                retry=False)  # fmt: skip
            return
        if not pending.sync:
            return
        if pending.merge:
            # Looked across and found another mesh: its members reach ours by gossip, which a
            # member whose WireGuard does not have the sender yet drops; compare states again
            # once that burst has passed, as after a join.
            self.stats["merges"] += 1
            self._next_push_pull = min(self._next_push_pull, now + self.config.join_check_after)
        if not self._joined:
            self._bootstrap_from.add(ann.node_id)
            # Joins gossiped to us before our WireGuard had their senders were lost: compare
            # states again once the burst has passed (config `join_check_after`).
            self._next_push_pull = min(self._next_push_pull, now + self.config.join_check_after)
        self._joined = True
        self._send_push_pull(m, full=True)

    # --- looking across: merging meshes that formed apart (lookout.py) -------------------------

    def _covers(self, node_id: bytes) -> bool:
        """True when `node_id` is in our mesh: ourselves or a live member."""
        return node_id == self.node_id or node_id in self._live_pos

    def _look_across(self, now: float) -> None:
        for nonce in [n for n, (_, expiry) in self._checks.items() if expiry <= now]:
            del self._checks[nonce]
        candidate: Candidate | None = self._lookout.next_due(now, self._covers)
        if candidate is None:
            return
        nonce = self._rng.randbytes(wire.NONCE_LEN)
        self._checks[nonce] = (candidate.address, now + self.config.join_timeout)
        self.stats["mesh_checks"] += 1
        self._send(candidate.address, wire.encode(wire.MeshCheck(nonce, self._mesh_tag)),
                   Channel.UNDERLAY)  # fmt: skip

    def _on_mesh_check(self, msg: wire.MeshCheck, size: int, source: Address) -> None:
        """A stranger (or a member) asks which mesh we are in. The answer is unsigned and no
        larger than the question: it changes nothing here and amplifies nothing."""
        if msg.mesh_tag != self._mesh_tag:
            raise RemoteProtocolError(Reject.WRONG_MESH, "mesh check for another mesh")
        if self._left:
            return
        reply = wire.MeshCheckReply(msg.nonce, self.node_id, self.state_hash(),
                                    len(self._live) + 1)  # fmt: skip
        data = wire.encode(reply)
        if len(data) > size:  # cannot happen with a padded check; kept as the rule's guard
            self.stats["join_reply_suppressed"] += 1
            return
        self._send(source, data, Channel.UNDERLAY)

    def _on_mesh_check_reply(self, msg: wire.MeshCheckReply, source: Address, now: float) -> None:
        pending = self._checks.get(msg.nonce)
        if pending is None or pending[0] != source:
            raise RemoteProtocolError(Reject.UNKNOWN_SENDER, "mesh check reply to no check of ours")
        del self._checks[msg.nonce]
        foreign = not self._covers(msg.node_id)
        self._lookout.answered(source, msg.node_id, foreign, msg.members, now)
        if not foreign or self._left:
            return
        # Another mesh (or a node we hold dead): join it. The join is signed both ways, and
        # its push-pull brings each side the other's members, which gossip spreads on.
        m = self._members.get(msg.node_id)
        self.stats["merge_joins"] += 1
        state, version = (m.state, m.version) if m is not None else (MemberState.UNKNOWN, 0)
        self._send_join(source, now, state, version, hops=0, retry=False, merge=True)

    def _dead(self) -> list[bytes]:
        return [n for n in self._tombstones if self._members[n].state is MemberState.DEAD]

    def _ask_dead(self, node_id: bytes, now: float, sync: bool) -> None:
        """A join request over the underlay to a member we hold dead, saying so: if it is alive
        it refutes and answers with its new announcement (and says whether it holds us dead)."""
        m = self._members[node_id]
        if m.ann.endpoints:
            dest = (m.ann.endpoints[0][0], m.ann.meshd_port)
            self._send_join(dest, now, MemberState.DEAD, m.version, hops=0, retry=False,
                            sync=sync)  # fmt: skip

    def _reconnect(self, now: float) -> None:
        """Retry one dead member over the underlay; retry the seeds if nobody is alive."""
        dead = self._dead()
        if dead:
            self._ask_dead(self._rng.choice(dead), now, sync=True)
        if not self._live and self._seeds:
            for seed in self._seeds:
                self._send_join(seed, now, MemberState.UNKNOWN, 0, hops=0, retry=False)

    def _reconnect_all(self, now: float) -> None:
        """We were declared dead, so we were cut off from whoever did that; the members we hold
        dead are most likely the other side of the same cut. Ask them (up to
        `_RECONNECT_ALL_MAX`, at most once per reconnect interval) at once rather than one per
        reconnect interval: each refutes, answers with its new announcement and, having been
        declared dead, asks its own dead in turn. A healed partition is whole again within two
        round trips instead of after every node's next few reconnects (30 real nodes: 8 s).
        No push-pull follows: the refutations spread by gossip."""
        if now < self._reconnect_all_after:
            return
        self._reconnect_all_after = now + self.config.reconnect_interval
        dead = self._dead()
        for node_id in self._rng.sample(dead, min(len(dead), _RECONNECT_ALL_MAX)):
            self.stats["reconnects_after_death"] += 1
            self._ask_dead(node_id, now, sync=False)

    # --- push-pull (anti-entropy) ----------------------------------------------------------------

    def _send_push_pull(self, m: Member, full: bool) -> None:
        msg = wire.PushPullRequest(
            self.state_hash(),
            self.digest() if full else None,
            tuple(self._revoked.values()) if full else (),
        )
        self._send(m.stream_address, wire.encode(msg), Channel.STREAM)

    def _merge_digest(
        self, digest: tuple[DigestEntry, ...], sender: bytes, now: float
    ) -> tuple[list[bytes], bool]:
        """Apply what a peer's digest says; return (announcements it lacks, whether we lack
        something it has)."""
        remote: dict[bytes, DigestEntry] = {}
        lack = False
        for e in digest:
            remote[e.node_id] = e
            if e.node_id == self.node_id:
                # Only a claim about our current version; a newer one of ours arrives signed
                # (as an announcement in the reply) and is refuted on that path.
                if (
                    not self._left
                    and e.version == self._me.version
                    and e.state in (MemberState.SUSPECT, MemberState.DEAD)
                ):
                    self._refute(e.version, now, e.state is MemberState.DEAD)
                continue
            m = self._members.get(e.node_id)
            if m is None or e.version > m.version:
                lack = lack or e.state is not MemberState.DEAD
            elif e.version == m.version and e.state is MemberState.DEAD and m.state in _LIVE:
                self._forward_death(m, sender, now)
        give: list[bytes] = []
        mine = remote.get(self.node_id)
        if mine is None or mine.version < self._me.version:
            give.append(self._me.raw)
        for node_id, m in self._members.items():
            if m.state is MemberState.DEAD:
                continue
            r = remote.get(node_id)
            if r is None or r.version < m.version:
                give.append(m.ann.raw)
        return give, lack

    def _forward_death(self, m: Member, sender: bytes, now: float) -> None:
        """A peer's digest holds dead a member we hold alive at the same version: the two halves
        of a healed partition. The member must refute, since only a higher version makes the
        peer's side believe it alive again. memberlist's mergeState makes us suspect it, so that
        it hears of the claim; after a heal every node then suspects its own half at once (N/2
        suspicions each; 30 real nodes took 8 s to see each other alive again). The member only
        needs the claim, so we forward it; a member that is really gone is our own failure
        detector's business."""
        node_id = m.ann.node_id
        if self._first_telling(m.address[0], node_id, now):
            self.stats["deaths_forwarded"] += 1
            claim = wire.Gossip((DeadItem(node_id, m.version, sender),))
            self._send(m.address, wire.encode(claim), Channel.OVERLAY)

    def _check_state(self, state_hash: bytes, sender: bytes) -> None:
        """A peer's state hash (`StateCheck`): on a mismatch, a full exchange started by us."""
        if not self._agrees(state_hash):
            self.stats["push_pull_mismatch"] += 1
            self._send_push_pull(self._members[sender], full=True)

    def _on_push_pull_request(self, msg: wire.PushPullRequest, sender: bytes, now: float) -> None:
        peer = self._members[sender]
        if msg.digest is None:
            self._check_state(msg.state_hash, sender)
            return
        self._on_revocations(msg.revocations, peer.address, now)
        if (peer.ann.cert.ca_key, peer.ann.cert.serial) in self._revoked:
            return  # the request carried the sender's own revocation
        give, lack = self._merge_digest(msg.digest, sender, now)
        if (
            not give
            and not lack
            and not self._agrees(msg.state_hash)
            and set(msg.digest) == set(self.digest())
        ):
            # Same nodes, versions and states, yet different hashes: some node showed us
            # different content under one version (D24). Send every live announcement; the
            # peer keeps the lower-ranked one of each pair (`_equivocation`).
            self.stats["push_pull_content_mismatch"] += 1
            give = [self._me.raw] + [self._members[n].ann.raw for n in self._live]
        reply = wire.PushPullReply(
            self.state_hash(),
            self.digest() if lack else None,
            tuple(give),
            tuple(self._revoked.values()),
        )
        self._send(peer.stream_address, wire.encode(reply), Channel.STREAM)

    def _on_push_pull_reply(self, msg: wire.PushPullReply, sender: bytes, now: float) -> None:
        why = _Why.BOOTSTRAP if sender in self._bootstrap_from else _Why.GOSSIP
        self._bootstrap_from.discard(sender)
        source = self._members[sender].address
        self._on_revocations(msg.revocations, source, now)
        self._on_stream_announcements(msg.announcements, source, now, why)
        if msg.digest is not None:
            give, _ = self._merge_digest(msg.digest, sender, now)
            if give:
                reply = wire.PushPullReply(self.state_hash(), None, tuple(give))
                self._send(self._members[sender].stream_address, wire.encode(reply),
                           Channel.STREAM)  # fmt: skip
