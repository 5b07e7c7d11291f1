"""`python -m bench join --nodes N [--repeat R] [--json]`: how fast a new machine becomes
reachable, on real meshd processes in network namespaces (root).

N-1 nodes form a mesh through one seed. Then, R times, a node with a fresh certificate starts
(knowing only the seed) and we measure, from its process start, when every other node has it
as a WireGuard peer and a ping to its overlay address succeeds from every node. Also: resident
memory of the meshd processes and their CPU use over an idle minute fraction.

Keys: reachable_from_all_s (median of R), reachable_from_all_s_runs, wireguard_peer_all_s
(median time until every node had the route meshd installs with the WireGuard peer), rss_mb
(median meshd RSS), wireguard_go_rss_mb, idle_cpu_pct (median per node, % of one core), nodes,
repeat, machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._measure import cpu_seconds, descendants_named, machine, rss_mb
from meshd.lab import Lab
from meshd.labprobe import EchoProbe
from meshd.meshlab import MeshdNode, MeshLab


async def measure_join(
    mesh: MeshLab, others: list[MeshdNode], new: MeshdNode
) -> tuple[float, float]:
    """Seconds from process start until (every node has a route to the new node, which meshd
    installs with its WireGuard peer; every node got an echo reply from it over the tunnel).

    Each node probes with an in-process EchoProbe every 10 ms: no process per attempt, so the
    measurement does not take the CPU the daemons need (at 30 nodes, polling with `ping` and
    `wg show` processes did)."""
    probes = [EchoProbe(n.host.netns, new.overlay_v6) for n in others]
    running = [asyncio.create_task(p.run(within=60.0)) for p in probes]
    await mesh.start(new)
    t0 = new.started_at
    results = await asyncio.gather(*running)
    if any(r.reply_at is None or r.route_at is None for r in results):
        silent = [n.name for n, r in zip(others, results, strict=True) if r.reply_at is None]
        raise RuntimeError(f"{new.name} not reachable within 60 s from {', '.join(silent)}")
    return (
        max(r.route_at - t0 for r in results if r.route_at is not None),
        max(r.reply_at - t0 for r in results if r.reply_at is not None),
    )


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
