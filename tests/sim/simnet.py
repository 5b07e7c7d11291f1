"""An in-process network of `MeshNode` cores with virtual time (a fake transport, for tests and
benchmarks). Nothing here sleeps: an event heap orders deliveries and timers.

Model: every node has an underlay IPv4 address and its overlay IPv6 address (from its
certificate), with `ipv4` (True, or a set of host indices) also an IPv4 overlay address; all
map to the node, and a message to an overlay address comes from the sender's overlay address of
the same family. A datagram takes a LAN-like delay (uniform in `delay`) and
is lost with probability `loss` (per link overrides allowed); streams are reliable and add a
transfer time at 1 Gbit/s. Partitions split nodes into groups that cannot reach each other.
Crashed nodes drop everything; a restart builds a new core with or without its old state.

Cost: one `AnnouncementVerifier` is shared (verification is deterministic), and large meshes
start pre-converged (every node is given every other node's announcement), so only the
scenario under test is simulated.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshd.core.announce import Announcement, AnnouncementVerifier, sign_announcement
from meshd.core.cert import Certificate, TrustAnchor, issue_certificate
from meshd.core.config import MembershipConfig
from meshd.core.identity import SigningKey, overlay_ipv6
from meshd.core.membership import Event, MeshNode, MessageRejected
from meshd.core.wire import Channel

MESH = "sim"
MESHD_PORT = 7946
WG_PORT = 51820
T0 = 1_800_000_000.0  # virtual Unix time at start (2027); certificates are valid around it
_DELIVER = 0
_TIMER = 1
_INJECT = 2


@dataclass
class SimHost:
    """One simulated machine: identity and addresses survive restarts, the core may not."""

    index: int
    identity: SigningKey
    cert: Certificate
    wg_key: bytes
    underlay: str
    overlay: str
    overlay_v4: str | None = None
    core: MeshNode | None = None
    up: bool = False
    group: int = 0
    timer_at: float = float("inf")
    generation: int = 0

    node_id: bytes = b""

    def __post_init__(self) -> None:
        self.node_id = self.identity.public  # derived once: key derivation is not free

    def overlay_source(self, destination: str) -> str:
        """The source address of our message to an overlay `destination`: of its family, as
        the kernel picks (a host without an IPv4 overlay address has none to send from)."""
        if ":" in destination or self.overlay_v4 is None:
            return self.overlay
        return self.overlay_v4


@dataclass
class Recorded:
    time: float
    observer: int
    event: Event


@dataclass
class SimStats:
    delivered: int = 0
    lost: int = 0
    sent_bytes: int = 0
    sent_msgs: int = 0
    by_channel: Counter[str] = field(default_factory=Counter)


class SimNet:
    """N hosts on a simulated LAN. `hosts[i].core` is the node's `MeshNode`."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 1,
        config: MembershipConfig | None = None,
        delay: tuple[float, float] = (0.0002, 0.001),
        loss: float = 0.0,
        record: Callable[[Event], bool] | None = None,
        ipv4: bool | frozenset[int] = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or MembershipConfig.lan()
        self.delay = delay
        self.loss = loss
        self.ipv4 = ipv4
        self.link_loss: dict[tuple[int, int], float] = {}
        self.now = T0
        self.stats = SimStats()
        self.rejected: Counter[str] = Counter()
        self.recorded: list[Recorded] = []
        self.event_count = 0
        """Events emitted by all cores so far (recorded or not)."""
        self.tap: list[tuple[int, bytes, tuple[str, int], Channel]] | None = None
        """When a list: every delivered message is appended (for replay attacks)."""
        self._record = record or (lambda e: not isinstance(e, MessageRejected))
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self.ca = SigningKey(self.rng.randbytes(32))
        self.trust = TrustAnchor(MESH, (self.ca.public,))
        self.verifier = AnnouncementVerifier(self.trust, cache_size=max(4096, 4 * n))
        self.hosts: list[SimHost] = []
        self._by_addr: dict[str, int] = {}
        for _ in range(n):
            self.add_host()

    # --- topology ------------------------------------------------------------------------------

    def add_host(self) -> SimHost:
        i = len(self.hosts)
        identity = SigningKey(self.rng.randbytes(32))
        overlay = str(overlay_ipv6(MESH, identity.public))
        with_v4 = self.ipv4 is True or (isinstance(self.ipv4, frozenset) and i in self.ipv4)
        overlay_v4 = f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}" if with_v4 else None
        cert = issue_certificate(
            self.ca, mesh=MESH, serial=i + 1, name=f"n{i}", identity_key=identity.public,
            addresses=[overlay, overlay_v4] if overlay_v4 else [overlay],
            not_before=int(T0 - 86400), not_after=int(T0 + 365 * 86400),
        )  # fmt: skip
        underlay = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        host = SimHost(i, identity, cert, self.rng.randbytes(32), underlay, overlay, overlay_v4)
        self.hosts.append(host)
        for address in (underlay, overlay, overlay_v4):
            if address is not None:
                self._by_addr[address] = i
        return host

    def underlay_address(self, i: int) -> tuple[str, int]:
        return (self.hosts[i].underlay, MESHD_PORT)

    def _new_core(self, host: SimHost, last_version: int = 0,
                  peers: Iterable[Announcement] = ()) -> MeshNode:  # fmt: skip
        return MeshNode(
            self.config, identity=host.identity, certificate=host.cert, trust=self.trust,
            wg_public_key=host.wg_key, endpoints=[(host.underlay, WG_PORT)],
            meshd_port=MESHD_PORT, rng=random.Random(self.rng.getrandbits(64)), now=self.now,
            last_version=last_version, verifier=self.verifier, peers=peers,
        )  # fmt: skip

    def start_converged(self, indices: Iterable[int] | None = None) -> None:
        """Start hosts as if they had already converged: each knows all the others ALIVE."""
        idx = list(range(len(self.hosts)) if indices is None else indices)
        now_ms = int(self.now * 1000)
        anns = [self._announcement(self.hosts[i], now_ms) for i in idx]
        for i in idx:
            h = self.hosts[i]
            h.core = self._new_core(h, last_version=now_ms - 1, peers=anns)
            h.up = True
            h.core.events()  # start-up PeerJoined events are not part of any scenario
            self._after(i)

    def _announcement(self, h: SimHost, version: int) -> Announcement:
        # Exactly what the core signs at start (Ed25519 signatures are deterministic).
        return sign_announcement(
            h.identity, h.cert, version=version, wg_public_key=h.wg_key,
            endpoints=[(h.underlay, WG_PORT)], meshd_port=MESHD_PORT, issued_at=version,
        )  # fmt: skip

    def start(self, i: int, seeds: list[int] | None = None, *, keep_state: bool = False) -> None:
        """Boot host i (again) and join through `seeds`. `keep_state`: restart with its
        persisted version and known peers; otherwise as a fresh install (lost state)."""
        h = self.hosts[i]
        last_version, peers = 0, []
        if keep_state and h.core is not None:
            last_version = h.core.announcement.version
            peers = h.core.live_members()
        h.core = self._new_core(h, last_version, peers)
        h.up = True
        h.generation += 1
        h.timer_at = float("inf")
        if seeds:
            h.core.join([self.underlay_address(s) for s in seeds], self.now)
        self._after(i)

    def crash(self, i: int) -> None:
        h = self.hosts[i]
        h.up = False
        h.generation += 1
        h.timer_at = float("inf")

    def partition(self, groups: list[Iterable[int]]) -> None:
        for g, members in enumerate(groups):
            for i in members:
                self.hosts[i].group = g

    def heal(self) -> None:
        for h in self.hosts:
            h.group = 0

    # --- engine --------------------------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def _after(self, i: int) -> None:
        """Collect what host i wants to send, its events, and its next timer."""
        h = self.hosts[i]
        core = h.core
        assert core is not None
        for tx in core.datagrams_to_send():
            self._transmit(h, tx.destination, tx.data, tx.channel)
        for event in core.events():
            self.event_count += 1
            if isinstance(event, MessageRejected):
                self.rejected[event.reason.value] += 1
            if self._record(event):
                self.recorded.append(Recorded(self.now, i, event))
        t = core.get_timer()
        if t != h.timer_at:
            h.timer_at = t
            if t != float("inf"):
                self._push(max(t, self.now), _TIMER, (i, h.generation, t))

    def _transmit(self, src: SimHost, dest: tuple[str, int], data: bytes, ch: Channel) -> None:
        st = self.stats
        st.sent_msgs += 1
        st.sent_bytes += len(data)
        st.by_channel[ch] += 1  # a StrEnum: counts under its string value
        j = self._by_addr.get(dest[0])
        if j is None:
            st.lost += 1
            return
        lo, hi = self.delay
        d = lo + (hi - lo) * self.rng.random()
        if ch is Channel.STREAM:
            d += 0.001 + len(data) * 8 / 1e9
        else:
            loss = self.link_loss.get((src.index, j), self.loss)
            if loss and self.rng.random() < loss:
                st.lost += 1
                return
        if ch is Channel.UNDERLAY:
            source = (src.underlay, MESHD_PORT)
        else:
            port = 40000 + self.rng.randrange(20000) if ch is Channel.STREAM else MESHD_PORT
            source = (src.overlay_source(dest[0]), port)
        self._push(self.now + d, _DELIVER, (src.index, j, data, source, ch))

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance virtual time to t (absolute); with `stop`, return True as soon as it holds."""
        heap = self._heap
        hosts = self.hosts
        seen = -1
        while heap and heap[0][0] <= t:
            when, _, kind, payload = heapq.heappop(heap)
            self.now = when
            if kind == _TIMER:
                i, generation, at = payload  # type: ignore[misc]
                h = hosts[i]
                if not h.up or generation != h.generation or at != h.timer_at:
                    continue
                h.timer_at = float("inf")
                h.core.handle_timer(when)  # type: ignore[union-attr]
                self._after(i)
            elif kind == _INJECT:
                j, data, source, ch = payload  # type: ignore[misc]
                if hosts[j].up:
                    hosts[j].core.receive(data, source, when, ch)  # type: ignore[union-attr]
                    self._after(j)
            else:
                si, j, data, source, ch = payload  # type: ignore[misc]
                h = hosts[j]
                if not h.up or not hosts[si].up or hosts[si].group != h.group:
                    self.stats.lost += 1
                    continue
                self.stats.delivered += 1
                if self.tap is not None:
                    self.tap.append((j, data, source, ch))
                h.core.receive(data, source, when, ch)  # type: ignore[union-attr]
                self._after(j)
            # State changes come with events, so the (often O(N)) condition is only re-checked
            # after some core emitted an event.
            if stop is not None and self.event_count != seen:
                seen = self.event_count
                if stop():
                    return True
        self.now = max(self.now, t)
        return stop() if stop is not None else False

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self.now + seconds, stop)

    def inject(self, j: int, data: bytes, source: tuple[str, int], ch: Channel,
               at: float | None = None) -> None:  # fmt: skip
        """Deliver raw bytes to host j at time `at` (default now): an attacker, or a replay."""
        self._push(self.now if at is None else at, _INJECT, (j, data, source, ch))

    def snapshot(self) -> dict[int, tuple[object, ...]]:
        """Every up host's complete view: own version and (node, version, state) of all records."""
        out: dict[int, tuple[object, ...]] = {}
        for h in self.hosts:
            if h.up and h.core is not None:
                view = sorted((m.ann.node_id, m.version, m.state) for m in h.core.members())
                out[h.index] = (h.core.announcement.version, *view)
        return out

    # --- observations --------------------------------------------------------------------------

    def up_indices(self) -> list[int]:
        return [h.index for h in self.hosts if h.up]

    def views(self, node_id: bytes) -> dict[int, object]:
        """How every up host sees `node_id`: its member state (None if unknown)."""
        out: dict[int, object] = {}
        for h in self.hosts:
            if h.up and h.core is not None and h.node_id != node_id:
                m = h.core.member(node_id)
                out[h.index] = None if m is None else m.state
        return out

    def first_time(self, match: Callable[[Recorded], bool]) -> dict[int, float]:
        """Per observer, the time of the first recorded event matching."""
        out: dict[int, float] = {}
        for r in self.recorded:
            if r.observer not in out and match(r):
                out[r.observer] = r.time
        return out
