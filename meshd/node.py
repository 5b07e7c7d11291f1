"""Loading and checking what a node needs before it may start: trust anchor, certificate,
identity key, optional PSK secret. Every failure names the file and what is wrong with it."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from meshd import keyfiles
from meshd.config import Config
from meshd.core.cert import Certificate, TrustAnchor, check_certificate, decode_certificate
from meshd.core.errors import MeshError, RemoteProtocolError
from meshd.core.identity import SigningKey


class StartupError(MeshError):
    """meshd cannot start as configured; the message says which file or field, and why."""


@dataclass(frozen=True)
class NodeIdentity:
    trust: TrustAnchor
    identity: SigningKey
    cert: Certificate

    @property
    def overlay_ipv6(self) -> str:
        return next(a for a in self.cert.addresses if ipaddress.ip_address(a).version == 6)


def load_identity(config: Config, now: float | None = None) -> NodeIdentity:
    now = time.time() if now is None else now
    try:
        ca_key = keyfiles.read_key(config.ca_public_key, secret=False)
        identity = SigningKey(keyfiles.read_key(config.identity_key, secret=True))
        raw = keyfiles.read_armored(config.certificate, keyfiles.CERT_LABEL)
    except keyfiles.KeyFileError as exc:
        raise StartupError(str(exc)) from None
    trust = TrustAnchor(config.mesh, (ca_key,))
    try:
        cert = decode_certificate(raw)
        check_certificate(cert, trust, now)
    except RemoteProtocolError as exc:
        raise StartupError(f"certificate {config.certificate}: {exc}") from None
    if cert.identity_key != identity.public:
        raise StartupError(
            f"identity key {config.identity_key} does not belong to certificate "
            f"{config.certificate} (issued for another key)"
        )
    if not any(ipaddress.ip_address(a).version == 6 for a in cert.addresses):
        raise StartupError(f"certificate {config.certificate}: has no IPv6 overlay address")
    missing = set(config.advertise_prefixes) - set(cert.prefixes)
    if missing:
        raise StartupError(
            f"advertise_prefixes: {sorted(missing)} not granted by certificate {config.certificate}"
        )
    return NodeIdentity(trust, identity, cert)
