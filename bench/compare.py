"""`python -m bench compare`: meshd side by side with HashiCorp Serf and with plain, statically
configured wireguard-go, on the same namespace lab in one run (root; needs serf and iperf3).

    python -m bench compare                        # N = 10 and 30; prints a Markdown table
    python -m bench compare --nodes 10 --json      # one JSON object (--nodes 10 30: a list)
    python -m bench compare --plots docs/img       # also PNG plots (pip install -e '.[bench]')

Membership, for each N and each system (meshd with its `lan` preset; Serf agents with LAN
defaults, one per namespace, bound to the host's underlay address, joined through the first):
N-1 nodes form a cluster, then --repeat times, each time on fresh lab hosts:

  join_all_s       a new node starts (its process start is 0) until every other node has
                   recorded it alive;
  crash_all_s      that node is killed with SIGKILL (for meshd: meshd and its wireguard-go, as
                   when the machine dies) until every other node has recorded it dead (meshd:
                   state `dead`, which also drops it from every node's WireGuard peers; Serf:
                   `failed`);
  leave_all_s      a second new node joins, then gets SIGTERM (meshd: signed leave; Serf:
                   leave_on_terminate) until every other node has recorded it left;
  reachable_all_s  meshd only (Serf has no tunnel): for the second join, until every other node
                   has it as a WireGuard peer and pings it over the tunnel (as `bench join`).

"Recorded" is read from each node's own record of the event, so watching adds no load to the
machine: meshd's log line for the membership event ("peer X joined / declared dead / left") and
a Serf event handler that appends the time and the event to a file. Those are the moments at
which `meshctl status --json` and `serf members` change; after every step one query of every
node checks that they agree.

  idle_*           over --idle seconds (default 120: one WireGuard rekey period, so every
                   session's rekey falls in it once), 5 s after the first join (N nodes up):
                   underlay (eth0) bytes and packets per node per second, both directions; CPU
                   per node in % of one core (meshd counts its wireguard-go). `window_mean` is
                   the figure (shown in the table and plots); the window is cut into --repeat
                   slices for the range. rss_mb_per_node at the end (median and range over the
                   nodes).

Data plane, on two fresh lab hosts, --repeat runs of each: ping RTT (--pings pings 20 ms
apart; median and 99th percentile of each run) and iperf3 TCP throughput (--iperf-seconds),
all over IPv6; the static and the meshd-managed wireguard-go run side by side and are taken in
turn within each run, so both see the same machine. Through
  raw                   the underlay veth pair and bridge,
  wireguard_go_static   wireguard-go configured once with `wg` (no daemon),
  meshd                 the same wireguard-go, configured and managed by meshd,
  nebula                when installed: Nebula with its example configuration's defaults (its
                        overlay is IPv4 only).

Every figure is {median, min, max, runs} (membership figures keyed by N); the ratios are of
medians, meshd/peer (below 1 is better for times and traffic, above 1 for throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench._measure import (
    MESHD_EVENTS,
    MESHD_STATES,
    EventRecord,
    cancel_on_signals,
    cpu_seconds,
    descendants_named,
    machine,
    percentile,
    rss_mb,
    summary,
    underlay_counters,
)
from bench.join import measure_join
from meshd.core.identity import WireGuardKey
from meshd.keyfiles import encode_key
from meshd.lab import Lab, LabHost, wait_for
from meshd.meshlab import MeshdNode, MeshLab

MEMBERSHIP_FIGURES = (
    "join_all_s",
    "crash_all_s",
    "leave_all_s",
    "reachable_all_s",
    "idle_bytes_per_node_s",
    "idle_packets_per_node_s",
    "idle_cpu_pct_per_node",
    "rss_mb_per_node",
)
DATAPLANE_FIGURES = ("rtt_median_ms", "rtt_p99_ms", "throughput_mbit_s")
PATHS = ("raw", "wireguard_go_static", "meshd")
OPTIONAL_PATHS = ("nebula",)  # measured when installed
NAMES = {
    "raw": "raw veth",
    "wireguard_go_static": "wireguard-go\nstatic",
    "meshd": "meshd",
    "nebula": "Nebula\n(IPv4)",
}
COLORS = {
    "raw": "#999999",
    "wireguard_go_static": "#4c72b0",
    "meshd": "#dd8452",
    "nebula": "#55a868",
}

SERF_PORT = 7946
SERF_RPC = "127.0.0.1:7373"  # each namespace has its own loopback
IPERF_PORT = 5201
STATIC_WG_PORT = 51830
NEBULA_PORT = 4242
IDLE_SETTLE_S = 5.0
STEP_WITHIN = 90.0  # a step that takes longer is broken, not slow
# Starting 29 agents at once on a busy 2-core machine (each meshd a Python start-up) can take
# tens of seconds; that start is set-up, not a figure.
START_WITHIN = 120.0

ALIVE, DEAD, LEFT = "alive", "dead", "left"


SERF_EVENTS = re.compile(r"^(?P<time>[0-9.]+) (?P<event>member-\w+) (?P<name>\S+)$")

# Appends "time event member" for every member of an event (Serf passes them on stdin, one per
# line: name, address, role, tags, tab-separated).
SERF_HANDLER = """#!/bin/sh
t=$(date +%s.%N)
while read -r name _; do printf '%s %s %s\\n' "$t" "$SERF_EVENT" "$name"; done >> "$1"
"""


@dataclass
class Agent:
    """One membership agent (a meshd or a Serf agent) on one lab host."""

    name: str
    host: LabHost
    proc: asyncio.subprocess.Process
    record: EventRecord
    meshd: MeshdNode | None = None

    def pids(self) -> list[int]:
        """The agent's processes: meshd counts its wireguard-go."""
        if self.proc.returncode is not None:
            return []
        return [self.proc.pid, *descendants_named(self.proc.pid, "wireguard-go")]


class MembershipSystem(Protocol):
    name: str

    async def start(self, host: LabHost, name: str, seed: LabHost | None) -> Agent:
        """Start an agent; returns as soon as its process runs."""
        ...

    async def ready(self, agent: Agent) -> None:
        """Wait until the agent answers its local API."""
        ...

    async def confirm(self, observer: Agent, names: list[str], state: str) -> dict[str, str]:
        """One query of `observer`'s membership list: the names of `names` it does not show in
        `state`, with what it shows instead (empty: all agree)."""
        ...

    async def leave(self, agent: Agent) -> None:
        """Ask the agent to leave gracefully (returns at once)."""
        ...


class Meshd:
    name = "meshd"

    def __init__(self, mesh: MeshLab) -> None:
        self.mesh = mesh

    def prepare(self, host: LabHost, name: str, seed: LabHost | None) -> MeshdNode:
        """Certificate, key and configuration of a meshd that is not started yet."""
        seeds = [seed.index] if seed is not None else []
        # Info logging, as in production (MeshLab's default is debug, for tests).
        return self.mesh.add_node(host.index, seeds=seeds, name=name, log_level="info")

    def agent(self, node: MeshdNode) -> Agent:
        """The agent of a started meshd."""
        assert node.proc is not None
        record = EventRecord(node.log_path, MESHD_EVENTS, MESHD_STATES)
        return Agent(node.name, node.host, node.proc, record, node)

    async def start(self, host: LabHost, name: str, seed: LabHost | None) -> Agent:
        node = self.prepare(host, name, seed)
        await self.mesh.start(node)
        return self.agent(node)

    async def ready(self, agent: Agent) -> None:
        assert agent.meshd is not None
        await self.mesh.wait_api(agent.meshd, within=START_WITHIN)

    async def confirm(self, observer: Agent, names: list[str], state: str) -> dict[str, str]:
        assert observer.meshd is not None
        status = await observer.meshd.status()
        if status is None:
            return {n: "(no answer)" for n in names}
        states = {p["name"]: p["state"] for p in status["peers"]}
        # A suspect is still a member (and a WireGuard peer), as `serf members` lists its
        # suspects alive. A tombstone that has been forgotten is as good as dead or left.
        accepted = (ALIVE, "suspect") if state == ALIVE else (state, None)
        return {n: str(states.get(n)) for n in names if states.get(n) not in accepted}

    async def leave(self, agent: Agent) -> None:
        agent.proc.send_signal(signal.SIGTERM)


class Serf:
    name = "serf"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.handler = workdir / "record-event.sh"
        self.handler.write_text(SERF_HANDLER)
        self.handler.chmod(0o755)
        # SIGTERM = graceful leave, as SIGTERM is for meshd (Serf's default is to leave only on
        # SIGINT).
        self.config = workdir / "serf.json"
        self.config.write_text(json.dumps({"leave_on_terminate": True}))

    async def start(self, host: LabHost, name: str, seed: LabHost | None) -> Agent:
        events = self.workdir / f"{name}.events"
        argv = [
            "serf", "agent", "-node", name,
            "-bind", f"{host.underlay_v4.ip}:{SERF_PORT}",
            "-rpc-addr", SERF_RPC,
            "-config-file", str(self.config),
            "-event-handler", f"{self.handler} {events}",
        ]  # fmt: skip
        if seed is not None:
            argv += ["-join", f"{seed.underlay_v4.ip}:{SERF_PORT}"]
        proc = await host.spawn(*argv, log=self.workdir / f"{name}.log")
        record = EventRecord(
            events, SERF_EVENTS, {"member-join": ALIVE, "member-failed": DEAD, "member-leave": LEFT}
        )
        return Agent(name, host, proc, record)

    async def members(self, agent: Agent) -> dict[str, str] | None:
        r = await agent.host.run(
            "serf", "members", "-format", "json", "-rpc-addr", SERF_RPC, check=False
        )
        if r.returncode != 0:
            return None
        return {m["name"]: m["status"] for m in json.loads(r.stdout)["members"]}

    async def ready(self, agent: Agent) -> None:
        async def up() -> bool:
            if agent.proc.returncode is not None:
                log = (self.workdir / f"{agent.name}.log").read_text()[-2000:]
                raise RuntimeError(f"serf {agent.name} exited {agent.proc.returncode}:\n{log}")
            return await self.members(agent) is not None

        await wait_for(up, START_WITHIN, f"serf {agent.name} RPC", 0.1)

    async def confirm(self, observer: Agent, names: list[str], state: str) -> dict[str, str]:
        members = await self.members(observer)
        if members is None:
            return {n: "(no answer)" for n in names}
        serf_state = {ALIVE: "alive", DEAD: "failed", LEFT: "left"}[state]
        return {n: str(members.get(n)) for n in names if members.get(n) != serf_state}

    async def leave(self, agent: Agent) -> None:
        agent.proc.send_signal(signal.SIGTERM)


async def wait_recorded(
    system: MembershipSystem, observers: list[Agent], names: list[str], state: str
) -> list[float]:
    """Wait until every observer has recorded every one of `names` in `state` (never its own
    name); returns the times of the records, after checking that every observer's membership
    list says the same (waiting for it: under load a member may be suspected for a moment)."""

    def recorded() -> list[float | None]:
        return [o.record.seen(state, n) for o in observers for n in names if n != o.name]

    async def everyone() -> bool:
        return None not in recorded()

    what = f"{system.name}: every node to record {', '.join(names)} {state}"
    await wait_for(everyone, STEP_WITHIN, what, 0.1)
    times = [t for t in recorded() if t is not None]

    disagree: dict[str, dict[str, str]] = {}

    async def lists_agree() -> bool:
        answers = await asyncio.gather(
            *(system.confirm(o, [n for n in names if n != o.name], state) for o in observers)
        )
        disagree.clear()
        disagree.update({o.name: a for o, a in zip(observers, answers, strict=True) if a})
        return not disagree

    try:
        await wait_for(lists_agree, STEP_WITHIN, what, 0.5)
    except TimeoutError:
        raise RuntimeError(f"{what}: recorded, but the lists still disagree: {disagree}") from None
    return times


async def seen_by_all(
    system: MembershipSystem, observers: list[Agent], name: str, state: str, t0: float
) -> float:
    """Seconds from wall-clock `t0` until every observer has recorded `name` in `state`."""
    return max(await wait_recorded(system, observers, [name], state)) - t0


@dataclass
class MembershipRuns:
    join: list[float] = field(default_factory=list)
    crash: list[float] = field(default_factory=list)
    leave: list[float] = field(default_factory=list)
    reachable: list[float] = field(default_factory=list)
    idle_bytes: list[float] = field(default_factory=list)
    idle_packets: list[float] = field(default_factory=list)
    idle_cpu: list[float] = field(default_factory=list)
    idle_window: dict[str, float] = field(default_factory=dict)
    """Figure -> its mean over the whole idle window (the slices' lists give the range)."""
    rss: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, dict[str, Any] | None]:
        def s(runs: list[float], digits: int = 3) -> dict[str, Any] | None:
            return summary(runs, digits) if runs else None

        def idle(key: str, runs: list[float], digits: int) -> dict[str, Any] | None:
            # The whole window's mean: the rekey burst (every session every 2 minutes, all
            # at about the same time in a mesh started at once) falls into one slice, and a
            # median of slices would leave it out.
            out = s(runs, digits)
            if out is not None and key in self.idle_window:
                out["window_mean"] = round(self.idle_window[key], digits)
            return out

        return {
            "join_all_s": s(self.join),
            "crash_all_s": s(self.crash),
            "leave_all_s": s(self.leave),
            "reachable_all_s": s(self.reachable),
            "idle_bytes_per_node_s": idle("bytes", self.idle_bytes, 1),
            "idle_packets_per_node_s": idle("packets", self.idle_packets, 2),
            "idle_cpu_pct_per_node": idle("cpu", self.idle_cpu, 2),
            "rss_mb_per_node": s(self.rss, 1),
        }


async def measure_idle(
    agents: list[Agent], seconds: float, slices: int, runs: MembershipRuns
) -> None:
    """Underlay traffic and CPU of the running agents over `seconds`, cut into `slices`; the
    whole window's means go to `runs.idle_window`."""
    pids = [p for a in agents for p in a.pids()]
    total = {"bytes": 0.0, "packets": 0.0, "cpu": 0.0, "node_seconds": 0.0}
    for _ in range(slices):
        before = await asyncio.gather(*(underlay_counters(a.host) for a in agents))
        cpu_before = {p: cpu_seconds(p) for p in pids}
        t = time.monotonic()
        await asyncio.sleep(seconds / slices)
        cpu = sum(cpu_seconds(p) - cpu_before[p] for p in pids)
        elapsed = time.monotonic() - t
        after = await asyncio.gather(*(underlay_counters(a.host) for a in agents))
        node_seconds = len(agents) * elapsed
        pairs = list(zip(before, after, strict=True))
        sent = {
            "bytes": float(sum(b.bytes - a.bytes for a, b in pairs)),
            "packets": float(sum(b.packets - a.packets for a, b in pairs)),
            "cpu": 100 * cpu,
        }
        runs.idle_bytes.append(sent["bytes"] / node_seconds)
        runs.idle_packets.append(sent["packets"] / node_seconds)
        runs.idle_cpu.append(sent["cpu"] / node_seconds)
        for k, v in sent.items():
            total[k] += v
        total["node_seconds"] += node_seconds
    runs.idle_window = {k: total[k] / total["node_seconds"] for k in ("bytes", "packets", "cpu")}
    runs.rss = [sum(rss_mb(p) for p in a.pids()) for a in agents]


async def stop(agent: Agent) -> None:
    """SIGTERM (meshd stops its own wireguard-go), then SIGKILL after 15 s. The lab's cleanup
    ends whatever is left in its namespaces."""
    if agent.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            agent.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(agent.proc.wait(), 15)
    except TimeoutError:
        agent.proc.kill()
        await agent.proc.wait()


def crash(agent: Agent) -> None:
    """SIGKILL to the agent's processes, as when its machine dies."""
    for pid in agent.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def membership(
    system: MembershipSystem, lab: Lab, nodes: int, repeat: int, idle: float
) -> MembershipRuns:
    """One system's membership figures on `lab`: N-1 base nodes on hosts 0..N-2 and two fresh
    hosts per repetition after them. Stops every agent it started before returning."""
    runs = MembershipRuns()
    started: list[Agent] = []
    try:
        seed_host = lab.hosts[0]
        seed = await system.start(seed_host, "node0", None)
        started.append(seed)
        await system.ready(seed)
        started += await asyncio.gather(
            *(system.start(lab.hosts[i], f"node{i}", seed_host) for i in range(1, nodes - 1))
        )
        base = list(started)
        for a in base:
            await system.ready(a)
        await wait_recorded(system, base, [a.name for a in base], ALIVE)
        for r in range(repeat):
            host_a, host_b = lab.hosts[nodes - 1 + 2 * r], lab.hosts[nodes + 2 * r]
            t0 = time.time()
            joiner = await system.start(host_a, f"new{r}a", seed_host)
            started.append(joiner)
            runs.join.append(await seen_by_all(system, base, joiner.name, ALIVE, t0))
            if r == 0:
                # Let the join's own traffic (announcement retransmissions, push-pull) pass.
                await asyncio.sleep(min(IDLE_SETTLE_S, idle))
                await measure_idle([*base, joiner], idle, repeat, runs)
            t0 = time.time()
            crash(joiner)
            runs.crash.append(await seen_by_all(system, base, joiner.name, DEAD, t0))
            await joiner.proc.wait()

            if isinstance(system, Meshd):  # the same join, measured until the tunnel works
                node = system.prepare(host_b, f"new{r}b", seed_host)
                others = [a.meshd for a in base if a.meshd is not None]
                runs.reachable.append((await measure_join(system.mesh, others, node))[1])
                leaver = system.agent(node)
            else:
                leaver = await system.start(host_b, f"new{r}b", seed_host)
            started.append(leaver)
            await wait_recorded(system, base, [leaver.name], ALIVE)
            t0 = time.time()
            await system.leave(leaver)
            runs.leave.append(await seen_by_all(system, base, leaver.name, LEFT, t0))
            await stop(leaver)
    finally:
        await asyncio.gather(*(stop(a) for a in started))
    return runs


# --- data plane ---------------------------------------------------------------------------

RTT = re.compile(r"time=([0-9.]+) ms")


@dataclass
class PathRuns:
    rtt_median: list[float] = field(default_factory=list)
    rtt_p99: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "rtt_median_ms": summary(self.rtt_median),
            "rtt_p99_ms": summary(self.rtt_p99),
            "throughput_mbit_s": summary(self.throughput, 1),
        }


async def measure_paths(
    client: LabHost, addresses: list[str], repeat: int, pings: int, iperf_seconds: float
) -> list[dict[str, Any]]:
    """RTT and TCP throughput from `client` to each of `addresses` (an iperf3 server listens
    there), the paths taken in turn within each repetition: paths that are up together are
    measured under the same conditions, and the machine's drift between runs (it swings the
    median RTT by 10-20 % here) falls on all of them alike."""
    for address in addresses:
        await client.wait_ping(address, within=20)  # handshakes done before the clock runs
    runs = [PathRuns() for _ in addresses]
    for _ in range(repeat):
        for address, path in zip(addresses, runs, strict=True):
            r = await client.run("ping", "-n", "-c", str(pings), "-i", "0.02", address)
            rtts = [float(x) for x in RTT.findall(r.stdout)]
            path.rtt_median.append(statistics.median(rtts))
            path.rtt_p99.append(percentile(rtts, 0.99))
            r = await client.run(
                "iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(iperf_seconds), "-J",
                within=iperf_seconds + 20,
            )  # fmt: skip
            received = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
            path.throughput.append(received / 1e6)
    return [path.figures() for path in runs]


async def measure_path(
    client: LabHost, address: str, repeat: int, pings: int, iperf_seconds: float
) -> dict[str, Any]:
    """RTT and TCP throughput from `client` to `address` (an iperf3 server listens there)."""
    return (await measure_paths(client, [address], repeat, pings, iperf_seconds))[0]


async def static_wireguard(
    lab: Lab, workdir: Path
) -> tuple[list[asyncio.subprocess.Process], list[str]]:
    """wireguard-go `wgs0` on lab hosts 0 and 1, configured once with `wg` and `ip` as a
    hand-written wg0.conf would be. Returns the processes and the overlay addresses."""
    hosts = lab.hosts[:2]
    keys = [WireGuardKey(os.urandom(32)) for _ in hosts]
    addresses = [f"fd7c::{i + 1}" for i in range(len(hosts))]
    procs = []
    for host in hosts:
        script = 'mount --bind "$0" /var/run/wireguard && exec wireguard-go -f wgs0'
        procs.append(await host.spawn("sh", "-c", script, str(host.wg_dir)))
    for i, host in enumerate(hosts):
        socket = host.wg_dir / "wgs0.sock"

        async def up(socket: Path = socket) -> bool:
            return socket.exists()  # noqa: ASYNC240 (a stat on a local file)

        await wait_for(up, 10, f"wireguard-go socket {socket}", 0.05)
        key_file = workdir / f"static{i}.key"
        key_file.write_bytes(encode_key(keys[i].private))
        key_file.chmod(0o600)
        other = 1 - i
        await host.wg(
            "set", "wgs0", "private-key", str(key_file), "listen-port", str(STATIC_WG_PORT),
            "peer", encode_key(keys[other].public).decode().strip(),
            "endpoint", f"[{hosts[other].underlay_v6.ip}]:{STATIC_WG_PORT}",
            "allowed-ips", f"{addresses[other]}/128",
        )  # fmt: skip
        await host.run("ip", "addr", "add", f"{addresses[i]}/64", "dev", "wgs0", "nodad")
        await host.run("ip", "link", "set", "dev", "wgs0", "mtu", "1420", "up")
    return procs, addresses


def nebula_installed() -> bool:
    return shutil.which("nebula") is not None and shutil.which("nebula-cert") is not None


async def nebula(lab: Lab, workdir: Path) -> tuple[list[asyncio.subprocess.Process], list[str]]:
    """Nebula on lab hosts 0 (also the lighthouse) and 1 with its example configuration's
    defaults (MTU 1300, any-to-any firewall). Its overlay is IPv4 only (1.6). Returns the
    processes and the overlay addresses."""
    hosts = lab.hosts[:2]
    d = workdir / "nebula"
    d.mkdir(parents=True, exist_ok=True)
    addresses = [f"192.168.77.{i + 1}" for i in range(len(hosts))]
    ca_crt, ca_key = f"{d}/ca.crt", f"{d}/ca.key"
    await hosts[0].run("nebula-cert", "ca", "-name", "lab", "-out-crt", ca_crt, "-out-key", ca_key)
    procs = []
    lighthouse = f"{hosts[0].underlay_v4.ip}:{NEBULA_PORT}"
    for i, host in enumerate(hosts):
        await host.run(
            "nebula-cert", "sign", "-name", f"h{i}", "-ip", f"{addresses[i]}/24",
            "-ca-crt", ca_crt, "-ca-key", ca_key,
            "-out-crt", f"{d}/h{i}.crt", "-out-key", f"{d}/h{i}.key",
        )  # fmt: skip
        config = {
            "pki": {"ca": f"{d}/ca.crt", "cert": f"{d}/h{i}.crt", "key": f"{d}/h{i}.key"},
            "static_host_map": {addresses[0]: [lighthouse]},
            "lighthouse": {"am_lighthouse": i == 0, "hosts": [] if i == 0 else [addresses[0]]},
            "listen": {"host": "0.0.0.0", "port": NEBULA_PORT},
            "tun": {"dev": "neb0"},
            "firewall": {
                "outbound": [{"port": "any", "proto": "any", "host": "any"}],
                "inbound": [{"port": "any", "proto": "any", "host": "any"}],
            },
            "logging": {"level": "warning"},
        }
        path = d / f"h{i}.yml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        procs.append(await host.spawn("nebula", "-config", str(path), log=d / f"h{i}.log"))
    for host in hosts:

        async def up(host: LabHost = host) -> bool:
            r = await host.run("ip", "link", "show", "dev", "neb0", check=False)
            return r.returncode == 0

        await wait_for(up, 10, f"nebula interface in {host.netns}", 0.05)
    return procs, addresses


async def dataplane(
    lab: Lab, workdir: Path, repeat: int, pings: int, iperf_seconds: float
) -> dict[str, Any]:
    """The paths between lab hosts 0 (client) and 1 (iperf3 server), one after another."""
    client, server = lab.hosts[0], lab.hosts[1]
    await server.spawn("iperf3", "-s", "-p", str(IPERF_PORT))

    async def listening() -> bool:
        r = await server.run("ss", "-Hltn", f"sport = :{IPERF_PORT}")
        return bool(r.stdout.strip())

    await wait_for(listening, 10, "iperf3 server", 0.05)
    figures: dict[str, Any] = {}
    measure = (repeat, pings, iperf_seconds)
    figures["raw"] = await measure_path(client, str(server.underlay_v6.ip), *measure)

    # Static wireguard-go (wgs0, its own port) and meshd's (mesh0) are up together and taken
    # in turn (`measure_paths`): measured one after the other, the ratio of their median RTTs
    # swung between 1.01 and 1.14 in four runs of the same code (2026-12-06).
    procs, addresses = await static_wireguard(lab, workdir)
    mesh = MeshLab(lab, workdir / "meshd")
    nodes = [mesh.add_node(i, seeds=[0] if i else [], log_level="info") for i in range(2)]
    try:
        await mesh.start_mesh(nodes, within=60)
        paths = [addresses[1], nodes[1].overlay_v6]
        figures["wireguard_go_static"], figures["meshd"] = await measure_paths(
            client, paths, *measure
        )
    finally:
        for n in nodes:
            if n.running:
                await mesh.stop(n)
        for proc in procs:  # SIGTERM: wireguard-go removes its interface and socket
            proc.terminate()
            await proc.wait()
    if nebula_installed():
        procs, addresses = await nebula(lab, workdir)
        figures["nebula"] = await measure_path(client, addresses[1], *measure)
        for proc in procs:
            proc.terminate()
            await proc.wait()
    figures["ratio_meshd_static"] = {
        k: _ratio(figures["meshd"][k], figures["wireguard_go_static"][k]) for k in DATAPLANE_FIGURES
    }
    return figures


# --- the run ------------------------------------------------------------------------------


def _paths(dataplane: dict[str, Any]) -> list[str]:
    return [p for p in (*PATHS, *OPTIONAL_PATHS) if p in dataplane]


def central(s: dict[str, Any]) -> float:
    """A figure's value: the median of its runs, or for idle figures the whole window's mean."""
    return float(s.get("window_mean", s["median"]))


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if a is None or b is None or not central(b):
        return None
    return round(central(a) / central(b), 2)


def _version(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (r.stdout or r.stderr).splitlines()[0].strip() if r.stdout or r.stderr else "?"


async def run(
    nodes: Sequence[int], repeat: int, idle: float, pings: int, iperf_seconds: float
) -> dict[str, Any]:
    cancel_on_signals()
    prefix = f"bc{os.getpid() % 10000:04d}"
    result: dict[str, Any] = {
        "nodes": list(nodes),
        "repeat": repeat,
        "idle_window_s": idle,
        "machine": machine(),
        "versions": {
            "serf": _version("serf", "version"),
            "wireguard_go": _version("wireguard-go", "--version"),
            "iperf3": _version("iperf3", "--version"),
            "nebula": _version("nebula", "-version") if nebula_installed() else None,
        },
        "meshd": {k: {} for k in MEMBERSHIP_FIGURES},
        "serf": {k: {} for k in MEMBERSHIP_FIGURES},
        "ratio_meshd_serf": {k: {} for k in MEMBERSHIP_FIGURES},
    }
    with tempfile.TemporaryDirectory(prefix="meshd-compare-") as tmp:
        work = Path(tmp)
        for i, n in enumerate(nodes):
            async with Lab(f"{prefix}{i}", hosts=n - 1 + 2 * repeat) as lab:
                mesh = MeshLab(lab, work / f"meshd-{n}")
                systems: list[MembershipSystem] = [Meshd(mesh), Serf(work / f"serf-{n}")]
                for system in systems:
                    figures = (await membership(system, lab, n, repeat, idle)).figures()
                    for k, v in figures.items():
                        result[system.name][k][str(n)] = v
            for k in MEMBERSHIP_FIGURES:
                result["ratio_meshd_serf"][k][str(n)] = _ratio(
                    result["meshd"][k][str(n)], result["serf"][k][str(n)]
                )
        async with Lab(f"{prefix}d", hosts=2) as lab:
            result["dataplane"] = await dataplane(lab, work, repeat, pings, iperf_seconds)
    return result


# --- output -------------------------------------------------------------------------------

LABELS = {
    "join_all_s": "join seen by all (s)",
    "crash_all_s": "crash detected by all (s)",
    "leave_all_s": "leave seen by all (s)",
    "reachable_all_s": "join reachable over the tunnel from all (s)",
    "idle_bytes_per_node_s": "idle underlay bytes/s per node",
    "idle_packets_per_node_s": "idle underlay packets/s per node",
    "idle_cpu_pct_per_node": "idle CPU per node (% of a core)",
    "rss_mb_per_node": "RSS per node (MB)",
    "rtt_median_ms": "ping RTT median (ms)",
    "rtt_p99_ms": "ping RTT p99 (ms)",
    "throughput_mbit_s": "iperf3 TCP (Mbit/s)",
}


def _cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "—"
    return f"{central(s):g} ({s['min']:g}–{s['max']:g})"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| figure | N | meshd | Serf | meshd/Serf |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k in MEMBERSHIP_FIGURES:
        for n in result["nodes"]:
            meshd, serf = result["meshd"][k][str(n)], result["serf"][k][str(n)]
            ratio = result["ratio_meshd_serf"][k][str(n)]
            serf_cell = "no tunnel" if k == "reachable_all_s" else _cell(serf)
            lines.append(
                f"| {LABELS[k]} | {n} | {_cell(meshd)} | {serf_cell} | "
                f"{'—' if ratio is None else ratio} |"
            )
    dp = result["dataplane"]
    paths = _paths(dp)
    lines += [
        "",
        f"| data plane | {' | '.join(NAMES[p].replace(chr(10), ' ') for p in paths)} "
        "| meshd/static |",
        "| --- " * (len(paths) + 2) + "|",
    ]
    for k in DATAPLANE_FIGURES:
        cells = " | ".join(_cell(dp[p][k]) for p in paths)
        lines.append(f"| {LABELS[k]} | {cells} | {dp['ratio_meshd_static'][k]} |")
    lines += [
        "",
        f"median (min–max) of {result['repeat']} runs; idle: mean over the "
        f"{result['idle_window_s']:g} s window (min–max of its {result['repeat']} slices); "
        f"{result['machine']}; "
        f"Serf {result['versions']['serf']}, {result['versions']['wireguard_go']}",
    ]
    return "\n".join(lines)


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    """membership.png (times and idle traffic vs N, meshd and Serf) and dataplane.png (bars)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    nodes = result["nodes"]
    panels = ("join_all_s", "crash_all_s", "leave_all_s", "idle_bytes_per_node_s")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, k in zip(axes, panels, strict=True):
        for system, style in (("meshd", "o-"), ("serf", "s--")):
            figs = [result[system][k][str(n)] for n in nodes]
            med = [central(f) for f in figs]
            err = [
                [max(0.0, central(f) - f["min"]) for f in figs],
                [max(0.0, f["max"] - central(f)) for f in figs],
            ]
            label = "meshd" if system == "meshd" else "Serf"
            ax.errorbar(nodes, med, yerr=err, fmt=style, capsize=4, label=label)
        ax.set_title(LABELS[k], fontsize=10)
        ax.set_xlabel("nodes (N)")
        ax.set_xticks(nodes)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Membership, median and range of {result['repeat']} runs", fontsize=11)
    fig.tight_layout()
    written = [directory / "compare-membership.png"]
    fig.savefig(written[0], dpi=110)
    plt.close(fig)

    dp = result["dataplane"]
    paths = _paths(dp)
    fig, axes = plt.subplots(1, len(DATAPLANE_FIGURES), figsize=(4 * len(DATAPLANE_FIGURES), 3.6))
    for ax, k in zip(axes, DATAPLANE_FIGURES, strict=True):
        figs = [dp[p][k] for p in paths]
        med = [f["median"] for f in figs]
        err = [[f["median"] - f["min"] for f in figs], [f["max"] - f["median"] for f in figs]]
        colors = [COLORS[p] for p in paths]
        bars = ax.bar([NAMES[p] for p in paths], med, yerr=err, capsize=4, color=colors)
        ax.bar_label(bars, fmt="%g", fontsize=8)
        ax.set_title(LABELS[k], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Data plane between two namespaces, median and range of {result['repeat']} runs",
        fontsize=11,
    )
    fig.tight_layout()
    written.append(directory / "compare-dataplane.png")
    fig.savefig(written[1], dpi=110)
    plt.close(fig)
    return written


def _node_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 3:
        raise argparse.ArgumentTypeError(f"{text!r}: node counts are whole numbers of at least 3")
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--nodes",
        type=_node_counts,
        nargs="+",
        default=[[10, 30]],
        help="node counts: 10 30 or 10,30 (default)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of every figure (median)")
    parser.add_argument(
        "--idle",
        type=float,
        default=120.0,
        help="idle window in seconds (default: one WireGuard rekey period)",
    )
    parser.add_argument("--pings", type=int, default=100, help="pings per RTT run")
    parser.add_argument("--iperf-seconds", type=float, default=5.0, help="length of an iperf3 run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots to DIR")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench compare: needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = [p for p in ("serf", "iperf3", "wireguard-go", "wg") if shutil.which(p) is None]
    if missing:
        print(f"bench compare: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "bench compare: --plots needs matplotlib: pip install -e '.[bench]'",
                file=sys.stderr,
            )
            return 2
    nodes = sorted({n for group in args.nodes for n in group})
    result = asyncio.run(run(nodes, args.repeat, args.idle, args.pings, args.iperf_seconds))
    if args.plots is not None:
        result["plots"] = [str(p) for p in plots(result, args.plots)]
    print(json.dumps(result) if args.json else markdown(result))
    return 0
