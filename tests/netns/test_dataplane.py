"""The composed data plane with a peer known only by a DNS name served by a real dnsmasq."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import signal

import pytest

from meshd.adapters.dataplane import DataPlane
from meshd.adapters.netlink import NetlinkEvent, UnderlayAddressesChanged
from meshd.core.wgplan import MESHD_FWMARK
from meshd.lab import LAB_ROOT, Lab, LabHost, wait_for
from tests.netns.conftest import PORT, full_mesh, make_nodes

pytestmark = pytest.mark.netns

NAME = "b.mesh.test"


async def _start_dns(server: LabHost, records: str) -> tuple[asyncio.subprocess.Process, str]:
    hosts = LAB_ROOT / server.netns / "dns-hosts"
    await asyncio.to_thread(hosts.write_text, records)
    proc = await server.spawn(
        "dnsmasq", "-k", "-C", "/dev/null", "--no-resolv", "--no-hosts", "--user=root",
        "--local=/#/",  # answer NODATA for missing record types instead of REFUSED
        f"--addn-hosts={hosts}", f"--listen-address={server.underlay_v4.ip}",
        "--bind-interfaces", "--pid-file",
    )  # fmt: skip
    return proc, str(hosts)


async def test_named_peer_follows_dns_and_events_reach_the_daemon(lab3: Lab) -> None:
    a, b = make_nodes(lab3, 2)
    dns = lab3[2]
    await b.reconciler.converge(full_mesh([a, b], b))
    proc, hosts = await _start_dns(dns, f"{b.host.underlay_v6.ip} {NAME}\n")
    a.host.write_etc("resolv.conf", f"nameserver {dns.underlay_v4.ip}\noptions timeout:1\n")
    a.host.write_etc("hosts", "")

    async def dns_answers(address: str) -> bool:
        return address in await a.host.resolve(NAME)

    # PLATFORM.md: a SIGHUP before dnsmasq installed its handler kills it; wait for answers.
    await wait_for(lambda: dns_answers(str(b.host.underlay_v6.ip)), 5, "dnsmasq to answer")

    events: list[NetlinkEvent] = []
    dp = DataPlane(a.reconciler.backend, a.host.netns, resolve=a.host.resolve,
                   on_netlink=events.append)  # fmt: skip
    dp.resolver.min_interval = 0  # the test triggers on purpose; no rate limit
    desired = full_mesh([a, b], a)
    # The peer's endpoint comes only from the name.
    peers = tuple(dataclasses.replace(p, endpoint=None) for p in desired.device.peers)
    # With the mark the daemon sets (exit routes), which resolving a name must keep.
    device = dataclasses.replace(desired.device, peers=peers, fwmark=MESHD_FWMARK)
    desired = dataclasses.replace(desired, device=device)
    dp.set_desired(desired, named={b.key.public: (NAME, PORT)})
    async with dp:
        await a.host.wait_ping(str(b.v6.ip), within=5)

        # b moves; the record follows; a netlink change on a triggers the re-resolution.
        new_v6 = ipaddress.IPv6Interface(f"{b.host.underlay_v6.ip + 0x200}/64")
        await b.host.set_underlay(v6=new_v6)
        await asyncio.to_thread(
            (LAB_ROOT / dns.netns / "dns-hosts").write_text, f"{new_v6.ip} {NAME}\n"
        )
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: dns_answers(str(new_v6.ip)), 5, "dnsmasq to serve the new record")
        new_a = ipaddress.IPv4Interface(f"{a.host.underlay_v4.ip + 100}/24")
        await a.host.set_underlay(v4=new_a)
        await a.host.wait_ping(str(b.v6.ip), within=5)
        assert dp.resolver.endpoint(NAME, PORT) == (str(new_v6.ip), PORT)
        actual, _ = await a.reconciler.read_actual(desired.name)
        assert actual is not None and actual.device.fwmark == MESHD_FWMARK
        assert [e for e in events if isinstance(e, UnderlayAddressesChanged)][-1].new == (
            frozenset({a.host.underlay_v6.ip, new_a.ip})
        )
    assert hosts
