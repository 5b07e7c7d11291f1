"""Helpers for synchronous core tests: real identities and certificates (from the simulator's
host factory), cores driven by hand, and a zero-delay `deliver` that moves every pending
message between cores until the network is quiet."""

from __future__ import annotations

import random
from collections.abc import Callable

from meshd.core.config import MembershipConfig
from meshd.core.membership import Event, MeshNode, Transmit
from meshd.core.wire import Channel, decode
from tests.sim.simnet import MESHD_PORT, T0, WG_PORT, SimHost, SimNet

NOW = T0


class Lab:
    """n hosts with identities; cores are created on demand and exchange messages by hand."""

    def __init__(
        self,
        n: int,
        config: MembershipConfig | None = None,
        seed: int = 7,
        ipv4: bool | frozenset[int] = False,
    ) -> None:
        self.net = SimNet(n, seed=seed, ipv4=ipv4)
        self.config = config or MembershipConfig.local()
        self.cores: dict[int, MeshNode] = {}
        self.log: list[tuple[int, int | None, str]] = []
        """(sender, receiver, message type) of everything `deliver` moved (or dropped)."""

    def host(self, i: int) -> SimHost:
        return self.net.hosts[i]

    def core(self, i: int, now: float = NOW, wg: bytes | None = None, **kw: object) -> MeshNode:
        h = self.host(i)
        node = MeshNode(
            self.config, identity=h.identity, certificate=h.cert, trust=self.net.trust,
            wg_public_key=wg or h.wg_key, endpoints=[(h.underlay, WG_PORT)], meshd_port=MESHD_PORT,
            rng=random.Random(i), now=now, **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        self.cores[i] = node
        return node

    def converged(self, n: int, now: float = NOW) -> list[MeshNode]:
        """n cores that already know each other (as if restored from their stores)."""
        anns = [self.core(i, now).announcement for i in range(n)]
        cores = [self.core(i, now, peers=anns, last_version=anns[i].version - 1) for i in range(n)]
        for c in cores:
            c.events()
        return cores

    def index_of(self, host: str) -> int | None:
        for i, h in enumerate(self.net.hosts):
            if host in (h.underlay, h.overlay, h.overlay_v4) and i in self.cores:
                return i
        return None

    def source_of(self, i: int, channel: Channel, destination: str = "::") -> tuple[str, int]:
        """Host i's address as seen by the receiver of its message to `destination`."""
        h = self.host(i)
        if channel is Channel.UNDERLAY:
            return (h.underlay, MESHD_PORT)
        return (h.overlay_source(destination), MESHD_PORT)

    def deliver(
        self,
        now: float,
        drop: set[int] | None = None,
        rounds: int = 50,
        lost: Callable[[str], bool] | None = None,
        cut: set[tuple[int, int]] | None = None,
    ) -> list[Transmit]:
        """Deliver everything pending (and what it triggers) at time `now`; messages to or from
        hosts in `drop`, and to addresses for which `lost` holds, are lost. Returns every
        transmit seen, in order (`log` gets sender, receiver and type of each). `cut`: pairs of
        hosts that cannot reach each other (both ways) while others reach both."""
        seen: list[Transmit] = []
        for _ in range(rounds):
            batch = [(i, tx) for i, c in self.cores.items() for tx in c.datagrams_to_send()]
            if not batch:
                return seen
            for i, tx in batch:
                seen.append(tx)
                j = self.index_of(tx.destination[0])
                self.log.append((i, j, type(decode(tx.data, tx.channel)).__name__))
                if j is None or (drop and (i in drop or j in drop)):
                    continue
                if lost is not None and lost(tx.destination[0]):
                    continue
                if cut and ((i, j) in cut or (j, i) in cut):
                    continue
                source = self.source_of(i, tx.channel, tx.destination[0])
                self.cores[j].receive(tx.data, source, now, tx.channel)
        raise AssertionError("network did not go quiet")

    def events(self, i: int) -> list[Event]:
        return self.cores[i].events()
