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
MIN_PERIOD_S = 10
"""Shortest epoch: WireGuard only reads the PSK in handshakes, so epochs shorter than its 2-minute
rekey are harmless; below 10 s, clock differences between nodes would be a large share of it."""
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
    active_from: int = 0
    """Unix seconds from which this secret is the one in use (rolling to a new secret)."""
    secret_id: bytes = b""
    """Public 8-byte name of the secret, fixed at its creation (the key id of its first chain
    key) and kept through the ratchet; announced so that nodes notice a missing or different
    secret. Empty here means: this chain key is the first, compute it."""

    def __post_init__(self) -> None:
        if len(self.key) != KEY_LEN:
            raise LocalProtocolError("a PSK chain key is 32 bytes")
        if self.period < MIN_PERIOD_S:
            raise LocalProtocolError(f"PSK epoch period must be at least {MIN_PERIOD_S} seconds")
        if not self.secret_id:
            object.__setattr__(self, "secret_id", self.key_id())
        if len(self.secret_id) != 8:
            raise LocalProtocolError("a PSK secret id is 8 bytes")

    def __repr__(self) -> str:
        return (
            f"PskChain(period={self.period}, epoch={self.epoch}, "
            f"id={self.secret_id.hex()}, key=<secret>)"
        )

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
        return PskChain(self.period, epoch, key, self.active_from, self.secret_id)

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
        return (
            f"{FILE_MAGIC}\nperiod={self.period}\nepoch={self.epoch}\n"
            f"active_from={self.active_from}\nid={self.secret_id.hex()}\nkey={key}\n"
        )

    @classmethod
    def from_text(cls, text: str, what: str) -> PskChain:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        if not lines or lines[0] != FILE_MAGIC:
            raise LocalProtocolError(f"{what}: not a meshd PSK secret (first line {FILE_MAGIC})")
        fields = dict(ln.split("=", 1) for ln in lines[1:] if "=" in ln)
        try:
            key = base64.b64decode(fields["key"], validate=True)
            secret_id = bytes.fromhex(fields.get("id", ""))
            return cls(
                int(fields["period"]),
                int(fields["epoch"]),
                key,
                int(fields.get("active_from", "0")),
                secret_id,
            )
        except KeyError as exc:
            raise LocalProtocolError(f"{what}: missing field {exc.args[0]}") from None
        except (ValueError, binascii.Error) as exc:
            raise LocalProtocolError(f"{what}: {exc}") from None


MAX_SECRETS = 4


@dataclass(frozen=True)
class PskSecrets:
    """The contents of a PSK secret file: one secret, or several while the operator rolls the
    mesh to a new one (each with the Unix second from which it is used).

    The secret in use at `now` is the one with the latest `active_from` not after `now`. Every
    node derives the same pair PSK as long as the nodes agree on the time to within the margin
    documented in docs/keys.md; a node accepts a peer that holds at least one of its secrets.
    """

    chains: tuple[PskChain, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.chains) <= MAX_SECRETS:
            raise LocalProtocolError(f"a PSK file holds 1 to {MAX_SECRETS} secrets")
        if len({c.secret_id for c in self.chains}) != len(self.chains):
            raise LocalProtocolError("a PSK file holds the same secret twice")

    def __repr__(self) -> str:
        return f"PskSecrets({', '.join(repr(c) for c in self.chains)})"

    @property
    def ids(self) -> tuple[bytes, ...]:
        """The public ids of the secrets held, in file order (announced)."""
        return tuple(c.secret_id for c in self.chains)

    def active(self, now: float) -> PskChain:
        """The secret in use at `now`, advanced to the epoch of `now` (never backwards: a chain
        already past that epoch, after a clock step back, stays where it is)."""
        started = [c for c in self.chains if c.active_from <= now]
        chain = max(started or self.chains, key=lambda c: c.active_from)
        return chain.advance_to(max(chain.epoch, epoch_at(now, chain.period)))

    def ratcheted(self, now: float) -> PskSecrets:
        """What the file should hold at `now`: every secret advanced to the epoch of `now`, and
        secrets superseded by a newer active one dropped, so a later compromise of the file
        reveals no earlier epoch's keys."""
        current = self.active(now)
        keep = [
            c.advance_to(max(c.epoch, epoch_at(now, c.period)))
            for c in self.chains
            if c.active_from >= current.active_from
        ]
        return PskSecrets(tuple(keep))

    def next_change(self, now: float) -> float:
        """The next Unix time at which the pair PSKs change: an epoch boundary of the secret in
        use, or the activation of a newer secret."""
        chain = self.active(now)
        times = [(chain.epoch + 1) * chain.period]
        times += [c.active_from for c in self.chains if c.active_from > now]
        return float(min(times))

    def clear_of_changes(self, at: float, before: float, after: float) -> float:
        """The earliest time from `at` with no PSK change in the `before` seconds before it nor
        in the `after` seconds after it: a moment for something that needs a WireGuard handshake
        (a key switch), which fails if it runs while two nodes disagree about the PSK.
        Requires before + after < the epoch period (at least MIN_PERIOD_S)."""
        t = at
        for _ in range(len(self.chains) + 2):  # each step passes one change; few exist nearby
            change = self.next_change(t - before)
            if change > t + after:
                break
            t = change + before
        return t

    def to_text(self) -> str:
        return "".join(c.to_text() for c in self.chains)

    @classmethod
    def from_text(cls, text: str, what: str) -> PskSecrets:
        blocks = [b for b in text.split(FILE_MAGIC) if b.strip()]
        if not blocks or not text.lstrip().startswith(FILE_MAGIC):
            raise LocalProtocolError(f"{what}: not a meshd PSK secret (first line {FILE_MAGIC})")
        try:
            return cls(tuple(PskChain.from_text(FILE_MAGIC + b, what) for b in blocks))
        except LocalProtocolError as exc:
            msg = str(exc)
            raise LocalProtocolError(msg if msg.startswith(what) else f"{what}: {msg}") from None
