"""Deterministic keys and certificates for unit tests (seeds, not OS randomness)."""

from __future__ import annotations

from meshd.core.announce import Announcement, sign_announcement
from meshd.core.cert import Certificate, TrustAnchor, issue_certificate
from meshd.core.identity import SigningKey, overlay_ipv6

MESH = "test"
NOW = 1_800_000_000.0
CA = SigningKey(bytes([1]) * 32)
OTHER_CA = SigningKey(bytes([2]) * 32)
TRUST = TrustAnchor(MESH, (CA.public,))


def node_key(n: int) -> SigningKey:
    return SigningKey(n.to_bytes(2, "big") * 16)


def node_cert(
    n: int,
    ca: SigningKey = CA,
    *,
    prefixes: tuple[str, ...] = (),
    not_before: int = int(NOW) - 3600,
    not_after: int = int(NOW) + 86400,
    mesh: str = MESH,
) -> Certificate:
    key = node_key(n)
    return issue_certificate(
        ca, mesh=mesh, serial=n, name=f"node-{n}", identity_key=key.public,
        addresses=[str(overlay_ipv6(mesh, key.public))], prefixes=prefixes,
        not_before=not_before, not_after=not_after,
    )  # fmt: skip


def announcement(n: int, version: int = 1, cert: Certificate | None = None) -> Announcement:
    return sign_announcement(
        node_key(n), cert or node_cert(n), version=version, wg_public_key=bytes([n % 256]) * 32,
        endpoints=[("192.0.2.1", 51820), ("2001:db8::1", 51820)], meshd_port=51821,
        issued_at=int(NOW * 1000),
    )  # fmt: skip
