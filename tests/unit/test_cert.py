import pytest

from meshd.core import encoding as enc
from meshd.core.cert import (
    TrustAnchor,
    check_certificate,
    check_revocation,
    decode_certificate,
    decode_revocation,
    issue_certificate,
    issue_revocation,
)
from meshd.core.errors import LocalProtocolError, Reject, RemoteProtocolError
from tests.unit.helpers import CA, MESH, NOW, OTHER_CA, TRUST, node_cert, node_key


def reason_of(exc: pytest.ExceptionInfo[RemoteProtocolError]) -> Reject:
    return exc.value.reason


def test_issued_certificate_round_trips_and_checks() -> None:
    cert = node_cert(3, prefixes=("10.3.0.0/24", "64:ff9b::/96"))
    assert decode_certificate(cert.raw) == cert
    check_certificate(cert, TRUST, NOW)
    assert [str(n) for n in cert.overlay_networks()] == [
        f"{cert.addresses[0]}/128",
        "10.3.0.0/24",
        "64:ff9b::/96",
    ]


@pytest.mark.parametrize(
    ("cert_kwargs", "now", "trust", "reason"),
    [
        ({"ca": OTHER_CA}, NOW, TRUST, Reject.UNKNOWN_CA),
        ({"not_after": int(NOW) - 1}, NOW, TRUST, Reject.CERT_EXPIRED),
        ({"not_before": int(NOW) + 60}, NOW, TRUST, Reject.CERT_NOT_YET_VALID),
        ({"mesh": "other"}, NOW, TRUST, Reject.WRONG_MESH),
    ],
)
def test_untrusted_certificates_are_refused(
    cert_kwargs: dict[str, object], now: float, trust: TrustAnchor, reason: Reject
) -> None:
    cert = node_cert(4, **cert_kwargs)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError) as exc:
        check_certificate(cert, trust, now)
    assert reason_of(exc) == reason


def test_validity_window_end_is_exclusive() -> None:
    cert = node_cert(5)
    check_certificate(cert, TRUST, cert.not_after - 0.001)
    with pytest.raises(RemoteProtocolError):
        check_certificate(cert, TRUST, cert.not_after)


def test_revoked_certificate_is_refused() -> None:
    cert = node_cert(6)
    with pytest.raises(RemoteProtocolError) as exc:
        check_certificate(cert, TRUST, NOW, is_revoked=lambda c: c.serial == 6)
    assert reason_of(exc) == Reject.REVOKED


def test_tampered_certificate_fails_signature() -> None:
    cert = node_cert(7)
    body, sig = enc.unpack(cert.raw, "t", 4096)
    tampered_body = body.replace(b"node-7", b"node-8")
    with pytest.raises(RemoteProtocolError) as exc:
        decode_certificate(enc.pack((tampered_body, sig)))
    assert reason_of(exc) == Reject.BAD_SIGNATURE


def test_trust_anchor_with_two_ca_keys_accepts_both() -> None:
    trust = TrustAnchor(MESH, (CA.public, OTHER_CA.public))
    check_certificate(node_cert(8, OTHER_CA), trust, NOW)
    check_certificate(node_cert(9, CA), trust, NOW)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name"}, "node name"),
        ({"mesh": "UPPER"}, "mesh name"),
        ({"addresses": []}, "at least one overlay address"),
        ({"addresses": ["not-an-ip"]}, "not an IP address"),
        ({"prefixes": ["10.0.0.1/24"]}, "host bits set"),
        ({"not_after": 10, "not_before": 10}, "validity window is empty"),
        ({"serial": 0}, "serial"),
    ],
)
def test_bad_issue_requests_are_local_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "mesh": MESH, "serial": 1, "name": "ok", "identity_key": node_key(1).public,
        "addresses": ["fd00::1"], "prefixes": [], "not_before": 0, "not_after": 100,
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(LocalProtocolError, match=message):
        issue_certificate(CA, **args)  # type: ignore[arg-type]


def test_revocation_round_trip_and_trust() -> None:
    rev = issue_revocation(
        CA, mesh=MESH, serial=6, identity_key=node_key(6).public, revoked_at=1, reason="stolen"
    )
    assert decode_revocation(rev.raw) == rev
    check_revocation(rev, TRUST)
    forged = issue_revocation(
        OTHER_CA, mesh=MESH, serial=6, identity_key=node_key(6).public, revoked_at=1, reason=""
    )
    with pytest.raises(RemoteProtocolError) as exc:
        check_revocation(forged, TRUST)
    assert reason_of(exc) == Reject.UNKNOWN_CA


def test_certificate_with_non_canonical_address_is_malformed() -> None:
    # "FD00::1" and "fd00::1" are one address; only the canonical text is accepted, so two
    # encodings of one certificate cannot exist.
    cert = node_cert(10)
    body = enc.unpack(enc.unpack(cert.raw, "c", 4096)[0], "b", 4096)
    fields = list(body)
    fields[5] = (cert.addresses[0].upper(),)
    raw_body = enc.pack(tuple(fields))
    with pytest.raises(RemoteProtocolError) as exc:
        decode_certificate(enc.pack((raw_body, CA.sign(b"meshd-cert-v1\x00", raw_body))))
    assert reason_of(exc) == Reject.MALFORMED
