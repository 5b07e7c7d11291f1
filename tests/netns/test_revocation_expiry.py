"""Certificates that end: a revocation handed to one node removes the revoked node from every
WireGuard config, its traffic stops, the record survives a restart and the node cannot rejoin
with the same certificate; a node whose certificate expires leaves and everyone drops it."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from meshd.lab import Lab, wait_for
from meshd.meshlab import MeshdNode, MeshLab

pytestmark = pytest.mark.netns


async def wg_key(node: MeshdNode) -> bytes:
    status = await node.status()
    assert status is not None
    return base64.b64decode(status["node"]["wg_public_key"])


def refusals_of_revoked(node: MeshdNode) -> int:
    return sum(": revoked " in line for line in node.log_path.read_text().splitlines())


async def test_revocation_removes_the_node_everywhere_persists_and_blocks_rejoin(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}rv", hosts=3) as lab:
        mesh = MeshLab(lab, tmp_path)
        a, b, c = (mesh.add_node(i, seeds=[0] if i else []) for i in range(3))
        await mesh.start_mesh([a, b, c], within=30)
        c_key = await wg_key(c)
        assert await c.host.ping(a.overlay_v6, within=2)

        rev, _ = mesh.ca.revoke(mesh.ca.find(c.name), int(time.time()), "laptop stolen")
        await a.client.apply_revocation(rev.raw)  # handed to one node only

        async def gone_everywhere() -> bool:
            for n in (a, b):
                if c_key in await n.wireguard_peers():
                    return False
            return True

        await wait_for(gone_everywhere, 10, f"{c.name} removed from every WireGuard config")
        assert not await c.host.ping(a.overlay_v6, within=1)
        assert not await c.host.ping(b.overlay_v6, within=1)

        # The record persists: b restarts and c restarts with the same certificate; a and b
        # refuse c's announcements (counted as `revoked`) and never take it back.
        await mesh.stop(b)
        await mesh.stop(c)
        assert (b.directory / "state" / "revocations.msgpack").exists()
        refused_before = refusals_of_revoked(a)
        await mesh.start(b)
        await mesh.start(c)
        await mesh.wait_full_mesh([a, b], within=20)

        async def a_refused_c_again() -> bool:
            return refusals_of_revoked(a) > refused_before

        await wait_for(a_refused_c_again, 15, f"{c.name}'s rejoin to be refused")
        for n in (a, b):
            status = await n.status()
            assert status is not None
            assert c.name not in [p["name"] for p in status["peers"] if p["state"] == "alive"]
            assert c_key not in await n.wireguard_peers()


async def test_a_node_whose_certificate_expires_leaves_and_is_dropped(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}ex", hosts=2) as lab:
        mesh = MeshLab(lab, tmp_path)
        a = mesh.add_node(0, seeds=[])
        b = mesh.add_node(1, seeds=[0], valid_for_s=20)
        await mesh.start_mesh([a, b], within=15)
        b_key = await wg_key(b)

        async def b_left_and_dropped() -> bool:
            status = await a.status()
            states = {p["name"]: p["state"] for p in (status or {}).get("peers", [])}
            return states.get(b.name) == "left" and b_key not in await a.wireguard_peers()

        await wait_for(b_left_and_dropped, 30, f"{b.name} to leave as its certificate expires")
        assert "leaving the mesh (renew it" in b.log_path.read_text()
        status = await b.status()
        assert status is not None and status["connected"] is False
