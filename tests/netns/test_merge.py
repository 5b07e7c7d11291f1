"""One mesh, always: meshes of one CA that formed apart merge by themselves (issue 21,
meshd/core/lookout.py). Real meshd and wireguard-go in namespaces, a real DNS server."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.lab import Lab, wait_for
from meshd.labfaults import LabDns, SwitchFaults
from meshd.meshlab import MESHD_PORT, MeshdNode, MeshLab

pytestmark = pytest.mark.netns


def shared_seed_name(dns: LabDns, mesh: MeshLab, nodes: list[MeshdNode]) -> None:
    """The same configuration on every node: one seed name (the lab DNS) and nothing else."""
    for node in nodes:
        dns.use(node.host)
        node.seeds = [f"seed.lab:{MESHD_PORT}"]
        mesh.write_config(node)


async def test_twelve_nodes_started_at_once_with_one_seed_name_of_two_nodes_form_one_mesh(
    run_prefix: str, tmp_path: Path
) -> None:
    # The case: two of the twelve are the seed name's addresses and list it too.
    # Before, each seed resolved the name to itself and two meshes of six formed for good.
    n = 12
    async with Lab(f"{run_prefix[:6]}m1", hosts=n) as lab:
        dns = await LabDns.start(lab)
        await dns.set("seed.lab", [str(lab.hosts[i].underlay_v6.ip) for i in (0, 6)])
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[]) for i in range(n)]
        shared_seed_name(dns, mesh, nodes)
        for node in nodes:  # all at once, as configuration management starts them
            await mesh.start(node)
        await mesh.wait_full_mesh(nodes, within=90)
        await mesh.wait_every_pair_pings(nodes, within=30)
        for node in (nodes[0], nodes[6]):
            status = await node.status()
            assert status is not None and status["split"] == []
            assert f"seed.lab:{MESHD_PORT}" in node.seeds


async def test_two_meshes_formed_apart_merge_when_the_path_between_them_opens(
    run_prefix: str, tmp_path: Path
) -> None:
    n = 8
    async with Lab(f"{run_prefix[:6]}m2", hosts=n) as lab:
        dns = await LabDns.start(lab)
        await dns.set("seed.lab", [str(lab.hosts[i].underlay_v6.ip) for i in (0, n // 2)])
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[]) for i in range(n)]
        shared_seed_name(dns, mesh, nodes)
        a, b = nodes[: n // 2], nodes[n // 2 :]
        faults = SwitchFaults(lab)
        cut = await faults.partition([x.host for x in a], [x.host for x in b])
        for node in nodes:
            await mesh.start(node)
        await mesh.wait_full_mesh(a, within=60)
        await mesh.wait_full_mesh(b, within=60)
        for node in nodes:  # two meshes, each whole
            status = await node.status()
            assert status is not None
            own_half = {x.name for x in (a if node in a else b)} - {node.name}
            assert {p["name"] for p in status["peers"]} == own_half
            assert status["connected"] is True

        # Held until the join requests of the start-up (retried 5 times, 1 s apart) are over
        # and only looking across can bring the halves together: each node has checked the
        # seed it cannot reach a few times (1, 2, 4 s apart, jittered).
        async def looked_across() -> bool:
            return all([await x.metric("meshd_mesh_checks_total") >= 4 for x in nodes])

        await wait_for(looked_across, 30, "every node to look for the other seed 4 times", 0.5)
        await faults.restore(cut)  # no restart, no operator action
        await mesh.wait_full_mesh(nodes, within=40)
        await mesh.wait_every_pair_pings(nodes, within=30)
        merges = [await node.metric("meshd_mesh_merges_total") for node in nodes]
        assert sum(merges) >= 1


async def test_a_partition_longer_than_the_tombstones_heals_into_one_mesh(
    run_prefix: str, tmp_path: Path
) -> None:
    # The `local` preset's tombstones live 15 s: after that each half has forgotten the other
    # (only the seed address and the old contacts are left to look across to).
    n = 6
    async with Lab(f"{run_prefix[:6]}m3", hosts=n) as lab:
        mesh = MeshLab(lab, tmp_path, membership="local")
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(n)]
        await mesh.start_mesh(nodes, within=40)
        a, b = nodes[: n // 2], nodes[n // 2 :]
        faults = SwitchFaults(lab)
        cut = await faults.partition([x.host for x in a], [x.host for x in b])

        async def forgotten() -> bool:
            for node in nodes:
                status = await node.status()
                if status is None:
                    return False
                own_half = {x.name for x in (a if node in a else b)} - {node.name}
                if {p["name"] for p in status["peers"]} != own_half:
                    return False
            return True

        await wait_for(forgotten, 60, "each half to forget the other (tombstones reaped)", 0.5)
        await faults.restore(cut)
        await mesh.wait_full_mesh(nodes, within=40)
        await mesh.wait_every_pair_pings(nodes, within=30)
