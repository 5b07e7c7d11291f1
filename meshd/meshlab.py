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
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd import keyfiles
from meshd.adapters.wireguard import UapiClient, decode_uapi_get
from meshd.ca import CertificateAuthority
from meshd.client import MeshdClient, MeshdNotAnswering, MeshdNotRunning
from meshd.core.cert import Certificate
from meshd.core.identity import SigningKey
from meshd.lab import Lab, LabHost, wait_for

MESHD_PORT = 51821


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

    async def wg_public_key(self) -> bytes:
        """This node's WireGuard public key (kept in its state directory across restarts, so
        it is read once, while the node runs)."""
        if self._wg_public_key is None:
            status = await self.status()
            if status is None:
                raise RuntimeError(f"meshd {self.name} does not answer:\n{self.log_tail()}")
            self._wg_public_key = base64.b64decode(status["node"]["wg_public_key"])
        return self._wg_public_key

    async def wireguard_peers(self) -> dict[bytes, tuple[str, ...]]:
        """Public key -> AllowedIPs as wireguard-go reports them (read over UAPI directly)."""
        client = UapiClient(self.host.wg_dir / "mesh0.sock")
        try:
            status = decode_uapi_get(await client.get())
        finally:
            client.close()
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
        ca: CertificateAuthority | None = None,
        **extra: Any,
    ) -> MeshdNode:
        """Certificate, key and config for a meshd on lab host `index`, joining through the
        meshd ports of the hosts in `seeds` (by index, IPv6 underlay). `ca`: issue the
        certificate from (and trust) another CA than the mesh's, as a rogue node would."""
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
            prefixes=[],
            roles=[],
            not_before=now - 300,
            not_after=now + 30 * 86400,
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
        await self.wait_api(nodes[0])
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
