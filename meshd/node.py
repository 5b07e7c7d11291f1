"""Loading and checking what a node needs before it may start: trust anchor, certificate,
identity key, optional PSK secret. Every failure names the file and what is wrong with it."""

from __future__ import annotations

import ipaddress
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from meshd import keyfiles
from meshd.config import Config
from meshd.core.cert import Certificate, TrustAnchor, check_certificate, decode_certificate
from meshd.core.errors import MeshError, RemoteProtocolError
from meshd.core.identity import SigningKey
from meshd.core.psk import PskSecrets


class StartupError(MeshError):
    """meshd cannot start as configured; the message says which file or field, and why."""


@dataclass(frozen=True)
class NodeIdentity:
    trust: TrustAnchor
    identity: SigningKey
    cert: Certificate
    psk: PskSecrets | None = None
    """The mesh PSK secrets (`psk_file`), or None when the mesh uses no preshared keys."""

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
    psk = load_psk(Path(config.psk_file)) if config.psk_file else None
    return NodeIdentity(trust, identity, cert, psk)


def load_psk(path: Path) -> PskSecrets:
    """Read the mesh PSK secret file; refuse it when others may read it (as ssh does)."""
    try:
        st = path.stat()
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"psk_file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise StartupError(
            f"psk_file {path}: permissions {oct(stat.S_IMODE(st.st_mode))} are too open; "
            "the mesh PSK secret must be 0600 (chmod 600)"
        )
    try:
        return PskSecrets.from_text(text, f"psk_file {path}")
    except MeshError as exc:
        raise StartupError(str(exc)) from None
