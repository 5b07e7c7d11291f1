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
from meshd.client import ApiError, MeshdClient
from meshd.core.cert import Certificate
from meshd.core.errors import MeshError
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
        """The node's `meshctl status --json`, or None while it does not answer (not running,
        or no answer within the client's timeout, as on a starved machine)."""
        try:
            return await self.client.status()
        except ApiError:
            raise  # it answered, with an error: a real failure
        except (MeshError, OSError):  # MeshdNotRunning, or the client's timeout
            return None

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
        self, index: int, seeds: list[int], name: str | None = None, **extra: Any
    ) -> MeshdNode:
        """Certificate, key and config for a meshd on lab host `index`, joining through the
        meshd ports of the hosts in `seeds` (by index, IPv6 underlay)."""
        host = self.lab.hosts[index]
        name = name or f"node{index}"
        directory = self.workdir / name
        identity = SigningKey(os.urandom(32))
        now = int(time.time())
        cert = self.ca.issue(
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
        keyfiles.write_public(directory / "ca.pub", (self.workdir / "ca" / "ca.pub").read_bytes())
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

    async def start_mesh(self, nodes: list[MeshdNode], within: float = 40.0) -> float:
        """Start the first node (the seed of the others), wait for its API, start the rest at
        once, and wait until every node sees every other alive with a handshake. Returns the
        seconds the last step took."""
        await self.start(nodes[0])
        await self.wait_api(nodes[0])
        await asyncio.gather(*(self.start(n) for n in nodes[1:]))
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
        async def done() -> bool:
            results = await asyncio.gather(*(self.sees(n, nodes) for n in nodes))
            return all(results)

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
