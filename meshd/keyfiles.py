"""Files that hold keys, certificates and revocations.

Secrets live in a directory of mode 0700, in files of mode 0600, written atomically (temporary
file in the same directory, fsync, rename) so a crash never leaves a half-written key. Keys are
one line of base64 (like `wg genkey`); certificates and revocations are armored base64 blocks
so they survive copy and paste.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from pathlib import Path

from meshd.core.errors import LocalProtocolError

CERT_LABEL = "MESHD CERTIFICATE"
REVOCATION_LABEL = "MESHD REVOCATION"


class KeyFileError(LocalProtocolError):
    """A key, certificate or revocation file is missing, unreadable, malformed or unsafe."""


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700, or tighten an existing directory to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)


def _write_atomic(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise KeyFileError(f"writing {path}: file exists (use --force to replace it)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # umask may have narrowed or (for 0644) kept bits; be exact
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_secret(path: Path, data: bytes, overwrite: bool = False) -> None:
    """Write a secret file (0600) into a 0700 directory."""
    ensure_private_dir(path.parent)
    _write_atomic(path, data, 0o600, overwrite)


def rewrite_secret(path: Path, data: bytes) -> None:
    """Replace an existing secret file (0600) atomically, leaving its directory as it is (an
    operator's /etc/meshd is not ours to tighten)."""
    _write_atomic(path, data, 0o600, overwrite=True)


def write_public(path: Path, data: bytes, overwrite: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, data, 0o644, overwrite)


def encode_key(key: bytes) -> bytes:
    return base64.b64encode(key) + b"\n"


def decode_key(text: str, what: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{what}: not base64") from None
    if len(key) != 32:
        raise KeyFileError(f"{what}: expected a 32-byte key, got {len(key)} bytes")
    return key


def read_key(path: Path, secret: bool) -> bytes:
    """Read a one-line base64 key. A secret key readable by group or others is refused, as ssh
    does: a leaked key cannot be made safe after the fact, but it can be noticed."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"reading {path}: {exc.strerror}") from None
    if secret and stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(f"reading {path}: permissions {oct(stat.S_IMODE(st.st_mode))} are too "
                           "open; a secret key file must be 0600")  # fmt: skip
    return decode_key(text, str(path))


def armor(label: str, data: bytes) -> bytes:
    body = base64.encodebytes(data).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode()


def dearmor(label: str, text: str, what: str) -> bytes:
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if len(lines) < 2 or lines[0] != begin or lines[-1] != end:
        raise KeyFileError(f"{what}: not a {label.lower()} (expected {begin} ... {end})")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{what}: damaged base64 inside the {label.lower()}") from None


def read_armored(path: Path, label: str) -> bytes:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"reading {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return dearmor(label, text, str(path))
