"""Every node of a mesh restarts at once, with its seed gone: the mesh re-forms from the peers
each node persisted. Once after a graceful stop of all (each saw the others leave), once after
all were killed (-9) once every node had persisted its peers."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from meshd.adapters.store import StateStore
from meshd.lab import Lab, wait_for
from meshd.meshlab import MeshLab

pytestmark = pytest.mark.netns

N = 4


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "killed"])
async def test_whole_mesh_restarts_without_a_seed(
    run_prefix: str, tmp_path: Path, how: signal.Signals
) -> None:
    async with Lab(f"{run_prefix[:6]}r{'g' if how == signal.SIGTERM else 'k'}", hosts=N) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(N)]
        await mesh.start_mesh(nodes, within=40)

        async def all_persisted() -> bool:  # membership changes are written about a second later
            return all(len(StateStore(n.directory / "state").peers()) == N - 1 for n in nodes)

        await wait_for(all_persisted, 10, "every node to persist its peers")
        codes = await asyncio.gather(*(mesh.stop(n, how) for n in nodes))
        assert codes == ([0] * N if how == signal.SIGTERM else [-9] * N)

        # The seed's address now leads nowhere: node0 comes back only as a member, and every
        # node's configured seed points at an address no host has.
        for n in nodes:
            n.seeds = [f"[{lab.hosts[0].underlay_v6.ip.exploded[:-1]}f]:51821"]
            mesh.write_config(n)
        await asyncio.gather(*(mesh.start(n) for n in nodes))
        await mesh.wait_full_mesh(nodes, within=40)
        for n in nodes:
            status = await n.status()
            assert status is not None and status["connected"] is True
