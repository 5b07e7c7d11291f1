"""Which member may be configured under each WireGuard public key.

Theory of operation
-------------------
WireGuard identifies a peer by its public key alone, and a public key is public: any member can
announce another member's current or next key (or ours) as its own. Two live members with one
key would make the desired device list a peer twice, which `WgDevice` refuses, so one hostile
announcement stopped every node's data plane (issue #22, finding 1). The key is therefore
given to one member at most, decided where the peer set is planned:

* a key we hold (current or next) is ours: every member announcing it is left out;
* otherwise the member that held the key first keeps it, for as long as the membership core
  knows its record (live, or a tombstone waiting for it to come back), so a restart of the
  victim does not hand its key to the attacker;
* members that claim a key nobody held before, at the same time (one push-pull delivers both),
  cannot be told apart: all of them are left out until one stops claiming it.

A member left out loses its whole peer (both its keys), never part of it. Every conflict is
reported once, when it appears (`KeyPlan.fresh`), so that the daemon counts and logs it once.

"First" is what this node observed: an announcement's version and times are the signer's own
word, and nothing in an announcement proves possession of a WireGuard private key. Only the
real holder can complete a handshake under the key, so the attacker gains no traffic; what it
can still do is make a member it collides with unreachable from a node that learns both at
once (a new node, or one whose holder records were lost with its memory). See docs/protocol.md.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshd.core.announce import Announcement


@dataclass(frozen=True)
class KeyConflict:
    """One WireGuard key announced by more than one party."""

    key: bytes
    """The WireGuard public key in dispute."""
    holder: bytes | None
    """Identity key of the party that keeps it (ours when it is our key), or None when nobody
    can be told to have held it first."""
    left_out: tuple[bytes, ...]
    """Identity keys of the members whose peer is left out for it, sorted."""


@dataclass(frozen=True)
class KeyPlan:
    """The outcome of one planning pass."""

    left_out: frozenset[bytes]
    """Members (identity keys) that get no WireGuard peer in this pass."""
    conflicts: tuple[KeyConflict, ...]
    """Every conflict now, sorted by key."""
    fresh: tuple[KeyConflict, ...]
    """The conflicts that the previous pass did not have (to count and log once)."""


def announced_keys(ann: Announcement) -> tuple[bytes, ...]:
    """The WireGuard keys a member claims: current, and next during a rotation."""
    if ann.next_wg_public_key is None or ann.next_wg_public_key == ann.wg_public_key:
        return (ann.wg_public_key,)
    return (ann.wg_public_key, ann.next_wg_public_key)


class WgKeyClaims:
    """Remembers which member held each WireGuard key first; see the module docstring."""

    def __init__(self) -> None:
        self._holder: dict[bytes, bytes] = {}
        """WireGuard key -> identity key of the member that held it first."""
        self._previous: frozenset[KeyConflict] = frozenset()

    def plan(
        self,
        own_id: bytes,
        own_keys: Iterable[bytes],
        live: Iterable[Announcement],
        known: Iterable[Announcement] = (),
    ) -> KeyPlan:
        """Decide for the `live` members (ours is skipped when present). `own_keys`: our
        current and next WireGuard public keys. `known`: every record the membership core
        still holds, tombstones included (the live ones may be repeated): a holder keeps its
        key while it is known."""
        mine = frozenset(own_keys)
        claimants: dict[bytes, list[bytes]] = {}
        for ann in live:
            if ann.node_id == own_id:
                continue
            for key in announced_keys(ann):
                claimants.setdefault(key, []).append(ann.node_id)
        still_known = {(key, a.node_id) for a in known for key in announced_keys(a)}
        still_known |= {(key, node) for key, nodes in claimants.items() for node in nodes}
        self._holder = {k: n for k, n in self._holder.items() if (k, n) in still_known}

        conflicts: list[KeyConflict] = []
        for key, nodes in sorted(claimants.items()):
            holder = own_id if key in mine else self._holder.get(key)
            if holder is None and len(nodes) == 1:
                self._holder[key] = nodes[0]
                continue
            others = tuple(sorted(n for n in nodes if n != holder))
            if others:
                conflicts.append(KeyConflict(key, holder, others))
        left_out = frozenset(n for c in conflicts for n in c.left_out)
        fresh = tuple(c for c in conflicts if c not in self._previous)
        self._previous = frozenset(conflicts)
        return KeyPlan(left_out, tuple(conflicts), fresh)
