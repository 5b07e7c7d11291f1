"""`python -m bench join --nodes N [--repeat R] [--json]`: how fast a new machine becomes
reachable, on real meshd processes in network namespaces (root).

N-1 nodes form a mesh through one seed. Then, R times, a node with a fresh certificate starts
(knowing only the seed) and we measure, from its process start, when every other node has it
as a WireGuard peer and a ping to its overlay address succeeds from every node. Also: resident
memory of the meshd processes and their CPU use over an idle minute fraction.

Keys: reachable_from_all_s (median of R), reachable_from_all_s_runs, wireguard_peer_all_s
(median time until every node had the WireGuard peer), rss_mb (median meshd RSS),
wireguard_go_rss_mb, idle_cpu_pct (median per node, % of one core), nodes, repeat, machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._measure import cpu_seconds, descendants_named, fast_ping, machine, rss_mb
from meshd.lab import Lab
from meshd.meshlab import MeshdNode, MeshLab


async def measure_join(
    mesh: MeshLab, others: list[MeshdNode], new: MeshdNode
) -> tuple[float, float]:
    """Seconds from process start until (every node has the WireGuard peer, every node pings)."""
    await mesh.start(new)
    t0 = new.started_at
    peer_at: dict[str, float] = {}
    ping_at: dict[str, float] = {}
    new_key: bytes | None = None

    async def watch(node: MeshdNode) -> None:
        # Light polling: the bench shares the machine's cores with the daemons it measures.
        nonlocal new_key
        while True:
            if new_key is None:
                status = await new.status()
                if status is not None:
                    new_key = base64.b64decode(status["node"]["wg_public_key"])
            if (
                new_key is not None
                and node.name not in peer_at
                and new_key in await node.wireguard_peers()
            ):
                peer_at[node.name] = time.monotonic() - t0
            if node.name in peer_at:
                if await fast_ping(node.host, new.overlay_v6):
                    ping_at[node.name] = time.monotonic() - t0
                    return
                await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(0.02)

    await asyncio.wait_for(asyncio.gather(*(watch(n) for n in others)), 60)
    return max(peer_at.values()), max(ping_at.values())


async def run(nodes: int, repeat: int) -> dict[str, object]:
    prefix = f"bj{os.getpid() % 100000:05d}"[:8]
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        async with Lab(prefix, hosts=nodes) as lab:
            mesh = MeshLab(lab, Path(tmp))
            base = [mesh.add_node(i, seeds=[0] if i else []) for i in range(nodes - 1)]
            await mesh.start_mesh(base, within=120)
            # Idle: CPU over 10 s of a converged mesh.
            pids = [n.proc.pid for n in base if n.proc is not None]
            before = {p: cpu_seconds(p) for p in pids}
            t = time.monotonic()
            await asyncio.sleep(10)
            elapsed = time.monotonic() - t
            idle = [100 * (cpu_seconds(p) - before[p]) / elapsed for p in pids]
            rss = [rss_mb(p) for p in pids]
            wg_rss = [rss_mb(c) for p in pids for c in descendants_named(p, "wireguard-go")]
            peer_times, ping_times = [], []
            for r in range(repeat):
                new = mesh.add_node(nodes - 1, seeds=[0], name=f"new{r}")
                peer_s, ping_s = await measure_join(mesh, base, new)
                peer_times.append(peer_s)
                ping_times.append(ping_s)
                await mesh.stop(new)
                await asyncio.sleep(0.5)  # let the leave settle before the next run
    return {
        "nodes": nodes,
        "repeat": repeat,
        "reachable_from_all_s": round(statistics.median(ping_times), 3),
        "reachable_from_all_s_runs": [round(x, 3) for x in ping_times],
        "wireguard_peer_all_s": round(statistics.median(peer_times), 3),
        "rss_mb": round(statistics.median(rss), 1),
        "wireguard_go_rss_mb": round(statistics.median(wg_rss), 1) if wg_rss else None,
        "idle_cpu_pct": round(statistics.median(idle), 2),
        "membership_preset": mesh.membership,
        "machine": machine(),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench join",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=10, help="mesh size including the new node")
    parser.add_argument("--repeat", type=int, default=5, help="joins to measure (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench join: needs root (network namespaces)", file=sys.stderr)
        return 2
    result = asyncio.run(run(args.nodes, args.repeat))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")
    return 0
