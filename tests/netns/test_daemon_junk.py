"""A live node under a flood of junk: random datagrams and datagrams with a valid envelope
prefix, on the underlay join port (from anyone) and on the overlay gossip port (from a member,
through the tunnel). It keeps serving, its membership does not change, rejections are counted."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from meshd.lab import Lab
from meshd.meshlab import MESHD_PORT, MeshLab

pytestmark = pytest.mark.netns

FLOOD = """
import os, random, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(count):
    body = os.urandom(rng.randrange(0, 1500))
    s.sendto(body if i % 2 else b"MD\\x01" + body[:1400], (host, port))
"""


def membership(status: dict[str, object]) -> list[tuple[object, object, object]]:
    peers = status["peers"]
    assert isinstance(peers, list)
    return sorted((p["name"], p["state"], p["version"]) for p in peers)


def metric_sum(metrics: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix)
    )


REJECTED = "meshd_rejected_messages_total{"
RECEIVED = 'meshd_gossip_messages_total{direction="in"}'


async def test_junk_on_both_ports_changes_nothing(run_prefix: str, tmp_path: Path) -> None:
    async with Lab(f"{run_prefix[:6]}jk", hosts=3) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(3)]
        await mesh.start(nodes[0])
        await mesh.wait_api(nodes[0])
        await asyncio.gather(*(mesh.start(n) for n in nodes[1:]))
        await mesh.wait_full_mesh(nodes, within=40)
        target, attacker = nodes[0], nodes[1]
        before = await target.status()
        assert before is not None
        metrics = await target.client.metrics()
        rejected_before, received_before = (
            metric_sum(metrics, REJECTED),
            metric_sum(metrics, RECEIVED),
        )

        for address in (str(target.host.underlay_v6.ip), target.overlay_v6):
            await attacker.host.run(
                sys.executable, "-c", FLOOD, address, str(MESHD_PORT), "5000", within=60
            )

        after = await target.status()
        assert after is not None and after["connected"] is True
        assert membership(after) == membership(before)
        assert after["node"]["version"] == before["node"]["version"]
        # Every junk datagram that reached meshd (a UDP flood also loses some in the kernel)
        # was rejected; the only messages accepted meanwhile were the other nodes' gossip.
        metrics = await target.client.metrics()
        rejected = metric_sum(metrics, REJECTED) - rejected_before
        received = metric_sum(metrics, RECEIVED) - received_before
        assert rejected >= 1000
        assert received - rejected < 200
        await mesh.wait_full_mesh(nodes, within=10)  # still a healthy mesh
        assert target.running
