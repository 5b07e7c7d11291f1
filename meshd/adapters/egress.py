"""Gateway roles on this node: IP forwarding, the nftables table `inet meshd`, and tayga (NAT64).

What a gateway needs, and what meshd does about it (docs/egress.md has the operator's view):

* **Forwarding**: `net.ipv6.conf.all.forwarding` / `net.ipv4.ip_forward` are switched on for the
  families the node routes for. The values found are saved in the state directory *before*
  they change and written back on stop; after a crash the saved file, not the current value,
  is the truth, so a restart never "restores" meshd's own change.
* **nftables**: everything lives in one table, `inet meshd`, replaced atomically with one
  `nft -f` transaction (`table` + `delete table` + the new table: the usual idiom, which works
  whether or not it existed) and deleted on stop. meshd never edits another table.
  - egress only: forwarded packets may go out of the mesh interface (with `egress_nat`) or a
    listed container bridge only as part of a connection that started inside
    (`ct state established,related`);
  - masquerade: new connections coming from the mesh (with `egress_nat`), tayga's IPv4 pool
    and the bridges get a conntrack mark in `forward`; `postrouting` masquerades marked
    connections on their way out (bridge traffic also into the mesh: see `render_ruleset`).
    Marking by input interface needs no list of mesh prefixes;
  - control-plane protection (`protected_ranges`): packets arriving on the mesh interface for
    those ranges are dropped in `prerouting`, before they are routed or delivered.
* **tayga**: a persistent tun (`meshd-nat64`), routes for the NAT64 prefix and the IPv4 pool
  (with meshd's route protocol number), and a supervised `tayga --nodetach`; config and
  dynamic map in `STATE_DIR/tayga/`. tayga's own IPv6 address (for the ICMPv6 errors it
  sends) is this node's overlay address: unique, and routed to this node already.

Every step is idempotent: starting over a leftover of a crashed run converges to the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from meshd.core.errors import MeshError
from meshd.core.wgplan import MESHD_ROUTE_PROTO, Prefix, as_prefix

log = logging.getLogger(__name__)

TABLE = "meshd"
"""nftables table (family inet) that meshd owns."""
CT_MARK = 0x6D65
"""Conntrack mark of connections from the mesh (or tayga) that meshd masquerades."""
BRIDGE_MARK = 0x6D66
"""Conntrack mark of connections from a container bridge (masqueraded into the mesh too)."""
TAYGA_TUN = "meshd-nat64"
FORWARDING = {
    6: Path("/proc/sys/net/ipv6/conf/all/forwarding"),
    4: Path("/proc/sys/net/ipv4/ip_forward"),
}
TAYGA_RESTART_MAX_S = 10.0
"""Longest wait between restarts of a tayga that keeps exiting (doubling from 0.5 s)."""


class EgressError(MeshError):
    """A gateway role could not be set up; the message names the step."""


@dataclass(frozen=True)
class GatewayRoles:
    """What this node does as a gateway (from the configuration)."""

    interface: str
    """The mesh interface."""
    advertised: tuple[Prefix, ...] = ()
    egress_nat: bool = False
    bridges: tuple[str, ...] = ()
    protected: tuple[Prefix, ...] = ()
    nat64_prefix: Prefix | None = None
    """None: no NAT64."""
    nat64_pool: Prefix = field(default_factory=lambda: as_prefix("192.168.255.0/24"))

    @property
    def active(self) -> bool:
        return bool(
            self.advertised
            or self.egress_nat
            or self.protected
            or self.nat64_prefix
            or self.bridges
        )

    def forwarding_families(self) -> list[int]:
        """IP versions this node must forward: those it advertises routes for; IPv4 also for
        NAT64 (tayga's IPv4 side leaves through the kernel) and both for container bridges."""
        families = {p.version for p in self.advertised}
        if self.nat64_prefix is not None:
            families |= {4, 6}
        if self.bridges:
            families |= {4, 6}
        return sorted(families)


def _names(names: list[str]) -> str:
    return "{ " + ", ".join(json.dumps(n) for n in names) + " }"


def render_ruleset(roles: GatewayRoles) -> str:
    """The `nft -f` input that replaces table `inet meshd` with what `roles` need."""
    mesh = json.dumps(roles.interface)
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    v4 = [str(p) for p in roles.protected if p.version == 4]
    v6 = [str(p) for p in roles.protected if p.version == 6]
    if v4 or v6:
        lines += [
            "  chain protect {",
            "    type filter hook prerouting priority filter; policy accept;",
        ]
        if v4:
            lines.append(f"    iifname {mesh} ip daddr {{ {', '.join(v4)} }} counter drop")
        if v6:
            lines.append(f"    iifname {mesh} ip6 daddr {{ {', '.join(v6)} }} counter drop")
        lines.append("  }")
    # Connections that start on the mesh (exit) or in tayga's pool are masqueraded on their way
    # out of anything but the mesh; those from a container bridge on their way out of anything,
    # the mesh included: behind a client, the bridge's ULA prefix is no certified address, so
    # it leaves as the node's overlay address, and again as the exit's address at the exit.
    from_mesh = [roles.interface] if roles.egress_nat else []
    from_mesh += [TAYGA_TUN] if roles.nat64_prefix is not None else []
    inside = [*([roles.interface] if roles.egress_nat else []), *roles.bridges]
    if from_mesh or roles.bridges:
        lines += [
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            "    ct state established,related accept",
        ]
        if inside:
            # Egress only: nothing from outside starts a connection into the mesh or a bridge.
            lines.append(f"    oifname {_names(inside)} counter drop")
        if from_mesh:
            lines.append(f"    iifname {_names(from_mesh)} ct mark set {CT_MARK:#x}")
        if roles.bridges:
            lines.append(f"    iifname {_names(list(roles.bridges))} ct mark set {BRIDGE_MARK:#x}")
        lines += [
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
        ]
        if from_mesh:
            lines.append(
                f"    oifname != {_names([roles.interface, TAYGA_TUN])} ct mark {CT_MARK:#x}"
                " masquerade"
            )
        if roles.bridges:
            lines.append(
                f"    oifname != {json.dumps(TAYGA_TUN)} ct mark {BRIDGE_MARK:#x} masquerade"
            )
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_tayga_config(roles: GatewayRoles, own_v6: str, data_dir: Path) -> str:
    assert roles.nat64_prefix is not None
    pool = roles.nat64_pool
    return (
        f"tun-device {TAYGA_TUN}\n"
        f"ipv4-addr {pool.network_address + 1}\n"
        f"ipv6-addr {own_v6}\n"
        f"prefix {roles.nat64_prefix}\n"
        f"dynamic-pool {pool}\n"
        f"data-dir {data_dir}\n"
    )


async def _run(*argv: str, stdin: bytes | None = None, check: bool = True) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise EgressError(f"running {argv[0]}: {exc.strerror}") from None
    out, err = await proc.communicate(stdin)
    if check and proc.returncode != 0:
        raise EgressError(f"running {' '.join(argv)}: {err.decode().strip()}")
    return out.decode()


class EgressGateway:
    """Sets up the roles on start, supervises tayga, and removes everything on stop."""

    def __init__(
        self, roles: GatewayRoles, state_dir: Path, own_v6: str, tayga: str = "/usr/sbin/tayga"
    ) -> None:
        self.roles = roles
        self.state_dir = state_dir
        self.own_v6 = own_v6
        self.tayga = tayga
        self.saved_sysctls = state_dir / "egress-sysctl.json"
        self.tayga_dir = state_dir / "tayga"
        self.tayga_pidfile = self.tayga_dir / "tayga.pid"
        self._tayga_task: asyncio.Task[None] | None = None
        self._tayga_proc: asyncio.subprocess.Process | None = None
        self.tayga_starts = 0

    async def start(self) -> None:
        if not self.roles.active:
            return
        self._enable_forwarding()
        if self.roles.nat64_prefix is not None:
            await self._setup_tayga()
        ruleset = render_ruleset(self.roles)
        await _run("nft", "-f", "-", stdin=ruleset.encode())
        log.info(
            "gateway roles on: forwarding IPv%s, nftables table inet %s%s",
            "/IPv".join(str(f) for f in self.roles.forwarding_families()) or " none",
            TABLE,
            f", NAT64 {self.roles.nat64_prefix} via tayga" if self.roles.nat64_prefix else "",
        )

    async def stop(self) -> None:
        """Undo everything; each step on its own, so one failure does not leave the rest."""
        if not self.roles.active and not self.saved_sysctls.exists():
            return
        if self._tayga_task is not None:
            self._tayga_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tayga_task
            self._tayga_task = None
        if self.roles.nat64_prefix is not None or (self.tayga_dir / "tayga.conf").exists():
            conf = self.tayga_dir / "tayga.conf"
            if conf.exists():
                with contextlib.suppress(EgressError):
                    await _run(self.tayga, "--rmtun", "-c", str(conf), check=False)
            # The tun's routes went with it; a tun left by another tayga config goes here.
            await _run("ip", "link", "del", "dev", TAYGA_TUN, check=False)
        await _run("nft", "delete", "table", "inet", TABLE, check=False)
        self._restore_forwarding()

    # --- sysctls ----------------------------------------------------------------------------

    def _enable_forwarding(self) -> None:
        """Switch forwarding on where it is off. Only what changes is saved (and later
        restored): a value already 1 (set by the operator, or `--sysctl` in a container, where
        /proc/sys is read-only) is not written at all."""
        saved: dict[str, str] = {}
        if self.saved_sysctls.exists():
            # A run that did not stop cleanly: its saved values are the originals.
            saved = json.loads(self.saved_sysctls.read_text())
        todo = []
        for family in self.roles.forwarding_families():
            path = FORWARDING[family]
            current = path.read_text().strip()
            if current != "1":
                saved.setdefault(str(path), current)
                todo.append((family, path))
        if saved:
            tmp = self.saved_sysctls.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved))
            os.replace(tmp, self.saved_sysctls)
        for family, path in todo:
            try:
                path.write_text("1")
            except OSError as exc:
                raise EgressError(f"enabling IPv{family} forwarding: {exc.strerror}") from None

    def _restore_forwarding(self) -> None:
        if not self.saved_sysctls.exists():
            return
        try:
            saved = json.loads(self.saved_sysctls.read_text())
            for path, value in saved.items():
                Path(path).write_text(value)
            self.saved_sysctls.unlink()
        except (OSError, ValueError) as exc:
            log.error("restoring forwarding sysctls from %s: %s", self.saved_sysctls, exc)

    # --- tayga ------------------------------------------------------------------------------

    async def _setup_tayga(self) -> None:
        roles = self.roles
        assert roles.nat64_prefix is not None
        self.tayga_dir.mkdir(mode=0o700, exist_ok=True)
        await self._stop_stale_tayga()
        conf = self.tayga_dir / "tayga.conf"
        conf.write_text(render_tayga_config(roles, self.own_v6, self.tayga_dir))
        await _run(self.tayga, "--mktun", "-c", str(conf))
        await _run("ip", "link", "set", "dev", TAYGA_TUN, "up")
        for prefix in (roles.nat64_prefix, roles.nat64_pool):
            await _run(
                "ip", "route", "replace", str(prefix), "dev", TAYGA_TUN,
                "proto", str(MESHD_ROUTE_PROTO),
            )  # fmt: skip
        self._tayga_task = asyncio.get_running_loop().create_task(self._supervise_tayga(conf))

    def _stale_tayga_pid(self) -> int | None:
        """The PID in our tayga pidfile, if that process still is a tayga using our config."""
        try:
            pid = int(self.tayga_pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if Path(cmdline[0].decode()).name != "tayga":
            return None
        return pid if str(self.tayga_dir / "tayga.conf").encode() in cmdline else None

    async def _stop_stale_tayga(self) -> None:
        """A tayga left running by a meshd that was killed holds the tun, and a second one
        cannot attach to it: stop the old one, found by the pidfile in our state directory."""
        pid = self._stale_tayga_pid()
        if pid is None:
            return
        log.warning("stopping tayga (pid %d) left by an earlier run", pid)
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):  # not our child: poll for up to 2 s
                await asyncio.sleep(0.02)
                os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone

    async def _supervise_tayga(self, conf: Path) -> None:
        backoff = 0.5
        while True:
            self.tayga_starts += 1
            proc = await asyncio.create_subprocess_exec(
                self.tayga, "--nodetach", "--pidfile", str(self.tayga_pidfile), "-c", str(conf),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            self._tayga_proc = proc
            try:
                _, err = await proc.communicate()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                raise
            log.warning(
                "tayga exited (%s): %s; restarting in %.1f s",
                proc.returncode, err.decode().strip()[-300:] or "no message", backoff,
            )  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, TAYGA_RESTART_MAX_S)


def roles_from_config(
    interface: str,
    advertise_prefixes: list[str],
    egress_nat: bool,
    egress_bridges: list[str],
    protected_ranges: list[str],
    nat64: bool,
    nat64_prefix: str,
    nat64_pool: str,
) -> GatewayRoles:
    return GatewayRoles(
        interface=interface,
        advertised=tuple(as_prefix(p) for p in advertise_prefixes),
        egress_nat=egress_nat,
        bridges=tuple(egress_bridges),
        protected=tuple(as_prefix(p) for p in protected_ranges),
        nat64_prefix=as_prefix(nat64_prefix) if nat64 else None,
        nat64_pool=ipaddress.ip_network(nat64_pool),
    )
