"""A live node under a flood of junk: random datagrams and datagrams with a valid envelope
prefix, on the underlay join port (from anyone) and on the overlay gossip port (from a member,
through the tunnel). It keeps serving, its membership does not change, rejections are counted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshd.lab import Lab
from meshd.meshlab import MESHD_PORT, MeshLab

pytestmark = pytest.mark.netns

FLOOD = """
import os, random, socket, sys, time
host, port, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
start = time.monotonic()
for i in range(count):
    body = os.urandom(rng.randrange(0, 1500))
    s.sendto(body if i % 2 else b"MD\\x01" + body[:1400], (host, port))
    if rate and i % 100 == 99:
        time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
"""


def membership(status: dict[str, object]) -> list[tuple[object, bool, object]]:
    """(name, still a member, announcement version) of every peer. A flooding member may be
    *suspected* meanwhile (its own acks drown in its flood): loss, not junk being believed."""
    peers = status["peers"]
    assert isinstance(peers, list)
    return sorted((p["name"], p["state"] in ("alive", "suspect"), p["version"]) for p in peers)


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
        await mesh.start_mesh(nodes, within=40)
        target, attacker = nodes[0], nodes[1]
        before = await target.status()
        assert before is not None
        metrics = await target.client.metrics()
        rejected_before, received_before = (
            metric_sum(metrics, REJECTED),
            metric_sum(metrics, RECEIVED),
        )

        # Paced at 1,000 datagrams/s: this test is about content (nothing junk says is
        # believed). Flooding faster on this 2-core machine starves nodes into suspicion, a
        # denial-of-service matter (rate limits, suspicion floor) for the reliability suite.
        for address, rate in (
            (str(target.host.underlay_v6.ip), "1000"),
            (target.overlay_v6, "1000"),
        ):
            await attacker.host.run(
                sys.executable, "-c", FLOOD, address, str(MESHD_PORT), "5000", rate, within=60
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
        assert rejected >= 5000
        # The underlay flood came from one address: beyond a burst of 20 and 10/s it was
        # dropped by the per-source limit before any parsing.
        assert metric_sum(metrics, 'meshd_rejected_messages_total{reason="rate_limited"}') > 4000
        assert received - rejected < 200
        await mesh.wait_full_mesh(nodes, within=20)  # whole again: every peer alive
        assert target.running
