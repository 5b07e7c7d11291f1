"""The data-plane plan: table-driven, pure, no I/O."""

from __future__ import annotations

import ast
import dataclasses
import ipaddress
from pathlib import Path

import pytest

import meshd.core.wgplan as wgplan
from meshd.core.errors import LocalProtocolError
from meshd.core.wgplan import (
    AddAddress,
    AddPeer,
    AddRoute,
    CreateInterface,
    MeshInterface,
    Op,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    SetFwmark,
    SetLinkUp,
    SetListenPort,
    SetMtu,
    SetPrivateKey,
    UpdatePeer,
    WgDevice,
    WgPeer,
    plan,
)

K1, K2, K3 = (bytes([i]) * 32 for i in (1, 2, 3))
PRIV = bytes([9]) * 32
PSK = bytes([7]) * 32
N = ipaddress.ip_network
I = ipaddress.ip_interface  # noqa: E741

P1 = WgPeer(K1, ("192.0.2.1", 51820), (N("fd00::1/128"), N("10.0.0.1/32")))
P2 = WgPeer(K2, ("2001:db8::2", 51820), (N("fd00::2/128"),), PSK, 25)
P3 = WgPeer(K3, None, (N("fd00::3/128"),))


def mesh(
    peers: tuple[WgPeer, ...] = (P1, P2),
    port: int = 51820,
    key: bytes = PRIV,
    addresses: tuple[str, ...] = ("fd00::10/64", "10.0.0.10/24"),
    mtu: int = 1420,
) -> MeshInterface:
    return MeshInterface.with_peer_routes(
        "mesh0", WgDevice(key, port, peers), tuple(I(a) for a in addresses), mtu
    )


BASE = mesh()
MARKED = MeshInterface.with_peer_routes(
    "mesh0", WgDevice(PRIV, 51820, (P1, P2), 0x6D65), BASE.addresses, 1420
)

CASES: list[tuple[str, MeshInterface, MeshInterface | None, list[Op]]] = [
    (
        "fresh interface",
        BASE,
        None,
        [
            CreateInterface("mesh0"),
            SetPrivateKey(PRIV),
            SetListenPort(51820),
            AddPeer(P1),
            AddPeer(P2),
            SetMtu(1420),
            AddAddress(I("10.0.0.10/24")),
            AddAddress(I("fd00::10/64")),
            SetLinkUp(True),
            AddRoute(N("10.0.0.1/32")),
            AddRoute(N("fd00::1/128")),
            AddRoute(N("fd00::2/128")),
        ],
    ),
    ("converged", BASE, BASE, []),
    (
        "peer added and removed",
        mesh((P1, P3)),
        BASE,
        [
            AddPeer(P3),  # additions first: a rotated key's new peer takes over AllowedIPs
            RemovePeer(K2),
            RemoveRoute(N("fd00::2/128")),
            AddRoute(N("fd00::3/128")),
        ],
    ),
    (
        "allowed ips changed",
        mesh((P1, dataclasses.replace(P2, allowed_ips=(N("fd00::22/128"),)))),
        BASE,
        [
            UpdatePeer(dataclasses.replace(P2, allowed_ips=(N("fd00::22/128"),))),
            RemoveRoute(N("fd00::2/128")),
            AddRoute(N("fd00::22/128")),
        ],
    ),
    (
        "endpoint changed",
        mesh((dataclasses.replace(P1, endpoint=("192.0.2.9", 51820)), P2)),
        BASE,
        [
            UpdatePeer(
                dataclasses.replace(P1, endpoint=("192.0.2.9", 51820)), allowed_ips_changed=False
            )
        ],
    ),
    (
        "first endpoint re-creates the peer (no 5 s handshake back-off)",
        mesh((P1, dataclasses.replace(P3, endpoint=("192.0.2.3", 4000)))),
        mesh((P1, P3)),
        [RemovePeer(K3), AddPeer(dataclasses.replace(P3, endpoint=("192.0.2.3", 4000)))],
    ),
    (
        "learned endpoint is not fought",
        mesh((P1, P3)),
        mesh((P1, dataclasses.replace(P3, endpoint=("192.0.2.3", 4000)))),
        [],
    ),
    (
        "psk removed",
        mesh((P1, dataclasses.replace(P2, preshared_key=None))),
        BASE,
        [UpdatePeer(dataclasses.replace(P2, preshared_key=None), allowed_ips_changed=False)],
    ),
    (
        "keepalive changed",
        mesh((P1, dataclasses.replace(P2, persistent_keepalive=0))),
        BASE,
        [UpdatePeer(dataclasses.replace(P2, persistent_keepalive=0), allowed_ips_changed=False)],
    ),
    ("key rotated", mesh(key=K3), BASE, [SetPrivateKey(K3)]),
    (
        "peer's key rotated: the new peer takes the AllowedIPs, then the old goes",
        mesh((P1, dataclasses.replace(P2, public_key=K3))),
        BASE,
        [AddPeer(dataclasses.replace(P2, public_key=K3)), RemovePeer(K2)],
    ),
    ("port changed", mesh(port=4000), BASE, [SetListenPort(4000)]),
    ("fwmark set (exit routes)", MARKED, BASE, [SetFwmark(0x6D65)]),
    ("fwmark cleared", BASE, MARKED, [SetFwmark(0)]),
    ("mtu changed", mesh(mtu=1280), BASE, [SetMtu(1280)]),
    (
        "address moved",
        mesh(addresses=("fd00::11/64", "10.0.0.10/24")),
        BASE,
        [RemoveAddress(I("fd00::10/64")), AddAddress(I("fd00::11/64"))],
    ),
    (
        "link down by hand",
        BASE,
        dataclasses.replace(BASE, up=False, routes=()),
        [
            SetLinkUp(True),
            AddRoute(N("10.0.0.1/32")),
            AddRoute(N("fd00::1/128")),
            AddRoute(N("fd00::2/128")),
        ],
    ),
    (
        "route deleted by hand",
        BASE,
        dataclasses.replace(BASE, routes=BASE.routes[1:]),
        [AddRoute(BASE.routes[0])],
    ),
]


@pytest.mark.parametrize(
    ("desired", "actual", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan(desired: MeshInterface, actual: MeshInterface | None, expected: list[Op]) -> None:
    assert plan(desired, actual) == expected


@pytest.mark.parametrize("state", [BASE, mesh(()), mesh((P3,), addresses=())])
def test_plan_is_idempotent(state: MeshInterface) -> None:
    assert plan(state, state) == []


def test_order_of_inputs_does_not_matter() -> None:
    a = WgPeer(K1, ("192.0.2.1", 1), (N("fd00::1/128"), N("10.0.0.1/32")))
    b = WgPeer(K1, ("192.0.2.1", 1), (N("10.0.0.1/32"), N("fd00::1/128")))
    assert a == b
    assert WgDevice(PRIV, 1, (P1, P2)) == WgDevice(PRIV, 1, (P2, P1))


def test_endpoint_is_normalized() -> None:
    assert WgPeer(K1, ("[2001:DB8::0:1]", 5)).endpoint == ("2001:db8::1", 5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: WgPeer(b"short"), "a peer public key is 32 bytes"),
        (lambda: WgPeer(K1, ("example.org", 1)), "endpoint host 'example.org' is not an IP"),
        (lambda: WgPeer(K1, ("192.0.2.1", 0)), "endpoint port 0 out of range"),
        (lambda: WgDevice(PRIV, 1, (P1, P1)), "listed twice"),
        (lambda: MeshInterface("x" * 16, WgDevice(PRIV, 1)), "1-15 characters"),
        (
            lambda: MeshInterface("m", WgDevice(PRIV, 1), (I("fe80::1/64"),)),
            "link-local address fe80::1/64 is the kernel's",
        ),
    ],
)
def test_bad_input_is_a_local_error(build: object, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message.replace("(", r"\(")):
        build()  # type: ignore[operator]


def test_secrets_are_not_in_repr() -> None:
    text = repr(BASE) + repr(SetPrivateKey(PRIV)) + repr(P2)
    assert PRIV.hex() not in text and "b'\\t\\t" not in text
    assert PSK.hex() not in text and "b'\\x07\\x07" not in text


def test_core_imports_no_io() -> None:
    tree = ast.parse(Path(wgplan.__file__).read_text())
    banned = {"asyncio", "socket", "os", "time", "pyroute2", "aiohttp", "random", "subprocess"}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names & banned == set()


def test_resend_endpoints_sets_each_endpoint_again_unless_the_plan_does() -> None:
    roamed = ("198.51.100.9", 40000)
    want = WgDevice(PRIV, 51820, (P1, dataclasses.replace(P2, endpoint=None), P3))
    have = WgDevice(PRIV, 51820, (P1, dataclasses.replace(P2, endpoint=roamed), P3))
    ops = wgplan.plan_device(want, have)
    assert ops == []
    # P1 its desired endpoint, P2 the one WireGuard learnt (desired: leave it), P3 none at all.
    assert wgplan.resend_endpoints(want, have, list(ops)) == [
        UpdatePeer(P1, False),
        UpdatePeer(dataclasses.replace(P2, endpoint=roamed), False),
    ]
    # A peer the plan already adds or updates is not set twice.
    update = UpdatePeer(P1, False)
    assert wgplan.resend_endpoints(want, have, [update]) == [
        UpdatePeer(dataclasses.replace(P2, endpoint=roamed), False)
    ]
    assert wgplan.resend_endpoints(want, None, []) == []


def test_restart_peers_recreates_configured_peers_the_plan_leaves_alone() -> None:
    roamed = ("198.51.100.9", 40000)
    want = WgDevice(PRIV, 51820, (P1, dataclasses.replace(P2, endpoint=None), P3))
    have = WgDevice(PRIV, 51820, (P1, dataclasses.replace(P2, endpoint=roamed), P3))
    keys = {P1.public_key, P2.public_key, P3.public_key, K3 + b"x"}
    # P1 as desired, P2 with the endpoint WireGuard has; P3 has none (it could not initiate
    # anyway); an unknown key is ignored.
    assert wgplan.restart_peers(want, have, [], keys) == [
        RemovePeer(P1.public_key),
        AddPeer(P1),
        RemovePeer(P2.public_key),
        AddPeer(dataclasses.replace(P2, endpoint=roamed)),
    ]
    # A peer the plan already touches is left to the plan.
    assert wgplan.restart_peers(want, have, [UpdatePeer(P1, False)], {P1.public_key}) == []
    assert wgplan.restart_peers(want, have, [RemovePeer(P1.public_key)], {P1.public_key}) == []
    assert wgplan.restart_peers(want, None, [], keys) == []
