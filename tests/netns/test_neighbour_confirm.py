"""An answered probe confirms the underlay neighbour towards the peer (D21), so the kernel does
not re-check the peer's link-layer address with ARP or neighbour discovery while it answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshd.lab import Lab, LabHost, wait_for
from meshd.meshlab import MeshLab

pytestmark = pytest.mark.netns


async def confirmed_ages(host: LabHost, peer: LabHost) -> dict[str, int]:
    """Whole seconds since the kernel last confirmed its neighbour entry for each of `peer`'s
    underlay addresses (`ip -s neigh`: the used/confirmed/updated ages)."""
    r = await host.run("ip", "-s", "-j", "neigh", "show", "dev", "eth0")
    addresses = {str(peer.underlay_v4.ip), str(peer.underlay_v6.ip)}
    return {
        entry["dst"]: int(entry["confirmed"])
        for entry in json.loads(r.stdout or "[]")
        if entry.get("dst") in addresses and "confirmed" in entry
    }


async def test_answered_probes_keep_confirming_the_neighbour(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}nc", hosts=2) as lab:
        mesh = MeshLab(lab, tmp_path, membership="local")
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(2)]
        await mesh.start_mesh(nodes, within=30)
        a, b = lab.hosts[0], lab.hosts[1]
        # Resolved once when the mesh formed, the entry WireGuard uses then stays REACHABLE
        # for 15-45 s without an ARP exchange, and its confirmed age grows by a second a
        # second unless something confirms it. Answered probes (local preset: several a
        # second) keep it at 0-1 s: eight samples in a row over 3.5 s.
        in_a_row: dict[str, int] = {}

        async def kept_confirmed() -> bool:
            for dst, age in (await confirmed_ages(a, b)).items():
                in_a_row[dst] = in_a_row.get(dst, 0) + 1 if age <= 1 else 0
            return max(in_a_row.values(), default=0) >= 8

        await wait_for(kept_confirmed, 20, "the neighbour to stay confirmed for 3.5 s", 0.5)
