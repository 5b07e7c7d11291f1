"""Persistent node state in `state_dir` (0700; secrets 0600; every write atomic).

    wireguard.key     current WireGuard private key (base64)
    version           the last announcement version used (decimal): versions never go back
    peers.msgpack     raw announcements of known peers: after a restart of every node the mesh
                      re-forms by joining through them, with no seed
    revocations.msgpack  raw CA-signed revocation records received

Everything read back is verified again by the core like any other input: a damaged or forged
file cannot inject a peer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import nacl.utils

from meshd import keyfiles
from meshd.core.identity import WireGuardKey

log = logging.getLogger(__name__)


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        keyfiles.ensure_private_dir(directory)

    def wireguard_key(self) -> WireGuardKey:
        """The persisted WireGuard key, created on first start."""
        path = self.directory / "wireguard.key"
        if path.exists():
            return WireGuardKey(keyfiles.read_key(path, secret=True))
        key = WireGuardKey(nacl.utils.random(32))
        self.save_wireguard_key(key)
        return key

    def save_wireguard_key(self, key: WireGuardKey) -> None:
        keyfiles.write_secret(
            self.directory / "wireguard.key", keyfiles.encode_key(key.private), overwrite=True
        )

    def version(self) -> int:
        try:
            return int((self.directory / "version").read_text().strip())
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning(
                "state file %s is damaged; versions restart from the clock",
                self.directory / "version",
            )
            return 0

    def save_version(self, version: int) -> None:
        keyfiles.write_secret(self.directory / "version", f"{version}\n".encode(), overwrite=True)

    def _blobs(self, name: str) -> list[bytes]:
        path = self.directory / name
        try:
            value = msgpack.unpackb(path.read_bytes(), raw=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            log.warning("state file %s unreadable (%s); starting without it", path, exc)
            return []
        if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
            log.warning("state file %s has an unexpected shape; starting without it", path)
            return []
        return value

    def _save_blobs(self, name: str, blobs: list[bytes]) -> None:
        keyfiles.write_secret(
            self.directory / name, msgpack.packb(blobs, use_bin_type=True), overwrite=True
        )

    def peers(self) -> list[bytes]:
        return self._blobs("peers.msgpack")

    def save_peers(self, announcements: list[bytes]) -> None:
        self._save_blobs("peers.msgpack", announcements)

    def revocations(self) -> list[bytes]:
        return self._blobs("revocations.msgpack")

    def save_revocations(self, records: list[bytes]) -> None:
        self._save_blobs("revocations.msgpack", records)
