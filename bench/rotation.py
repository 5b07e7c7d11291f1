"""`python -m bench rotation [--repeat R] [--json]`: packet loss and the longest silence while
keys rotate, on two real meshd processes with wireguard-go in network namespaces (root).

Two nodes share a mesh PSK secret with 10 s epochs. Each case sends 200 pings at 10 ms from
one node to the other's overlay address so that the change falls inside the series:

- psk_epoch: the pair PSK moves to the next epoch (no message exchanged);
- wg_key: `meshctl rotate` on the other node; it switches its WireGuard key at the announced
  time and the pinging node replaces the key 0.5 s later (PEER_SWITCH_LAG_MS);
- psk_secret: a new mesh PSK secret is handed to both nodes (SIGHUP) and becomes active.

Keys: psk_epoch_lost, wg_key_lost, psk_secret_lost (lost pings out of 200, worst of R
runs), max_gap_ms (longest time without a reply over all cases and runs), and per case
*_max_gap_ms; runs (every measured series), machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from meshd.keylab import (
    PINGS,
    PingSeries,
    across_psk_epoch,
    across_psk_secret_change,
    across_wg_rotation,
    give_psk,
)
from meshd.lab import Lab
from meshd.meshlab import MeshLab

EPOCH_S = 10


async def run(repeat: int) -> dict[str, Any]:
    runs: dict[str, list[PingSeries]] = {"psk_epoch": [], "wg_key": [], "psk_secret": []}
    with tempfile.TemporaryDirectory(prefix="bench-rotation-") as tmp:
        async with Lab(f"br{os.getpid() % 10000}", hosts=2) as lab:
            mesh = MeshLab(lab, Path(tmp))
            a, b = mesh.add_node(0, seeds=[]), mesh.add_node(1, seeds=[0])
            give_psk(mesh, [a, b], period=EPOCH_S)
            await mesh.start_mesh([a, b], within=30)
            for _ in range(repeat):
                runs["psk_epoch"].append((await across_psk_epoch(a, b))[0])
                runs["wg_key"].append((await across_wg_rotation(a, b))[0])
                runs["psk_secret"].append((await across_psk_secret_change(mesh, [a, b], a, b))[0])
    out: dict[str, Any] = {}
    for case, series in runs.items():
        out[f"{case}_lost"] = max(s.lost for s in series)
        out[f"{case}_max_gap_ms"] = max(s.max_gap_ms for s in series)
    out["max_gap_ms"] = max(out[f"{c}_max_gap_ms"] for c in runs)
    out["pings_per_case"] = PINGS
    out["repeat"] = repeat
    out["runs"] = {
        case: [{"lost": s.lost, "max_gap_ms": s.max_gap_ms} for s in series]
        for case, series in runs.items()
    }
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.release()}"
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rotation", description=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="runs of the three cases")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench rotation: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("bench rotation: --repeat must be at least 1", file=sys.stderr)
        return 2
    result = asyncio.run(run(args.repeat))
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("psk_epoch", "wg_key", "psk_secret"):
            print(f"{key:11} lost {result[key + '_lost']}/{PINGS}, "
                  f"longest gap {result[key + '_max_gap_ms']} ms")  # fmt: skip
    return 0
