"""Drift made by hand is repaired within a couple of seconds, by the same path as a first start."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import signal

import pytest

from meshd.adapters.netlink import MeshRoutesGone
from meshd.adapters.wireguard import UserspaceBackend
from meshd.core.wgplan import MESHD_FWMARK
from meshd.lab import Lab, wait_for
from tests.netns.conftest import Node, Running, full_mesh, make_nodes

pytestmark = pytest.mark.netns

REPAIR_WITHIN = 3.0


async def _mesh(lab: Lab) -> list[Node]:
    nodes = make_nodes(lab, 2)
    for n in nodes:
        n.reconciler.set_desired(full_mesh(nodes, n))
        await n.reconciler.converge()
    await nodes[0].host.wait_ping(str(nodes[1].v6.ip))
    return nodes


async def _routes(node: Node) -> str:
    r = await node.host.run("ip", "-6", "route", "show", "proto", "109")
    return r.stdout


async def test_deleted_route_is_restored(lab3: Lab) -> None:
    a, b = await _mesh(lab3)
    async with Running([a, b]) as running:
        await a.host.run("ip", "-6", "route", "del", f"{b.v6.ip}/128", "dev", "mesh0")

        async def restored() -> bool:
            return f"{b.v6.ip} dev mesh0" in await _routes(a)

        await wait_for(restored, REPAIR_WITHIN, "the deleted route to come back")
        await a.host.wait_ping(str(b.v6.ip), within=REPAIR_WITHIN)
        # The repair came from the monitor seeing the route go, not from luck.
        assert running.events[0] == [MeshRoutesGone((b.v6.network,))]


async def test_foreign_routes_are_never_touched(lab3: Lab) -> None:
    a, _b = await _mesh(lab3)
    # A route someone else made via the mesh interface, with another protocol number.
    await a.host.run("ip", "route", "add", "192.0.2.0/24", "dev", "mesh0", "proto", "static")
    assert await a.reconciler.apply() == []
    r = await a.host.run("ip", "route", "show", "192.0.2.0/24")
    assert "proto static" in r.stdout


async def test_deleted_interface_is_recreated(lab3: Lab) -> None:
    a, b = await _mesh(lab3)
    async with Running([a, b]):
        await a.host.run("ip", "link", "del", "dev", "mesh0")

        async def back() -> bool:
            return (
                a.reconciler.converged.is_set()
                and "fd77::1"
                in (
                    await a.host.run("ip", "-6", "addr", "show", "dev", "mesh0", check=False)
                ).stdout
            )

        await wait_for(back, REPAIR_WITHIN, "mesh0 to be re-created and configured")
        await a.host.wait_ping(str(b.v6.ip), within=REPAIR_WITHIN)
        await a.host.wait_ping(str(b.v4.ip), within=REPAIR_WITHIN)


async def test_killed_wireguard_go_is_restarted(lab3: Lab) -> None:
    a, b = await _mesh(lab3)
    backend = a.reconciler.backend
    assert isinstance(backend, UserspaceBackend)
    old_pid = backend.pid("mesh0")
    assert old_pid is not None
    async with Running([a, b]):
        os.kill(old_pid, signal.SIGKILL)

        async def restarted() -> bool:
            pid = backend.pid("mesh0")
            return pid not in (None, old_pid) and a.reconciler.converged.is_set()

        await wait_for(restarted, REPAIR_WITHIN, "wireguard-go to be restarted and re-applied")
        await a.host.wait_ping(str(b.v6.ip), within=REPAIR_WITHIN)


async def test_peer_removed_with_wg_is_restored(lab3: Lab) -> None:
    a, b = await _mesh(lab3)
    a.reconciler.period = 0.2  # `wg set` makes no netlink event: the periodic pass repairs it
    async with Running([a, b]):
        await a.host.wg("set", "mesh0", "peer", base64.b64encode(b.key.public).decode(), "remove")

        async def peer_back() -> bool:
            status = await a.reconciler.backend.read("mesh0")
            return status is not None and b.key.public in status.peers

        await wait_for(peer_back, REPAIR_WITHIN, "the removed peer to come back")
        await a.host.wait_ping(str(b.v6.ip), within=REPAIR_WITHIN)


async def _exit_state(node: Node) -> tuple[list[str], list[str]]:
    """(default routes in meshd's exit table, priorities of meshd's rules), both families."""
    routes, rules = [], []
    for family in ("-4", "-6"):
        r = await node.host.run("ip", family, "route", "show", "table", "28005", check=False)
        routes += [f"{family} {line.split()[0]}" for line in r.stdout.splitlines()]
        r = await node.host.run("ip", "-j", family, "rule")
        rules += [
            f"{family} {rule['priority']}"
            for rule in json.loads(r.stdout)
            if rule.get("protocol") == "109"
        ]
    return sorted(routes), sorted(rules)


async def test_exit_route_comes_with_its_rules_and_goes_with_them(lab3: Lab) -> None:
    a, b = await _mesh(lab3)
    # b becomes a's IPv6 exit: ::/0 in b's AllowedIPs, a default route in the exit table.
    peers = tuple(
        dataclasses.replace(p, allowed_ips=(*p.allowed_ips, ipaddress.ip_network("::/0")))
        for p in full_mesh([a, b], a).device.peers
    )
    plain = full_mesh([a, b], a)
    with_exit = dataclasses.replace(
        plain,
        device=dataclasses.replace(plain.device, peers=peers, fwmark=MESHD_FWMARK),
        routes=(*plain.routes, ipaddress.ip_network("::/0")),
    )
    await a.reconciler.converge(with_exit)
    assert await _exit_state(a) == (["-6 default"], ["-6 5208", "-6 5209"])
    await a.host.wait_ping(str(b.v6.ip))  # the mesh's own routes still win over the exit

    # A rule deleted by hand: the next pass sees the exit route as incomplete and restores it.
    await a.host.run("ip", "-6", "rule", "del", "priority", "5209")
    await a.reconciler.converge()
    assert await _exit_state(a) == (["-6 default"], ["-6 5208", "-6 5209"])

    # No exit wanted any more: route and rules go; a stop would remove rules as well.
    await a.reconciler.converge(plain)
    assert await _exit_state(a) == ([], [])
    await a.reconciler.converge(with_exit)
    await a.reconciler.remove_exit_rules()
    assert (await _exit_state(a))[1] == []
