"""A network-namespace lab: N hosts on one bridge, for tests, the demo and benchmarks (root only).

    async with Lab("m12345", hosts=3) as lab:
        h0, h1 = lab.hosts[0], lab.hosts[1]
        await h0.run("ping", "-c1", str(h1.underlay_v6.ip))
        backend = h0.userspace_backend()      # wireguard-go in h0 with a private socket dir

Layout: a switch namespace `PREFIX-sw` holds bridge `br0`; host i is namespace `PREFIX-hI` with
`eth0` (underlay fd9a:<run>::I+1/64 and 10.<run>.0.I+1/24) on the bridge. Everything the lab makes
is named after PREFIX and removed on exit, also when the body raised: processes started in
the namespaces (by PID, found with `ip netns pids`), the namespaces, /etc/netns/NS, and the
per-host WireGuard socket directories.

Traps handled (docs/dataplane.md, PLATFORM.md): every veth end gets its own interface index
(equal indexes on a pair delay carrier and link-local by up to 1 s), addresses are added
`nodad`, and `__aenter__` returns only when every eth0 has carrier and a usable link-local.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from meshd.adapters.wireguard import UserspaceBackend

log = logging.getLogger(__name__)

LAB_ROOT = Path("/run/meshd-lab")


class LabError(Exception):
    """A lab command failed; the message holds the command and its stderr."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def _exec(*argv: str, check: bool = True, within: float = 20.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise LabError(f"running {' '.join(argv)}: timed out after {within} s") from None
    result = Result(proc.returncode or 0, out.decode(), err.decode())
    if check and result.returncode != 0:
        raise LabError(f"running {' '.join(argv)}: exit {result.returncode}: {result.stderr}")
    return result


async def wait_for(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.02
) -> float:
    """Wait until `condition()` is true; returns the seconds it took. Raises TimeoutError naming
    `what`. Polling is the only option for state with no change notification (pings)."""
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise TimeoutError(f"waiting for {what}: not true after {within} s")
        await asyncio.sleep(interval)


@dataclass
class LabHost:
    """One simulated machine: a network namespace with `eth0` on the lab bridge."""

    lab: Lab
    index: int
    netns: str
    underlay_v6: ipaddress.IPv6Interface
    underlay_v4: ipaddress.IPv4Interface
    wg_dir: Path
    """This host's private /var/run/wireguard (UAPI sockets of its wireguard-go)."""
    _backends: list[UserspaceBackend] = field(default_factory=list)

    async def run(self, *argv: str, check: bool = True, within: float = 20.0) -> Result:
        """Run a command in this host's namespace and wait for it."""
        return await _exec("ip", "netns", "exec", self.netns, *argv, check=check, within=within)

    async def spawn(self, *argv: str, log: Path | None = None) -> asyncio.subprocess.Process:
        """Start a long-running command in this namespace; the lab kills it on exit. Its
        output is appended to `log` when given."""
        return await self.lab.spawn(self.netns, *argv, log=log)

    async def processes(self) -> list[int]:
        """PIDs of the processes running in this namespace."""
        r = await _exec("ip", "netns", "pids", self.netns)
        return [int(p) for p in r.stdout.split()]

    def userspace_backend(self, on_exit: Callable[[str], None] | None = None) -> UserspaceBackend:
        """A wireguard-go backend for this host (private socket dir); closed on lab exit."""
        backend = UserspaceBackend(socket_dir=self.wg_dir, netns=self.netns, on_exit=on_exit)
        self._backends.append(backend)
        return backend

    async def ping(self, address: str, within: float = 1.0) -> bool:
        """One ping; True when answered within `within` seconds."""
        wait = str(max(1, int(within)))
        r = await self.run("ping", "-n", "-q", "-c1", "-W", wait, address, check=False)
        return r.returncode == 0

    async def wait_ping(self, address: str, within: float = 10.0) -> float:
        """Ping until answered; returns the seconds it took."""
        took = await wait_for(
            lambda: self.ping(address), within, f"{self.netns} to reach {address}", 0.0
        )
        log.debug("%s reached %s after %.3f s", self.netns, address, took)
        return took

    async def set_underlay(
        self,
        v6: ipaddress.IPv6Interface | None = None,
        v4: ipaddress.IPv4Interface | None = None,
    ) -> None:
        """Move this host to new underlay addresses (as after a DHCP/RA change)."""
        # One `ip -batch` process: the change lands as one burst of netlink messages.
        batch = ""
        if v6 is not None:
            batch += f"addr add {v6} dev eth0 nodad\naddr del {self.underlay_v6} dev eth0\n"
        if v4 is not None:
            batch += f"addr add {v4} dev eth0\naddr del {self.underlay_v4} dev eth0\n"
        path = LAB_ROOT / self.netns / "batch"
        path.write_text(batch)
        await _exec("ip", "-n", self.netns, "-batch", str(path))
        self.underlay_v6 = v6 or self.underlay_v6
        self.underlay_v4 = v4 or self.underlay_v4

    async def wg(self, *args: str) -> Result:
        """Run `wg` against this host's wireguard-go (its private socket directory)."""
        script = 'mount --bind "$0" /var/run/wireguard && exec wg "$@"'
        return await self.run("sh", "-c", script, str(self.wg_dir), *args)

    def write_etc(self, name: str, text: str) -> Path:
        """Write /etc/netns/NS/NAME, which `ip netns exec` bind-mounts over /etc/NAME (hosts,
        resolv.conf): a per-host resolver configuration without touching the machine's."""
        path = Path("/etc/netns") / self.netns / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    async def resolve(self, name: str) -> list[str]:
        """Resolve `name` with glibc inside this namespace (honours write_etc files)."""
        r = await self.run("getent", "ahosts", name, check=False)
        seen: list[str] = []
        for line in r.stdout.splitlines():
            addr = line.split()[0]
            if addr not in seen:
                seen.append(addr)
        return seen


@dataclass(frozen=True)
class Container:
    """A container on a lab host (`Lab.add_container`): a namespace behind a local bridge."""

    netns: str
    address: ipaddress.IPv6Address
    bridge: str
    """The bridge on the host."""


@dataclass
class NatRouter:
    """A home-style router in front of one lab host (`Lab.move_behind_nat`): namespace
    PREFIX-nI with `wan0` on the lab bridge (public addresses `public_v6`, `public_v4`) and the
    host's link on its inside (fd9b:<run>:<I>::/64, 192.168.<I>.0/24). nftables masquerades
    both families (NAT44 and NAT66), so nothing outside can reach the host unless it sent
    first: the host's announced addresses are of no use to the other hosts."""

    netns: str
    public_v6: ipaddress.IPv6Interface
    public_v4: ipaddress.IPv4Interface


_NAT_RULES = """table inet lab_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
}
"""


_INET_ROUTER_V6 = ipaddress.IPv6Address("2001:db8:100::1")
_INET_ROUTER_V4 = ipaddress.IPv4Address("198.51.100.1")
_INET_SERVER_V6 = ipaddress.IPv6Address("2001:db8:80::80")
# Global-looking on purpose (example.com's former address; it exists only inside the lab's
# namespace): tayga 0.9.2 refuses to translate non-global IPv4 addresses such as the RFC 5737
# documentation ranges under the well-known prefix 64:ff9b::/96 (RFC 6052 section 3.1).
_INET_SERVER_V4 = ipaddress.IPv4Address("93.184.216.34")
_INET_MANAGEMENT_V6 = ipaddress.IPv6Address("2001:db8:ff::1")


@dataclass
class Internet:
    """A simulated internet (`Lab.add_internet`): namespace PREFIX-inet is a router with an
    uplink LAN (2001:db8:100::/64, 198.51.100.0/24) to the chosen lab hosts (their `wan0`, with
    a default route to the router) and holds the "servers" on its loopback: an IPv6-only and
    an IPv4-only address, and one in a management range a test can declare protected. Hosts
    without an uplink reach it only through the mesh."""

    lab: Lab
    netns: str
    router_v6: ipaddress.IPv6Address = _INET_ROUTER_V6
    router_v4: ipaddress.IPv4Address = _INET_ROUTER_V4
    server_v6: ipaddress.IPv6Address = _INET_SERVER_V6
    server_v4: ipaddress.IPv4Address = _INET_SERVER_V4
    management_v6: ipaddress.IPv6Address = _INET_MANAGEMENT_V6
    uplinks: dict[int, tuple[ipaddress.IPv6Address, ipaddress.IPv4Address]] = field(
        default_factory=dict
    )
    """Lab host index -> its global addresses on the uplink."""

    async def run(self, *argv: str, check: bool = True, within: float = 20.0) -> Result:
        return await _exec("ip", "netns", "exec", self.netns, *argv, check=check, within=within)

    async def ping(self, address: str) -> bool:
        r = await self.run("ping", "-n", "-q", "-c1", "-W1", address, check=False)
        return r.returncode == 0

    async def serve(self, address: str, port: int = 80) -> None:
        """A TCP server on `address` answering every connection with the client's address
        (what a web server's access log would show), ready when this returns."""
        import sys

        proc = await _exec_spawn(
            self.lab, self.netns, sys.executable, "-m", "meshd.lab", "serve", address, str(port)
        )
        del proc

        async def up() -> bool:
            return await fetch(self.netns, address, port, within=1.0) is not None

        await wait_for(up, 10.0, f"server on {address}:{port}", 0.05)


async def _exec_spawn(lab: Lab, netns: str, *argv: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, *argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    lab._procs.append(proc)
    return proc


_FETCH = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        s.settimeout(float(sys.argv[3]))
        print(s.recv(200).decode().strip())
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


async def fetch(netns: str, address: str, port: int = 80, within: float = 2.0) -> str | None:
    """Connect from `netns` to `address`:`port` and return what an `Internet.serve` server
    says (the source address it saw), or None when the connection failed."""
    import sys

    r = await _exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", _FETCH, address, str(port),
        str(within), check=False, within=within + 5,
    )  # fmt: skip
    return r.stdout.strip() if r.returncode == 0 else None


async def serve_peer_address(address: str, port: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{writer.get_extra_info('peername')[0]}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, address, port)
    async with server:
        await server.serve_forever()


class Lab:
    """N hosts in network namespaces on one bridge; an async context manager that always
    cleans up."""

    def __init__(self, prefix: str, hosts: int = 2) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError("a lab has 1-250 hosts")
        if len(prefix) > 8:
            raise ValueError("lab prefix is at most 8 characters (interface name limit)")
        self.prefix = prefix
        self.count = hosts
        self.switch = f"{prefix}-sw"
        self.hosts: list[LabHost] = []
        self._procs: list[asyncio.subprocess.Process] = []
        self._made_ns: list[str] = []
        self._sysctl_restore: list[tuple[Path, int]] = []
        self._ports: dict[int, str] = {}
        """Switch port of a host behind a NAT router (its router's outside)."""
        # A per-run number keeps underlay prefixes of parallel labs apart.
        self._net = sum(prefix.encode()) % 250 + 1

    def __getitem__(self, i: int) -> LabHost:
        return self.hosts[i]

    async def spawn(
        self, netns: str, *argv: str, log: Path | None = None
    ) -> asyncio.subprocess.Process:
        """Start a long-running command in one of the lab's namespaces; killed on exit."""
        out = open(log, "ab") if log is not None else asyncio.subprocess.DEVNULL  # noqa: SIM115, ASYNC230 (a local file, instant)
        try:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", netns, *argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        self._procs.append(proc)
        return proc

    def port(self, host: LabHost) -> str:
        """The switch port (bridge member in the switch namespace) of `host`'s eth0, or of its
        NAT router's outside once it moved behind one."""
        return self._ports.get(host.index, f"p{host.index}")

    async def __aenter__(self) -> Lab:
        try:
            await self._build()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _add_ns(self, name: str) -> None:
        await _exec("ip", "netns", "add", name)
        self._made_ns.append(name)
        await _exec("ip", "-n", name, "link", "set", "dev", "lo", "up")
        # No duplicate address detection: lab addresses are unique by construction, and DAD
        # holds link-local addresses tentative for ~1 s, which every test would wait for.
        # promote_secondaries: deleting the old primary IPv4 address while moving a host must
        # not delete the new one too (the kernel's default does).
        await _exec(
            "ip", "netns", "exec", name, "sysctl", "-q", "-w",
            "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0",
            "net.ipv4.conf.default.promote_secondaries=1",
            "net.ipv4.conf.all.promote_secondaries=1",
        )  # fmt: skip

    def _raise_neighbour_limits(self) -> None:
        """IPv6 keeps a neighbour entry per destination even on a tun device, and the kernel's
        limit (gc_thresh3, default 1,024) counts the entries of all namespaces together. A
        lab of N meshd hosts needs about 2*N*(N-1) (underlay + overlay); beyond the limit sends
        fail with EINVAL and "neighbor table overflow". Raised for the lab, restored on close."""
        need = 4 * self.count * self.count
        for family in ("ipv4", "ipv6"):
            for i, factor in ((1, 1), (2, 2), (3, 4)):
                path = Path(f"/proc/sys/net/{family}/neigh/default/gc_thresh{i}")
                try:
                    old = int(path.read_text())
                except OSError:
                    continue
                if old < need * factor // 4:
                    self._sysctl_restore.append((path, old))
                    path.write_text(str(need * factor // 4))

    async def _build(self) -> None:
        if self.count > 10:
            self._raise_neighbour_limits()
        await self._add_ns(self.switch)
        sw = ("ip", "-n", self.switch)
        await _exec(*sw, "link", "add", "name", "br0", "index", "10", "type", "bridge")
        await _exec(*sw, "link", "set", "dev", "br0", "up")
        self.hosts = list(await asyncio.gather(*(self._add_host(i) for i in range(self.count))))
        for h in self.hosts:
            await wait_for(lambda h=h: self._ready(h), 5.0, f"{h.netns} eth0 up with link-local")  # type: ignore[misc]

    async def _add_host(self, i: int) -> LabHost:
        sw = ("ip", "-n", self.switch)
        ns = f"{self.prefix}-h{i}"
        await self._add_ns(ns)
        # Distinct indexes on the two ends (see the module docstring).
        await _exec(
            *sw, "link", "add", "name", f"p{i}", "index", str(1000 + i),
            "type", "veth", "peer", "name", "eth0", "netns", ns, "index", str(100 + i),
        )  # fmt: skip
        await _exec(*sw, "link", "set", "dev", f"p{i}", "master", "br0", "up")
        v6 = ipaddress.IPv6Interface(f"fd9a:{self._net:x}::{i + 1:x}/64")
        v4 = ipaddress.IPv4Interface(f"10.{self._net}.0.{i + 1}/24")
        await _exec("ip", "-n", ns, "addr", "add", str(v6), "dev", "eth0", "nodad")
        await _exec("ip", "-n", ns, "addr", "add", str(v4), "dev", "eth0")
        await _exec("ip", "-n", ns, "link", "set", "dev", "eth0", "up")
        wg_dir = LAB_ROOT / ns / "wireguard"
        wg_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return LabHost(self, i, ns, v6, v4, wg_dir)

    async def add_internet(self, uplinks: list[int]) -> Internet:
        """The simulated internet (see `Internet`), with an uplink to each host in `uplinks`."""
        inet = Internet(self, f"{self.prefix}-inet")
        await self._add_ns(inet.netns)
        run = ("ip", "-n", inet.netns)
        await _exec(*run, "link", "add", "name", "br0", "index", "20", "type", "bridge")
        await _exec(*run, "addr", "add", f"{inet.router_v6}/64", "dev", "br0", "nodad")
        await _exec(*run, "addr", "add", f"{inet.router_v4}/24", "dev", "br0")
        await _exec(*run, "link", "set", "dev", "br0", "up")
        for server in (inet.server_v6, inet.server_v4, inet.management_v6):
            await _exec(*run, "addr", "add", str(server), "dev", "lo")
        for i in uplinks:
            host = self.hosts[i]
            v6 = ipaddress.IPv6Address(int(inet.router_v6) + 1 + i)
            v4 = ipaddress.IPv4Address(int(inet.router_v4) + 1 + i)
            await _exec(
                *run, "link", "add", "name", f"u{i}", "index", str(2000 + i),
                "type", "veth", "peer", "name", "wan0", "netns", host.netns, "index", str(200 + i),
            )  # fmt: skip
            await _exec(*run, "link", "set", "dev", f"u{i}", "master", "br0", "up")
            h = ("ip", "-n", host.netns)
            await _exec(*h, "addr", "add", f"{v6}/64", "dev", "wan0", "nodad")
            await _exec(*h, "addr", "add", f"{v4}/24", "dev", "wan0")
            await _exec(*h, "link", "set", "dev", "wan0", "up")
            await _exec(*h, "route", "add", "default", "via", str(inet.router_v6))
            await _exec(*h, "route", "add", "default", "via", str(inet.router_v4))
            inet.uplinks[i] = (v6, v4)
        for i in uplinks:

            async def reachable(i: int = i) -> bool:
                r = await _exec(
                    "ip", "netns", "exec", self.hosts[i].netns,
                    "ping", "-n", "-q", "-c1", "-W1", str(inet.server_v6), check=False,
                )  # fmt: skip
                return r.returncode == 0

            await wait_for(reachable, 5.0, f"{self.hosts[i].netns} uplink")
        return inet

    async def move_behind_nat(self, index: int) -> NatRouter:
        """Put host `index` behind a NAT router (`NatRouter`), as a laptop that moves from the
        office LAN to a home network: its link is moved from the lab bridge to the router's
        inside, its underlay addresses become private ones, and its default routes point to
        the router. One burst of netlink changes on the host, like a real move."""
        host = self.hosts[index]
        if self.count + index >= 250:
            raise ValueError("no free public address for another NAT router")
        router = f"{self.prefix}-n{index}"
        await self._add_ns(router)
        await _exec("ip", "netns", "exec", router, "sysctl", "-q", "-w",
                    "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")  # fmt: skip
        public_v6 = ipaddress.IPv6Interface(f"fd9a:{self._net:x}::{0x2000 + index:x}/64")
        public_v4 = ipaddress.IPv4Interface(f"10.{self._net}.0.{250 - index}/24")
        sw, r = ("ip", "-n", self.switch), ("ip", "-n", router)
        await _exec(
            *sw, "link", "add", "name", f"n{index}", "index", str(4000 + index),
            "type", "veth", "peer", "name", "wan0", "netns", router, "index", str(500 + index),
        )  # fmt: skip
        await _exec(*sw, "link", "set", "dev", f"n{index}", "master", "br0", "up")
        await _exec(*r, "addr", "add", str(public_v6), "dev", "wan0", "nodad")
        await _exec(*r, "addr", "add", str(public_v4), "dev", "wan0")
        await _exec(*r, "link", "set", "dev", "wan0", "up")
        rules = LAB_ROOT / router / "nat.nft"
        rules.parent.mkdir(parents=True, exist_ok=True)
        rules.write_text(_NAT_RULES)
        await _exec("ip", "netns", "exec", router, "nft", "-f", str(rules))
        # The host's switch port becomes the router's inside port.
        port = self.port(host)
        inside_v6 = ipaddress.IPv6Interface(f"fd9b:{self._net:x}:{index:x}::1/64")
        inside_v4 = ipaddress.IPv4Interface(f"192.168.{index}.1/24")
        await _exec(*sw, "link", "set", "dev", port, "nomaster")
        await _exec(*sw, "link", "set", "dev", port, "netns", router)
        await _exec(*r, "addr", "add", str(inside_v6), "dev", port, "nodad")
        await _exec(*r, "addr", "add", str(inside_v4), "dev", port)
        await _exec(*r, "link", "set", "dev", port, "up")
        self._ports[index] = f"n{index}"
        batch = LAB_ROOT / host.netns / "nat-batch"
        batch.parent.mkdir(parents=True, exist_ok=True)
        v6 = ipaddress.IPv6Interface(f"{inside_v6.ip + 1}/64")
        v4 = ipaddress.IPv4Interface(f"{inside_v4.ip + 1}/24")
        batch.write_text(
            f"addr add {v6} dev eth0 nodad\naddr del {host.underlay_v6} dev eth0\n"
            f"addr add {v4} dev eth0\naddr del {host.underlay_v4} dev eth0\n"
            f"route replace default via {inside_v6.ip}\nroute replace default via {inside_v4.ip}\n"
        )
        await _exec("ip", "-n", host.netns, "-batch", str(batch))
        host.underlay_v6, host.underlay_v4 = v6, v4
        return NatRouter(router, public_v6, public_v4)

    async def leave_nat(self, index: int) -> None:
        """Move host `index` from behind its NAT router (`move_behind_nat`) back onto the lab
        bridge with its original addresses, and remove the router."""
        host, router = self.hosts[index], f"{self.prefix}-n{index}"
        port = self.port(host)
        if port == f"p{index}":
            raise ValueError(f"{host.netns} is not behind a NAT router")
        home = f"p{index}"
        await _exec("ip", "-n", router, "link", "set", "dev", home, "netns", self.switch)
        await _exec("ip", "-n", self.switch, "link", "set", "dev", home, "master", "br0", "up")
        del self._ports[index]
        v6 = ipaddress.IPv6Interface(f"fd9a:{self._net:x}::{index + 1:x}/64")
        v4 = ipaddress.IPv4Interface(f"10.{self._net}.0.{index + 1}/24")
        for family in ("-4", "-6"):
            await _exec("ip", "-n", host.netns, family, "route", "del", "default")
        batch = LAB_ROOT / host.netns / "nat-batch"
        batch.write_text(
            f"addr add {v6} dev eth0 nodad\naddr del {host.underlay_v6} dev eth0\n"
            f"addr add {v4} dev eth0\naddr del {host.underlay_v4} dev eth0\n"
        )
        await _exec("ip", "-n", host.netns, "-batch", str(batch))
        host.underlay_v6, host.underlay_v4 = v6, v4
        await _exec("ip", "netns", "del", router)
        self._made_ns.remove(router)
        shutil.rmtree(LAB_ROOT / router, ignore_errors=True)

    async def add_container(
        self, index: int, bridge: str = "ctr0", subnet: str = "fd00:c0::/64"
    ) -> Container:
        """A container network on host `index`, as podman or Docker make it: bridge `bridge`
        holding the first address of the IPv6-only (ULA) `subnet`, and one container (a
        namespace PREFIX-hIc) with the second address and a default route via the bridge."""
        host = self.hosts[index]
        net = ipaddress.IPv6Network(subnet)
        gateway, address = net.network_address + 1, net.network_address + 2
        container = Container(f"{host.netns}c", address, bridge)
        await self._add_ns(container.netns)
        h = ("ip", "-n", host.netns)
        await _exec(*h, "link", "add", "name", bridge, "index", str(300 + index), "type", "bridge")
        await _exec(*h, "addr", "add", f"{gateway}/{net.prefixlen}", "dev", bridge, "nodad")
        await _exec(*h, "link", "set", "dev", bridge, "up")
        await _exec(
            *h, "link", "add", "name", f"c{index}", "index", str(3000 + index),
            "type", "veth", "peer", "name", "eth0", "netns", container.netns, "index", "400",
        )  # fmt: skip
        await _exec(*h, "link", "set", "dev", f"c{index}", "master", bridge, "up")
        c = ("ip", "-n", container.netns)
        await _exec(*c, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0", "nodad")
        await _exec(*c, "link", "set", "dev", "eth0", "up")
        await _exec(*c, "route", "add", "default", "via", str(gateway))

        async def bridged() -> bool:
            r = await _exec(
                "ip", "netns", "exec", container.netns, "ping", "-n", "-q", "-c1", "-W1",
                str(gateway), check=False,
            )  # fmt: skip
            return r.returncode == 0

        await wait_for(bridged, 5.0, f"container {container.netns} to reach its bridge")
        return container

    async def _ready(self, host: LabHost) -> bool:
        r = await _exec("ip", "-n", host.netns, "-j", "addr", "show", "dev", "eth0")
        info = json.loads(r.stdout)[0]
        if "LOWER_UP" not in info.get("flags", []):
            return False
        return any(
            a.get("scope") == "link" and a.get("family") == "inet6" and not a.get("tentative")
            for a in info.get("addr_info", [])
        )

    async def close(self) -> None:
        """Remove everything the lab made; safe to call twice, never raises."""
        for h in self.hosts:
            for backend in h._backends:
                with contextlib.suppress(Exception):
                    await backend.close()
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 2.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        for ns in reversed(self._made_ns):
            # Anything still running in our namespaces was started by this lab.
            r = await _exec("ip", "netns", "pids", ns, check=False)
            for pid in r.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            await _exec("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
            shutil.rmtree(LAB_ROOT / ns, ignore_errors=True)
        self._made_ns.clear()
        self._procs.clear()
        for path, old in reversed(self._sysctl_restore):
            with contextlib.suppress(OSError):
                path.write_text(str(old))
        self._sysctl_restore.clear()


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 4:
        asyncio.run(serve_peer_address(sys.argv[2], int(sys.argv[3])))
    else:
        print("usage: python -m meshd.lab serve ADDRESS PORT", file=sys.stderr)
        sys.exit(2)
