"""Real meshd processes on a namespace lab: the harness of the daemon tests, the demo and the
benchmarks (root only).

    async with Lab(prefix, hosts=5) as lab:
        mesh = MeshLab(lab, workdir)            # a CA in workdir/ca
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(5)]
        for n in nodes:
            await mesh.start(n)
        await mesh.wait_full_mesh(nodes, within=30)

Each node gets its own certificate, identity key, state directory, API socket and log file
under `workdir/NAME/`, and a private /var/run/wireguard from the lab. The lab's cleanup stops the
processes; `stop()` is for tests that check a graceful exit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd import keyfiles
from meshd.adapters.wireguard import DeviceStatus, KernelBackend, UapiClient, decode_uapi_get
from meshd.ca import CertificateAuthority
from meshd.client import MeshdClient, MeshdNotAnswering, MeshdNotRunning
from meshd.config import Config
from meshd.core.cert import Certificate
from meshd.core.identity import SigningKey
from meshd.lab import Container, Internet, Lab, LabHost, fetch, wait_for

MESHD_PORT = 51821

_UPLINK_CUT = """table inet meshd_lab_cut {{
  chain out {{ type filter hook output priority 0;
    oifname "wan0" udp sport {{ {ports} }} drop; oifname "wan0" udp dport {{ {ports} }} drop; }};
  chain in {{ type filter hook input priority 0;
    iifname "wan0" udp dport {{ {ports} }} drop; iifname "wan0" udp sport {{ {ports} }} drop; }};
}}"""
"""No WireGuard or meshd datagram through a gateway's uplink (`EgressLab.failover`)."""


@dataclass
class MeshdNode:
    host: LabHost
    name: str
    directory: Path
    cert: Certificate
    seeds: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    _wg_public_key: bytes | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "meshd.toml"

    @property
    def socket(self) -> Path:
        return self.directory / "meshd.sock"

    @property
    def log_path(self) -> Path:
        return self.directory / "meshd.log"

    @property
    def overlay_v6(self) -> str:
        return self.cert.addresses[0]

    @property
    def client(self) -> MeshdClient:
        return MeshdClient(self.socket, timeout=5.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def status(self) -> dict[str, Any] | None:
        """The node's `meshctl status --json`, or None while it does not answer (not running
        yet, or too busy to answer within the client's timeout, as a node starved of CPU in a
        large lab can be)."""
        try:
            return await self.client.status()
        except (MeshdNotRunning, MeshdNotAnswering, OSError):
            return None

    async def metric(self, name: str, label: str = "") -> float:
        """The sum of the samples of metric `name` (every label set, or only those whose line
        contains `label`) on the node's /metrics; 0.0 when it has none or does not answer."""
        try:
            text = await self.client.metrics()
        except (MeshdNotRunning, MeshdNotAnswering, OSError):
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")) and label in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def wg_public_key(self) -> bytes:
        """This node's WireGuard public key (kept in its state directory across restarts, so
        it is read once, while the node runs)."""
        if self._wg_public_key is None:
            status = await self.status()
            if status is None:
                raise RuntimeError(f"meshd {self.name} does not answer:\n{self.log_tail()}")
            self._wg_public_key = base64.b64decode(status["node"]["wg_public_key"])
        return self._wg_public_key

    async def wireguard_status(self) -> DeviceStatus:
        """mesh0 as WireGuard reports it, read directly (not through meshd): over wireguard-go's
        UAPI socket when there is one, else from the kernel module (generic netlink)."""
        socket = self.host.wg_dir / "mesh0.sock"
        if socket.exists():
            client = UapiClient(socket)
            try:
                return decode_uapi_get(await client.get())
            finally:
                client.close()
        status = await KernelBackend(self.host.netns).read("mesh0")
        if status is None:
            raise RuntimeError(f"{self.name}: no mesh0 (neither wireguard-go nor kernel)")
        return status

    async def wireguard_peers(self) -> dict[bytes, tuple[str, ...]]:
        """Public key -> AllowedIPs as WireGuard reports them (`wireguard_status`)."""
        status = await self.wireguard_status()
        return {k: tuple(str(p) for p in s.peer.allowed_ips) for k, s in status.peers.items()}


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


class MeshLab:
    def __init__(self, lab: Lab, workdir: Path, mesh: str = "lab", membership: str = "lan"):
        self.lab = lab
        self.workdir = workdir
        self.mesh = mesh
        self.membership = membership
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority.init(workdir / "ca", mesh, force=True)

    def add_node(
        self,
        index: int,
        seeds: list[int],
        name: str | None = None,
        prefixes: list[str] | None = None,
        valid_for_s: int = 30 * 86400,
        ca: CertificateAuthority | None = None,
        **extra: Any,
    ) -> MeshdNode:
        """Certificate (valid from 5 minutes ago until `valid_for_s` from now), key and config
        for a meshd on lab host `index`, joining through the meshd ports of the hosts in `seeds`
        (by index, IPv6 underlay). The certificate grants `prefixes`; `extra` are config
        fields. `ca`: issue the certificate from (and trust) another CA than the mesh's, as a
        rogue node would."""
        host = self.lab.hosts[index]
        name = name or f"node{index}"
        directory = self.workdir / name
        identity = SigningKey(os.urandom(32))
        now = int(time.time())
        ca = ca or self.ca
        cert = ca.issue(
            name=name,
            identity_key=identity.public,
            ipv4="auto",
            ipv4_pool="100.64.0.0/16",
            prefixes=prefixes or [],
            roles=[],
            not_before=now - 300,
            not_after=now + valid_for_s,
        )
        keyfiles.write_secret(
            directory / "identity.key", keyfiles.encode_key(identity.seed), overwrite=True
        )
        keyfiles.write_public(
            directory / "node.cert", keyfiles.armor(keyfiles.CERT_LABEL, cert.raw)
        )
        keyfiles.write_public(directory / "ca.pub", (ca.directory / "ca.pub").read_bytes())
        seed_addrs = [f"[{self.lab.hosts[s].underlay_v6.ip}]:{MESHD_PORT}" for s in seeds]
        node = MeshdNode(host, name, directory, cert, seed_addrs, extra)
        self.write_config(node)
        return node

    def write_config(self, node: MeshdNode) -> None:
        d = node.directory
        settings: dict[str, Any] = {
            "mesh": self.mesh,
            "ca_public_key": str(d / "ca.pub"),
            "certificate": str(d / "node.cert"),
            "identity_key": str(d / "identity.key"),
            "state_dir": str(d / "state"),
            "socket": str(node.socket),
            "wireguard_run_dir": str(node.host.wg_dir),
            "membership": self.membership,
            "seeds": node.seeds,
            "log_level": "debug",
        }
        settings.update(node.extra)
        text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.items())
        node.config_path.write_text(text)

    async def start(self, node: MeshdNode) -> None:
        node.started_at = time.monotonic()
        node.proc = await node.host.spawn(
            sys.executable,
            "-m",
            "meshd.daemon",
            "--config",
            str(node.config_path),
            log=node.log_path,
        )

    async def start_mesh(
        self, nodes: list[MeshdNode], within: float = 40.0, batch: int | None = None
    ) -> float:
        """Start the first node (the seed of the others), wait for its API, start the rest at
        once (or `batch` at a time, each batch up before the next: a Python daemon needs about
        a second of CPU to start, and 30 starting at once on two cores starve the ones already
        running into suspicion), and wait until every node sees every other alive with a
        handshake. Returns the seconds the last step took."""
        await self.start(nodes[0])
        await self.wait_api(nodes[0], max(20.0, within / 2))
        rest = nodes[1:]
        step = batch or len(rest) or 1
        for i in range(0, len(rest), step):
            group = rest[i : i + step]
            await asyncio.gather(*(self.start(n) for n in group))
            if batch:
                await asyncio.gather(*(self.wait_api(n, within) for n in group))
        return await self.wait_full_mesh(nodes, within)

    async def wait_api(self, node: MeshdNode, within: float = 20.0) -> None:
        async def up() -> bool:
            if node.proc is not None and node.proc.returncode is not None:
                raise RuntimeError(
                    f"meshd {node.name} exited {node.proc.returncode}:\n{node.log_tail()}"
                )
            return await node.status() is not None

        await wait_for(up, within, f"meshd {node.name} API", 0.05)

    async def stop(self, node: MeshdNode, sig: int = signal.SIGTERM, within: float = 15.0) -> int:
        """Signal the node and wait for it to exit; returns its exit code (-9 after SIGKILL)."""
        assert node.proc is not None
        if node.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(sig)
        # `ip netns exec` execs the command, so the PID is meshd's own.
        try:
            return await asyncio.wait_for(node.proc.wait(), within)
        except TimeoutError:
            raise TimeoutError(
                f"meshd {node.name} still running {within:.0f} s after signal {sig}:\n"
                f"{node.log_tail(30)}"
            ) from None

    async def sees(self, node: MeshdNode, others: list[MeshdNode]) -> bool:
        """`node` has every node of `others` alive, with a WireGuard handshake."""
        status = await node.status()
        if status is None:
            return False
        alive = {
            p["name"]
            for p in status["peers"]
            if p["state"] == "alive" and p["handshake_age_s"] is not None
        }
        return {o.name for o in others if o is not node} <= alive

    async def wait_full_mesh(self, nodes: list[MeshdNode], within: float = 30.0) -> float:
        """Wait until every node sees every other alive with a handshake; returns seconds.
        Nodes already there are not asked again until all are (then all are checked once
        more): in a 30-node lab, asking every node every 50 ms costs the daemons CPU."""
        pending = list(nodes)

        async def done() -> bool:
            nonlocal pending
            results = await asyncio.gather(*(self.sees(n, nodes) for n in pending))
            pending = [n for n, ok in zip(pending, results, strict=True) if not ok]
            if pending:
                return False
            results = await asyncio.gather(*(self.sees(n, nodes) for n in nodes))
            pending = [n for n, ok in zip(nodes, results, strict=True) if not ok]
            return not pending

        try:
            return await wait_for(done, within, "every node to see every other alive", 0.05)
        except TimeoutError:
            for n in nodes:
                status = await n.status()
                peers = [
                    (p["name"], p["state"], p["handshake_age_s"])
                    for p in (status or {}).get("peers", [])
                ]
                print(f"--- {n.name}: {peers}\n{n.log_tail(15)}", file=sys.stderr)
            raise

    async def wireguard_peer_names(self, nodes: list[MeshdNode]) -> dict[str, set[str]]:
        """Node name -> names of the peers in its wireguard-go (keys of nodes outside `nodes`
        appear as `?KEYID`), for every running node of `nodes`. The keys of nodes that are
        down now must have been read before (`wg_public_key`)."""
        names = {await n.wg_public_key(): n.name for n in nodes if n.running or n._wg_public_key}
        out = {}
        for n in nodes:
            if n.running:
                out[n.name] = {names.get(k, f"?{k[:8].hex()}") for k in await n.wireguard_peers()}
        return out

    async def wait_every_pair_pings(
        self, nodes: list[MeshdNode], within: float, interval: float = 0.5
    ) -> None:
        """Wait until every ordered pair of `nodes` pings; AssertionError naming the pairs
        that still do not at the deadline."""
        unreachable: list[str] = []

        async def all_ping() -> bool:
            nonlocal unreachable
            unreachable = await self.unreachable_pairs(nodes, within=1)
            return not unreachable

        try:
            await wait_for(all_ping, within, "every pair to ping", interval)
        except TimeoutError:
            raise AssertionError(f"{within} s on, pairs that do not ping: {unreachable}") from None

    async def degraded_pairs(self, nodes: list[MeshdNode]) -> list[str]:
        """Every `a->b` where node a reports its pair with b degraded (meshctl status)."""
        out = []
        for a in nodes:
            status = await a.status()
            for p in (status or {}).get("peers", []):
                if p.get("degraded_for_s") is not None:
                    out.append(f"{a.name}->{p['name']}")
        return out

    async def unreachable_pairs(self, nodes: list[MeshdNode], within: float = 2.0) -> list[str]:
        """Every ordered pair `a->b` of `nodes` whose IPv6 overlay ping goes unanswered (each
        node pings the others one after another; the nodes run in parallel)."""

        async def from_one(a: MeshdNode) -> list[str]:
            return [
                f"{a.name}->{b.name}"
                for b in nodes
                if b is not a and not await a.host.ping(b.overlay_v6, within=within)
            ]

        return [pair for pairs in await asyncio.gather(*map(from_one, nodes)) for pair in pairs]


# --- gateways and a simulated internet ------------------------------------------------------

PROTECTED = "2001:db8:ff::/48"
EXIT = ["::/0", "0.0.0.0/0"]


@dataclass
class EgressLab:
    lab: Lab
    internet: Internet
    mesh: MeshLab
    client: MeshdNode
    gateways: list[MeshdNode]
    container: Container
    """A ULA-only container behind the client (its bridge in `egress_bridges`)."""
    baseline: dict[str, dict[str, object]]
    """`host_traces` of every lab host before meshd started."""

    def uplink_v6(self, node: MeshdNode) -> str:
        return str(self.internet.uplinks[node.host.index][0])

    def uplink_v4(self, node: MeshdNode) -> str:
        return str(self.internet.uplinks[node.host.index][1])

    async def exit_gateway(self, prefix: str = "::/0") -> MeshdNode | None:
        """The gateway the client routes `prefix` through now (from its status)."""
        status = await self.client.status()
        name = (status or {}).get("node", {}).get("routes", {}).get(prefix, {}).get("gateway")
        return next((g for g in self.gateways if g.name == name), None)

    async def fetch(self, address: str, within: float = 2.0) -> str | None:
        """What a server says when the client connects to it: the source it saw, or None."""
        return await fetch(self.client.host.netns, address, 80, within)

    @property
    def nat64_address(self) -> str:
        """The IPv4-only server's address under the NAT64 prefix 64:ff9b::/96."""
        return str(ipaddress.IPv6Address("64:ff9b::") + int(self.internet.server_v4))

    async def container_fetch(self, address: str, within: float = 2.0) -> str | None:
        return await fetch(self.container.netns, address, 80, within)

    async def inbound_answers(self, gateway: MeshdNode) -> tuple[bool, bool]:
        """The internet routes the mesh /48 to `gateway` and pings (the gateway's overlay
        address, the client's): an egress-only gateway answers itself, never lets it through."""
        mesh48 = ipaddress.ip_network(f"{self.client.overlay_v6}/48", strict=False)
        await self.internet.run(
            "ip", "route", "replace", str(mesh48), "via", self.uplink_v6(gateway)
        )
        return (
            await self.internet.ping(gateway.overlay_v6),
            await self.internet.ping(self.client.overlay_v6),
        )

    async def failover(self, active: MeshdNode, within: float = 30.0) -> float:
        """Cut `active` off the mesh (its eth0 goes down, and no WireGuard or meshd datagram
        passes its uplink wan0) and return the seconds until the client's traffic to the IPv6
        server leaves through the other exit.

        Why wan0 too: both exits' uplinks are on one LAN here, and a gateway whose eth0 went
        down announces its wan0 addresses. The other gateway then reaches it over that LAN
        (IPv4 first on a shared link, D19) while the client cannot, and the client's indirect
        probes through the other gateway keep it alive: the client would keep routing into a
        tunnel that is down. A limitation of SWIM-style membership with a partly reachable
        gateway (docs/egress.md), not what this failover measures."""
        other = next(g for g in self.gateways if g is not active)
        rules = _UPLINK_CUT.format(ports=f"{Config().listen_port}, {MESHD_PORT}")
        cut = time.monotonic()
        await active.host.run("nft", " ".join(rules.split()))
        await active.host.run("ip", "link", "set", "dev", "eth0", "down")

        async def through_other() -> bool:
            address = str(self.internet.server_v6)
            return await self.fetch(address, within=0.5) == self.uplink_v6(other)

        await wait_for(through_other, within, f"traffic to move to {other.name}", 0.0)
        return time.monotonic() - cut

    async def stop_all(self) -> dict[str, dict[str, object]]:
        """SIGTERM every meshd; returns `host_traces` of each host afterwards (by host)."""
        nodes = [self.client, *self.gateways]
        await asyncio.gather(*(self.mesh.stop(n, signal.SIGTERM) for n in nodes))
        return {f"h{n.host.index}": await host_traces(n.host) for n in nodes}


async def start_egress_lab(lab: Lab, workdir: Path) -> EgressLab:
    """The egress topology, servers listening, the mesh formed and the client's routes chosen
    (tests/netns/test_egress.py, bench/egress.py):

        h0 client, IPv6-only container  --mesh--  h1 gw-a: exit + NAT64  --+-- internet
                                                  h2 gw-b: exit          --+

    Exits advertise ::/0 and 0.0.0.0/0 (NAT66 and NAT44), gw-a also 64:ff9b::/96 (tayga).
    """
    internet = await lab.add_internet(uplinks=[1, 2])
    for server in (internet.server_v6, internet.server_v4, internet.management_v6):
        await internet.serve(str(server))
    container = await lab.add_container(0)
    for host in lab.hosts:  # hosts that do not forward (new namespaces may copy the machine's)
        await host.run(
            "sysctl", "-q", "-w", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"
        )
    baseline = {f"h{h.index}": await host_traces(h) for h in lab.hosts}
    mesh = MeshLab(lab, workdir)
    gateway: dict[str, Any] = {"egress_nat": True, "protected_ranges": [PROTECTED]}
    gw_a = mesh.add_node(
        1, seeds=[], name="gw-a", prefixes=[*EXIT, "64:ff9b::/96"],
        advertise_prefixes=[*EXIT, "64:ff9b::/96"], nat64=True, **gateway,
    )  # fmt: skip
    gw_b = mesh.add_node(
        2, seeds=[1], name="gw-b", prefixes=EXIT, advertise_prefixes=EXIT, **gateway
    )
    client = mesh.add_node(
        0, seeds=[1], name="client", accept_routes=["64:ff9b::/96"], use_exit=True,
        egress_bridges=[container.bridge],
    )  # fmt: skip
    await mesh.start_mesh([gw_a, gw_b, client])
    egress = EgressLab(lab, internet, mesh, client, [gw_a, gw_b], container, baseline)

    async def settled() -> bool:
        # Routes chosen with the gateway's probe RTT known: a choice made before (by node ID)
        # moves once the first RTTs come in; after that only a clearly faster gateway or a
        # failure moves it.
        status = await client.status()
        routes = status["node"]["routes"] if status else {}
        return routes.keys() == {*EXIT, "64:ff9b::/96"} and all(
            r["rtt_ms"] is not None for r in routes.values()
        )

    await wait_for(settled, 30, "the client to route the exits and NAT64 (RTTs known)")
    return egress


async def host_traces(host: LabHost) -> dict[str, object]:
    """Everything meshd may have changed in a host's namespace."""
    nft = await host.run("nft", "list", "table", "inet", "meshd", check=False)
    routes = await host.run("ip", "-j", "route", "show", "table", "all", "proto", "109")
    routes6 = await host.run("ip", "-j", "-6", "route", "show", "table", "all", "proto", "109")
    rules = [
        r
        for family in ("-4", "-6")
        for r in json.loads((await host.run("ip", "-j", family, "rule")).stdout)
        if r.get("protocol") == "109"
    ]
    links = [link["ifname"] for link in json.loads((await host.run("ip", "-j", "link")).stdout)]
    forwarding = (
        await host.run("sysctl", "-n", "net.ipv6.conf.all.forwarding", "net.ipv4.ip_forward")
    ).stdout.split()
    return {
        "nft_table": nft.returncode == 0,
        "routes": json.loads(routes.stdout) + json.loads(routes6.stdout),
        "rules": rules,
        "links": sorted(links),
        "forwarding": forwarding,
        "processes": await host.processes(),
    }
