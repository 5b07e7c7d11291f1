"""Real meshd processes in network namespaces: ten nodes join through one seed and form a full
WireGuard mesh; a graceful stop is seen by all."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.core.config import MembershipConfig
from meshd.lab import Lab, wait_for
from meshd.meshlab import MeshdNode, MeshLab

pytestmark = pytest.mark.netns

N = 10


@pytest.fixture
async def mesh10(run_prefix: str, tmp_path: Path) -> AsyncIterator[tuple[MeshLab, list[MeshdNode]]]:
    async with Lab(f"{run_prefix[:6]}d1", hosts=N) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(N)]
        await mesh.start_mesh(nodes, within=60)
        yield mesh, nodes


def expected_allowed_ips(node: MeshdNode) -> tuple[str, ...]:
    return tuple(sorted(str(ipaddress.ip_network(a)) for a in node.cert.addresses))


async def test_ten_nodes_form_a_full_mesh_and_a_leave_is_seen_by_all(
    mesh10: tuple[MeshLab, list[MeshdNode]],
) -> None:
    mesh, nodes = mesh10

    # Every WireGuard config holds exactly the other nine, with AllowedIPs from certificates.
    by_key = {}
    for n in nodes:
        status = await n.status()
        assert status is not None
        by_key[status["node"]["wg_public_key"]] = n
    import base64

    for n in nodes:
        peers = await n.wireguard_peers()
        got = {
            by_key[base64.b64encode(k).decode()].name: tuple(sorted(v)) for k, v in peers.items()
        }
        assert got == {o.name: expected_allowed_ips(o) for o in nodes if o is not n}

    # Every pair pings over the IPv6 overlay.
    async def ping(a: MeshdNode, b: MeshdNode) -> bool:
        return await a.host.ping(b.overlay_v6, within=2)

    pairs = [(a, b) for a in nodes for b in nodes if a is not b]
    results = await asyncio.gather(*(ping(a, b) for a, b in pairs))
    assert [
        f"{a.name}->{b.name}" for (a, b), ok in zip(pairs, results, strict=True) if not ok
    ] == []

    # meshctl status --json on any node: nine alive peers, each with a handshake age, and a
    # probe round-trip time once it has probed each of them itself: a pair takes turns, one
    # exchange per probe cycle, so that is within two cycles of a member's first probe.
    status = await nodes[3].status()
    assert status is not None and status["connected"] is True
    assert len(status["peers"]) == N - 1
    assert all(p["state"] == "alive" and p["handshake_age_s"] >= 0 for p in status["peers"])

    async def rtts_known() -> bool:
        status = await nodes[3].status()
        return status is not None and all(p["rtt_ms"] is not None for p in status["peers"])

    lan = MembershipConfig.lan()
    two_cycles = lan.first_probe_after + 2 * N * lan.cycle_interval
    await wait_for(rtts_known, two_cycles + 5, "a probe RTT for every peer")

    # SIGTERM: a graceful leave, exit 0, and every other node drops it from WireGuard.
    leaver = nodes[5]
    assert await mesh.stop(leaver, signal.SIGTERM) == 0
    rest = [n for n in nodes if n is not leaver]

    async def dropped_everywhere() -> bool:
        for n in rest:
            status = await n.status()
            if status is None:
                return False
            states = {p["name"]: p["state"] for p in status["peers"]}
            if states.get(leaver.name) != "left":
                return False
            if len(await n.wireguard_peers()) != N - 2:
                return False
        return True

    await wait_for(dropped_everywhere, 10, "every node to drop the node that left", 0.05)
    assert "left the mesh" in leaver.log_path.read_text()
