"""10 % random loss on every host's link for three minutes: probes and their acks get lost,
nodes are suspected, but every suspicion is refuted in time: no node is declared dead. Three
minutes span more than one WireGuard rekey (every 2 minutes), whose handshakes are lost too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from meshd.lab import Lab
from meshd.labfaults import SwitchFaults
from meshd.meshlab import MeshLab

pytestmark = pytest.mark.netns

N = 5
LOSS_PERCENT = 10
LOSS_SECONDS = 180.0


async def test_ten_percent_loss_declares_no_node_dead(run_prefix: str, tmp_path: Path) -> None:
    async with Lab(f"{run_prefix[:6]}fl", hosts=N) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(N)]
        await mesh.start_mesh(nodes, within=40)
        faults = SwitchFaults(lab)
        await faults.set_loss(lab.hosts, LOSS_PERCENT)

        # The fault lasts a fixed time; meanwhile every state every node reports is collected.
        seen: set[tuple[str, str, str]] = set()
        end = time.monotonic() + LOSS_SECONDS
        while time.monotonic() < end:
            for n in nodes:
                status = await n.status()
                assert status is not None, f"{n.name} stopped answering:\n{n.log_tail()}"
                seen |= {(n.name, p["name"], p["state"]) for p in status["peers"]}
            await asyncio.sleep(0.5)
        await faults.set_loss(lab.hosts, 0)

        assert {s for s in seen if s[2] not in ("alive", "suspect")} == set()
        logs = [n.log_path.read_text() for n in nodes]
        assert [n.name for n, log in zip(nodes, logs, strict=True) if "declared dead" in log] == []
        print(f"suspicions during the loss: {sum(log.count(' suspected') for log in logs)}")
        await mesh.wait_full_mesh(nodes, within=20)
