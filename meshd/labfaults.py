"""Faults for namespace labs: partitions, packet loss, underlay byte counters, and a DNS server
whose records a test changes (root only).

    faults = SwitchFaults(lab)
    cut = await faults.cut(lab.hosts[:5], lab.hosts[5:])   # no frame between the two groups
    await faults.restore(cut)
    await faults.set_loss(lab.hosts, 10)                   # drop 10 % of what each host sends
    await faults.set_loss(lab.hosts, 0)
    sent = await faults.sent_bytes()                       # host index -> bytes it sent

    dns = await LabDns.start(lab)
    dns.use(host)                                          # host's resolv.conf -> the lab DNS
    await dns.set("seed.lab", [str(host.underlay_v6.ip)])  # returns once dnsmasq answers so

The other faults are elsewhere: kill -9 of a meshd is `MeshLab.stop(node, signal.SIGKILL)`, a
changed underlay address is `LabHost.set_underlay`.

Everything here lives in the lab's switch namespace, around its bridge, so the hosts under test
are untouched: no rule is visible to (or removable by) a meshd, and a cut holds across address
changes because rules match switch ports, not addresses. The nftables table (family `bridge`,
hooks on forwarded frames only) and dnsmasq go away with the switch namespace. Traffic between
a host and the lab DNS server is delivered locally on the bridge and never cut or lost.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from meshd.lab import LAB_ROOT, Lab, LabError, LabHost, _exec, wait_for

TABLE = "lab_faults"

_RULESET = f"""
table bridge {TABLE} {{
    chain cuts {{ type filter hook forward priority 0; policy accept; }}
    chain loss {{ type filter hook forward priority 10; policy accept; }}
}}
"""


@dataclass(frozen=True)
class Cut:
    """One partition made by `SwitchFaults.cut`: the nftables rule handles to delete."""

    handles: tuple[int, ...]


@dataclass
class SwitchFaults:
    """Partitions and loss made with nftables on the lab's bridge."""

    lab: Lab
    _installed: bool = False
    _loss: dict[int, int] = field(default_factory=dict)
    """Host index -> handle of its loss rule."""

    async def _nft(self, *args: str) -> str:
        r = await _exec("ip", "netns", "exec", self.lab.switch, "nft", *args)
        return r.stdout

    async def _install(self) -> None:
        if not self._installed:
            path = LAB_ROOT / self.lab.switch / "faults.nft"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_RULESET)
            await self._nft("-f", str(path))
            self._installed = True

    async def _add_rule(self, chain: str, rule: str) -> int:
        out = await self._nft("--echo", "--handle", "add", "rule", "bridge", TABLE, chain, rule)
        found = re.search(r"# handle (\d+)", out)
        if found is None:
            raise LabError(f"adding nftables rule {rule!r}: no handle in {out!r}")
        return int(found.group(1))

    def _ports(self, hosts: Iterable[LabHost]) -> str:
        return "{ " + ", ".join(f'"{self.lab.port(h)}"' for h in hosts) + " }"

    async def cut(self, a: Iterable[LabHost], b: Iterable[LabHost]) -> Cut:
        """Drop every frame between a host of `a` and a host of `b`, both ways. Hosts within a
        group still reach each other."""
        await self._install()
        pa, pb = self._ports(a), self._ports(b)
        return Cut(
            (
                await self._add_rule("cuts", f"iifname {pa} oifname {pb} drop"),
                await self._add_rule("cuts", f"iifname {pb} oifname {pa} drop"),
            )
        )

    async def partition(self, *groups: list[LabHost]) -> Cut:
        """Cut every group off from every other (a 50/50 split: two groups)."""
        handles: list[int] = []
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                handles += (await self.cut(a, b)).handles
        return Cut(tuple(handles))

    async def restore(self, cut: Cut) -> None:
        """Undo one cut or partition."""
        for handle in cut.handles:
            await self._nft("delete", "rule", "bridge", TABLE, "cuts", "handle", str(handle))

    async def set_loss(self, hosts: Iterable[LabHost], percent: int) -> None:
        """Drop `percent` % of the frames each host sends, chosen at random (nftables numgen):
        the loss on a path between two such hosts is `percent` each way. 0 removes it."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss of {percent} %: must be 0-100")
        await self._install()
        for h in hosts:
            old = self._loss.pop(h.index, None)
            if old is not None:
                await self._nft("delete", "rule", "bridge", TABLE, "loss", "handle", str(old))
            if percent:
                port = self.lab.port(h)
                rule = (
                    f'iifname "{port}" drop'
                    if percent == 100
                    else f'iifname "{port}" numgen random mod 100 < {percent} drop'
                )
                self._loss[h.index] = await self._add_rule("loss", rule)

    async def sent_bytes(self) -> dict[int, int]:
        """Bytes each host has sent onto the underlay so far (its switch port's receive
        counter: every frame, WireGuard and join traffic, neighbour discovery)."""
        r = await _exec("ip", "-n", self.lab.switch, "-j", "-s", "link", "show")
        by_port = {link["ifname"]: link["stats64"]["rx"]["bytes"] for link in json.loads(r.stdout)}
        return {h.index: int(by_port[self.lab.port(h)]) for h in self.lab.hosts}


class LabDns:
    """dnsmasq on the lab's bridge (address ::fe / .254 of the underlay networks), answering
    from a hosts file that `set` rewrites. `--local=/#/`: names it does not hold are answered
    NXDOMAIN/NODATA at once (else glibc retries REFUSED answers with timeouts)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        net6 = lab.hosts[0].underlay_v6.network
        net4 = lab.hosts[0].underlay_v4.network
        self.address_v6 = ipaddress.IPv6Interface(f"{net6[0xFE]}/{net6.prefixlen}")
        self.address_v4 = ipaddress.IPv4Interface(f"{net4[254]}/{net4.prefixlen}")
        self.directory = LAB_ROOT / lab.switch / "dns"
        self.hosts_file = self.directory / "hosts"
        self.records: dict[str, list[str]] = {"dns.lab": [str(self.address_v6.ip)]}
        self.proc: asyncio.subprocess.Process | None = None

    @classmethod
    async def start(cls, lab: Lab) -> LabDns:
        dns = cls(lab)
        await dns._start()
        return dns

    async def _start(self) -> None:
        sw = ("ip", "-n", self.lab.switch)
        await _exec(*sw, "addr", "add", str(self.address_v6), "dev", "br0", "nodad")
        await _exec(*sw, "addr", "add", str(self.address_v4), "dev", "br0")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write()
        # getent in the switch namespace asks dnsmasq itself (wait_answers).
        etc = Path("/etc/netns") / self.lab.switch
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver ::1\n")
        (etc / "hosts").write_text("")
        self.proc = await self.lab.spawn(
            self.lab.switch,
            "dnsmasq", "--keep-in-foreground", "--user=root", "--port=53",
            "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts_file}",
            "--local=/#/", "--local-ttl=0", "--cache-size=0",
            f"--pid-file={self.directory / 'dnsmasq.pid'}", "--log-facility=-",
            log=self.directory / "dnsmasq.log",
        )  # fmt: skip
        # A SIGHUP before dnsmasq installs its handler kills it: wait for its first answer.
        await self.wait_answers("dns.lab", self.records["dns.lab"])

    def _write(self) -> None:
        lines = [f"{a} {name}\n" for name, addrs in self.records.items() for a in addrs]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.replace(self.hosts_file)

    def use(self, host: LabHost) -> None:
        """Make the lab DNS server `host`'s only resolver (and empty its hosts file)."""
        host.write_etc("resolv.conf", f"nameserver {self.address_v6.ip}\n")
        host.write_etc("hosts", "127.0.0.1 localhost\n::1 localhost\n")

    async def resolve(self, name: str) -> list[str]:
        """What dnsmasq answers for `name` now (glibc in the switch namespace)."""
        r = await _exec("ip", "netns", "exec", self.lab.switch, "getent", "ahosts", name,
                        check=False)  # fmt: skip
        seen: list[str] = []
        for line in r.stdout.splitlines():
            if line.split()[0] not in seen:
                seen.append(line.split()[0])
        return seen

    async def wait_answers(self, name: str, addresses: list[str], within: float = 10.0) -> None:
        async def answers() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                log = (self.directory / "dnsmasq.log").read_text()
                raise LabError(f"dnsmasq exited {self.proc.returncode}: {log}")
            return sorted(await self.resolve(name)) == sorted(addresses)

        await wait_for(answers, within, f"lab DNS to answer {name} with {addresses}", 0.05)

    async def set(self, name: str, addresses: list[str]) -> None:
        """Replace the records of `name` (empty list: remove it); returns once dnsmasq answers
        with the new addresses."""
        if addresses:
            self.records[name] = list(addresses)
        else:
            self.records.pop(name, None)
        self._write()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        await self.wait_answers(name, addresses)
