"""Shared pieces of the netns tests: root check, a lab per test, and full-mesh desired states."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshd.adapters.netlink import NetlinkEvent, NetlinkMonitor
from meshd.adapters.reconciler import Reconciler
from meshd.core.identity import WireGuardKey
from meshd.core.wgplan import MeshInterface, WgDevice, WgPeer
from meshd.lab import Lab, LabHost

PORT = 51820
_lab_counter = itertools.count()
LOG_TAIL_LINES = 60
"""Lines of each meshd log shown under a failed test: CI keeps nothing else of a run."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/netns/" in str(item.path) and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="netns tests need root"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed netns test shows the end of every meshd log it wrote (in its tmp_path), since
    a clean-clone CI run keeps only what pytest prints: the daemons' side of a flaky failure
    is otherwise lost."""
    report = yield
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and report.when in ("setup", "call") and isinstance(tmp, Path):
        for log in sorted(tmp.glob("**/meshd.log")):
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"{log.relative_to(tmp)} (last {len(lines)} lines)",
                                    "\n".join(lines)))  # fmt: skip
    return report


@dataclass
class Node:
    """One lab host running the data plane the way the daemon will."""

    host: LabHost
    key: WireGuardKey
    reconciler: Reconciler

    @property
    def v6(self) -> ipaddress.IPv6Interface:
        return ipaddress.IPv6Interface(f"fd77::{self.host.index + 1:x}/128")

    @property
    def v4(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"10.77.0.{self.host.index + 1}/32")

    def as_peer(self, family: int) -> WgPeer:
        underlay = self.host.underlay_v6 if family == 6 else self.host.underlay_v4
        return WgPeer(
            self.key.public,
            (str(underlay.ip), PORT),
            (self.v6.network, self.v4.network),
        )


def full_mesh(nodes: list[Node], me: Node, family: int = 6) -> MeshInterface:
    peers = tuple(n.as_peer(family) for n in nodes if n is not me)
    device = WgDevice(me.key.private, PORT, peers)
    return MeshInterface.with_peer_routes("mesh0", device, (me.v6, me.v4))


@pytest.fixture
async def lab3(run_prefix: str) -> AsyncIterator[Lab]:
    # One lab per test; a per-run counter keeps names distinct even if a cleanup failed.
    tag = f"{next(_lab_counter) % 100:02d}"
    async with Lab(f"{run_prefix[:6]}{tag}", hosts=3) as lab:
        yield lab


def make_nodes(lab: Lab, count: int) -> list[Node]:
    nodes = []
    for host in lab.hosts[:count]:
        reconciler = Reconciler(host.userspace_backend(), netns=host.netns)
        nodes.append(Node(host, WireGuardKey(os.urandom(32)), reconciler))
    return nodes


class Running:
    """The daemon's data-plane loop for each node: reconciler.run() plus a netlink monitor whose
    events trigger a pass. Cancels everything on exit."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.monitors = [NetlinkMonitor("mesh0", n.host.netns) for n in nodes]
        self.events: list[list[NetlinkEvent]] = [[] for _ in nodes]
        self._tasks: list[asyncio.Task[None]] = []

    async def _watch(self, i: int) -> None:
        async for event in self.monitors[i].events():
            self.events[i].append(event)
            self.nodes[i].reconciler.trigger()

    async def __aenter__(self) -> Running:
        for i, n in enumerate(self.nodes):
            self._tasks.append(asyncio.create_task(n.reconciler.run()))
            self._tasks.append(asyncio.create_task(self._watch(i)))
        # Start measuring only when both loops are idle: otherwise the reconciler's first pass
        # may repair drift before the monitor reports it.
        for m in self.monitors:
            await asyncio.wait_for(m.ready.wait(), 5)
        for n in self.nodes:
            await asyncio.wait_for(n.reconciler.converged.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for n in self.nodes:
            await n.reconciler.close()
