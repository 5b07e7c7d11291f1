"""Per-pair WireGuard preshared keys from one mesh secret, with a one-way epoch ratchet.

Construction (pinned by golden tests; see docs/keys.md):

    chain[e+1] = BLAKE2b-256(chain[e], personalisation "meshd-psk-ratch")
    psk(A, B, e) = BLAKE2b-256(key=chain[e], data=min(A, B) || max(A, B),
                               personalisation "meshd-psk-pair")

where A and B are the two nodes' Ed25519 identity public keys and e = floor(unix_time / period).
Both sides compute the same PSK with no message exchanged; it differs for every pair and every
epoch. A node keeps only the chain key of the current epoch (and rewrites its secret file when it
advances), so a compromise reveals current and future keys of that chain, never earlier ones:
recorded traffic of past epochs stays protected. The PSK adds a symmetric layer to WireGuard's
handshake (post-quantum protection for recorded traffic, per the WireGuard paper section 5.2),
which is why it comes from a separate secret and not from the peers' X25519 keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from meshd.core.errors import LocalProtocolError

KEY_LEN = 32
MAX_RATCHET_STEPS = 1_000_000  # ~2,700 years of daily epochs; guards against a bad clock
FILE_MAGIC = "meshd-psk-v1"


def epoch_at(now: float, period: int) -> int:
    return int(now // period)


@dataclass(frozen=True)
class PskChain:
    """The mesh PSK secret at one epoch."""

    period: int
    """Epoch length in seconds; the same on every node (it is part of the secret file)."""
    epoch: int
    """Epoch number of `key`."""
    key: bytes
    """Chain key of `epoch`. Secret."""

    def __post_init__(self) -> None:
        if len(self.key) != KEY_LEN:
            raise LocalProtocolError("a PSK chain key is 32 bytes")
        if self.period < 60:
            raise LocalProtocolError("PSK epoch period must be at least 60 seconds")

    def __repr__(self) -> str:
        return f"PskChain(period={self.period}, epoch={self.epoch}, key=<secret>)"

    def advance_to(self, epoch: int) -> PskChain:
        """The chain at a later (or the same) epoch. Going back is impossible by design."""
        if epoch < self.epoch:
            raise LocalProtocolError(
                f"PSK chain is at epoch {self.epoch}; epoch {epoch} is in the past and cannot be "
                "derived (one-way ratchet)"
            )
        if epoch - self.epoch > MAX_RATCHET_STEPS:
            raise LocalProtocolError(f"PSK epoch {epoch} is implausibly far ahead; check the clock")
        key = self.key
        for _ in range(epoch - self.epoch):
            key = hashlib.blake2b(key, digest_size=KEY_LEN, person=b"meshd-psk-ratch").digest()
        return PskChain(self.period, epoch, key)

    def pair_psk(self, identity_a: bytes, identity_b: bytes) -> bytes:
        """The WireGuard PSK of the pair (A, B) in this epoch; symmetric in A and B."""
        if identity_a == identity_b:
            raise LocalProtocolError("a node has no PSK with itself")
        lo, hi = sorted((identity_a, identity_b))
        return hashlib.blake2b(
            lo + hi, key=self.key, digest_size=KEY_LEN, person=b"meshd-psk-pair"
        ).digest()

    def key_id(self) -> bytes:
        """A public 8-byte commitment to this epoch's chain key: lets two nodes notice they hold
        different secrets (or one holds none) without revealing anything."""
        return hashlib.blake2b(self.key, digest_size=8, person=b"meshd-psk-id").digest()

    def to_text(self) -> str:
        key = base64.b64encode(self.key).decode()
        return f"{FILE_MAGIC}\nperiod={self.period}\nepoch={self.epoch}\nkey={key}\n"

    @classmethod
    def from_text(cls, text: str, what: str) -> PskChain:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        if not lines or lines[0] != FILE_MAGIC:
            raise LocalProtocolError(f"{what}: not a meshd PSK secret (first line {FILE_MAGIC})")
        fields = dict(ln.split("=", 1) for ln in lines[1:] if "=" in ln)
        try:
            key = base64.b64decode(fields["key"], validate=True)
            return cls(int(fields["period"]), int(fields["epoch"]), key)
        except KeyError as exc:
            raise LocalProtocolError(f"{what}: missing field {exc.args[0]}") from None
        except (ValueError, binascii.Error) as exc:
            raise LocalProtocolError(f"{what}: {exc}") from None
