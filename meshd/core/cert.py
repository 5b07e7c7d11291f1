"""Node certificates and revocation records, signed by the mesh CA.

Wire form of both: msgpack `[body: bin, signature: bin64]`, where `body` is the canonical
msgpack array of the fields below and the signature is Ed25519 by the CA over
`DOMAIN || body`. See docs/protocol.md for the field tables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshd.core import encoding as enc
from meshd.core.errors import LocalProtocolError, Reject, RemoteProtocolError
from meshd.core.identity import (
    KEY_LEN,
    SIGNATURE_LEN,
    SigningKey,
    check_mesh_name,
    check_node_name,
    verify_signature,
)

CERT_FORMAT = 1
CERT_DOMAIN = b"meshd-cert-v1\x00"
REVOCATION_DOMAIN = b"meshd-revocation-v1\x00"
MAX_CERT_SIZE = 1024
MAX_REVOCATION_SIZE = 512
MAX_ADDRESSES = 8
MAX_PREFIXES = 32
MAX_ROLES = 16

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TrustAnchor:
    """What a node trusts: its mesh name and the CA public key(s). Several keys allow a CA
    rollover: nodes trust old and new CA until every certificate is reissued."""

    mesh: str
    ca_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class Certificate:
    """A CA's statement binding a node name and identity key to what the node may use."""

    mesh: str
    """Mesh name; a certificate is only valid in the mesh it was issued for."""
    serial: int
    """Unique per CA; revocation names it."""
    name: str
    """Node name, DNS-style; shown in status tables."""
    identity_key: bytes
    """The node's Ed25519 public key; signs its announcements."""
    addresses: tuple[str, ...]
    """Overlay host addresses the node may use (IPv6, optionally IPv4), without prefix length."""
    prefixes: tuple[str, ...]
    """Extra prefixes the node may advertise (site subnets, NAT64 prefix, default route)."""
    roles: tuple[str, ...]
    """Free-form roles (e.g. "gateway"); informational for now."""
    not_before: int
    """Start of validity, Unix seconds."""
    not_after: int
    """End of validity, Unix seconds (exclusive)."""
    ca_key: bytes
    """Public key of the CA that signed it."""
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False, compare=False)
    """The exact wire bytes, `[body, signature]`."""

    def overlay_networks(self) -> tuple[IPNetwork, ...]:
        """Every prefix a peer may route to this node: its addresses as host routes (/128, /32)
        plus its certified prefixes. AllowedIPs are built from this and nothing else."""
        nets: list[IPNetwork] = [ipaddress.ip_network(a) for a in self.addresses]
        nets.extend(ipaddress.ip_network(p) for p in self.prefixes)
        return tuple(nets)

    def is_valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


def _canonical_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise LocalProtocolError(f"overlay address {text!r} is not an IP address") from None


def _canonical_prefix(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise LocalProtocolError(f"prefix {text!r}: {exc}") from None


def issue_certificate(
    ca: SigningKey,
    *,
    mesh: str,
    serial: int,
    name: str,
    identity_key: bytes,
    addresses: Iterable[str],
    prefixes: Iterable[str] = (),
    roles: Iterable[str] = (),
    not_before: int,
    not_after: int,
) -> Certificate:
    """Sign a certificate. Inputs are operator input: errors are `LocalProtocolError`."""
    check_mesh_name(mesh)
    check_node_name(name)
    if len(identity_key) != KEY_LEN:
        raise LocalProtocolError("identity key must be a 32-byte Ed25519 public key")
    if not 0 < serial < 2**64:
        raise LocalProtocolError("serial must be a positive 64-bit integer")
    if not_after <= not_before:
        raise LocalProtocolError("validity window is empty (not_after <= not_before)")
    addrs = tuple(_canonical_address(a) for a in addresses)
    prefs = tuple(_canonical_prefix(p) for p in prefixes)
    role_list = tuple(roles)
    if not addrs:
        raise LocalProtocolError("a certificate needs at least one overlay address")
    if len(addrs) > MAX_ADDRESSES or len(prefs) > MAX_PREFIXES or len(role_list) > MAX_ROLES:
        raise LocalProtocolError(
            f"at most {MAX_ADDRESSES} addresses, {MAX_PREFIXES} prefixes, {MAX_ROLES} roles"
        )
    body = enc.pack(
        (CERT_FORMAT, mesh, serial, name, identity_key, addrs, prefs, role_list, not_before,
         not_after, ca.public)
    )  # fmt: skip
    signature = ca.sign(CERT_DOMAIN, body)
    raw = enc.pack((body, signature))
    if len(raw) > MAX_CERT_SIZE:
        raise LocalProtocolError(f"certificate would be {len(raw)} bytes, limit {MAX_CERT_SIZE}")
    return decode_certificate(raw)


def _signed_parts(data: bytes, what: str, max_size: int) -> tuple[bytes, bytes]:
    outer = enc.expect_tuple(enc.unpack(data, what, max_size), what, 2)
    body = enc.expect_bytes(outer[0], f"{what} body")
    signature = enc.expect_bytes(outer[1], f"{what} signature", SIGNATURE_LEN)
    return body, signature


def _address_field(value: object, what: str, parse: Callable[[str], object]) -> tuple[str, ...]:
    items = enc.expect_str_tuple(value, what)
    for item in items:
        try:
            canonical = str(parse(item))
        except ValueError:
            raise RemoteProtocolError(Reject.MALFORMED, f"{what}: {item!r} invalid") from None
        if canonical != item:
            raise RemoteProtocolError(Reject.MALFORMED, f"{what}: {item!r} not canonical")
    return items


def parse_address_list(value: object, what: str) -> tuple[str, ...]:
    return _address_field(value, what, ipaddress.ip_address)


def parse_prefix_list(value: object, what: str) -> tuple[str, ...]:
    return _address_field(value, what, lambda t: ipaddress.ip_network(t, strict=True))


def decode_certificate(data: bytes) -> Certificate:
    """Strictly decode a certificate and check its CA signature (not trust, validity or
    revocation: see `check_certificate`). Raises `RemoteProtocolError`."""
    cert, body_bytes = parse_certificate(data)
    check_certificate_signature(cert, body_bytes)
    return cert


def check_certificate_signature(cert: Certificate, body_bytes: bytes) -> None:
    """The CA's signature over `body_bytes` (from `parse_certificate`); ~80 us."""
    if not verify_signature(cert.ca_key, CERT_DOMAIN, body_bytes, cert.signature):
        raise RemoteProtocolError(Reject.BAD_SIGNATURE, f"certificate of {cert.name!r}")


def parse_certificate(data: bytes) -> tuple[Certificate, bytes]:
    """Strictly decode a certificate *without* checking its signature, and return it with the
    signed body bytes. For receivers that run cheap checks (mesh, CA, validity) before the
    signature check (`meshd.core.announce.AnnouncementVerifier`); anything else uses
    `decode_certificate`. Raises `RemoteProtocolError`."""
    body_bytes, signature = _signed_parts(data, "certificate", MAX_CERT_SIZE)
    body = enc.expect_tuple(enc.unpack(body_bytes, "certificate body", MAX_CERT_SIZE), "cert", 11)
    if body[0] != CERT_FORMAT:
        raise RemoteProtocolError(Reject.UNSUPPORTED_VERSION, f"certificate format {body[0]!r}")
    cert = Certificate(
        mesh=enc.expect_str(body[1], "cert mesh", 32),
        serial=enc.expect_int(body[2], "cert serial", 1),
        name=enc.expect_str(body[3], "cert name", 63),
        identity_key=enc.expect_bytes(body[4], "cert identity key", KEY_LEN),
        addresses=parse_address_list(body[5], "cert addresses"),
        prefixes=parse_prefix_list(body[6], "cert prefixes"),
        roles=enc.expect_str_tuple(body[7], "cert roles", MAX_ROLES),
        not_before=enc.expect_int(body[8], "cert not_before"),
        not_after=enc.expect_int(body[9], "cert not_after"),
        ca_key=enc.expect_bytes(body[10], "cert ca key", KEY_LEN),
        signature=signature,
        raw=data,
    )
    if not cert.addresses:
        raise RemoteProtocolError(Reject.MALFORMED, "certificate has no overlay address")
    return cert, body_bytes


def check_certificate(
    cert: Certificate,
    trust: TrustAnchor,
    now: float,
    is_revoked: Callable[[Certificate], bool] = lambda c: False,
) -> None:
    """Check a decoded certificate against the trust anchor at time `now`; raises
    `RemoteProtocolError` with the first failing check."""
    if cert.mesh != trust.mesh:
        raise RemoteProtocolError(Reject.WRONG_MESH, f"{cert.name!r} is for mesh {cert.mesh!r}")
    if cert.ca_key not in trust.ca_keys:
        raise RemoteProtocolError(Reject.UNKNOWN_CA, f"{cert.name!r} is signed by an unknown CA")
    if now < cert.not_before:
        raise RemoteProtocolError(Reject.CERT_NOT_YET_VALID, f"{cert.name!r} not valid yet")
    if now >= cert.not_after:
        raise RemoteProtocolError(Reject.CERT_EXPIRED, f"{cert.name!r} expired")
    if is_revoked(cert):
        raise RemoteProtocolError(Reject.REVOKED, f"{cert.name!r} serial {cert.serial} revoked")


@dataclass(frozen=True)
class Revocation:
    """A CA's statement that a certificate (by serial) is no longer valid, from `revoked_at`."""

    mesh: str
    serial: int
    """Serial of the revoked certificate."""
    identity_key: bytes
    """Identity key of the revoked certificate (so nodes can drop it without the certificate)."""
    revoked_at: int
    """Unix seconds."""
    reason: str
    """Operator's free-text reason, at most 128 characters."""
    ca_key: bytes
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False, compare=False)


def issue_revocation(
    ca: SigningKey, *, mesh: str, serial: int, identity_key: bytes, revoked_at: int, reason: str
) -> Revocation:
    check_mesh_name(mesh)
    if len(reason) > 128:
        raise LocalProtocolError("revocation reason longer than 128 characters")
    body = enc.pack((CERT_FORMAT, mesh, serial, identity_key, revoked_at, reason, ca.public))
    raw = enc.pack((body, ca.sign(REVOCATION_DOMAIN, body)))
    return decode_revocation(raw)


def decode_revocation(data: bytes) -> Revocation:
    """Strictly decode a revocation and check its signature by the CA named inside."""
    body_bytes, signature = _signed_parts(data, "revocation", MAX_REVOCATION_SIZE)
    body = enc.expect_tuple(enc.unpack(body_bytes, "revocation body", MAX_REVOCATION_SIZE),
                            "revocation", 7)  # fmt: skip
    if body[0] != CERT_FORMAT:
        raise RemoteProtocolError(Reject.UNSUPPORTED_VERSION, f"revocation format {body[0]!r}")
    rev = Revocation(
        mesh=enc.expect_str(body[1], "revocation mesh", 32),
        serial=enc.expect_int(body[2], "revocation serial", 1),
        identity_key=enc.expect_bytes(body[3], "revocation identity key", KEY_LEN),
        revoked_at=enc.expect_int(body[4], "revocation time"),
        reason=enc.expect_str(body[5], "revocation reason", 128),
        ca_key=enc.expect_bytes(body[6], "revocation ca key", KEY_LEN),
        signature=signature,
        raw=data,
    )
    if not verify_signature(rev.ca_key, REVOCATION_DOMAIN, body_bytes, signature):
        raise RemoteProtocolError(Reject.BAD_SIGNATURE, f"revocation of serial {rev.serial}")
    return rev


def check_revocation(rev: Revocation, trust: TrustAnchor) -> None:
    if rev.mesh != trust.mesh:
        raise RemoteProtocolError(Reject.WRONG_MESH, f"revocation is for mesh {rev.mesh!r}")
    if rev.ca_key not in trust.ca_keys:
        raise RemoteProtocolError(Reject.UNKNOWN_CA, "revocation signed by an unknown CA")
