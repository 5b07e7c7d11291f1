"""The monitor's pure parts: snapshot diffs and the fast route-dump parser."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from meshd.adapters.netlink import (
    MeshInterfaceGone,
    MeshRoutesGone,
    NetState,
    UnderlayAddressesChanged,
    UnderlayLinkChanged,
    diff_states,
)
from meshd.adapters.rtnl import RouteEntry, parse_route_messages

A = ipaddress.ip_address
N = ipaddress.ip_network
R1, R2 = N("fd77::1/128"), N("10.77.0.1/32")

BASE = NetState(frozenset({("eth0", True)}), frozenset({A("192.0.2.1")}), True, frozenset({R1, R2}))


def state(**changes: object) -> NetState:
    fields = {
        "links": BASE.links,
        "underlay": BASE.underlay,
        "mesh_present": BASE.mesh_present,
        "mesh_routes": BASE.mesh_routes,
    }
    fields.update(changes)
    return NetState(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("new", "extra", "expected"),
    [
        (BASE, {}, []),
        (
            state(underlay=frozenset({A("192.0.2.9")})),
            {},
            [UnderlayAddressesChanged(BASE.underlay, frozenset({A("192.0.2.9")}))],
        ),
        (state(links=frozenset({("eth0", False)})), {}, [UnderlayLinkChanged("eth0", False)]),
        (state(links=frozenset()), {}, [UnderlayLinkChanged("eth0", False)]),
        (state(mesh_routes=frozenset({R2})), {}, [MeshRoutesGone((R1,))]),
        # The whole interface went: one event, not one per route.
        (state(mesh_present=False, mesh_routes=frozenset()), {}, [MeshInterfaceGone("mesh0")]),
        # Deleted, re-added and deleted again within one debounce window.
        (
            state(mesh_routes=frozenset({R2})),
            {"routes_deleted": frozenset({R1})},
            [MeshRoutesGone((R1,))],
        ),
        (BASE, {"routes_deleted": frozenset({R1})}, []),  # deleted and restored: nothing to do
    ],
)
def test_diff(new: NetState, extra: dict[str, object], expected: list[object]) -> None:
    assert diff_states(BASE, new, "mesh0", **extra) == expected  # type: ignore[arg-type]


def test_mesh_deleted_and_recreated_without_us_seeing_it_in_a_snapshot() -> None:
    old = state(mesh_present=False, mesh_routes=frozenset())
    assert diff_states(old, old, "mesh0", mesh_deleted=True) == [MeshInterfaceGone("mesh0")]


def _route_msg(family: int, dst: bytes, plen: int, proto: int, oif: int, table: int) -> bytes:
    attrs = b""
    for kind, value in ((1, dst), (4, struct.pack("=I", oif)), (15, struct.pack("=I", table))):
        attr = struct.pack("=HH", 4 + len(value), kind) + value
        attrs += attr + bytes(-len(attr) % 4)
    body = struct.pack("=BBBBBBBBI", family, plen, 0, 0, 254, proto, 0, 1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), 24, 2, 1, 0) + body


def test_route_dump_parser() -> None:
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4)
    data = _route_msg(socket.AF_INET6, A("fd77::1").packed, 128, 109, 7, 254) + _route_msg(
        socket.AF_INET, A("10.77.0.0").packed, 24, 4, 3, 254
    )
    assert parse_route_messages(data) == (
        [RouteEntry(R1, 7, 254, 109), RouteEntry(N("10.77.0.0/24"), 3, 254, 4)],
        False,
    )
    assert parse_route_messages(done) == ([], True)
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -105) + bytes(16)
    with pytest.raises(OSError, match="No buffer space"):
        parse_route_messages(error)
