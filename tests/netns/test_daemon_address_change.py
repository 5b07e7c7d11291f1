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
                # On a shared LAN peers prefer IPv4 (core/endpoints.py `preferred_order`).
                if peer["endpoint"] != f"{new_v4.ip}:51820":
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


async def test_a_node_that_moves_behind_a_nat_is_reached_through_it(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}an", hosts=4) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(4)]
        await mesh.start_mesh(nodes, within=40)

        mover, others = nodes[3], nodes[:3]
        nat = await lab.move_behind_nat(mover.host.index)
        # It now announces private addresses nobody can reach. The others learn the NAT's
        # public address from its own packets (WireGuard roaming) and keep it.
        public = {f"[{nat.public_v6.ip}]", str(nat.public_v4.ip)}
        assert await mover.host.ping(str(others[0].host.underlay_v6.ip))  # out through the NAT
        assert not await others[0].host.ping(str(mover.host.underlay_v6.ip))  # never in

        async def peers_use_the_nat() -> bool:
            for n in others:
                status = await n.status()
                peer = next(
                    p for p in (status or {"peers": []})["peers"] if p["name"] == mover.name
                )
                if (peer["endpoint"] or "").rsplit(":", 1)[0] not in public:
                    return False
            return True

        await wait_for(peers_use_the_nat, 15, "peers to reach the moved node through its NAT")
        assert await mesh.unreachable_pairs(nodes) == []
        # A probe in flight while the link moved is lost and may raise a suspicion; it is
        # refuted, and nobody is declared dead.
        await mesh.wait_full_mesh(nodes, within=15)
        assert "declared dead" not in "".join(n.log_path.read_text() for n in nodes)

        # Back onto the LAN: announced endpoints are reachable again, and are used.
        await lab.leave_nat(mover.host.index)
        home = f"{mover.host.underlay_v4.ip}:51820"

        async def peers_use_its_address() -> bool:
            for n in others:
                status = await n.status()
                peer = next(
                    p for p in (status or {"peers": []})["peers"] if p["name"] == mover.name
                )
                if peer["endpoint"] != home:
                    return False
            return True

        await wait_for(peers_use_its_address, 15, "peers to use its LAN address again")
        assert await mesh.unreachable_pairs(nodes) == []
