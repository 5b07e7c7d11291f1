"""`python -m bench compare` end to end on the smallest lab: every figure of the JSON is there.

A smoke test of the benchmark's plumbing (real meshd, Serf, wireguard-go and iperf3); it asserts
the shape of the output, never a figure: speed is the benchmark's business, not the suite's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import DATAPLANE_FIGURES, MEMBERSHIP_FIGURES, PATHS, nebula_installed

ROOT = Path(__file__).resolve().parents[2]
STATS = {"median", "min", "max", "runs"}
IDLE_FIGURES = {"idle_bytes_per_node_s", "idle_packets_per_node_s", "idle_cpu_pct_per_node"}
"""Figures taken over one idle window: also its whole mean (`window_mean`, the figure shown)."""


@pytest.mark.skipif(
    shutil.which("serf") is None or shutil.which("iperf3") is None,
    reason="needs serf and iperf3 (scripts/dev install)",
)
def test_compare_prints_every_figure_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    argv = [
        sys.executable, "-m", "bench", "compare", "--nodes", "3", "--repeat", "1",
        "--idle", "1", "--pings", "5", "--iperf-seconds", "1", "--json", "--plots", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the benchmark cancels itself and removes its lab
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"bench compare still running after 180 s:\n{err.decode()[-3000:]}")
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out)

    for system in ("meshd", "serf"):
        assert set(result[system]) == set(MEMBERSHIP_FIGURES)
        for figure in MEMBERSHIP_FIGURES:
            if system == "serf" and figure == "reachable_all_s":
                assert result[system][figure] == {"3": None}  # Serf has no tunnel
                continue
            stats = result[system][figure]["3"]
            if figure in IDLE_FIGURES:
                assert set(stats) == {*STATS, "window_mean"}, (system, figure)
                # The window's mean is the mean of its slices: inside their range (rounding).
                slack = 0.05 * max(1.0, abs(stats["max"]))
                assert stats["min"] - slack <= stats["window_mean"] <= stats["max"] + slack
            else:
                assert set(stats) == STATS, (system, figure)
            assert stats["min"] <= stats["median"] <= stats["max"]
    assert set(result["ratio_meshd_serf"]) == set(MEMBERSHIP_FIGURES)

    dataplane = result["dataplane"]
    paths = [*PATHS, "nebula"] if nebula_installed() else list(PATHS)
    assert set(dataplane) == {*paths, "ratio_meshd_static"}
    for path in paths:
        assert set(dataplane[path]) == set(DATAPLANE_FIGURES)
        for figure in DATAPLANE_FIGURES:
            assert set(dataplane[path][figure]) == STATS, (path, figure)
    assert set(dataplane["ratio_meshd_static"]) == set(DATAPLANE_FIGURES)

    plots = [Path(p) for p in result["plots"]]
    assert [p.name for p in plots] == ["compare-membership.png", "compare-dataplane.png"]
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
