"""Measuring pieces the real-process benchmarks share (`bench join`, `bench compare`, `bench
faults`): process memory and CPU from /proc, underlay interface counters, a fine-grained ping,
membership events read from a node's own log, the summary of repeated runs and the machine
description. Not a benchmark itself (the leading underscore keeps
it out of `python -m bench`'s list).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import re
import signal
import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from meshd.lab import LabHost

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def descendants_named(pid: int, name: str) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children(p):
            try:
                comm = Path(f"/proc/{c}/comm").read_text().strip()
            except OSError:
                continue
            if comm == name:
                found.append(c)
            todo.append(c)
    return found


async def fast_ping(host: LabHost, address: str) -> bool:
    """One ping with a 100 ms timeout: finer than `ping -W 1`, which would round every lost
    first packet up to a whole second."""
    r = await host.run("ping", "-n", "-q", "-c1", "-W", "0.1", address, check=False)
    return r.returncode == 0


@dataclass(frozen=True)
class LinkCounters:
    """Both directions of one interface's counters, summed."""

    bytes: int
    packets: int


async def underlay_counters(host: LabHost, device: str = "eth0") -> LinkCounters:
    """The host's underlay interface counters (`ip -s link`), received plus sent: the traffic
    an operator sees on the machine's network interface."""
    r = await host.run("ip", "-s", "-j", "link", "show", "dev", device)
    stats = json.loads(r.stdout)[0]["stats64"]
    return LinkCounters(
        stats["rx"]["bytes"] + stats["tx"]["bytes"],
        stats["rx"]["packets"] + stats["tx"]["packets"],
    )


def summary(runs: list[float], digits: int = 3) -> dict[str, Any]:
    """Median and range of repeated runs, with the runs themselves."""
    return {
        "median": round(statistics.median(runs), digits),
        "min": round(min(runs), digits),
        "max": round(max(runs), digits),
        "runs": [round(x, digits) for x in runs],
    }


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (no interpolation: a value that was really measured)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.release()}"


def cancel_on_signals() -> None:
    """SIGTERM/SIGINT cancel the running task, so a lab's cleanup still removes its namespaces
    and processes when a benchmark is interrupted."""
    current = asyncio.current_task()
    assert current is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, current.cancel)


class EventRecord:
    """A node's own record of membership events, read incrementally: (state, member name) ->
    wall-clock time it was first recorded."""

    def __init__(self, path: Path, pattern: re.Pattern[str], states: dict[str, str]) -> None:
        self.path = path
        self.pattern = pattern
        self.states = states
        self.first: dict[tuple[str, str], float] = {}
        self._offset = 0
        self._partial = b""

    def seen(self, state: str, name: str) -> float | None:
        self._read()
        return self.first.get((state, name))

    def _read(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            m = self.pattern.search(line.decode(errors="replace"))
            if m is None:
                continue
            key = (self.states[m["event"]], m["name"])
            self.first.setdefault(key, _wall_time(m["time"]))


def _wall_time(stamp: str) -> float:
    if stamp.endswith("Z"):  # meshd's log: 2026-11-23T12:09:14.123Z
        return datetime.fromisoformat(stamp[:-1] + "+00:00").timestamp()
    return float(stamp)  # the Serf handler's `date +%s.%N`


MESHD_EVENTS = re.compile(
    r"^(?P<time>\S+Z) .*: peer (?P<name>\S+) (?P<event>joined|declared dead|left)"
)
MESHD_STATES = {"joined": "alive", "declared dead": "dead", "left": "left"}
"""The member state each of meshd's event log lines puts a member in."""
