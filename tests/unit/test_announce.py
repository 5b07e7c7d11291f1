import ipaddress

import pytest

from meshd.core import encoding as enc
from meshd.core.announce import (
    ANNOUNCEMENT_DOMAIN,
    MAX_ANNOUNCEMENT_SIZE,
    PEER_SWITCH_LAG_MS,
    AnnouncementVerifier,
    Status,
    sign_announcement,
)
from meshd.core.errors import LocalProtocolError, Reject, RemoteProtocolError
from tests.unit.helpers import NOW, OTHER_CA, TRUST, announcement, node_cert, node_key


def verify(data: bytes, **kw: object) -> Reject | None:
    verifier = AnnouncementVerifier(TRUST, **kw)  # type: ignore[arg-type]
    try:
        verifier.verify(data, NOW)
    except RemoteProtocolError as exc:
        return exc.reason
    return None


def test_valid_announcement_verifies_with_all_fields() -> None:
    ann = announcement(1, version=42)
    got = AnnouncementVerifier(TRUST).verify(ann.raw, NOW)
    assert got == ann
    assert got.version == 42
    assert got.endpoints == (("192.0.2.1", 51820), ("2001:db8::1", 51820))
    assert got.status == Status.ALIVE
    assert got.node_id == node_key(1).public


def test_forged_announcement_is_refused() -> None:
    # Node 2 signs an announcement carrying node 1's certificate.
    cert = node_cert(1)
    outer = enc.unpack(announcement(1).raw, "a", MAX_ANNOUNCEMENT_SIZE)
    forged = enc.pack((outer[0], node_key(2).sign(ANNOUNCEMENT_DOMAIN, outer[0])))
    assert verify(forged) == Reject.BAD_SIGNATURE
    assert verify(announcement(1, cert=cert).raw) is None


@pytest.mark.parametrize(
    ("cert_kwargs", "reason"),
    [
        ({"ca": OTHER_CA}, Reject.UNKNOWN_CA),
        ({"not_after": int(NOW) - 10}, Reject.CERT_EXPIRED),
        ({"mesh": "elsewhere"}, Reject.WRONG_MESH),
    ],
)
def test_announcement_with_untrusted_certificate_is_refused(
    cert_kwargs: dict[str, object], reason: Reject
) -> None:
    cert = node_cert(3, **cert_kwargs)  # type: ignore[arg-type]
    assert verify(announcement(3, cert=cert).raw) == reason


def test_revoked_node_is_refused_even_after_a_cached_verification() -> None:
    revoked: set[int] = set()
    verifier = AnnouncementVerifier(TRUST, is_revoked=lambda c: c.serial in revoked)
    ann = announcement(4)
    verifier.verify(ann.raw, NOW)  # now cached
    revoked.add(4)
    with pytest.raises(RemoteProtocolError) as exc:
        verifier.verify(ann.raw, NOW)
    assert exc.value.reason == Reject.REVOKED


def test_cached_announcement_still_expires() -> None:
    verifier = AnnouncementVerifier(TRUST)
    ann = announcement(5)
    verifier.verify(ann.raw, NOW)
    with pytest.raises(RemoteProtocolError) as exc:
        verifier.verify(ann.raw, ann.cert.not_after + 1)
    assert exc.value.reason == Reject.CERT_EXPIRED


def test_oversized_announcement_is_refused_before_parsing() -> None:
    assert verify(b"\x92" + b"\x00" * MAX_ANNOUNCEMENT_SIZE) == Reject.OVERSIZE


def test_uncertified_prefix_cannot_be_signed() -> None:
    cert = node_cert(6, prefixes=("10.6.0.0/24",))
    with pytest.raises(LocalProtocolError, match="not granted"):
        sign_announcement(
            node_key(6), cert, version=1, wg_public_key=bytes(32), endpoints=[],
            meshd_port=1, issued_at=0, prefixes=["0.0.0.0/0"],
        )  # fmt: skip


def test_uncertified_prefix_from_a_peer_is_refused() -> None:
    # A malicious member with a valid key signs a body claiming a prefix its certificate lacks.
    cert = node_cert(7, prefixes=("10.7.0.0/24",))
    good = sign_announcement(
        node_key(7), cert, version=1, wg_public_key=bytes(32), endpoints=[], meshd_port=1,
        issued_at=0, prefixes=["10.7.0.0/24"],
    )  # fmt: skip
    body = list(enc.unpack(enc.unpack(good.raw, "a", 2048)[0], "b", 2048))
    body[7] = ("0.0.0.0/0",)
    raw_body = enc.pack(tuple(body))
    evil = enc.pack((raw_body, node_key(7).sign(ANNOUNCEMENT_DOMAIN, raw_body)))
    assert verify(evil) == Reject.NOT_CERTIFIED


def test_identity_must_match_certificate() -> None:
    with pytest.raises(LocalProtocolError, match="does not match"):
        sign_announcement(
            node_key(9), node_cert(8), version=1, wg_public_key=bytes(32), endpoints=[],
            meshd_port=1, issued_at=0,
        )  # fmt: skip


def test_psk_secret_ids_travel_signed_and_decide_acceptance() -> None:
    x, y = b"x" * 8, b"y" * 8
    ann = sign_announcement(
        node_key(1), node_cert(1), version=1, wg_public_key=bytes(32), endpoints=[],
        meshd_port=51821, issued_at=0, psk_ids=[x, y],
    )  # fmt: skip
    assert AnnouncementVerifier(TRUST, psk_ids=(y,)).verify(ann.raw, NOW).psk_ids == (x, y)
    assert verify(ann.raw, psk_ids=()) is Reject.PSK_MISMATCH
    assert verify(ann.raw, psk_ids=(b"z" * 8,)) is Reject.PSK_MISMATCH
    assert verify(announcement(1).raw, psk_ids=(x,)) is Reject.PSK_MISMATCH
    assert verify(announcement(1).raw) is None
    with pytest.raises(LocalProtocolError, match="PSK ids"):
        sign_announcement(
            node_key(1), node_cert(1), version=1, wg_public_key=bytes(32), endpoints=[],
            meshd_port=51821, issued_at=0, psk_ids=[b"short"],
        )  # fmt: skip


def test_peers_take_a_rotated_key_after_the_announced_time_plus_lag() -> None:
    nxt = bytes([7]) * 32
    at_ms = int(NOW * 1000) + 10_000
    ann = sign_announcement(
        node_key(1), node_cert(1), version=1, wg_public_key=bytes(32), endpoints=[],
        meshd_port=51821, issued_at=0, next_wg_public_key=nxt, next_wg_key_at=at_ms,
    )  # fmt: skip
    assert ann.wg_key_at(at_ms / 1000) == bytes(32)  # the node itself switches first
    assert ann.wg_key_at((at_ms + PEER_SWITCH_LAG_MS) / 1000) == nxt


def resigned(n: int, field: int, value: object) -> bytes:
    """Member n's valid announcement with body field `field` replaced, signed by member n:
    what a member with a valid certificate and modified code can send."""
    body = list(enc.unpack(enc.unpack(announcement(n).raw, "a", 2048)[0], "b", 2048))
    body[field] = value
    raw_body = enc.pack(tuple(body))
    return enc.pack((raw_body, node_key(n).sign(ANNOUNCEMENT_DOMAIN, raw_body)))


@pytest.mark.parametrize(
    "host",
    [
        "::%x]:1\nremove=true\nendpoint=[::1",  # issue #22: UAPI lines through a zone ID
        "fe80::1%eth0",
        "127.0.0.1",
        "::1",
        "ff02::1",
        "224.0.0.251",
        "0.0.0.0",
        "255.255.255.255",
        "fe80::1",
        str(ipaddress.ip_address("::ffff:192.0.2.1")),  # canonical on this Python
    ],
)
def test_announcement_with_an_endpoint_no_peer_may_be_given_is_refused(host: str) -> None:
    evil = resigned(2, 6, (("192.0.2.1", 51820), (host, 51820)))
    verifier = AnnouncementVerifier(TRUST)
    with pytest.raises(RemoteProtocolError) as exc:
        verifier.verify(evil, NOW)
    assert exc.value.reason is Reject.BAD_ENDPOINT
    assert exc.value.detail.startswith(f"endpoint {host!r} ")


def test_resigned_announcement_with_good_endpoints_verifies() -> None:
    # The helper above changes nothing else: the same endpoints verify.
    good = resigned(2, 6, (("192.0.2.1", 51820), ("2001:db8::1", 51820)))
    assert verify(good) is None


def test_a_node_cannot_sign_an_endpoint_peers_would_refuse() -> None:
    with pytest.raises(LocalProtocolError) as exc:
        sign_announcement(
            node_key(1), node_cert(1), version=1, wg_public_key=bytes(32),
            endpoints=[("127.0.0.1", 51820)], meshd_port=51821, issued_at=0,
        )  # fmt: skip
    assert str(exc.value) == "endpoint 127.0.0.1 cannot be announced: it is loopback"
