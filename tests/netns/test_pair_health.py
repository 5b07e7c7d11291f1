"""Every alive pair is a working pair (issue 27): a pair whose direct path is cut while both
still reach a third node is shown degraded on both sides, and works again once the cut is
lifted. Real meshd and wireguard-go; the cut is nftables on the lab's bridge between two
hosts only."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from pathlib import Path

import pytest

from meshd.lab import Lab, wait_for
from meshd.labfaults import SwitchFaults
from meshd.meshlab import MeshdNode, MeshLab

pytestmark = pytest.mark.netns


async def test_a_cut_pair_is_degraded_on_both_sides_and_repaired_after_the_cut(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}ph", hosts=4) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(4)]
        await mesh.start_mesh(nodes, within=40)
        assert await mesh.degraded_pairs(nodes) == []
        a, b = nodes[1], nodes[2]
        faults = SwitchFaults(lab)
        cut = await faults.cut([a.host], [b.host])

        async def both_degraded() -> bool:
            return sorted(await mesh.degraded_pairs(nodes)) == [
                f"{a.name}->{b.name}",
                f"{b.name}->{a.name}",
            ]

        # Within the failure detection time of the LAN preset: a probe cycle (4 members x
        # 0.75 s, twice for the pair's turns) until the first relayed-only probe, a tick more.
        await wait_for(both_degraded, 15, "both sides to report the cut pair degraded", 0.25)
        for node in (a, b):
            status = await node.status()
            assert status is not None
            peers = {p["name"]: p for p in status["peers"]}
            other = b if node is a else a
            assert peers[other.name]["state"] == "alive"  # SWIM is right: it is alive
            assert peers[other.name]["repair"] is not None
            health = await node.client.health()
            assert "degraded" in health["reason"], health
        assert await mesh.unreachable_pairs([nodes[0], nodes[3]]) == []

        await faults.restore(cut)

        async def pings() -> bool:
            return await mesh.unreachable_pairs([a, b], within=1) == []

        await wait_for(pings, 10, "the pair to ping again after the cut", 0.2)
        await wait_for(
            lambda: _no_degraded(mesh, nodes), 15, "no pair reported degraded any more", 0.25
        )


async def _no_degraded(mesh: MeshLab, nodes: list[MeshdNode]) -> bool:
    return await mesh.degraded_pairs(nodes) == []


async def test_a_public_node_that_restarts_and_moves_at_once_is_reached_by_its_natted_peers(
    run_prefix: str, tmp_path: Path
) -> None:
    # Issue 27, case 1: nodes 3 and 4 sit behind NAT routers of their own (they cannot reach
    # each other: no hole punching yet, issue 24); node 1 restarts and its addresses change
    # half a second later. The NATed nodes cannot be reached first: they must find node 1's
    # new address themselves, which needs node 1 to announce it.
    async with Lab(f"{run_prefix[:6]}pn", hosts=5) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(5)]
        await mesh.start_mesh(nodes, within=40)
        for i in (3, 4):
            await lab.move_behind_nat(i)
        natted = {f"{nodes[3].name}->{nodes[4].name}", f"{nodes[4].name}->{nodes[3].name}"}

        async def pairs_ping() -> bool:
            return set(await mesh.unreachable_pairs(nodes, within=1)) <= natted

        await wait_for(pairs_ping, 30, "every pair but the two NATed nodes to ping", 0.5)
        mover = nodes[1]
        await mesh.stop(mover)
        # The move lands while meshd starts, after it read its addresses and before it watches
        # them: its wireguard-go (started in between) is held until the addresses changed.
        gate = tmp_path / "gate"
        gate.mkdir()
        held = gate / "wireguard-go"
        held.write_text(
            f"#!/bin/sh\ntouch {gate}/started\n"
            f"while [ ! -e {gate}/go ]; do sleep 0.02; done\n"
            f'exec {shutil.which("wireguard-go")} "$@"\n'
        )
        held.chmod(0o755)
        mover.extra["wireguard_go"] = str(held)
        mesh.write_config(mover)
        await mesh.start(mover)
        await wait_for(lambda: _exists(gate / "started"), 20, "meshd to start wireguard-go", 0.02)
        net6, net4 = lab.hosts[0].underlay_v6.network, lab.hosts[0].underlay_v4.network
        await mover.host.set_underlay(
            v6=ipaddress.IPv6Interface(f"{net6[0x1001]}/{net6.prefixlen}"),
            v4=ipaddress.IPv4Interface(f"{net4[100]}/{net4.prefixlen}"),
        )
        (gate / "go").touch()
        await mesh.wait_api(mover)
        others = [n for n in nodes if n is not mover]
        await wait_for(
            lambda: mesh.sees(mover, others), 40, f"{mover.name} to see every other alive", 0.25
        )
        await wait_for(pairs_ping, 10, "every pair but the two NATed nodes to ping again", 0.5)


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)
