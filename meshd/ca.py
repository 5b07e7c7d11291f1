"""The offline mesh CA: a directory holding the CA key, its public key and a ledger.

Layout of a CA directory (mode 0700):

    ca.key          Ed25519 seed of the CA, base64, 0600. Keep this directory offline.
    ca.pub          CA public key, base64: the trust anchor every node is given.
    ca.json         {"mesh": NAME, "format": 1}
    issued.jsonl    one JSON line per issued certificate (serial, name, key, addresses, ...):
                    gives unique serials, keeps IPv4 pool addresses unique, lets `cert revoke`
                    work by serial or name.
    revocations/    SERIAL.rev, the signed revocation records issued so far.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.utils

from meshd import keyfiles
from meshd.core.cert import Certificate, Revocation, issue_certificate, issue_revocation
from meshd.core.identity import SigningKey, check_mesh_name, overlay_ipv6, pool_ipv4


class CaError(keyfiles.KeyFileError):
    """The CA directory is missing, incomplete, or the request conflicts with its ledger."""


@dataclass(frozen=True)
class IssuedRecord:
    serial: int
    name: str
    identity_key: str  # base64
    addresses: list[str]
    prefixes: list[str]
    not_after: int


class CertificateAuthority:
    def __init__(self, directory: Path, key: SigningKey, mesh: str) -> None:
        self.directory = directory
        self.key = key
        self.mesh = mesh

    @classmethod
    def init(cls, directory: Path, mesh: str, force: bool = False) -> CertificateAuthority:
        check_mesh_name(mesh)
        key = SigningKey(nacl.utils.random(32))
        keyfiles.write_secret(directory / "ca.key", keyfiles.encode_key(key.seed), overwrite=force)
        keyfiles.write_public(directory / "ca.pub", keyfiles.encode_key(key.public))
        meta = json.dumps({"format": 1, "mesh": mesh}, indent=2).encode() + b"\n"
        keyfiles.write_public(directory / "ca.json", meta)
        ledger = directory / "issued.jsonl"
        if force or not ledger.exists():
            keyfiles.write_public(ledger, b"")
        return cls(directory, key, mesh)

    @classmethod
    def open(cls, directory: Path) -> CertificateAuthority:
        try:
            meta = json.loads((directory / "ca.json").read_text())
        except FileNotFoundError:
            raise CaError(f"opening CA {directory}: no ca.json (run `meshctl ca init`)") from None
        except (OSError, ValueError) as exc:
            raise CaError(f"opening CA {directory}: ca.json unreadable: {exc}") from None
        key = SigningKey(keyfiles.read_key(directory / "ca.key", secret=True))
        return cls(directory, key, check_mesh_name(str(meta.get("mesh", ""))))

    def issued(self) -> list[IssuedRecord]:
        path = self.directory / "issued.jsonl"
        if not path.exists():
            return []
        records = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(IssuedRecord(**json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise CaError(f"reading {path} line {n}: {exc}") from None
        return records

    def _record(self, cert: Certificate) -> None:
        rec = {
            "serial": cert.serial, "name": cert.name,
            "identity_key": keyfiles.encode_key(cert.identity_key).decode().strip(),
            "addresses": list(cert.addresses), "prefixes": list(cert.prefixes),
            "not_after": cert.not_after,
        }  # fmt: skip
        path = self.directory / "issued.jsonl"
        old = path.read_bytes() if path.exists() else b""
        keyfiles.write_public(path, old + json.dumps(rec).encode() + b"\n")

    def issue(
        self,
        *,
        name: str,
        identity_key: bytes,
        ipv4: str | None,
        ipv4_pool: str,
        prefixes: list[str],
        roles: list[str],
        not_before: int,
        not_after: int,
        extra_addresses: list[str] = [],  # noqa: B006 - never mutated
    ) -> Certificate:
        """Issue a certificate. The IPv6 overlay address is always the one derived from the
        identity key; `ipv4` is None (no IPv4), "auto" (next free address from the pool by the
        deterministic candidate sequence) or an explicit address."""
        records = self.issued()
        # Certificates of the same name are renewals: they may keep their IPv4 address.
        live = [r for r in records if r.not_after > not_before and r.name != name]
        used_v4 = {a for r in live for a in r.addresses if ipaddress.ip_address(a).version == 4}
        addresses = [str(overlay_ipv6(self.mesh, identity_key))]
        if ipv4 == "auto":
            pool = ipaddress.IPv4Network(ipv4_pool)
            for attempt in range(10_000):
                candidate = str(pool_ipv4(pool, identity_key, attempt))
                if candidate not in used_v4:
                    addresses.append(candidate)
                    break
            else:
                raise CaError(f"issuing {name}: IPv4 pool {pool} has no free address")
        elif ipv4 is not None:
            if ipv4 in used_v4:
                raise CaError(f"issuing {name}: IPv4 address {ipv4} is already issued")
            addresses.append(ipv4)
        addresses.extend(extra_addresses)
        serial = max((r.serial for r in records), default=0) + 1
        cert = issue_certificate(
            self.key, mesh=self.mesh, serial=serial, name=name, identity_key=identity_key,
            addresses=addresses, prefixes=prefixes, roles=roles, not_before=not_before,
            not_after=not_after,
        )  # fmt: skip
        self._record(cert)
        return cert

    def find(self, serial_or_name: str) -> IssuedRecord:
        records = self.issued()
        matches = [
            r for r in records if str(r.serial) == serial_or_name or r.name == serial_or_name
        ]
        if not matches:
            raise CaError(f"no certificate with serial or name {serial_or_name!r} in the ledger")
        return max(matches, key=lambda r: r.serial)  # a name: its newest certificate

    def revoke(self, record: IssuedRecord, now: int, reason: str) -> tuple[Revocation, Path]:
        rev = issue_revocation(
            self.key, mesh=self.mesh, serial=record.serial,
            identity_key=keyfiles.decode_key(record.identity_key, "ledger identity key"),
            revoked_at=now, reason=reason,
        )  # fmt: skip
        path = self.directory / "revocations" / f"{record.serial}.rev"
        keyfiles.write_public(path, keyfiles.armor(keyfiles.REVOCATION_LABEL, rev.raw))
        return rev, path


def describe_certificate(cert: Certificate, now: float) -> dict[str, Any]:
    """The fields of a certificate as plain JSON values (keys in base64, times in Unix seconds)."""
    if now < cert.not_before:
        state = "not yet valid"
    elif now >= cert.not_after:
        state = "expired"
    else:
        state = "valid"
    return {
        "mesh": cert.mesh,
        "serial": cert.serial,
        "name": cert.name,
        "identity_key": keyfiles.encode_key(cert.identity_key).decode().strip(),
        "addresses": list(cert.addresses),
        "prefixes": list(cert.prefixes),
        "roles": list(cert.roles),
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "ca_key": keyfiles.encode_key(cert.ca_key).decode().strip(),
        "state": state,
    }
