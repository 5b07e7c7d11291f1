"""Golden values. If one of these tests fails, the change re-addresses or re-keys every deployed
mesh: that is a breaking change and needs a new format version, not a new golden value."""

import ipaddress

from meshd.core.cert import decode_certificate, issue_certificate
from meshd.core.identity import SigningKey, WireGuardKey, mesh_prefix, overlay_ipv6, pool_ipv4
from meshd.core.lookout import mesh_tag

KEY = SigningKey(bytes(range(32)))


def test_mesh_prefix_is_pinned() -> None:
    assert str(mesh_prefix("prod")) == "fd44:c16d:b708::/48"
    assert str(mesh_prefix("example")) == "fd63:ddab:4c3c::/48"


def test_mesh_tag_is_pinned() -> None:
    # Nodes of one mesh must agree on it, or they never answer each other's mesh checks.
    assert mesh_tag("prod").hex() == "3cc53be04ad61189"


def test_identity_public_key_is_pinned() -> None:
    assert KEY.public.hex() == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"


def test_overlay_ipv6_is_pinned() -> None:
    addr = overlay_ipv6("prod", KEY.public)
    assert str(addr) == "fd44:c16d:b708:0:aa2d:6674:3a98:907"
    assert addr in mesh_prefix("prod")


def test_ipv4_pool_sequence_is_pinned() -> None:
    pool = ipaddress.IPv4Network("100.64.0.0/10")
    assert [str(pool_ipv4(pool, KEY.public, i)) for i in range(2)] == [
        "100.94.3.233",
        "100.122.180.105",
    ]


def test_wireguard_public_key_is_pinned() -> None:
    pub = WireGuardKey(bytes(range(32))).public
    assert pub.hex() == "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f"


GOLDEN_CERT = bytes.fromhex(
    "92c4989b01a470726f6407a57765622d31c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1d"
    "dc8664125531b891d923666434343a633136643a623730383a303a616132643a363637343a336139383a3930"
    "3791ab31302e312e302e302f323491a767617465776179ce6553f100ce6b49d200c42003a107bff3ce10be1d"
    "70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8c44069450942f39c0db7c825c94f8dd5458df9c61f"
    "9a7e96da38496550b38ec8ac2f41f98968333a47c5e5b9dc22ce3701922f7e3c0d7400605e30c13cd1a51c8e07"
)


def test_certificate_encoding_is_pinned() -> None:
    cert = issue_certificate(
        KEY, mesh="prod", serial=7, name="web-1", identity_key=KEY.public,
        addresses=[str(overlay_ipv6("prod", KEY.public))], prefixes=["10.1.0.0/24"],
        roles=["gateway"], not_before=1700000000, not_after=1800000000,
    )  # fmt: skip
    assert cert.raw == GOLDEN_CERT
    decoded = decode_certificate(GOLDEN_CERT)
    assert decoded == cert
    assert decoded.addresses == ("fd44:c16d:b708:0:aa2d:6674:3a98:907",)
