"""Transmit-limited broadcast queue (memberlist queue.go; SWIM section 4.1 dissemination).

Each piece of news is keyed by what it is about (a node's identity key, or a revocation).
Newer news about a node invalidates older news still queued: a refutation replaces the
suspicion it refutes, so the older one is never sent again. Each item is sent at most
`limit(N)` = mult * ceil(log10(N + 1)) times, which SWIM shows reaches every member with
high probability; items sent least often go first, newest first among equals, so fresh news
is not starved by old news waiting for its last transmissions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshd.core.wire import Item, item_size


@dataclass(slots=True)
class _Entry:
    key: bytes
    item: Item
    size: int
    transmits: int
    order: int


class BroadcastQueue:
    """Queue of items to piggyback. Not thread-safe; the owner is one state machine."""

    def __init__(self, limit: Callable[[], int], max_items: int = 4096) -> None:
        self._limit = limit
        """Current retransmit limit (depends on the member count, so it is asked each time)."""
        self._max_items = max_items
        self._entries: dict[bytes, _Entry] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, key: bytes, item: Item) -> None:
        """Queue `item` about `key`, replacing anything queued about the same key."""
        self._order += 1
        self._entries[key] = _Entry(key, item, item_size(item), 0, self._order)
        if len(self._entries) > self._max_items:
            # Drop the most-sent (then oldest) entry; anti-entropy repairs what is lost.
            worst = max(self._entries.values(), key=lambda e: (e.transmits, -e.order))
            del self._entries[worst.key]

    def items(self) -> list[Item]:
        """Everything queued, in sending order (for tests and status)."""
        return [e.item for e in self._sorted()]

    def _sorted(self) -> list[_Entry]:
        return sorted(self._entries.values(), key=lambda e: (e.transmits, -e.order))

    def take(self, budget: int, per_item_overhead: int = 0, max_count: int = 64) -> list[Item]:
        """Items fitting in `budget` bytes, least-sent first; counts one transmission each and
        drops those that reached the limit."""
        if not self._entries:
            return []
        limit = self._limit()
        out: list[Item] = []
        for entry in self._sorted():
            cost = entry.size + per_item_overhead
            if cost > budget:
                continue
            budget -= cost
            out.append(entry.item)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._entries[entry.key]
            if budget <= 0 or len(out) >= max_count:
                break
        return out

    def discard(self, key: bytes) -> None:
        self._entries.pop(key, None)
