"""A hostile member against a small mesh of real daemons (issue #22).

The hostile member is a lab node whose meshd joined normally and was then killed (-9): its
wireguard-go stays up with the tunnel, and `python -m meshd.hostile` (not meshd) takes the meshd
port, answers probes, and for 25 s sends first-hand dead claims about one honest node, suspect
claims with invented senders, its own announcements carrying the victim's WireGuard key, and
16 MiB stream bombs. Asserted: every pair of honest nodes pings; no daemon loop failed; the
victim was declared dead by each honest node at most once (the first claim works, then the
claimant is ignored); the victim keeps its WireGuard peer everywhere and the hostile member's
peer has exactly its certificate's addresses; the longest event-loop stall is reported."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from meshd.adapters.store import StateStore
from meshd.lab import Lab, wait_for
from meshd.meshlab import MESHD_PORT, MeshLab

pytestmark = pytest.mark.netns


async def test_a_hostile_member_hurts_only_itself(run_prefix: str, tmp_path: Path) -> None:
    async with Lab(f"{run_prefix[:6]}hm", hosts=5) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(5)]
        await mesh.start_mesh(nodes, within=40)
        *honest, hostile = nodes
        victim = honest[1]
        victim_key = await victim.wg_public_key()
        store = StateStore(hostile.directory / "state")

        async def persisted() -> bool:  # the hostile process starts from what meshd persisted
            return len(store.peers()) == len(honest)

        await wait_for(persisted, 20, "the hostile node's meshd to persist its peers")
        assert await mesh.stop(hostile, sig=signal.SIGKILL) == -9
        log = tmp_path / "hostile.log"
        proc = await hostile.host.spawn(
            sys.executable, "-m", "meshd.hostile", "--dir", str(hostile.directory),
            "--mesh", mesh.mesh, "--port", str(MESHD_PORT), "--victim", victim.name,
            "--seconds", "25", "--wg-key-of-victim", log=log,
        )  # fmt: skip

        async def finished() -> bool:
            return proc.returncode is not None

        await wait_for(finished, 45, "the hostile member to finish")
        report = json.loads(log.read_text().strip().splitlines()[-1])
        assert report["sent"]["dead_claims"] >= 9 and report["sent"]["bombs"] >= 4, report

        assert await mesh.unreachable_pairs(honest) == []
        failures = {n.name: await n.metric("meshd_loop_failures_total") for n in honest}
        assert failures == {n.name: 0.0 for n in honest}
        deaths = {
            n.name: n.log_path.read_text().count(f"peer {victim.name} declared dead")
            for n in honest
            if n is not victim
        }
        assert all(count <= 1 for count in deaths.values()), deaths
        ignored = {n.name: "ignoring its claims" in n.log_path.read_text() for n in honest}
        assert any(ignored.values()), ignored
        certified = set(hostile.cert.addresses)
        for n in honest:
            if n is victim:
                continue
            peers = await n.wireguard_peers()
            # The victim keeps its own key; nobody else holds it.
            assert victim_key in peers
            assert {a.split("/")[0] for a in peers[victim_key]} == set(victim.cert.addresses)
            others = [ips for key, ips in peers.items() if key != victim_key]
            hostile_ips = [ips for ips in others
                           if {a.split("/")[0] for a in ips} & certified]  # fmt: skip
            assert all({a.split("/")[0] for a in ips} <= certified for ips in hostile_ips)
        stalls = {n.name: await n.metric("meshd_loop_lag_max_seconds") for n in honest}
        print(f"loop lag max (s): {stalls}; deaths of the victim: {deaths}; hostile: {report}")
        assert max(stalls.values()) < 1.0, stalls
