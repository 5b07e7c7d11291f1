"""The seed is known by DNS name only. Its underlay address changes and its record is updated:
the existing nodes follow its own re-announcement, and a new node still joins by the name."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from meshd.lab import Lab, wait_for
from meshd.labfaults import LabDns
from meshd.meshlab import MESHD_PORT, MeshLab

pytestmark = pytest.mark.netns


async def test_seed_moves_and_a_new_node_joins_by_its_name(run_prefix: str, tmp_path: Path) -> None:
    async with Lab(f"{run_prefix[:6]}fd", hosts=4) as lab:
        dns = await LabDns.start(lab)
        seed_host = lab.hosts[0]
        await dns.set("seed.lab", [str(seed_host.underlay_v6.ip)])
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[]) for i in range(4)]
        for node in nodes[1:]:
            dns.use(node.host)
            node.seeds = [f"seed.lab:{MESHD_PORT}"]
            mesh.write_config(node)
        seed, newcomer = nodes[0], nodes[3]
        await mesh.start_mesh(nodes[:3], within=40)

        old = seed_host.underlay_v6.ip
        new_v6 = ipaddress.IPv6Interface(f"{old + 0x100}/64")
        new_v4 = ipaddress.IPv4Interface(f"{seed_host.underlay_v4.ip + 100}/24")
        await seed_host.set_underlay(v6=new_v6, v4=new_v4)
        await dns.set("seed.lab", [str(new_v6.ip)])
        await mesh.start(newcomer)
        await mesh.wait_full_mesh(nodes, within=40)

        # The newcomer could only have found the seed through the new record.
        assert await newcomer.host.resolve("seed.lab") == [str(new_v6.ip)]
        assert await mesh.unreachable_pairs(nodes) == []

        async def seed_endpoint_is_new() -> bool:
            for n in nodes[1:]:
                status = await n.status()
                peer = next(p for p in (status or {"peers": []})["peers"] if p["name"] == seed.name)
                # On a shared LAN peers prefer IPv4 (core/endpoints.py `preferred_order`).
                if peer["endpoint"] != f"{new_v4.ip}:51820":
                    return False
            return True

        await wait_for(seed_endpoint_is_new, 10, "every node to use the seed's new address")
