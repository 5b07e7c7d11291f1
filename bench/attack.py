"""`python -m bench attack [--json] [--keep-logs DIR]`: what one hostile member and one flooding
stranger can do to a mesh (issue #22, "Checked by"), on real meshd processes and wireguard-go
in network namespaces (root).

Six honest nodes form a mesh through node0. A seventh node joins normally, then its meshd is
killed (-9) and `python -m meshd.hostile` (not meshd: a process with its valid certificate and
identity key, on the tunnel its wireguard-go keeps) takes its meshd port; the bench gives it one
attack round at a time over a Unix socket. An eighth host, no member, is the flooding stranger
(`python -m meshd.joinflood`). The phases, in this order (the dup-key rounds last: each leaves
the hostile member out of every WireGuard configuration, and it comes back by joining again):

endpoint_injection_peers_unconfigured  the hostile member sends, 3 times 1 s apart, its own
                      announcement, signed by hand (`sign_announcement` refuses it), with the
                      endpoint `::%x]:1\\nremove=true\\nendpoint=[::1` (issue #22, finding 2).
                      Once every honest node has counted a `bad_endpoint` refusal and 1 s more:
                      honest nodes' WireGuard peers (UAPI, identified by AllowedIPs, the
                      hostile's own left aside) missing compared with before. Expected 0.
                      `endpoint_injection_hostile_peer_kept`: its own peer is still there too.
false_dead_claims_effective  for 20 s, each second, a first-hand dead claim about node2 to every
                      member (and suspect claims with invented senders). Every honest node's
                      log lines "peer node2 declared dead" timed after the first refutation
                      (the earliest "peer node2 joined" or "refuted suspicion" in any log since
                      the round began), summed. Expected 0. Also `false_dead_claims_first`:
                      declarations before it (the first claim works, once per node at most).
join_flood_false_suspicions  the stranger sends node4 join requests at 20,000/s for 30 s, each
                      from another /64 (16,384 sources, more than meshd's 4,096 buckets), 3 of 4
                      with a real certificate and a new, badly signed announcement (every cheap
                      check passes, no cache knows it), 1 of 4 from a rogue CA. "peer X
                      suspected" lines in every honest node's log from the flood's start until
                      2 s after its end, about honest nodes (`join_flood_suspected`: by
                      node; `join_flood_deaths`: their "declared dead" lines;
                      `join_flood_hostile_suspected`: the hostile member's, whose process
                      shares the starved cores). Expected 0. `join_flood_rate_per_s`: the rate
                      reached (one sender process); `join_flood_refused`: join datagrams
                      node4's meshd read and refused (meshd_rejected_messages_total, all
                      reasons);
                      `join_flood_kernel_dropped`: datagrams its kernel dropped with the socket
                      buffer full (Udp6RcvbufErrors); `join_flood_loop_lag_max_ms`: node4's
                      meshd_loop_lag_max_seconds after the flood, when it rose.
join_flood_probe_rtt_p99_ms  node4's probe round trip during the flood: the hostile member (idle
                      otherwise) sends node4's meshd a SWIM ping through the tunnel every 10 ms
                      and times each ack (meshd answers, so its event loop's delay is in it;
                      raw samples, not the smoothed rtt_ms of `meshctl status`). Also `_p50_ms`,
                      `_unanswered`, `_samples`, and `join_flood_probe_rtt_idle_p99_ms`: the same
                      for 5 s before the flood.
stream_bomb_loop_stall_ms  for 15 s the hostile member opens streams to node5's stream port every
                      2 s: a 16 MiB message of nested arrays and a push-pull reply of 16,384
                      garbage announcements. The longest event-loop stall of node5: the
                      largest meshd_loop_lag_seconds sampled every 50 ms during the round, or
                      meshd_loop_lag_max_seconds after it when that rose. Target <= 50.
                      `stream_bomb_loop_lag_max_before_ms`: the latter before the round.
dup_key_pairs_unreachable  round 1: for 10 s the hostile member announces node1's current
                      WireGuard key as its own; it joins again (announcement with its own key,
                      as a join request on the underlay); node1 rotates its key (`meshctl
                      rotate`: the next key is announced 10 s before the switch) and round 2
                      announces node1's next key for 14 s. In each round, 4 s in and after it,
                      every ordered pair of honest nodes pings (overlay IPv6, 2 s timeout):
                      distinct pairs that failed at least once. Expected 0.
                      `dup_key_hostile_rejoined`: the hostile member was a WireGuard peer of
                      every honest node again after each round (it hurt only itself).

Also: nodes, loop_failures (meshd_loop_failures_total summed over honest nodes, expected 0),
hostile_sent (what the hostile member sent, by kind), machine, and `failed` when a phase
timed out (the figures measured before it are printed, exit 1). Exit 1 also when an expected-0
figure is not 0. The figures depend on CPU: the machine's other load shows in the RTTs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._measure import _wall_time, cancel_on_signals, machine, percentile
from bench.faults import save_logs
from meshd.adapters.store import StateStore
from meshd.config import Config
from meshd.lab import Lab, LabHost, wait_for
from meshd.meshlab import MESHD_PORT, MeshdNode, MeshLab

HONEST = 6
FLOOD_RATE = 20_000.0
FLOOD_S = 30.0
CLAIMS_S = 20.0
BOMBS_S = 15.0
EXPECTED_ZERO = (
    "dup_key_pairs_unreachable",
    "endpoint_injection_peers_unconfigured",
    "false_dead_claims_effective",
    "join_flood_false_suspicions",
    "loop_failures",
)
EVENT = re.compile(
    r"^(?P<time>\S+Z) .*: peer (?P<name>\S+) "
    r"(?P<event>declared dead|joined|refuted suspicion|suspected)\b"
)


def events(node: MeshdNode, since: float) -> list[tuple[float, str, str]]:
    """(wall time, member name, event) of the membership lines in `node`'s log from `since`."""
    out = []
    for line in node.log_path.read_text(errors="replace").splitlines():
        m = EVENT.search(line)
        if m is not None and (t := _wall_time(m["time"])) >= since:
            out.append((t, m["name"], m["event"]))
    return out


async def rcvbuf_errors(host: LabHost) -> int:
    r = await host.run("cat", "/proc/net/snmp6")
    for line in r.stdout.splitlines():
        if line.startswith("Udp6RcvbufErrors"):
            return int(line.split()[1])
    return 0


class HostileControl:
    """The bench's end of `meshd.hostile --control`: one round at a time."""

    def __init__(self, path: Path, own: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(own))
        self.sock.setblocking(False)

    async def round(self, attacks: list[str], seconds: float, victim: str, **kw: Any) -> Any:
        command = {"attacks": attacks, "seconds": seconds, "victim": victim, **kw}
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, json.dumps(command).encode(), str(self.path))
        reply = json.loads(await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 20), seconds + 60))
        if "error" in reply:
            raise ValueError(f"hostile member: {reply['error']}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(b'{"quit": true}', str(self.path))
        self.sock.close()


class AttackBench:
    def __init__(
        self, lab: Lab, mesh: MeshLab, honest: list[MeshdNode], hostile: MeshdNode, tmp: Path
    ) -> None:
        self.lab = lab
        self.mesh = mesh
        self.honest = honest
        self.hostile = hostile
        self.tmp = tmp
        self.ctl: HostileControl | None = None
        self.hostile_key = b""
        self.sent: dict[str, int] = {}

    async def start_hostile(self) -> HostileControl:
        """Kill the seventh node's meshd once it persisted its peers; start the hostile member
        on its tunnel, taking rounds from a control socket."""
        self.hostile_key = await self.hostile.wg_public_key()
        store = StateStore(self.hostile.directory / "state")

        async def persisted() -> bool:
            return len(store.peers()) == len(self.honest)

        await wait_for(persisted, 30, "the hostile node's meshd to persist its peers")
        await self.mesh.stop(self.hostile, sig=signal.SIGKILL)
        path = self.tmp / "hostile.ctl"
        host = self.hostile.host
        wg = Config().listen_port
        await host.spawn(
            sys.executable, "-m", "meshd.hostile", "--dir", str(self.hostile.directory),
            "--mesh", self.mesh.mesh, "--port", str(MESHD_PORT), "--control", str(path),
            "--endpoint", f"[{host.underlay_v6.ip}]:{wg}",
            "--endpoint", f"{host.underlay_v4.ip}:{wg}",
            log=self.tmp / "hostile.log",
        )  # fmt: skip

        async def listening() -> bool:
            return path.exists()

        await wait_for(listening, 20, "the hostile member's control socket", 0.05)
        self.ctl = HostileControl(path, self.tmp / "bench.ctl")
        return self.ctl

    async def round(self, attacks: list[str], seconds: float, victim: str, **kw: Any) -> Any:
        assert self.ctl is not None
        reply = await self.ctl.round(attacks, seconds, victim, **kw)
        for kind, n in reply["sent"].items():
            self.sent[kind] = self.sent.get(kind, 0) + n
        return reply

    async def peers_by_ips(self, node: MeshdNode) -> tuple[set[tuple[str, ...]], bool]:
        """The AllowedIPs of each of `node`'s WireGuard peers but the hostile member's, and
        whether the hostile member's peer is there."""
        peers = await node.wireguard_peers()
        return {ips for key, ips in peers.items() if key != self.hostile_key}, (
            self.hostile_key in peers
        )

    async def endpoint_injection(self) -> dict[str, object]:
        before = {n.name: await self.peers_by_ips(n) for n in self.honest}
        refused = {n.name: await n.metric("meshd_rejected_messages_total", "bad_endpoint")
                   for n in self.honest}  # fmt: skip
        await self.round(["endpoint"], 3.0, self.honest[0].name)

        async def all_refused() -> bool:
            for n in self.honest:
                got = await n.metric("meshd_rejected_messages_total", "bad_endpoint")
                if got <= refused[n.name]:
                    return False
            return True

        await wait_for(all_refused, 20, "every honest node to refuse the injected endpoint", 0.2)
        await asyncio.sleep(1.0)  # a reconcile pass that would apply it (nothing to wait on)
        missing, kept = 0, True
        for n in self.honest:
            after, hostile_there = await self.peers_by_ips(n)
            missing += len(before[n.name][0] - after)
            kept &= hostile_there or not before[n.name][1]
        return {
            "endpoint_injection_peers_unconfigured": missing,
            "endpoint_injection_hostile_peer_kept": kept,
        }

    async def false_dead_claims(self, victim: MeshdNode) -> dict[str, object]:
        t0 = time.time()
        await self.round(["claims"], CLAIMS_S, victim.name)
        await asyncio.sleep(2.0)  # the last claim's relays and refutation reach the logs
        seen = {n.name: [e for e in events(n, t0) if e[1] == victim.name] for n in self.honest}
        back = [t for evs in seen.values() for t, _, ev in evs
                if ev in ("joined", "refuted suspicion")]  # fmt: skip
        first_refutation = min(back, default=float("inf"))
        deaths = [t for evs in seen.values() for t, _, ev in evs if ev == "declared dead"]
        return {
            "false_dead_claims_effective": sum(t > first_refutation for t in deaths),
            "false_dead_claims_first": sum(t <= first_refutation for t in deaths),
        }

    async def join_flood(self, target: MeshdNode, stranger: LabHost) -> dict[str, object]:
        idle = await self.round(["probe"], 5.0, target.name)
        refused0 = await target.metric("meshd_rejected_messages_total")
        dropped0 = await rcvbuf_errors(target.host)
        lag0 = await target.metric("meshd_loop_lag_max_seconds")
        flood_log = self.tmp / "joinflood.log"
        t0 = time.time()
        flooder = await stranger.spawn(
            sys.executable, "-m", "meshd.joinflood", "--target", str(target.host.underlay_v6.ip),
            "--port", str(MESHD_PORT), "--cert", str(self.honest[0].directory / "node.cert"),
            "--rate", str(FLOOD_RATE), "--seconds", str(FLOOD_S), log=flood_log,
        )  # fmt: skip
        probed = await self.round(["probe"], FLOOD_S, target.name)
        await asyncio.wait_for(flooder.wait(), 30)
        t1 = time.time()
        report = json.loads(flood_log.read_text().strip().splitlines()[-1])
        await asyncio.sleep(2.0)  # suspicions raised at the end reach the logs
        names = {n.name for n in self.honest}
        suspected: dict[str, int] = {}
        deaths = hostile_suspected = 0
        for n in self.honest:
            for _, name, ev in events(n, t0):
                if name not in names:
                    hostile_suspected += ev == "suspected"
                elif ev == "suspected":
                    suspected[name] = suspected.get(name, 0) + 1
                elif ev == "declared dead":
                    deaths += 1
        lag1 = await target.metric("meshd_loop_lag_max_seconds")
        rtts = probed["rtt_ms"]
        return {
            "join_flood_false_suspicions": sum(suspected.values()),
            "join_flood_suspected": suspected,
            "join_flood_deaths": deaths,
            "join_flood_hostile_suspected": hostile_suspected,
            "join_flood_rate_per_s": report["rate_per_s"],
            "join_flood_sent": report["sent"],
            "join_flood_seconds": round(t1 - t0, 1),
            "join_flood_refused": int(
                await target.metric("meshd_rejected_messages_total") - refused0
            ),
            "join_flood_kernel_dropped": await rcvbuf_errors(target.host) - dropped0,
            "join_flood_loop_lag_max_ms": round(lag1 * 1000, 1) if lag1 > lag0 else None,
            "join_flood_probe_rtt_p99_ms": round(percentile(rtts, 0.99), 2) if rtts else None,
            "join_flood_probe_rtt_p50_ms": round(percentile(rtts, 0.5), 2) if rtts else None,
            "join_flood_probe_samples": len(rtts),
            "join_flood_probe_unanswered": probed["probes_unanswered"],
            "join_flood_probe_rtt_idle_p99_ms": round(percentile(idle["rtt_ms"], 0.99), 2)
            if idle["rtt_ms"]
            else None,
        }

    async def stream_bombs(self, victim: MeshdNode) -> dict[str, object]:
        before = await victim.metric("meshd_loop_lag_max_seconds")
        sampled = 0.0
        bombing = asyncio.create_task(
            self.round(["bombs"], BOMBS_S, victim.name, bomb_every=2.0, bomb_victim=True)
        )
        while not bombing.done():
            with contextlib.suppress(Exception):  # a stalled node may not answer in time
                lag = await victim.metric("meshd_loop_lag_seconds")
                sampled = max(sampled, lag)
            await asyncio.sleep(0.05)
        await bombing
        after = await victim.metric("meshd_loop_lag_max_seconds")
        stall = max(sampled, after if after > before else 0.0)
        return {
            "stream_bomb_loop_stall_ms": round(stall * 1000, 1),
            "stream_bomb_loop_lag_max_before_ms": round(before * 1000, 1),
        }

    async def hostile_back(self) -> bool:
        """The hostile member joins again with its own key; True once every honest node has its
        WireGuard peer again."""
        await self.round(["own-key"], 3.0, self.honest[0].name)

        async def everywhere() -> bool:
            return all([self.hostile_key in await n.wireguard_peers() for n in self.honest])

        try:
            await wait_for(everywhere, 30, "the hostile member's peer on every honest node", 0.2)
        except TimeoutError:
            return False
        return True

    async def dup_key(self, victim: MeshdNode) -> dict[str, object]:
        failed: set[str] = set()
        rejoined = []

        async def attack(kind: str, seconds: float) -> None:
            running = asyncio.create_task(self.round([kind], seconds, victim.name))
            await asyncio.sleep(4.0)
            failed.update(await self.mesh.unreachable_pairs(self.honest))
            reply = await running
            if not reply["sent"]:
                raise TimeoutError(f"{kind}: the hostile member never knew the key to announce")
            failed.update(await self.mesh.unreachable_pairs(self.honest))

        await attack("dup-key", 10.0)
        rejoined.append(await self.hostile_back())
        await victim.client.rotate()
        await attack("dup-next-key", 14.0)
        rejoined.append(await self.hostile_back())
        return {
            "dup_key_pairs_unreachable": len(failed),
            "dup_key_unreachable": sorted(failed),
            "dup_key_hostile_rejoined": all(rejoined),
        }


async def run(keep_logs: Path | None) -> dict[str, object]:
    cancel_on_signals()
    prefix = f"ba{os.getpid() % 100000:05d}"[:8]
    figures: dict[str, object] = {"nodes": HONEST}
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        # Honest nodes, the hostile member, the flooding stranger.
        async with Lab(prefix, hosts=HONEST + 2) as lab:
            mesh = MeshLab(lab, Path(tmp))
            nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(HONEST + 1)]
            bench: AttackBench | None = None
            try:
                await mesh.start_mesh(nodes, within=90, batch=4)
                honest = nodes[:HONEST]
                bench = AttackBench(lab, mesh, honest, nodes[HONEST], Path(tmp))
                await bench.start_hostile()
                stranger = lab.hosts[HONEST + 1]
                phases = [
                    ("endpoint injection", bench.endpoint_injection),
                    ("false dead claims", lambda: bench.false_dead_claims(honest[2])),
                    ("join flood", lambda: bench.join_flood(honest[4], stranger)),
                    ("stream bombs", lambda: bench.stream_bombs(honest[5])),
                    ("duplicate keys", lambda: bench.dup_key(honest[1])),
                ]
                for name, phase in phases:
                    await mesh.wait_full_mesh(honest, within=60)
                    started = time.strftime("%H:%M:%S")
                    try:
                        got = await phase()
                    except TimeoutError as exc:
                        figures["failed"] = f"{name}: {exc}"
                        break
                    print(f"bench attack: {name} (started {started}): {got}", file=sys.stderr)
                    figures |= got
                figures["loop_failures"] = int(
                    sum([await n.metric("meshd_loop_failures_total") for n in honest])
                )
                figures["hostile_sent"] = bench.sent
            finally:
                if bench is not None and bench.ctl is not None:
                    bench.ctl.close()
                if keep_logs is not None:
                    save_logs(nodes, keep_logs)
                    hostile_log = Path(tmp) / "hostile.log"
                    if hostile_log.exists():
                        (keep_logs / "hostile.log").write_text(hostile_log.read_text())
    figures["membership_preset"] = "lan"
    figures["machine"] = machine()
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench attack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy every daemon's log into DIR at the end"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench attack: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run(args.keep_logs))
    except TimeoutError as exc:
        print(f"bench attack: {exc} (is the machine busy? see `uptime`)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:40} {v}")
    bad = [k for k in EXPECTED_ZERO if result.get(k) not in (0, None)]
    if "failed" in result:
        print(f"bench attack: {result['failed']}", file=sys.stderr)
    if bad:
        print(f"bench attack: not 0: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad or "failed" in result else 0
