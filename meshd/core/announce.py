"""Announcements: a node's signed statement about itself.

An announcement carries the node's certificate, so any node can relay it and any receiver can
check it alone. Its `version` only grows (the daemon persists it and never goes below the wall
clock in milliseconds, so a node that lost its state still outranks its old record). The version
doubles as SWIM's incarnation number: refuting a suspicion means signing a newer announcement.

Checks run in this order and stop at the first failure, before any state changes:
size -> structure -> certificate (mesh, CA, validity, revocation) -> signatures -> claimed
prefixes and PSK ids -> version (done by the peer table, which knows the newest version seen).
The cheap checks come before the signatures so that a stranger's junk costs no Ed25519
verification (issue #22).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshd.core import encoding as enc
from meshd.core.cert import (
    Certificate,
    TrustAnchor,
    check_certificate,
    check_certificate_signature,
    parse_certificate,
    parse_prefix_list,
)
from meshd.core.endpoints import endpoint_refusal
from meshd.core.errors import LocalProtocolError, Reject, RemoteProtocolError
from meshd.core.identity import KEY_LEN, SIGNATURE_LEN, SigningKey, verify_signature

ANNOUNCEMENT_FORMAT = 2
ANNOUNCEMENT_DOMAIN = b"meshd-announcement-v1\x00"
# Fits one datagram inside the tunnel (WireGuard MTU 1420 - 48 bytes of IPv6+UDP headers) with
# room for the message envelope.
MAX_ANNOUNCEMENT_SIZE = 1280
MAX_ENDPOINTS = 8
MAX_PSK_IDS = 4
PEER_SWITCH_LAG_MS = 500
"""Peers replace a rotating node's WireGuard key this long after its announced switch time, so
that the node has surely switched first (clocks agreeing to well under this): until the peer
switches, the node's new handshake is unanswered and its packets wait in wireguard-go's staging
queue (128 per peer), while the peer's packets still reach it over the old session. A peer
switching first would drop packets of the old session instead. See docs/keys.md."""
PSK_ID_LEN = 8

Endpoint = tuple[str, int]


class Status(enum.IntEnum):
    ALIVE = 0
    """The node is (or believes it is) a member."""
    LEFT = 1
    """Signed graceful leave: drop this node now, do not wait for failure detection."""


@dataclass(frozen=True)
class Announcement:
    """A verified (or locally made) announcement. `raw` is what travels and is relayed."""

    cert: Certificate
    """The node's certificate; `cert.identity_key` signed this announcement."""
    version: int
    """Only grows; newer replaces older everywhere. Also the SWIM incarnation."""
    wg_public_key: bytes
    """Current WireGuard public key (X25519)."""
    next_wg_public_key: bytes | None
    """Key the node switches to at `next_wg_key_at` (key rotation), or None."""
    next_wg_key_at: int
    """Unix milliseconds when `next_wg_public_key` becomes current; 0 if none."""
    endpoints: tuple[Endpoint, ...]
    """Underlay (IP literal, port) pairs where the node's WireGuard listens, best first."""
    prefixes: tuple[str, ...]
    """Prefixes advertised now; always a subset of `cert.prefixes`."""
    status: Status
    """ALIVE, or LEFT for a graceful leave."""
    meshd_port: int
    """UDP port of meshd (join on the underlay, gossip inside the tunnel)."""
    issued_at: int
    """Unix milliseconds when signed; informational (logs, status)."""
    psk_ids: tuple[bytes, ...]
    """Public ids of the mesh PSK secrets the node holds (empty: it uses no PSK). Never the
    secret: an id names a secret, so two nodes notice when they cannot agree on a PSK."""
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False, compare=False)

    @property
    def node_id(self) -> bytes:
        return self.cert.identity_key

    def wg_key_at(self, now: float) -> bytes:
        """The WireGuard key peers configure for this node at `now` (Unix seconds)."""
        if (
            self.next_wg_public_key is not None
            and now * 1000 >= self.next_wg_key_at + PEER_SWITCH_LAG_MS
        ):
            return self.next_wg_public_key
        return self.wg_public_key

    @property
    def name(self) -> str:
        return self.cert.name


def sign_announcement(
    identity: SigningKey,
    cert: Certificate,
    *,
    version: int,
    wg_public_key: bytes,
    endpoints: Iterable[Endpoint],
    meshd_port: int,
    issued_at: int,
    prefixes: Iterable[str] = (),
    status: Status = Status.ALIVE,
    next_wg_public_key: bytes | None = None,
    next_wg_key_at: int = 0,
    psk_ids: Iterable[bytes] = (),
) -> Announcement:
    """Sign our own announcement. Misuse (a prefix the certificate does not grant, a key that is
    not ours) raises `LocalProtocolError`: a node never claims what it may not."""
    if identity.public != cert.identity_key:
        raise LocalProtocolError("identity key does not match the certificate")
    eps = tuple((str(ipaddress.ip_address(h)), int(p)) for h, p in endpoints)
    for host, _port in eps:
        if (why := endpoint_refusal(host)) is not None:
            raise LocalProtocolError(f"endpoint {host} cannot be announced: it {why}")
    prefs = tuple(prefixes)
    if not set(prefs) <= set(cert.prefixes):
        missing = sorted(set(prefs) - set(cert.prefixes))
        raise LocalProtocolError(f"prefixes {missing} are not granted by the certificate")
    if len(eps) > MAX_ENDPOINTS:
        raise LocalProtocolError(f"at most {MAX_ENDPOINTS} endpoints")
    ids = tuple(psk_ids)
    if len(ids) > MAX_PSK_IDS or any(len(i) != PSK_ID_LEN for i in ids):
        raise LocalProtocolError(f"at most {MAX_PSK_IDS} PSK ids of {PSK_ID_LEN} bytes")
    body = enc.pack(
        (ANNOUNCEMENT_FORMAT, cert.raw, version, wg_public_key, next_wg_public_key,
         next_wg_key_at, eps, prefs, int(status), meshd_port, issued_at, ids)
    )  # fmt: skip
    raw = enc.pack((body, identity.sign(ANNOUNCEMENT_DOMAIN, body)))
    if len(raw) > MAX_ANNOUNCEMENT_SIZE:
        raise LocalProtocolError(f"announcement is {len(raw)} bytes, limit {MAX_ANNOUNCEMENT_SIZE}")
    return _decode(raw)


def _endpoints(value: object) -> tuple[Endpoint, ...]:
    items = enc.expect_tuple(value, "endpoints")
    if len(items) > MAX_ENDPOINTS:
        raise RemoteProtocolError(Reject.MALFORMED, f"more than {MAX_ENDPOINTS} endpoints")
    out: list[Endpoint] = []
    for item in items:
        host, port = enc.expect_tuple(item, "endpoint", 2)
        host = enc.expect_str(host, "endpoint host", 45)
        # The whole announcement is refused, not just the endpoint: the node signed it, and
        # an honest node never announces such an endpoint (`sign_announcement` refuses to).
        why = endpoint_refusal(host)
        if why is not None:
            raise RemoteProtocolError(Reject.BAD_ENDPOINT, f"endpoint {host!r} {why}")
        out.append((host, enc.expect_int(port, "endpoint port", 1, 65535)))
    return tuple(out)


def _psk_ids(value: object) -> tuple[bytes, ...]:
    items = enc.expect_tuple(value, "psk ids")
    if len(items) > MAX_PSK_IDS:
        raise RemoteProtocolError(Reject.MALFORMED, f"more than {MAX_PSK_IDS} PSK ids")
    return tuple(enc.expect_bytes(i, "psk id", PSK_ID_LEN) for i in items)


def psk_compatible(ours: Iterable[bytes], theirs: Iterable[bytes]) -> bool:
    """Two nodes can agree on a pair PSK when neither uses one, or they share a secret."""
    mine, other = set(ours), set(theirs)
    return (not mine and not other) or bool(mine & other)


def _decode(data: bytes) -> Announcement:
    """Size, structure and signature checks (no trust decisions)."""
    ann, body_bytes, cert_body = _parse(data)
    check_certificate_signature(ann.cert, cert_body)
    _check_signature(ann, body_bytes)
    return ann


def _check_signature(ann: Announcement, body_bytes: bytes) -> None:
    if not verify_signature(ann.node_id, ANNOUNCEMENT_DOMAIN, body_bytes, ann.signature):
        raise RemoteProtocolError(Reject.BAD_SIGNATURE, f"announcement of {ann.name!r}")


def _parse(data: bytes) -> tuple[Announcement, bytes, bytes]:
    """Structure only, no signature: the announcement, its signed body and its certificate's
    signed body (for the two signature checks)."""
    outer = enc.expect_tuple(enc.unpack(data, "announcement", MAX_ANNOUNCEMENT_SIZE), "ann", 2)
    body_bytes = enc.expect_bytes(outer[0], "announcement body")
    signature = enc.expect_bytes(outer[1], "announcement signature", SIGNATURE_LEN)
    body = enc.expect_tuple(
        enc.unpack(body_bytes, "announcement body", MAX_ANNOUNCEMENT_SIZE), "announcement", 12
    )
    if body[0] != ANNOUNCEMENT_FORMAT:
        raise RemoteProtocolError(Reject.UNSUPPORTED_VERSION, f"announcement format {body[0]!r}")
    cert, cert_body = parse_certificate(enc.expect_bytes(body[1], "announcement certificate"))
    next_key = body[4]
    if next_key is not None:
        next_key = enc.expect_bytes(next_key, "next wireguard key", KEY_LEN)
    try:
        status = Status(enc.expect_int(body[8], "status", 0, 255))
    except ValueError:
        raise RemoteProtocolError(Reject.MALFORMED, f"unknown status {body[8]}") from None
    ann = Announcement(
        cert=cert,
        version=enc.expect_int(body[2], "version"),
        wg_public_key=enc.expect_bytes(body[3], "wireguard key", KEY_LEN),
        next_wg_public_key=next_key,
        next_wg_key_at=enc.expect_int(body[5], "next key time"),
        endpoints=_endpoints(body[6]),
        prefixes=parse_prefix_list(body[7], "advertised prefixes"),
        status=status,
        meshd_port=enc.expect_int(body[9], "meshd port", 1, 65535),
        issued_at=enc.expect_int(body[10], "issued at"),
        psk_ids=_psk_ids(body[11]),
        signature=signature,
        raw=data,
    )
    return ann, body_bytes, cert_body


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class AnnouncementVerifier:
    """Checks announcements against the trust anchor and the revocation list.

    Signature checks dominate the cost (~80 us each, two per announcement), so they run last
    among the checks that can refuse a stranger: size, structure, then the certificate's mesh,
    CA, validity window and revocation, all cheap, come first (issue #22: a rogue CA's requests
    cost two signature checks each before). Prefix and PSK-id checks follow the signatures:
    their refusals are logged with the node's name, which only a signed announcement may put
    in a log line.

    Gossip delivers the same announcement many times, so the results of the expensive part
    are cached by the hash of the raw bytes; time and revocation are re-checked on every call:
    both change over time. Failed signature checks are remembered too (bounded, by the hash of
    the announcement and of its certificate), so a replayed bad request, or a new one around a
    certificate whose CA signature failed, costs no signature check.
    """

    def __init__(
        self,
        trust: TrustAnchor,
        is_revoked: Callable[[Certificate], bool] = lambda c: False,
        cache_size: int = 4096,
        psk_ids: Iterable[bytes] = (),
        failure_cache_size: int = 4096,
    ) -> None:
        self.trust = trust
        self.is_revoked = is_revoked
        self.psk_ids = tuple(psk_ids)
        """Ids of the PSK secrets this node holds; a peer holding none of them is refused."""
        self._cache: OrderedDict[bytes, Announcement] = OrderedDict()
        self._cache_size = cache_size
        self._failed: OrderedDict[bytes, RemoteProtocolError] = OrderedDict()
        """Hash of an announcement or certificate whose signature check failed -> the error."""
        self._failure_cache_size = failure_cache_size
        self.signature_checks = 0
        """Announcements whose signatures were checked (each one or two Ed25519 verifications)."""

    def verify(self, data: bytes, now: float) -> Announcement:
        """Return the announcement or raise `RemoteProtocolError`. `now` is Unix seconds."""
        self._check_size(data)
        digest = _digest(data)
        ann = self._cache.get(digest)
        if ann is not None:
            self._cache.move_to_end(digest)
            self._check_trust(ann, now)
        else:
            ann, body_bytes, cert_body = self._parse_unverified(data, digest)
            self._check_trust(ann, now)
            self._check_signatures(ann, body_bytes, cert_body, digest)
        if not set(ann.prefixes) <= set(ann.cert.prefixes):
            raise RemoteProtocolError(
                Reject.NOT_CERTIFIED, f"{ann.name!r} advertises prefixes its certificate lacks"
            )
        if not psk_compatible(self.psk_ids, ann.psk_ids):
            raise RemoteProtocolError(Reject.PSK_MISMATCH, _psk_mismatch(ann, self.psk_ids))
        if digest not in self._cache:
            self._cache[digest] = ann
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return ann

    def needs_signature_check(self, data: bytes, now: float) -> bool:
        """Run every check `verify` runs before the signatures and say whether `verify` would
        then check signatures (False: known good, its result is cached). Raises
        `RemoteProtocolError` for what the cheap checks refuse, and for an announcement or
        certificate whose signature check failed before. Lets a caller spend a verification
        budget only on what costs one (`meshd.core.joingate`)."""
        self._check_size(data)
        digest = _digest(data)
        ann = self._cache.get(digest)
        if ann is not None:
            self._check_trust(ann, now)
            return False
        ann, _body, _cert_body = self._parse_unverified(data, digest)
        self._check_trust(ann, now)
        return True

    def _parse_unverified(self, data: bytes, digest: bytes) -> tuple[Announcement, bytes, bytes]:
        failed = self._failed.get(digest)
        if failed is None:
            ann, body_bytes, cert_body = _parse(data)
            failed = self._failed.get(_digest(ann.cert.raw))
            if failed is None:
                return ann, body_bytes, cert_body
        raise RemoteProtocolError(failed.reason, failed.detail)

    @staticmethod
    def _check_size(data: bytes) -> None:
        if len(data) > MAX_ANNOUNCEMENT_SIZE:
            raise RemoteProtocolError(
                Reject.OVERSIZE, f"announcement is {len(data)} bytes, limit {MAX_ANNOUNCEMENT_SIZE}"
            )

    def _check_trust(self, ann: Announcement, now: float) -> None:
        check_certificate(ann.cert, self.trust, now, self.is_revoked)

    def _check_signatures(
        self, ann: Announcement, body_bytes: bytes, cert_body: bytes, digest: bytes
    ) -> None:
        self.signature_checks += 1
        try:
            try:
                check_certificate_signature(ann.cert, cert_body)
            except RemoteProtocolError as exc:
                self._remember_failure(_digest(ann.cert.raw), exc)
                raise
            _check_signature(ann, body_bytes)
        except RemoteProtocolError as exc:
            self._remember_failure(digest, exc)
            raise

    def _remember_failure(self, digest: bytes, exc: RemoteProtocolError) -> None:
        self._failed[digest] = exc
        self._failed.move_to_end(digest)
        if len(self._failed) > self._failure_cache_size:
            self._failed.popitem(last=False)


def _psk_mismatch(ann: Announcement, ours: tuple[bytes, ...]) -> str:
    def ids(values: tuple[bytes, ...]) -> str:
        return ", ".join(v.hex() for v in values)

    if not ann.psk_ids:
        return f"{ann.name!r} uses no mesh PSK secret; this node requires one ({ids(ours)})"
    if not ours:
        return (
            f"{ann.name!r} uses mesh PSK secret {ids(ann.psk_ids)}; this node has none "
            "(set psk_file)"
        )
    return f"{ann.name!r} uses mesh PSK secret {ids(ann.psk_ids)}; this node holds {ids(ours)}"
