"""Persistent node state in `state_dir` (0700; secrets 0600; every write atomic).

    wireguard.key     current WireGuard private key (base64); its mtime is the key's age
    wireguard.next    during a key rotation: the next private key and its switch time (Unix ms)
    version           the last announcement version used (decimal): versions never go back
    peers.msgpack     raw announcements of known peers: after a restart of every node the mesh
                      re-forms by joining through them, with no seed
    revocations.msgpack  raw CA-signed revocation records received
    contacts.msgpack  underlay addresses ("host port") of members forgotten since: they are
                      still asked whether they are in another mesh (merging) after a restart

Everything read back is verified again by the core like any other input: a damaged or forged
file cannot inject a peer.
"""

from __future__ import annotations

import ipaddress
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

    def wireguard_key_since(self) -> float:
        """Unix time the current WireGuard key was written (its age drives scheduled rotation)."""
        return (self.directory / "wireguard.key").stat().st_mtime

    def next_wireguard_key(self) -> tuple[WireGuardKey, int] | None:
        """The rotation in progress: next key and its switch time (Unix ms), or None."""
        path = self.directory / "wireguard.next"
        try:
            st = path.stat()
            key_line, at_line = path.read_text().split()
            if st.st_mode & 0o077:
                raise ValueError("permissions too open")
            return WireGuardKey(keyfiles.decode_key(key_line, str(path))), int(at_line)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, keyfiles.KeyFileError) as exc:
            log.warning("state file %s unusable (%s); no key rotation in progress", path, exc)
            return None

    def save_next_wireguard_key(self, key: WireGuardKey, at_ms: int) -> None:
        data = keyfiles.encode_key(key.private) + f"{at_ms}\n".encode()
        keyfiles.write_secret(self.directory / "wireguard.next", data, overwrite=True)

    def finish_wireguard_rotation(self, key: WireGuardKey) -> None:
        """The next key became current: persist it, then forget the pending rotation."""
        self.save_wireguard_key(key)
        (self.directory / "wireguard.next").unlink(missing_ok=True)

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

    def contacts(self) -> list[tuple[str, int]]:
        """Persisted contact addresses; anything that is not an IP literal and a port is
        skipped (a damaged file must not aim our checks at a name or a bad port)."""
        out: list[tuple[str, int]] = []
        for blob in self._blobs("contacts.msgpack"):
            try:
                host, port_text = blob.decode("ascii").split(" ")
                address = (str(ipaddress.ip_address(host)), int(port_text))
            except (UnicodeDecodeError, ValueError):
                log.warning("ignoring a damaged contact in %s", self.directory)
                continue
            if 0 < address[1] < 65536 and address not in out:
                out.append(address)
        return out

    def save_contacts(self, contacts: list[tuple[str, int]]) -> None:
        self._save_blobs("contacts.msgpack", [f"{h} {p}".encode("ascii") for h, p in contacts])

    def revocations(self) -> list[bytes]:
        return self._blobs("revocations.msgpack")

    def save_revocations(self, records: list[bytes]) -> None:
        self._save_blobs("revocations.msgpack", records)
