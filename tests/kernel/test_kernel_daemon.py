"""Real meshd processes on kernel WireGuard (in the kernel VM, see conftest.py): three nodes, one
with `backend = "auto"`, form a full mesh and every pair pings; `keep_interface` leaves a
configured kernel interface behind across a restart."""

from __future__ import annotations

import base64
import ipaddress
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.lab import Lab, wait_for
from meshd.meshlab import MeshdNode, MeshLab

pytestmark = pytest.mark.kernel

FORM_WITHIN = 150.0
"""Three Python daemons starting on an emulated CPU take far longer than on the host (~60 s
here with the two cores shared; a bound, not a wait)."""


@pytest.fixture
async def kmesh(run_prefix: str, tmp_path: Path) -> AsyncIterator[tuple[MeshLab, list[MeshdNode]]]:
    async with Lab(f"{run_prefix[:6]}kd", hosts=3) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [
            mesh.add_node(0, seeds=[], backend="kernel"),
            mesh.add_node(1, seeds=[0], backend="kernel", keep_interface=True),
            mesh.add_node(2, seeds=[0], backend="auto"),
        ]
        await mesh.start_mesh(nodes, within=FORM_WITHIN)
        yield mesh, nodes


async def test_kernel_mesh_forms_every_pair_pings_and_keep_interface_survives_a_restart(
    kmesh: tuple[MeshLab, list[MeshdNode]],
) -> None:
    mesh, nodes = kmesh
    n0, n1, _ = nodes

    # `auto` chose the kernel, like the two nodes told to.
    backends = {}
    for n in nodes:
        status = await n.status()
        assert status is not None
        backends[n.name] = status["node"]["backend"]
    assert backends == {"node0": "kernel", "node1": "kernel", "node2": "kernel"}
    assert not any(n.host.wg_dir.joinpath("mesh0.sock").exists() for n in nodes)

    # Each kernel device holds exactly the other two, with AllowedIPs from their certificates.
    keys = {await n.wg_public_key(): n.name for n in nodes}
    for n in nodes:
        got = {keys[k]: tuple(sorted(v)) for k, v in (await n.wireguard_peers()).items()}
        assert got == {
            o.name: tuple(sorted(str(ipaddress.ip_network(a)) for a in o.cert.addresses))
            for o in nodes
            if o is not n
        }
    assert await mesh.unreachable_pairs(nodes) == []

    # keep_interface: a stopped meshd leaves its kernel interface configured (wireguard-go's
    # would end with its process). Its own graceful leave makes the others drop it, so traffic
    # stops until it is back; the restarted meshd adopts the interface as it is.
    before = await n1.wireguard_status()
    assert await mesh.stop(n1, signal.SIGTERM) == 0
    after = await n1.wireguard_status()
    assert after.device == before.device
    routes = await n1.host.run("ip", "-6", "route", "show", "dev", "mesh0", "proto", "109")
    assert n0.overlay_v6 in routes.stdout

    async def dropped() -> bool:
        return await n1.wg_public_key() not in await n0.wireguard_peers()

    await wait_for(dropped, 15, "node0 to drop the node that left")
    await mesh.start(n1)
    await mesh.wait_full_mesh(nodes, within=FORM_WITHIN)
    assert await mesh.unreachable_pairs(nodes) == []
    key = base64.b64encode(await n1.wg_public_key()).decode()
    assert key == (await n1.status() or {})["node"]["wg_public_key"]
