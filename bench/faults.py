"""`python -m bench faults --nodes N [--repeat R] [--json]`: how the mesh rides through faults,
on real meshd processes and wireguard-go in network namespaces (root).

N nodes form a mesh through one seed (node0), on a lab bridge with nftables fault rules
(meshd/labfaults.py) and a dnsmasq server. Then, each R times (median reported, every run in
`*_runs`), timed from the moment the fault is made:

crash_removed_all_s   kill -9 of one node (not the seed) until every other node has removed it
                      from its WireGuard configuration (read over the UAPI socket). The node is
                      then restarted with the same identity and the mesh waited whole again.
leave_all_s           SIGTERM to one node until every other node has seen it leave: the time
                      of the "peer X left" line in each node's own log (what `meshctl status`
                      shows from then on; read from the logs, so watching adds no load).
leave_removed_all_s   the same leave until every other node has also removed it from WireGuard
                      (polled over the UAPI socket).
partition_heal_s      the mesh is cut 50/50 (nftables drop on the bridge) and held until every
                      node has removed the other half from WireGuard (longer than the failure
                      timeout); then the cut is removed and this is the time until every node
                      sees every other alive with a WireGuard handshake again.
ip_change_resume_s    one node's underlay addresses (IPv6 and IPv4) change; time until a ping to
                      its overlay address succeeds from every other node.
dns_change_resume_s   the seed's underlay address changes and its DNS name (`seed.lab`, served
                      by the lab's dnsmasq) is updated at once; then a new node whose only seed
                      is `seed.lab:51821` starts. Time from the address change until the new
                      node answers pings from every node (includes its process start, ~0.3 s).
                      The new node leaves again before the next run.
nat_move_resume_s     one node moves behind a NAT router (nftables masquerade, NAT44 and NAT66;
                      its link moves to the router's inside and gets private addresses): time
                      until a ping to its overlay address succeeds from every other node. Its
                      announced endpoints are unreachable now: peers must keep the address
                      WireGuard learnt from its packets. It moves back onto the LAN after
                      each run (two nodes behind two NATs cannot reach each other).
pair_cut_detected_s   nftables drops everything between two nodes only (both still reach the
                      others): time until both report the pair degraded (issue 27).
pair_repaired_s       the same cut lifted: time until the two ping each other both ways.
nat_peer_after_move_s two nodes sit behind NAT routers of their own; a public node restarts and
                      its addresses change 0.5 s after its process starts: time from its start
                      until both NATed nodes ping it (they cannot be reached first, so they must
                      learn its new address).
split_merge_s         every node is stopped and its state wiped; all N start at once with the
                      same configuration, whose only seed is a DNS name with two addresses
                      (node 0 and node N/2, which list the name too): time from the start
                      until every node sees every other alive with a handshake (issue 21:
                      before, each seed found only itself and two meshes formed for good).
                      `split_merge_after_up_s`: the same from when the last API answered
                      (the start of N Python daemons on two cores takes seconds of CPU).
bridge_merge_s        the same fresh start, but the two halves cannot reach each other
                      (nftables), so each forms a mesh around the seed it reaches; once both
                      are whole and every node has checked the unreachable seed 4 times (the
                      start-up's join retries are over) the cut is removed: time until every
                      node sees every other alive with a handshake (one mesh, no restart).
idle_mix_per_node_s   what the first 5 non-seed hosts send in the same window, by kind: packets
                      and bytes (IP layer) per node per second of WireGuard data (probes,
                      gossip), WireGuard keepalives and handshakes, neighbour discovery, ARP,
                      meshd's underlay port, other (nftables counters in each host).
idle_bytes_per_node_s all bytes the N hosts send onto the underlay (switch port counters:
                      WireGuard-wrapped probes and gossip, handshakes, keepalives, neighbour
                      discovery) per node per second, over --idle-seconds of a converged mesh
                      (from 10 s after it is whole: start-up traffic is not idle).

Also: nodes, repeat, membership_preset, machine; and `failed` when a phase timed out (the
figures measured before it are still printed, later phases are skipped, exit code 1).
The figures depend on CPU: on a busy machine the daemons are late to probe and to answer,
which lengthens every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench._measure import MESHD_EVENTS, MESHD_STATES, EventRecord, fast_ping
from meshd.config import Config
from meshd.lab import LAB_ROOT, Lab, LabHost
from meshd.labfaults import LabDns, SwitchFaults
from meshd.meshlab import MESHD_PORT, MeshdNode, MeshLab

POLL_S = 0.05
"""Polling period of the watchers: light, since the bench shares the cores with the daemons."""
IDLE_SETTLE_S = 10.0
"""Wait this long after the mesh is whole before the idle window: the last nodes to start still
compare states 5 s after their join (`join_check_after`), which is start-up traffic."""


async def until_all(
    nodes: list[MeshdNode],
    condition: Callable[[MeshdNode], Awaitable[bool]],
    t0: float,
    within: float,
    what: str,
    done_at: dict[str, float] | None = None,
) -> float:
    """Seconds from `t0` until `condition` held for every node (each watched on its own);
    `done_at` gets each node's own time."""
    if done_at is None:
        done_at = {}

    async def watch(node: MeshdNode) -> None:
        while not await condition(node):
            if time.monotonic() - t0 > within:
                raise TimeoutError(f"{what}: not true on {node.name} after {within} s")
            await asyncio.sleep(POLL_S)
        done_at[node.name] = time.monotonic() - t0

    await asyncio.gather(*(watch(n) for n in nodes))
    return max(done_at[n.name] for n in nodes)


async def wg_key(node: MeshdNode) -> bytes:
    status = await node.status()
    assert status is not None, f"{node.name} does not answer"
    return base64.b64decode(status["node"]["wg_public_key"])


def others(nodes: list[MeshdNode], *excluded: MeshdNode) -> list[MeshdNode]:
    return [n for n in nodes if n not in excluded]


MIX_HOSTS = 5
"""Hosts whose sent traffic is broken down by kind (`TrafficMix`)."""

_MIX_RULES = """table inet meshd_bench_mix {{
  counter wireguard_keepalive {{}}
  counter wireguard_data {{}}
  counter wireguard_handshake {{}}
  counter neighbour_discovery {{}}
  counter meshd_underlay {{}}
  counter other {{}}
  chain out {{
    type filter hook output priority 0; policy accept;
    oifname != "eth0" accept
    udp sport {wg} @th,64,8 4 udp length 40 counter name wireguard_keepalive accept
    udp sport {wg} @th,64,8 4 counter name wireguard_data accept
    udp sport {wg} counter name wireguard_handshake accept
    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} \
      counter name neighbour_discovery accept
    udp sport {meshd} counter name meshd_underlay accept
    udp dport {meshd} counter name meshd_underlay accept
    counter name other accept
  }}
}}
table arp meshd_bench_mix {{
  counter arp_frames {{}}
  chain out {{
    type filter hook output priority 0; policy accept;
    counter name arp_frames
  }}
}}
"""


class TrafficMix:
    """What a few hosts send on their underlay, by kind, from nftables counters in each host
    (bytes at the IP layer; ARP frames without Ethernet padding): WireGuard data (meshd's
    probes and gossip), WireGuard keepalives (32-byte transport messages) and handshakes,
    neighbour discovery and ARP (the kernel re-confirming each peer's address), meshd's
    underlay join port, other."""

    def __init__(self, hosts: list[LabHost]) -> None:
        self.hosts = hosts

    async def install(self) -> None:
        # MeshLab keeps meshd's default WireGuard port.
        rules = _MIX_RULES.format(wg=Config().listen_port, meshd=MESHD_PORT)
        for h in self.hosts:
            path = LAB_ROOT / h.netns / "mix.nft"
            path.write_text(rules)
            await h.run("nft", "-f", str(path))

    async def read(self) -> dict[str, tuple[int, int]]:
        """Kind -> (packets, bytes), summed over the hosts."""
        total: dict[str, tuple[int, int]] = {}
        for h in self.hosts:
            for family in ("inet", "arp"):
                r = await h.run("nft", "-j", "list", "counters", "table", family,
                                "meshd_bench_mix")  # fmt: skip
                for obj in json.loads(r.stdout)["nftables"]:
                    if "counter" in obj:
                        c = obj["counter"]
                        p, b = total.get(c["name"], (0, 0))
                        total[c["name"]] = (p + c["packets"], b + c["bytes"])
        return total


class FaultBench:
    def __init__(self, lab: Lab, mesh: MeshLab, nodes: list[MeshdNode]) -> None:
        self.lab = lab
        self.mesh = mesh
        self.nodes = nodes
        self.faults = SwitchFaults(lab)
        self.moves = 0
        self.leave_seen: list[float] = []
        self.done_at: dict[str, float] = {}
        """Per node, the seconds of the last measure (`slowest`)."""
        self.after_up: list[float] = []
        self.repaired: list[float] = []
        """pair_repaired_s of each pair_cut run."""
        """split_merge_s counted from when the last node's API answered."""

    def slowest(self) -> str:
        """The node that took longest in the last measure, for the stderr line: where to look
        in the kept logs when a run is an outlier."""
        if not self.done_at:
            return "-"
        name = max(self.done_at, key=self.done_at.__getitem__)
        return f"{name} {self.done_at[name]:.2f} s"

    async def idle(self, seconds: float) -> dict[str, object]:
        """idle_bytes_per_node_s, and idle_mix_per_node_s: packets and bytes per second per
        node of each kind (`TrafficMix`) on the first MIX_HOSTS non-seed hosts."""
        mix = TrafficMix([n.host for n in self.nodes[1 : 1 + MIX_HOSTS]])
        await mix.install()
        await asyncio.sleep(3)  # let the join traffic of a fresh mesh pass
        hosts = [n.host.index for n in self.nodes]
        before, kinds_before = await self.faults.sent_bytes(), await mix.read()
        t = time.monotonic()
        await asyncio.sleep(seconds)
        after, kinds_after = await self.faults.sent_bytes(), await mix.read()
        elapsed = time.monotonic() - t
        per_node = len(mix.hosts) * elapsed
        return {
            "idle_bytes_per_node_s": round(
                sum(after[i] - before[i] for i in hosts) / len(hosts) / elapsed, 1
            ),
            "idle_mix_per_node_s": {
                kind: {
                    "packets": round((p - kinds_before[kind][0]) / per_node, 2),
                    "bytes": round((b - kinds_before[kind][1]) / per_node, 1),
                }
                for kind, (p, b) in sorted(kinds_after.items())
            },
        }

    async def crash(self, victim: MeshdNode, how: signal.Signals) -> float:
        """Seconds until every other node dropped `victim` from WireGuard (and, for a leave,
        shows it left). For a leave, `leave_seen` gets the seconds until the last node logged
        it."""
        key = await wg_key(victim)
        records = [
            EventRecord(n.log_path, MESHD_EVENTS, MESHD_STATES) for n in others(self.nodes, victim)
        ]

        async def dropped(n: MeshdNode) -> bool:
            # WireGuard first: one UAPI read, where a status request costs the daemon a
            # WireGuard read and a JSON answer; 29 watchers polling status 20 times a second
            # loaded the two cores the leave had to spread on. The daemon marks the node left
            # before it removes the peer, so the status is asked once, to check the state.
            if key in await n.wireguard_peers():
                return False
            if how == signal.SIGTERM:
                status = await n.status()
                states = {p["name"]: p["state"] for p in (status or {}).get("peers", [])}
                return states.get(victim.name) == "left"
            return True

        assert victim.proc is not None
        t0, t0_wall = time.monotonic(), time.time()
        victim.proc.send_signal(how)
        took = await until_all(
            others(self.nodes, victim), dropped, t0, 60, "victim dropped", self.done_at
        )
        if how == signal.SIGTERM:
            logged = [r.seen("left", victim.name) for r in records]
            times = [t for t in logged if t is not None and t >= t0_wall - 0.01]
            if len(times) < len(logged):
                raise TimeoutError(f"not every node logged {victim.name} left after the signal")
            self.leave_seen.append(max(times) - t0_wall)
        await self.mesh.stop(victim)
        await self.mesh.start(victim)  # same identity and state: re-admitted
        await self.mesh.wait_full_mesh(self.nodes, within=60)
        return took

    def _new_addresses(self) -> tuple[ipaddress.IPv6Interface, ipaddress.IPv4Interface]:
        """Addresses no lab host has: above the hosts' range in both underlay networks."""
        self.moves += 1
        net6 = self.lab.hosts[0].underlay_v6.network
        net4 = self.lab.hosts[0].underlay_v4.network
        free = self.lab.count + self.moves
        if free >= 254:
            raise ValueError("no free underlay addresses left for another move")
        v6 = ipaddress.IPv6Interface(f"{net6[0x1000 + self.moves]}/{net6.prefixlen}")
        return v6, ipaddress.IPv4Interface(f"{net4[free]}/{net4.prefixlen}")

    async def ip_change(self, mover: MeshdNode) -> float:
        v6, v4 = self._new_addresses()
        t0 = time.monotonic()
        await mover.host.set_underlay(v6=v6, v4=v4)

        async def reaches(n: MeshdNode) -> bool:
            return await fast_ping(n.host, mover.overlay_v6)

        return await until_all(
            others(self.nodes, mover), reaches, t0, 60, "ping to moved node", self.done_at
        )

    async def dns_change(self, dns: LabDns, seed: MeshdNode, new: MeshdNode) -> float:
        v6, v4 = self._new_addresses()
        t0 = time.monotonic()
        await seed.host.set_underlay(v6=v6, v4=v4)
        await dns.set("seed.lab", [str(v6.ip)])
        await self.mesh.start(new)

        async def reaches(n: MeshdNode) -> bool:
            return await fast_ping(n.host, new.overlay_v6)

        took = await until_all(
            self.nodes, reaches, t0, 60, "ping to the node joined by name", self.done_at
        )
        assert await self.mesh.stop(new) == 0
        return took

    async def nat_move(self, mover: MeshdNode) -> float:
        t0 = time.monotonic()
        await self.lab.move_behind_nat(mover.host.index)

        async def reaches(n: MeshdNode) -> bool:
            return await fast_ping(n.host, mover.overlay_v6)

        took = await until_all(
            others(self.nodes, mover), reaches, t0, 60, "ping behind the NAT", self.done_at
        )
        # Back onto the LAN (not measured): two nodes behind two NATs cannot reach each other.
        await self.lab.leave_nat(mover.host.index)
        await self.mesh.wait_full_mesh(self.nodes, within=60)
        return took

    async def pair_cut(self, a: MeshdNode, b: MeshdNode) -> float:
        cut = await self.faults.cut([a.host], [b.host])
        t0 = time.monotonic()

        async def degraded(n: MeshdNode) -> bool:
            other = b if n is a else a
            status = await n.status()
            peers = {p["name"]: p for p in (status or {}).get("peers", [])}
            return peers.get(other.name, {}).get("degraded_for_s") is not None

        took = await until_all([a, b], degraded, t0, 60, "the cut pair degraded", self.done_at)
        await self.faults.restore(cut)
        t1 = time.monotonic()

        async def pings(n: MeshdNode) -> bool:
            return await fast_ping(n.host, (b if n is a else a).overlay_v6)

        self.repaired.append(await until_all([a, b], pings, t1, 60, "the cut pair pings"))

        async def healthy(n: MeshdNode) -> bool:
            return not await degraded(n)

        await until_all([a, b], healthy, time.monotonic(), 60, "the pair no longer degraded")
        return took

    async def nat_peer_after_move(self, mover: MeshdNode, natted: list[MeshdNode]) -> float:
        for n in natted:
            await self.lab.move_behind_nat(n.host.index)
        public = [n for n in self.nodes if n not in natted]

        async def reaches_public(n: MeshdNode) -> bool:
            return all([await fast_ping(n.host, p.overlay_v6) for p in public if p is not n])

        await until_all(natted, reaches_public, time.monotonic(), 60, "NATed nodes reach all")
        await self.mesh.stop(mover)
        t0 = time.monotonic()
        await self.mesh.start(mover)
        await asyncio.sleep(0.5)  # the fault's timing (issue 27), not a wait for a condition
        v6, v4 = self._new_addresses()
        await mover.host.set_underlay(v6=v6, v4=v4)

        async def reaches(n: MeshdNode) -> bool:
            return await fast_ping(n.host, mover.overlay_v6)

        took = await until_all(natted, reaches, t0, 60, "NATed peers ping the moved node")
        for n in natted:  # back onto the LAN (not measured)
            await self.lab.leave_nat(n.host.index)
        await self.mesh.wait_full_mesh(self.nodes, within=60)
        return took

    async def fresh_start(self, dns: LabDns) -> None:
        """Stop every node, wipe its state (as a new install) and give all the same config:
        one seed name for node 0 and node N/2."""
        for n in self.nodes:
            if n.running:
                await self.mesh.stop(n)
            shutil.rmtree(n.directory / "state", ignore_errors=True)
        seeds = [self.nodes[0], self.nodes[len(self.nodes) // 2]]
        await dns.set("seed.lab", [str(n.host.underlay_v6.ip) for n in seeds])
        for n in self.nodes:
            dns.use(n.host)
            n.seeds = [f"seed.lab:{MESHD_PORT}"]
            self.mesh.write_config(n)

    async def start_all(self) -> float:
        """Start every node at once; returns the monotonic time the last API answered."""
        await asyncio.gather(*(self.mesh.start(n) for n in self.nodes))
        await asyncio.gather(*(self.mesh.wait_api(n, 60) for n in self.nodes))
        return time.monotonic()

    async def split_merge(self, dns: LabDns) -> float:
        await self.fresh_start(dns)
        t0 = time.monotonic()
        up = asyncio.create_task(self.start_all())
        await self.mesh.wait_full_mesh(self.nodes, within=120)
        done = time.monotonic()
        self.after_up.append(done - await up)
        return done - t0

    async def bridge_merge(self, dns: LabDns) -> float:
        await self.fresh_start(dns)
        half = len(self.nodes) // 2
        a, b = self.nodes[:half], self.nodes[half:]
        cut = await self.faults.partition([n.host for n in a], [n.host for n in b])
        await self.start_all()
        await self.mesh.wait_full_mesh(a, within=120)
        await self.mesh.wait_full_mesh(b, within=120)

        # Held until the start-up's join requests (5, 1 s apart) are over, so that only looking
        # across can merge the halves: every node has checked the seed it cannot reach 4 times.
        async def looked_across(n: MeshdNode) -> bool:
            return await n.metric("meshd_mesh_checks_total") >= 4

        await until_all(self.nodes, looked_across, time.monotonic(), 60, "looked across 4 times")
        await self.faults.restore(cut)
        t0 = time.monotonic()
        await self.mesh.wait_full_mesh(self.nodes, within=120)
        return time.monotonic() - t0

    async def partition(self) -> float:
        half = len(self.nodes) // 2
        a, b = self.nodes[:half], self.nodes[half:]
        cut = await self.faults.partition([n.host for n in a], [n.host for n in b])

        async def split(n: MeshdNode) -> bool:
            side = a if n in a else b
            return len(await n.wireguard_peers()) == len(side) - 1

        t0 = time.monotonic()
        await until_all(self.nodes, split, t0, 120, "the other half removed")
        await self.faults.restore(cut)
        t0 = time.monotonic()
        await self.mesh.wait_full_mesh(self.nodes, within=120)
        return time.monotonic() - t0


def save_logs(nodes: list[MeshdNode], directory: Path) -> None:
    """Every node's daemon log (debug level) as DIRECTORY/NAME.log."""
    directory.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        if node.log_path.exists():
            shutil.copyfile(node.log_path, directory / f"{node.name}.log")


def summary(name: str, runs: list[float]) -> dict[str, object]:
    return {name: round(statistics.median(runs), 3), f"{name}_runs": [round(x, 3) for x in runs]}


async def run(
    nodes: int,
    repeat: int,
    idle_seconds: float,
    keep_logs: Path | None = None,
    only: set[str] | None = None,
) -> dict[str, object]:
    if nodes < 4:
        raise ValueError("bench faults needs at least 4 nodes (a 50/50 partition of 2+2)")
    prefix = f"bf{os.getpid() % 100000:05d}"[:8]
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        # One host more than the mesh: the node that joins by the seed's DNS name.
        async with Lab(prefix, hosts=nodes + 1) as lab:
            mesh = MeshLab(lab, Path(tmp))
            members = [mesh.add_node(i, seeds=[0] if i else []) for i in range(nodes)]
            await mesh.start_mesh(members, within=120, batch=5)  # start-up is not measured
            bench = FaultBench(lab, mesh, members)
            dns = await LabDns.start(lab)
            await dns.set("seed.lab", [str(members[0].host.underlay_v6.ip)])
            spare = lab.hosts[nodes]
            dns.use(spare)
            figures: dict[str, object] = {"nodes": nodes, "repeat": repeat}
            await asyncio.sleep(IDLE_SETTLE_S)
            figures |= await bench.idle(idle_seconds)
            # Victims and movers rotate through the non-seed nodes.
            pick = [members[1 + r % (nodes - 1)] for r in range(repeat)]

            def pair_peer(r: int) -> MeshdNode:
                """Another non-seed node than pick[r]."""
                return members[1 + (r + 1) % (nodes - 1)]

            def nat_pair(r: int) -> list[MeshdNode]:
                """Two non-seed nodes other than pick[r]."""
                return [members[1 + (r + k) % (nodes - 1)] for k in (1, 2)]

            async def by_name(r: int) -> float:
                new = mesh.add_node(spare.index, seeds=[], name=f"byname{r}")
                new.seeds = [f"seed.lab:{MESHD_PORT}"]
                mesh.write_config(new)
                return await bench.dns_change(dns, members[0], new)

            phases: list[tuple[str, Callable[[int], Awaitable[float]]]] = [
                ("crash_removed_all_s", lambda r: bench.crash(pick[r], signal.SIGKILL)),
                ("leave_removed_all_s", lambda r: bench.crash(pick[r], signal.SIGTERM)),
                ("ip_change_resume_s", lambda r: bench.ip_change(pick[r])),
                ("dns_change_resume_s", by_name),
                ("partition_heal_s", lambda r: bench.partition()),
                ("nat_move_resume_s", lambda r: bench.nat_move(pick[r])),
                ("pair_cut_detected_s", lambda r: bench.pair_cut(pick[r], pair_peer(r))),
                (
                    "nat_peer_after_move_s",
                    lambda r: bench.nat_peer_after_move(pick[r], nat_pair(r)),
                ),
                # Last: they restart every node from a wiped state.
                ("split_merge_s", lambda r: bench.split_merge(dns)),
                ("bridge_merge_s", lambda r: bench.bridge_merge(dns)),
            ]

            async def timed(key: str, r: int, measure: Callable[[int], Awaitable[float]]) -> float:
                # Wall-clock start on stderr: an outlier can be found in the kept logs.
                started = time.strftime("%H:%M:%S")
                bench.done_at = {}
                took = await measure(r)
                print(f"bench faults: {key} run {r + 1}: started {started}, {took:.2f} s"
                      f" (slowest: {bench.slowest()})", file=sys.stderr)  # fmt: skip
                return took

            if only:
                unknown = only - {key for key, _ in phases}
                if unknown:
                    raise ValueError(f"--only: no phase {', '.join(sorted(unknown))}")
                phases = [(key, measure) for key, measure in phases if key in only]
            try:
                for key, measure in phases:
                    # A phase that times out leaves the mesh unhealthy: report what was
                    # measured up to there (the failure under "failed") rather than nothing.
                    try:
                        figures |= summary(key, [await timed(key, r, measure)
                                                 for r in range(repeat)])  # fmt: skip
                        if key == "leave_removed_all_s":
                            figures |= summary("leave_all_s", bench.leave_seen)
                        if key == "pair_cut_detected_s":
                            figures |= summary("pair_repaired_s", bench.repaired)
                        if key == "split_merge_s":
                            figures |= summary("split_merge_after_up_s", bench.after_up)
                    except TimeoutError as exc:
                        figures["failed"] = f"{key}: {exc}"
                        break
            finally:
                if keep_logs is not None:
                    save_logs(members, keep_logs)
            figures["membership_preset"] = mesh.membership
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.release()}"
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=10, help="mesh size (at least 4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each fault (median)")
    parser.add_argument(
        "--idle-seconds", type=float, default=30.0, help="idle traffic measuring window"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--only",
        metavar="KEYS",
        help="comma-separated phases to run (e.g. split_merge_s,bridge_merge_s); idle always",
    )
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy every daemon's log into DIR at the end"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench faults: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        only = set(args.only.split(",")) if args.only else None
        result = asyncio.run(run(args.nodes, args.repeat, args.idle_seconds, args.keep_logs, only))
    except ValueError as exc:
        print(f"bench faults: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        # The daemons' logs were printed above; on two busy cores a large lab can flap.
        print(f"bench faults: {exc} (is the machine busy? see `uptime`)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")
    if "failed" in result:
        print(f"bench faults: {result['failed']} (is the machine busy?)", file=sys.stderr)
        return 1
    return 0
