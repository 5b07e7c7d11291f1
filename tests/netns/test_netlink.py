"""pyroute2 on uvloop, and the netlink monitor's events (real namespaces, real kernel)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import signal
import subprocess
from pathlib import Path

import pytest
import uvloop
from pyroute2.netlink.exceptions import NetlinkError

from meshd.adapters.addresses import underlay_addresses
from meshd.adapters.netlink import (
    NetlinkEvent,
    NetlinkMonitor,
    UnderlayAddressesChanged,
    UnderlayLinkChanged,
)
from meshd.adapters.rtnl import collect, open_iproute, open_route_socket
from meshd.core.wgplan import MESHD_ROUTE_PROTO
from meshd.lab import Lab, wait_for

pytestmark = pytest.mark.netns


async def test_rtnetlink_works_on_uvloop(lab3: Lab) -> None:
    # pyroute2#1335: its own endpoint setup raises ValueError on uvloop.
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    ns = lab3[0].netns
    async with open_iproute(ns) as ipr:
        (eth0,) = await collect(await ipr.link("get", ifname="eth0"))
        idx = eth0["index"]
        await ipr.addr("replace", index=idx, address="192.0.2.1", prefixlen=24)
        await ipr.addr("replace", index=idx, address="192.0.2.1", prefixlen=24)  # idempotent
        route = {"dst": "198.51.100.0/24", "gateway": "192.0.2.254", "proto": MESHD_ROUTE_PROTO}
        await ipr.route("add", **route)
        with pytest.raises(NetlinkError) as exists:
            await ipr.route("add", **route)
        assert exists.value.code == errno.EEXIST
        ours = [
            m.get_attr("RTA_DST")
            for m in await collect(await ipr.route("dump"))
            if m["proto"] == MESHD_ROUTE_PROTO
        ]
        assert ours == ["198.51.100.0"]
        await ipr.route("del", **route)
        with pytest.raises(NetlinkError) as absent:
            await ipr.route("del", **route)
        assert absent.value.code == errno.ESRCH


async def test_missing_namespace_is_an_error_not_created(run_prefix: str) -> None:
    with pytest.raises(FileNotFoundError):
        async with open_iproute(f"{run_prefix}-nonexistent") as ipr:
            await ipr.link("dump")
    assert not await asyncio.to_thread(Path(f"/run/netns/{run_prefix}-nonexistent").exists)


async def _collect_events(monitor: NetlinkMonitor, into: list[NetlinkEvent]) -> None:
    async for event in monitor.events():
        into.append(event)


async def test_address_change_is_one_event_and_link_flaps_are_seen(lab3: Lab) -> None:
    host = lab3[0]
    monitor = NetlinkMonitor("mesh0", host.netns)
    events: list[NetlinkEvent] = []
    task = asyncio.create_task(_collect_events(monitor, events))
    try:
        await asyncio.wait_for(monitor.ready.wait(), 5)
        old_v6, v4 = host.underlay_v6, host.underlay_v4
        new_v6 = ipaddress.IPv6Interface(f"{old_v6.ip + 0x50}/64")
        await host.set_underlay(v6=new_v6)
        await wait_for(lambda: _nonempty(events), 2, "an address event")
        # Let any straggler arrive before asserting "exactly one".
        await asyncio.sleep(monitor.debounce * 4)
        assert events == [
            UnderlayAddressesChanged(frozenset({old_v6.ip, v4.ip}), frozenset({new_v6.ip, v4.ip}))
        ]
        events.clear()
        await host.run("ip", "link", "set", "dev", "eth0", "down")
        await wait_for(lambda: _nonempty(events), 2, "a link-down event")
        assert events[0] == UnderlayLinkChanged("eth0", False)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _nonempty(events: list[NetlinkEvent]) -> bool:
    return bool(events)


async def test_monitor_survives_enobufs(lab3: Lab) -> None:
    host = lab3[0]
    # A tiny receive buffer, and a loop that stalls while the kernel sends ~1,000 messages.
    monitor = NetlinkMonitor("mesh0", host.netns, rcvbuf=4096)
    events: list[NetlinkEvent] = []
    task = asyncio.create_task(_collect_events(monitor, events))
    try:
        await asyncio.wait_for(monitor.ready.wait(), 5)
        batch = "".join(
            f"addr add 10.200.{i // 250}.{i % 250 + 1}/32 dev eth0\n" for i in range(500)
        )
        subprocess.run(  # noqa: ASYNC221 - blocking on purpose: the stall overflows the buffer
            ["ip", "-n", host.netns, "-batch", "-"], input=batch, text=True, check=True
        )

        async def caught_up() -> bool:
            state = monitor.state
            return state is not None and len(state.underlay) == 502

        await wait_for(caught_up, 5, "the monitor to re-dump after the overflow")
        assert monitor.reopens >= 1
        # And it still reports later changes.
        events.clear()
        await host.run("ip", "addr", "add", "10.201.0.1/32", "dev", "eth0")
        await wait_for(lambda: _nonempty(events), 2, "an event after the reopen")
        assert isinstance(events[-1], UnderlayAddressesChanged)
        assert ipaddress.ip_address("10.201.0.1") in events[-1].new
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_namespaced_sockets_send_no_signals_to_the_loop(lab3: Lab) -> None:
    # pyroute2's own netns support forks a child and SIGTERMs it; the child shares the loop's
    # signal wake-up fd, so the daemon's SIGTERM handler fired. socket_in_netns does not fork.
    received: list[str] = []
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: received.append("SIGTERM"))
    try:
        for _ in range(3):
            async with open_iproute(lab3[0].netns) as ipr:
                await ipr.link("dump")
            open_route_socket(lab3[0].netns).close()
        await asyncio.sleep(0.05)  # a stray signal would be delivered by now
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert received == []


async def test_underlay_addresses_skip_the_mesh_interface_and_other_tunnels(lab3: Lab) -> None:
    # A tunnel of another VPN (here a tun device, as wireguard-go, Tailscale or Nebula make) is
    # no underlay: an endpoint on it would carry the mesh inside that VPN.
    host = lab3[0]
    for name, address in (("othervpn0", "fd7c::1/64"), ("mesh0", "fd99::1/128")):
        await host.run("ip", "tuntap", "add", "dev", name, "mode", "tun")
        await host.run("ip", "addr", "add", address, "dev", name, "nodad")
        await host.run("ip", "link", "set", "dev", name, "up")
    await host.run("ip", "link", "add", "lan1", "type", "veth", "peer", "name", "lan1p")
    await host.run("ip", "addr", "add", "192.0.2.7/24", "dev", "lan1")
    await host.run("ip", "link", "set", "dev", "lan1", "up")
    found = await underlay_addresses({"mesh0"}, host.netns)
    assert set(map(str, found)) == {str(host.underlay_v6), str(host.underlay_v4), "192.0.2.7/24"}
