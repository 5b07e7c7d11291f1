"""Looking across: the underlay addresses through which meshes that formed apart find each other.

Theory of operation
===================

SWIM heals what it can see: push-pull repairs differences between members, and the reconnect
timer asks members it holds dead. Neither looks at a node it does not know, so two meshes of one
CA that formed apart (a cold start where each seed found only itself, a partition that outlived
the tombstones, a seed replaced, a node restored from an old state directory) stay apart for
ever; memberlist#222, wesher#11/#39 and Serf (snapshot only) share that failure.

A node therefore keeps a short list of *candidates*: underlay addresses (host, meshd port) of

* every address of every seed (each A and AAAA record of each seed name; the daemon re-resolves
  them and drops its own addresses), and
* contacts: members it once knew and forgot (tombstone reaped), plus the persisted ones a
  restarted node brings; bounded (`contact_limit`, the newest kept).

A candidate is *covered* while the node that last answered there is a live member of ours (or is
ourselves): then it is in our mesh and there is nothing to look for. Every `merge_check_interval`
the node takes the one candidate that is due and sends it a `MeshCheck` (96 bytes, underlay).
The answer (`MeshCheckReply`, smaller than the check, so no amplification) names the node there
and its state hash. An answer from a node that is not a live member of ours (unknown, or held
dead) is another mesh, or our own mesh's view of it lags: the node sends it a join request,
which is answered with a signed announcement and followed by a full push-pull; gossip then
spreads each side's members through the other. Both meshes are one within a push-pull and a
few gossip rounds.

Schedule per candidate: an uncovered one is checked again after a delay that doubles from
`merge_check_interval` up to `seed_retry_max` (seeds) or `contact_retry_max` (contacts), and
starts again from the bottom once it answers; a covered one is looked at again only after
`covered_recheck` (the owner may have moved and someone else taken the address) or as soon as its
owner stops being live. So a converged mesh whose seeds are all members sends nothing here; a
dead seed costs one small datagram per `seed_retry_max`; a node alone for a day keeps asking its
old contacts every `contact_retry_max` for as long as it runs.

This module is the bookkeeping only (pure, no I/O); `MeshNode` sends and receives.
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Address = tuple[str, int]


def mesh_tag(mesh: str) -> bytes:
    """8 bytes that name a mesh in a `MeshCheck` (a node of another mesh stays silent).
    Changing this is a breaking change of the wire format (golden test)."""
    return hashlib.blake2b(mesh.encode(), digest_size=8, person=b"meshd-mesh-tag").digest()


class Kind(enum.Enum):
    SEED = "seed"
    CONTACT = "contact"


@dataclass(slots=True)
class Candidate:
    """One underlay address we look across to."""

    address: Address
    kind: Kind
    next_at: float
    """When it is due to be checked."""
    backoff: float
    """Delay before the next check if this one goes unanswered (or answers as another mesh)."""
    owner: bytes | None = None
    """Identity key of the node that last answered there (a hint: the answer is unsigned)."""
    foreign_since: float | None = None
    """Since when its answers come from a node outside our live members (a split)."""
    foreign_members: int = 0
    """How many live members that node reported in its last answer."""
    added: float = 0.0


class Lookout:
    """The candidates of one node and when each is due (module docstring)."""

    def __init__(
        self,
        *,
        interval: float,
        seed_retry_max: float,
        contact_retry_max: float,
        covered_recheck: float,
        contact_limit: int,
        rng: random.Random,
    ) -> None:
        self._rng = rng
        self.interval = interval
        self.seed_retry_max = seed_retry_max
        self.contact_retry_max = contact_retry_max
        self.covered_recheck = covered_recheck
        self.contact_limit = contact_limit
        self._candidates: dict[Address, Candidate] = {}
        self.contacts_changed = 0
        """Counts changes of the contact list (the daemon persists it when this moves)."""

    def __len__(self) -> int:
        return len(self._candidates)

    def candidates(self) -> list[Candidate]:
        return list(self._candidates.values())

    def get(self, address: Address) -> Candidate | None:
        return self._candidates.get(address)

    def set_seeds(
        self, addresses: Iterable[Address], now: float, first_at: float | None = None
    ) -> None:
        """The seed addresses now (every record of every seed name). New ones are due at
        `first_at` (default now); known ones keep their schedule; seeds no longer listed go."""
        first = now if first_at is None else first_at
        wanted = list(dict.fromkeys(addresses))
        for address, c in list(self._candidates.items()):
            if c.kind is Kind.SEED and address not in wanted:
                del self._candidates[address]
        for address in wanted:
            known = self._candidates.get(address)
            if known is None:
                self._candidates[address] = Candidate(address, Kind.SEED, first, self.interval,
                                                      added=now)  # fmt: skip
            elif known.kind is Kind.CONTACT:
                known.kind = Kind.SEED
                known.backoff = min(known.backoff, self.seed_retry_max)
                known.next_at = min(known.next_at, now + known.backoff)

    def add_contact(self, address: Address, now: float, owner: bytes | None = None) -> None:
        """An address of a node we knew (forgotten now, or persisted by an earlier run)."""
        c = self._candidates.get(address)
        if c is not None:
            if owner is not None and c.owner is None:
                c.owner = owner
            return
        self.contacts_changed += 1
        contacts = [x for x in self._candidates.values() if x.kind is Kind.CONTACT]
        if len(contacts) >= self.contact_limit:
            oldest = min(contacts, key=lambda x: x.added)
            del self._candidates[oldest.address]
        self._candidates[address] = Candidate(address, Kind.CONTACT, now + self.interval,
                                              self.interval, owner, added=now)  # fmt: skip

    def contacts(self) -> list[Address]:
        """Contact addresses (for persistence), newest first."""
        out = [c for c in self._candidates.values() if c.kind is Kind.CONTACT]
        out.sort(key=lambda c: -c.added)
        return [c.address for c in out]

    def next_due(self, now: float, covered: Callable[[bytes], bool]) -> Candidate | None:
        """The candidate to check now, if any, its next check already scheduled. `covered`
        says whether a node id is a live member of ours or ourselves. At most a few dozen
        candidates: a scan per tick is cheaper than keeping a heap in step with membership."""
        best: Candidate | None = None
        for c in self._candidates.values():
            if c.owner is not None and covered(c.owner):
                if c.foreign_since is not None:  # merged: in our mesh now
                    c.foreign_since = None
                    c.backoff = self.interval
                    c.next_at = now + self.covered_recheck
            elif c.next_at > now + c.backoff:
                # Its owner stopped being live since it was scheduled as covered: look again
                # soon, from the bottom of the backoff (the owner may be in another mesh now).
                c.backoff = self.interval
                c.next_at = now + self.interval
            if c.next_at <= now and (best is None or c.next_at < best.next_at):
                best = c
        if best is None:
            return None
        if best.owner is not None and covered(best.owner):
            best.next_at = now + self.covered_recheck
        else:
            # Jittered (0.5-1.5x): nodes started together would otherwise check in step, and
            # after a heal all at the same moment, long after the first could have.
            best.next_at = now + best.backoff * (0.5 + self._rng.random())
            limit = self.seed_retry_max if best.kind is Kind.SEED else self.contact_retry_max
            best.backoff = min(best.backoff * 2, limit)
        return best

    def answered(
        self, address: Address, owner: bytes, foreign: bool, members: int, now: float
    ) -> None:
        """The node `owner` answered a check at `address`; `foreign`: not a live member of
        ours (we join it now). A foreign answer keeps the backoff growing, since the merge
        either happens (the address is covered from then on) or fails again."""
        c = self._candidates.get(address)
        if c is None:
            return
        c.owner = owner
        if foreign:
            if c.foreign_since is None:
                c.foreign_since = now
            c.foreign_members = members
        else:
            c.foreign_since = None
            c.backoff = self.interval
            c.next_at = now + self.covered_recheck

    def split_suspected(self, covered: Callable[[bytes], bool]) -> list[Candidate]:
        """Candidates whose last answer came from a node outside our mesh that is still not a
        live member: another mesh we are merging with, or cannot merge with."""
        return [
            c
            for c in self._candidates.values()
            if c.foreign_since is not None and c.owner is not None and not covered(c.owner)
        ]

    def next_deadline(self) -> float:
        return min((c.next_at for c in self._candidates.values()), default=math.inf)
