"""Gateways with a simulated internet: NAT64 through tayga, a NAT66 exit that is egress only,
control-plane protection, failover between two exits, and a clean stop.

    h0 client (no uplink)  --mesh--  h1 gateway A: exit ::/0 + NAT64 64:ff9b::/96  --+-- internet
                                     h2 gateway B: exit ::/0                       --+
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshd.lab import Container, Internet, Lab, LabHost, fetch, wait_for
from meshd.meshlab import MeshdNode, MeshLab

pytestmark = pytest.mark.netns

PROTECTED = "2001:db8:ff::/48"


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
    """`leftovers` of every meshd host before meshd started."""

    def uplink_v6(self, node: MeshdNode) -> str:
        return str(self.internet.uplinks[node.host.index][0])

    def uplink_v4(self, node: MeshdNode) -> str:
        return str(self.internet.uplinks[node.host.index][1])

    async def exit_gateway(self) -> MeshdNode | None:
        """The gateway the client routes ::/0 through now (from its status)."""
        status = await self.client.status()
        name = (status or {}).get("node", {}).get("routes", {}).get("::/0", {}).get("gateway")
        return next((g for g in self.gateways if g.name == name), None)

    async def fetch(self, address: str, within: float = 2.0) -> str | None:
        return await fetch(self.lab, self.client.host.netns, address, 80, within)


async def start_egress_lab(lab: Lab, workdir: Path) -> EgressLab:
    """The topology above, servers listening and the mesh formed (shared with bench/egress.py)."""
    internet = await lab.add_internet(uplinks=[1, 2])
    for server in (internet.server_v6, internet.server_v4, internet.management_v6):
        await internet.serve(str(server))
    container = await lab.add_container(0)
    for host in lab.hosts:  # hosts that do not forward (new namespaces may copy the machine's)
        await host.run(
            "sysctl", "-q", "-w", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"
        )
    baseline = {f"h{h.index}": await leftovers(h) for h in lab.hosts}
    mesh = MeshLab(lab, workdir)
    gateway = {"egress_nat": True, "protected_ranges": [PROTECTED]}
    gw_a = mesh.add_node(
        1, seeds=[], name="gw-a", prefixes=["::/0", "64:ff9b::/96"],
        advertise_prefixes=["::/0", "64:ff9b::/96"], nat64=True, **gateway,
    )  # fmt: skip
    gw_b = mesh.add_node(
        2, seeds=[1], name="gw-b", prefixes=["::/0"], advertise_prefixes=["::/0"], **gateway
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
        return routes.keys() == {"::/0", "64:ff9b::/96"} and all(
            r["rtt_ms"] is not None for r in routes.values()
        )

    await wait_for(settled, 30, "the client to route ::/0 and 64:ff9b::/96 (RTTs known)")
    return egress


async def leftovers(host: LabHost) -> dict[str, object]:
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


@pytest.fixture
async def egress_lab(run_prefix: str, tmp_path: Path) -> AsyncIterator[EgressLab]:
    async with Lab(f"{run_prefix[:6]}eg", hosts=3) as lab:
        yield await start_egress_lab(lab, tmp_path)


async def test_nat64_nat66_protection_failover_and_clean_stop(egress_lab: EgressLab) -> None:
    e = egress_lab
    gw_a, gw_b = e.gateways
    # While meshd runs (forwarding was off before): gateway A forwards both families
    # (NAT64), B only IPv6, the client both (its container bridge); the client has the two
    # exit rules.
    running = {n.name: await leftovers(n.host) for n in (gw_a, gw_b, e.client)}
    assert running["gw-a"]["forwarding"] == ["1", "1"] and running["gw-a"]["nft_table"]
    assert running["gw-b"]["forwarding"] == ["1", "0"] and running["gw-b"]["nft_table"]
    assert running["client"]["forwarding"] == ["1", "1"] and running["client"]["nft_table"]
    assert sorted(r["priority"] for r in running["client"]["rules"]) == [5208, 5209]

    # NAT64: the client has no IPv4 path at all; 64:ff9b::93.184.216.34 reaches the IPv4-only
    # server through tayga on gateway A, which the server sees as the source.
    nat64_address = str(ipaddress.IPv6Address("64:ff9b::") + int(e.internet.server_v4))
    assert await e.fetch(str(e.internet.server_v4), within=1.0) is None
    assert await e.fetch(nat64_address) == e.uplink_v4(gw_a)

    # NAT66 exit: the IPv6-only server sees the chosen exit gateway's global address.
    active = await e.exit_gateway()
    assert active is not None
    assert await e.fetch(str(e.internet.server_v6)) == e.uplink_v6(active)
    # The same from the ULA-only container behind the client: masqueraded into the mesh by
    # the client, out of the mesh by the exit.
    container_fetch = await fetch(e.lab, e.container.netns, str(e.internet.server_v6))
    assert container_fetch == e.uplink_v6(active)

    # Control-plane protection: the management range answers the gateway itself, never a
    # mesh client routed through it.
    management = str(e.internet.management_v6)
    assert await fetch(e.lab, active.host.netns, management, 80) == e.uplink_v6(active)
    assert await e.fetch(management, within=1.0) is None

    # Egress only: the internet routes the mesh prefix to the gateway; the gateway's own
    # overlay address answers, the client behind it does not.
    mesh48 = ipaddress.ip_network(f"{e.client.overlay_v6}/48", strict=False)
    await e.internet.run("ip", "route", "add", str(mesh48), "via", e.uplink_v6(active))
    assert await e.internet.ping(active.overlay_v6)
    assert not await e.internet.ping(e.client.overlay_v6)

    # Failover: gateway A's host loses its mesh underlay; the client moves ::/0 to the other
    # exit once membership suspects A, and the server sees the other gateway.
    other = gw_b if active is gw_a else gw_a
    cut = time.monotonic()
    await active.host.run("ip", "link", "set", "dev", "eth0", "down")

    async def through_other() -> bool:
        return await e.fetch(str(e.internet.server_v6), within=0.5) == e.uplink_v6(other)

    await wait_for(through_other, 30, f"traffic to move to {other.name}", 0.0)
    print(f"exit failover {active.name} -> {other.name}: {time.monotonic() - cut:.2f} s")

    # A graceful stop removes every rule, route, table, sysctl change and process: each host
    # is as it was before meshd started.
    await asyncio.gather(*(e.mesh.stop(n, signal.SIGTERM) for n in (e.client, gw_a, gw_b)))
    for node in (gw_a, gw_b, e.client):
        host = f"h{node.host.index}"
        assert await leftovers(node.host) == e.baseline[host], node.name
