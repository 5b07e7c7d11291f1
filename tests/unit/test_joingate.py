"""Join floods (issue #22, finding 4): cheap checks before signatures, remembered failures, a
global budget of signature checks, before the membership core sees a join request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshd.core import announce, cert, wire
from meshd.core.announce import AnnouncementVerifier, sign_announcement
from meshd.core.cert import Certificate, issue_certificate
from meshd.core.errors import Reject, RemoteProtocolError
from meshd.core.joingate import JoinGate
from meshd.core.ratelimit import SourceRateLimiter, TokenBucket
from meshd.core.wire import JoinReply, JoinRequest, MemberState
from tests.unit.helpers import CA, NOW, OTHER_CA, TRUST, node_cert, node_key


@pytest.fixture
def ed25519_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every Ed25519 verification the core runs, by what it checked."""
    calls: list[str] = []
    real = announce.verify_signature

    def counting(key: bytes, domain: bytes, body: bytes, signature: bytes) -> bool:
        calls.append(domain.decode().rstrip("\x00"))
        return real(key, domain, body, signature)

    monkeypatch.setattr(announce, "verify_signature", counting)
    monkeypatch.setattr(cert, "verify_signature", counting)
    yield calls


def signed(n: int, c: Certificate | None = None, version: int = 1) -> bytes:
    return sign_announcement(
        node_key(n), c or node_cert(n), version=version, wg_public_key=bytes([n]) * 32,
        endpoints=[("192.0.2.1", 51820)], meshd_port=51821, issued_at=0,
    ).raw  # fmt: skip


def with_bad_ca_signature(c: Certificate) -> Certificate:
    """`c` as a stranger would forge it: our CA's key, a signature that is not the CA's."""
    forged = issue_certificate(
        OTHER_CA, mesh=c.mesh, serial=c.serial, name=c.name, identity_key=c.identity_key,
        addresses=c.addresses, not_before=c.not_before, not_after=c.not_after,
    )  # fmt: skip
    body, signature = announce.enc.unpack(forged.raw, "c", 2048)
    fields = list(announce.enc.unpack(body, "b", 2048))
    fields[10] = CA.public  # claims our CA
    raw = announce.enc.pack((announce.enc.pack(tuple(fields)), signature))
    parsed, _ = cert.parse_certificate(raw)
    return parsed


def bad_signature(n: int, version: int = 1) -> bytes:
    """Member n's announcement with a signature by another key: signed, but not by n."""
    good = signed(n, version=version)
    body, _ = announce.enc.unpack(good, "a", 2048)
    return announce.enc.pack((body, node_key(n + 1).sign(announce.ANNOUNCEMENT_DOMAIN, body)))


def reason(verifier: AnnouncementVerifier, raw: bytes) -> Reject | None:
    try:
        verifier.verify(raw, NOW)
    except RemoteProtocolError as exc:
        return exc.reason
    return None


def join(raw: bytes) -> bytes:
    return wire.encode(JoinRequest(b"n" * 8, raw, 0, MemberState.UNKNOWN))


@pytest.mark.parametrize(
    ("cert_kwargs", "why"),
    [
        ({"ca": OTHER_CA}, Reject.UNKNOWN_CA),
        ({"mesh": "elsewhere"}, Reject.WRONG_MESH),
        ({"not_after": int(NOW) - 10}, Reject.CERT_EXPIRED),
        ({"not_before": int(NOW) + 3600}, Reject.CERT_NOT_YET_VALID),
    ],
)
def test_cheap_certificate_checks_run_before_any_signature_check(
    ed25519_checks: list[str], cert_kwargs: dict[str, object], why: Reject
) -> None:
    raw = signed(3, node_cert(3, **cert_kwargs))  # type: ignore[arg-type]
    ed25519_checks.clear()  # signing decoded (and so verified) it once
    verifier = AnnouncementVerifier(TRUST)
    assert (reason(verifier, raw), ed25519_checks, verifier.signature_checks) == (why, [], 0)


def test_a_replayed_bad_signature_costs_no_second_check(ed25519_checks: list[str]) -> None:
    raw = bad_signature(4)
    ed25519_checks.clear()
    verifier = AnnouncementVerifier(TRUST)
    assert reason(verifier, raw) is Reject.BAD_SIGNATURE
    assert ed25519_checks == ["meshd-cert-v1", "meshd-announcement-v1"]
    assert [reason(verifier, raw) for _ in range(3)] == [Reject.BAD_SIGNATURE] * 3
    assert (len(ed25519_checks), verifier.signature_checks) == (2, 1)


def test_a_certificate_whose_ca_signature_failed_costs_nothing_in_new_announcements(
    ed25519_checks: list[str],
) -> None:
    forged = with_bad_ca_signature(node_cert(5))
    verifier = AnnouncementVerifier(TRUST)
    first, second = (signed_unchecked(5, forged, v) for v in (1, 2))
    ed25519_checks.clear()
    assert reason(verifier, first) is Reject.BAD_SIGNATURE
    assert ed25519_checks == ["meshd-cert-v1"]
    assert reason(verifier, second) is Reject.BAD_SIGNATURE  # other bytes, same certificate
    assert (ed25519_checks, verifier.signature_checks) == (["meshd-cert-v1"], 1)


def signed_unchecked(n: int, c: Certificate, version: int) -> bytes:
    """An announcement around certificate `c` signed by n, built without verifying it (what
    `sign_announcement` does would refuse a certificate with a bad signature)."""
    body = announce.enc.pack(
        (announce.ANNOUNCEMENT_FORMAT, c.raw, version, bytes([n]) * 32, None, 0,
         (("192.0.2.1", 51820),), (), 0, 51821, 0, ())
    )  # fmt: skip
    return announce.enc.pack((body, node_key(n).sign(announce.ANNOUNCEMENT_DOMAIN, body)))


def test_the_failure_cache_is_bounded(ed25519_checks: list[str]) -> None:
    verifier = AnnouncementVerifier(TRUST, failure_cache_size=2)
    bad = [bad_signature(6, version=v) for v in (1, 2, 3)]
    ed25519_checks.clear()
    for raw in bad:
        assert reason(verifier, raw) is Reject.BAD_SIGNATURE
    assert reason(verifier, bad[2]) is Reject.BAD_SIGNATURE  # remembered
    assert reason(verifier, bad[0]) is Reject.BAD_SIGNATURE  # forgotten: checked again
    assert verifier.signature_checks == 4


def test_gate_spends_the_global_budget_only_on_signature_checks() -> None:
    verifier = AnnouncementVerifier(TRUST)
    gate = JoinGate(verifier, SourceRateLimiter(rate=10, burst=20), TokenBucket(rate=1, burst=2))
    known = signed(7)
    verifier.verify(known, NOW)  # a member we know: cached, costs nothing
    # Rotating sources each get a fresh per-source bucket; the budget is shared.
    outcomes = [
        gate.admit(join(raw), f"198.51.100.{i}", NOW, 0.0)
        for i, raw in enumerate([signed(8), signed(9), known, signed(10)])
    ]
    assert [None if o is None else (o.reason, o.detail) for o in outcomes] == [
        None,
        None,
        None,  # known good: no token needed
        (Reject.RATE_LIMITED, "global signature check budget spent"),
    ]
    assert gate.admit(join(signed(10)), "198.51.100.9", NOW, 1.0) is None  # a token a second


def test_gate_refuses_cheaply_without_spending_the_budget() -> None:
    verifier = AnnouncementVerifier(TRUST)
    gate = JoinGate(verifier, SourceRateLimiter(rate=10, burst=20), TokenBucket(rate=1, burst=1))
    rogue = signed(11, node_cert(11, ca=OTHER_CA))
    refused = [gate.admit(join(rogue), f"203.0.113.{i}", NOW, 0.0) for i in range(5)]
    assert [r.reason if r else None for r in refused] == [Reject.UNKNOWN_CA] * 5
    replayed = bad_signature(12)
    assert reason(verifier, replayed) is Reject.BAD_SIGNATURE  # the core checked it once
    refused = [gate.admit(join(replayed), "203.0.113.9", NOW, 0.0) for _ in range(3)]
    assert [r.reason if r else None for r in refused] == [Reject.BAD_SIGNATURE] * 3
    assert verifier.signature_checks == 1
    assert gate.admit(join(signed(13)), "203.0.113.10", NOW, 0.0) is None  # the token is there


def test_gate_limits_per_source_by_64_and_lets_replies_to_the_core() -> None:
    gate = JoinGate(AnnouncementVerifier(TRUST), SourceRateLimiter(rate=1, burst=2))
    raw = join(signed(14))
    outcomes = [gate.admit(raw, f"2001:db8:0:9::{i}", NOW, 0.0) for i in range(1, 4)]
    assert [o.reason if o else None for o in outcomes] == [None, None, Reject.RATE_LIMITED]
    # A join reply is checked against our pending requests by the core before anything else.
    reply = wire.encode(JoinReply(b"n" * 8, bad_signature(15), 0, MemberState.UNKNOWN))
    assert gate.admit(reply, "192.0.2.50", NOW, 0.0) is None
    junk = gate.admit(b"\x00junk", "192.0.2.51", NOW, 0.0)
    assert junk is not None and junk.reason is Reject.MALFORMED


def test_a_flood_from_rotating_sources_is_dropped_before_it_is_decoded() -> None:
    gate = JoinGate(AnnouncementVerifier(TRUST))
    junk = b"MD\x01" + bytes(100)  # malformed: decoding it would say so
    verdicts = [
        gate.admit(junk, f"2001:db8:{i:x}::1", NOW, 100.0) for i in range(3000)
    ]  # every source a /64 of its own, so each has a fresh per-source burst
    reasons = [v.reason for v in verdicts if v is not None]
    decoded = reasons.count(Reject.MALFORMED)
    assert decoded == 2000  # the global underlay budget, at one instant
    assert reasons.count(Reject.RATE_LIMITED) == 1000
    # A second later the budget has refilled by its rate.
    later = [gate.admit(junk, f"2001:db8:1:{i:x}::1", NOW, 101.0) for i in range(3000)]
    assert [v.reason for v in later if v is not None].count(Reject.MALFORMED) == 2000
