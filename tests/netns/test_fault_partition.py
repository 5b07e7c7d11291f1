"""A 50/50 partition held longer than the failure timeout: each half declares the other dead
and drops it from WireGuard; once the cut is removed the mesh is whole again by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.lab import Lab, wait_for
from meshd.labfaults import SwitchFaults
from meshd.meshlab import MeshLab

pytestmark = pytest.mark.netns

N = 6
PAIRS_PING_WITHIN_S = 25
"""WireGuard's re-handshake of a session that sends but hears nothing back (KEEPALIVE_TIMEOUT +
REKEY_TIMEOUT = 15 s, plus jitter), with room: the known repair of the pair described below."""


async def test_partition_heals_without_operator_action(run_prefix: str, tmp_path: Path) -> None:
    async with Lab(f"{run_prefix[:6]}fp", hosts=N) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(N)]
        await mesh.start_mesh(nodes, within=40)
        full = {n.name: {m.name for m in nodes} - {n.name} for n in nodes}
        assert await mesh.wireguard_peer_names(nodes) == full

        a, b = nodes[: N // 2], nodes[N // 2 :]
        faults = SwitchFaults(lab)
        cut = await faults.partition([n.host for n in a], [n.host for n in b])
        halves = {n.name: {m.name for m in (a if n in a else b)} - {n.name} for n in nodes}

        async def split() -> bool:
            return await mesh.wireguard_peer_names(nodes) == halves

        await wait_for(split, 40, "each half to drop the other from WireGuard", 0.2)
        for n in nodes:
            status = await n.status()
            assert status is not None
            states = {p["name"]: p["state"] for p in status["peers"]}
            assert states == {m: ("alive" if m in halves[n.name] else "dead") for m in full[n.name]}

        await faults.restore(cut)
        await mesh.wait_full_mesh(nodes, within=40)
        assert await mesh.wireguard_peer_names(nodes) == full

        # Every pair passes traffic, but not always at the instant every node sees every other
        # with a handshake: a pair that re-added each other within milliseconds can be left
        # with one direction undecryptable until WireGuard re-handshakes (known, open:
        # docs/faults.md, "right after a heal").
        await mesh.wait_every_pair_pings(nodes, PAIRS_PING_WITHIN_S, interval=0.0)
