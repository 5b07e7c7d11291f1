"""The kernel backend against real kernel WireGuard (in the kernel VM, see conftest.py): the same
outcomes the netns tests check on wireguard-go: create, configure, read back, update, remove,
destroy; `auto` picks the module; drift made by hand is repaired."""

from __future__ import annotations

import base64
import ipaddress
import os
import time
from pathlib import Path

import pytest

from meshd.adapters.netlink import MeshRoutesGone
from meshd.adapters.reconciler import Reconciler
from meshd.adapters.wireguard import KernelBackend, WireGuardError, select_backend
from meshd.core.identity import WireGuardKey
from meshd.core.wgplan import AddPeer, RemovePeer, UpdatePeer, WgDevice, WgPeer, plan_device
from meshd.lab import Lab, wait_for
from tests.netns.conftest import Node, Running, full_mesh

pytestmark = pytest.mark.kernel

REPAIR_WITHIN = 5.0
"""As the netns tests' 3 s, plus room for an emulated CPU."""


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


async def test_auto_picks_the_kernel_module(netns: str, tmp_path: Path) -> None:
    ns = netns
    assert await KernelBackend.available(ns)
    backend = await select_backend("auto", netns=ns, socket_dir=tmp_path)
    assert backend.kind == "kernel"
    assert (await select_backend("kernel", netns=ns)).kind == "kernel"


async def test_create_configure_read_back_update_remove_destroy(netns: str) -> None:
    backend = KernelBackend(netns)
    assert await backend.read("wgk0") is None
    await backend.create("wgk0")
    await backend.create("wgk0")  # idempotent: EEXIST is "already there"
    empty = await backend.read("wgk0")
    assert empty is not None and empty.device == WgDevice(bytes(32), 0)

    p1, p2, p3 = (WireGuardKey(os.urandom(32)).public for _ in range(3))
    want = WgDevice(
        WireGuardKey(bytes(range(32))).private,
        51999,
        (
            WgPeer(p1, ("2001:db8::1", 51820), (_net("fd77::1/128"), _net("10.77.0.1/32")),
                   os.urandom(32), 25),
            WgPeer(p2, ("192.0.2.2", 1024), (_net("fd77::2/128"), _net("192.168.2.0/24"))),
            WgPeer(p3, None, (_net("fd77::3/128"),), None, 0),
        ),
        fwmark=0x5EED,
    )  # fmt: skip
    await backend.apply("wgk0", plan_device(want, None))
    status = await backend.read("wgk0")
    assert status is not None and status.device == want
    assert plan_device(want, status.device) == []
    assert {k: (s.last_handshake, s.rx_bytes, s.tx_bytes) for k, s in status.peers.items()} == {
        p: (None, 0, 0) for p in (p1, p2, p3)
    }

    # Update: p1 changes AllowedIPs and endpoint, p2 only its PSK, p3 goes.
    old = {p.public_key: p for p in want.peers}
    new_p1 = WgPeer(p1, ("2001:db8::11", 51821), (_net("fd77::1/128"),), old[p1].preshared_key, 25)
    new_p2 = WgPeer(p2, ("192.0.2.2", 1024), old[p2].allowed_ips, os.urandom(32))
    want2 = WgDevice(want.private_key, 51999, (new_p1, new_p2), fwmark=0x5EED)
    ops = plan_device(want2, status.device)
    assert sorted(type(o).__name__ for o in ops) == ["RemovePeer", "UpdatePeer", "UpdatePeer"]
    assert {o.peer.public_key: o.allowed_ips_changed for o in ops if isinstance(o, UpdatePeer)} == {
        p1: True, p2: False,
    }  # fmt: skip
    await backend.apply("wgk0", ops)
    status = await backend.read("wgk0")
    assert status is not None and status.device == want2

    await backend.destroy("wgk0")
    assert await backend.read("wgk0") is None
    await backend.destroy("wgk0")  # idempotent


async def test_300_peers_round_trip_over_several_netlink_messages(netns: str) -> None:
    # The kernel splits a device dump over several messages (~4 KiB each); read() joins them.
    backend = KernelBackend(netns)
    await backend.create("wgk1")
    peers = tuple(
        WgPeer(
            os.urandom(32),
            (f"2001:db8::{i + 1:x}", 1024 + i) if i % 2 else (f"192.0.2.{i % 250 + 1}", 51820),
            (_net(f"fd78::{i + 1:x}/128"), _net(f"10.78.{i // 250}.{i % 250}/32")),
            os.urandom(32) if i % 3 else None,
            25 if i % 5 else 0,
        )
        for i in range(300)
    )
    want = WgDevice(os.urandom(32), 51820, peers)
    start = time.monotonic()
    await backend.apply("wgk1", plan_device(want, None))
    applied = time.monotonic() - start
    status = await backend.read("wgk1")
    assert status is not None
    got = {p.public_key: p for p in status.device.peers}
    assert [p for p in want.peers if got.get(p.public_key) != p] == []
    assert status.device == want and plan_device(want, status.device) == []
    print(f"300 peers applied in {applied:.2f} s (one netlink request per peer)")
    await backend.destroy("wgk1")


async def test_a_bad_endpoint_sets_nothing_and_the_error_holds_no_key(netns: str) -> None:
    backend = KernelBackend(netns)
    await backend.create("wgk2")
    good = WgPeer(os.urandom(32), ("192.0.2.1", 1), (_net("fd77::1/128"),))
    psk = os.urandom(32)
    bad = WgPeer(os.urandom(32), ("fe80::1%eth0", 1), (_net("fd77::2/128"),), psk)
    with pytest.raises(WireGuardError) as err:
        await backend.apply("wgk2", [AddPeer(good), AddPeer(bad)])
    assert "nothing was set" in str(err.value) and psk.hex() not in str(err.value)
    status = await backend.read("wgk2")
    assert status is not None and status.peers == {}
    await backend.apply("wgk2", [AddPeer(good), RemovePeer(good.public_key)])
    await backend.destroy("wgk2")


def _kernel_nodes(lab: Lab, count: int) -> list[Node]:
    return [
        Node(h, WireGuardKey(os.urandom(32)), Reconciler(KernelBackend(h.netns), netns=h.netns))
        for h in lab.hosts[:count]
    ]


async def test_drift_made_by_hand_is_repaired(klab2: Lab) -> None:
    a, b = nodes = _kernel_nodes(klab2, 2)
    for n in nodes:
        n.reconciler.set_desired(full_mesh(nodes, n))
        await n.reconciler.converge()
    await a.host.wait_ping(str(b.v6.ip), within=10)
    async with Running(nodes) as running:
        # A deleted route: the monitor sees it go, the next pass puts it back.
        await a.host.run("ip", "-6", "route", "del", f"{b.v6.ip}/128", "dev", "mesh0")

        async def route_back() -> bool:
            r = await a.host.run("ip", "-6", "route", "show", "proto", "109")
            return f"{b.v6.ip} dev mesh0" in r.stdout

        await wait_for(route_back, REPAIR_WITHIN, "the deleted route to come back")
        assert running.events[0][0] == MeshRoutesGone((b.v6.network,))
        await a.host.wait_ping(str(b.v6.ip), within=REPAIR_WITHIN)

        # A peer removed with `wg` (the kernel's own tool, no socket directory). No netlink
        # event tells of it: the periodic pass repairs it.
        a.reconciler.period = 0.2
        a.reconciler.trigger()
        key = base64.b64encode(b.key.public).decode()
        await a.host.run("wg", "set", "mesh0", "peer", key, "remove")

        async def peer_back() -> bool:
            status = await a.reconciler.backend.read("mesh0")
            return status is not None and b.key.public in status.peers

        await wait_for(peer_back, REPAIR_WITHIN, "the removed peer to come back")
        await a.host.wait_ping(str(b.v6.ip), within=REPAIR_WITHIN)

        # The whole interface deleted: re-created, configured, addressed, routed.
        await a.host.run("ip", "link", "del", "dev", "mesh0")

        async def interface_back() -> bool:
            r = await a.host.run("ip", "-6", "addr", "show", "dev", "mesh0", check=False)
            return a.reconciler.converged.is_set() and f"{a.v6.ip}" in r.stdout

        await wait_for(interface_back, REPAIR_WITHIN, "mesh0 to be re-created and configured")
        await a.host.wait_ping(str(b.v6.ip), within=REPAIR_WITHIN)
        await a.host.wait_ping(str(b.v4.ip), within=REPAIR_WITHIN)
