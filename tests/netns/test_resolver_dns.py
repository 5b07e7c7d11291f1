"""A peer known by name follows its DNS record (/etc/netns/NS/hosts, read by glibc in the ns)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from meshd.adapters.resolver import EndpointResolver
from meshd.core.wgplan import MeshInterface, WgDevice
from meshd.lab import Lab
from tests.netns.conftest import PORT, full_mesh, make_nodes

pytestmark = pytest.mark.netns

NAME = "b.mesh.test"


async def test_changed_record_is_re_resolved_and_traffic_resumes(lab3: Lab) -> None:
    a, b = make_nodes(lab3, 2)
    await b.reconciler.converge(full_mesh([a, b], b))
    a.host.write_etc("resolv.conf", "")  # no DNS server: hosts only, no timeouts
    a.host.write_etc("hosts", f"{b.host.underlay_v6.ip} {NAME}\n")

    def desired_with(endpoint: tuple[str, int] | None) -> MeshInterface:
        base = full_mesh([a, b], a)
        peers = tuple(dataclasses.replace(p, endpoint=endpoint) for p in base.device.peers)
        device = WgDevice(base.device.private_key, PORT, peers)
        return dataclasses.replace(base, device=device)

    changes: list[tuple[str, int, tuple[str, int]]] = []

    def on_change(name: str, port: int, endpoint: tuple[str, int]) -> None:
        changes.append((name, port, endpoint))
        a.reconciler.set_desired(desired_with(endpoint))

    resolver = EndpointResolver(on_change, resolve=a.host.resolve, min_interval=0)
    resolver.watch(NAME, PORT)
    try:
        await resolver.refresh(NAME, PORT)
        await a.reconciler.converge()
        await a.host.wait_ping(str(b.v6.ip), within=5)

        # b moves; only its DNS record says where to.
        new_v6 = ipaddress.IPv6Interface(f"{b.host.underlay_v6.ip + 0x100}/64")
        await b.host.set_underlay(v6=new_v6)
        assert not await a.host.ping(str(b.v6.ip), within=1)
        a.host.write_etc("hosts", f"{new_v6.ip} {NAME}\n")

        # On demand (stale handshake / netlink change): the new address is applied at once.
        assert await resolver.refresh(NAME, PORT) == (str(new_v6.ip), PORT)
        await a.reconciler.converge()
        await a.host.wait_ping(str(b.v6.ip), within=5)
        assert changes == [
            (NAME, PORT, (str(b.host.underlay_v6.ip - 0x100), PORT)),
            (NAME, PORT, (str(new_v6.ip), PORT)),
        ]

        # The record disappears: the last good address stays and the failure is reported.
        a.host.write_etc("hosts", "")
        assert await resolver.refresh(NAME, PORT) == (str(new_v6.ip), PORT)
        assert list(resolver.errors) == [NAME]
        assert len(changes) == 2
    finally:
        await a.reconciler.close()
        await b.reconciler.close()
