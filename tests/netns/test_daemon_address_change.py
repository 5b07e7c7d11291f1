"""A node's underlay address changes: it re-announces its endpoints, peers switch to the new
address, and overlay traffic resumes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from meshd.lab import Lab, wait_for
from meshd.meshlab import MeshLab

pytestmark = pytest.mark.netns


async def test_underlay_address_change_is_announced_and_traffic_resumes(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}ac", hosts=3) as lab:
        mesh = MeshLab(lab, tmp_path)
        # Endpoints from the interfaces (IPv6 first), not from config: what netlink reports.
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(3)]
        await mesh.start_mesh(nodes, within=40)

        mover = nodes[2]
        old_v6 = mover.host.underlay_v6
        new_v6 = ipaddress.IPv6Interface(f"{old_v6.ip + 0x100}/{old_v6.network.prefixlen}")
        new_v4 = ipaddress.IPv4Interface(f"{mover.host.underlay_v4.ip + 100}/24")
        await mover.host.set_underlay(v6=new_v6, v4=new_v4)

        async def peers_use_new_address() -> bool:
            for n in nodes[:2]:
                status = await n.status()
                peer = next(
                    p for p in (status or {"peers": []})["peers"] if p["name"] == mover.name
                )
                if peer["endpoint"] != f"[{new_v6.ip}]:51820":
                    return False
            return True

        await wait_for(peers_use_new_address, 15, "peers to use the moved node's new address")
        for n in nodes[:2]:
            await n.host.wait_ping(mover.overlay_v6, within=10)

        async def announced() -> bool:
            # WireGuard roaming can restore traffic before the mover's own announcement (its
            # new IPv6 address first passes duplicate address detection).
            return "underlay changed; announced endpoints" in mover.log_path.read_text()

        await wait_for(announced, 10, "the moved node to announce its new endpoints")
