"""Every alive pair is a working pair (issue 27): a pair whose direct path is cut while both
still reach a third node is shown degraded on both sides, and works again once the cut is
lifted. Real meshd and wireguard-go; the cut is nftables on the lab's bridge between two
hosts only."""

from __future__ import annotations

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
