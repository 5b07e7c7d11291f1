"""Repairing a degraded pair: what to try next for each, with backoff. Pure; the daemon acts.

A pair is degraded when our direct probes of a live member fail while others reach it
(`membership.PairDegraded`). SWIM is right that the member is alive; the mesh's promise is that
the two can talk. The steps, escalating and repeated with a delay that doubles from
`FIRST_DELAY_S` to `MAX_DELAY_S` while the pair stays degraded:

1. (on the first sign, by the daemon) re-read our own underlay addresses and re-announce if
   they changed: an address that changed unnoticed (during start-up, say) leaves peers
   sending to where we no longer are.
2. re-create the member's WireGuard peer with its best announced endpoint: a fresh peer drops a
   stale endpoint and session and initiates a handshake at once (not while the peer's
   handshake is fresh, `FRESH_HANDSHAKE_S`);
3. ask the member, through another member both reach (`wire.Initiate`), to re-create its peer
   of us and so initiate towards us: the side behind a NAT cannot be reached first and must be
   the one that starts;
4. move on to its next announced endpoint, so every announced endpoint is tried in turn, not
   only the first. Then 2 again.

Not done yet: relaying the pair through a member (issue 24). Until then a pair that stays
degraded (two nodes behind two NATs) stays visibly degraded.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

FIRST_DELAY_S = 2.0
"""Wait after the first repair attempt before the next: a re-created peer's handshake takes
a round trip, and the degraded pair is probed again within `degraded_recheck` (2 s)."""
MAX_DELAY_S = 60.0
"""Longest wait between attempts: a pair that stays broken costs a peer re-creation a minute."""
FRESH_HANDSHAKE_S = 15.0
"""Steps 2 and 4 are skipped while our WireGuard peer had a handshake this recently: its session
works at the WireGuard level, often on an endpoint WireGuard learnt from the peer's packets (a
NAT's address, which no announcement holds). Re-creating it, or forcing an announced endpoint,
drops that: the peer keeps sending on the session we dropped until WireGuard gives it up
(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT = 15 s). Measured: `bench faults` nat_peer_after_move_s
3.5 s -> 16 s when the restarted public node re-created its NATed peers."""


class RepairStep(enum.StrEnum):
    RECREATE = "re-creating the WireGuard peer"
    ASK_TO_INITIATE = "asking it through another member to start a handshake"
    NEXT_ENDPOINT = "trying its next announced endpoint"


_STEPS = (RepairStep.RECREATE, RepairStep.ASK_TO_INITIATE, RepairStep.NEXT_ENDPOINT)


@dataclass(slots=True)
class Repair:
    """Where the repair of one pair stands."""

    since: float
    """When the pair's direct probes began to fail."""
    attempts: int = 0
    next_at: float = 0.0
    step: RepairStep | None = None
    """The last step taken."""


class PairRepairs:
    """The repairs under way, one per degraded pair."""

    def __init__(self) -> None:
        self._repairs: dict[bytes, Repair] = {}

    def get(self, node_id: bytes) -> Repair | None:
        return self._repairs.get(node_id)

    def plan(self, degraded: Mapping[bytes, float], now: float) -> list[tuple[bytes, RepairStep]]:
        """The steps due now for the pairs `degraded` (member -> since); pairs no longer
        degraded are forgotten (a new degradation starts from step 2 again)."""
        for node_id in set(self._repairs) - set(degraded):
            del self._repairs[node_id]
        due: list[tuple[bytes, RepairStep]] = []
        for node_id, since in sorted(degraded.items()):
            repair = self._repairs.setdefault(node_id, Repair(since, next_at=now))
            if now < repair.next_at:
                continue
            repair.step = _STEPS[repair.attempts % len(_STEPS)]
            repair.attempts += 1
            repair.next_at = now + min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (repair.attempts - 1))
            due.append((node_id, repair.step))
        return due

    def next_deadline(self) -> float:
        return min((r.next_at for r in self._repairs.values()), default=math.inf)
