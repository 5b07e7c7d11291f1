"""Who may make suspect and dead claims, and how many (issue #22, finding 5).

Suspect and dead claims are unsigned: a claim names the node that made it (`sender`), but only
the member whose overlay address sent the datagram is authenticated (WireGuard checked the
source against its AllowedIPs). `membership.py` therefore believes a claim in full only
first-hand (`sender` is the authenticated source) and counts Lifeguard confirmations per
authenticated source; this module keeps, per source member:

* a token bucket of claims (`rate` per second, `burst` at once): a member cannot flood us with
  claims faster than gossip ever carries them;
* strikes: each first-hand claim of it that was refuted soon after (the claimed node signed a
  higher version within `refute_window` of the claim, or the claim was about us and we refuted
  it) is a strike. A refuted dead claim weighs `limit` strikes at once: an honest member only
  declares a node dead after its own suspicion ran out unrefuted, so a dead claim refuted
  within seconds is no misfortune of a lossy link. `limit` strikes within `window` and the
  member's claims are ignored for `ignore_for` (the caller logs it once).

Honest members collect strikes too, rarely: a lone false suspicion under loss, a dead claim
about a node that restarted within `refute_window` of being declared dead, or a partition
healed within that window. Being ignored costs an honest member only its share of Lifeguard
confirmations at the nodes that ignore it: every node still runs its own probes and timers.

Pure: time comes in as `now`.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque


class ClaimGuard:
    """Per-source claim budget and refutation strikes. Bounded to `max_sources` sources; the
    least recently seen are forgotten first (sources are authenticated members, so this only
    matters in very large meshes)."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float,
        limit: int,
        window: float,
        ignore_for: float,
        refute_window: float,
        max_sources: int = 8192,
    ) -> None:
        self.rate = rate
        """Claims a member may send per second, after `burst`."""
        self.burst = burst
        """Claims a quiet member may send at once."""
        self.limit = max(1, limit)
        """Strikes within `window` after which a member's claims are ignored."""
        self.window = window
        """Seconds a strike counts."""
        self.ignore_for = ignore_for
        """Seconds a struck-out member's claims are ignored."""
        self.refute_window = refute_window
        """A claim refuted later than this after it was made is no strike (a partition or a
        restart took that long, not a lie)."""
        self.max_sources = max_sources
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._strikes: dict[bytes, deque[float]] = {}
        self._ignored: dict[bytes, float] = {}

    def ignored(self, source: bytes, now: float) -> bool:
        """Whether the claims of `source` are being ignored."""
        until = self._ignored.get(source)
        if until is None:
            return False
        if until <= now:
            del self._ignored[source]
            return False
        return True

    def allow(self, source: bytes, now: float) -> bool:
        """Spend one claim of `source`'s budget; False when it is empty."""
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed

    def strike(self, source: bytes, now: float, claimed_at: float, weight: int = 1) -> bool:
        """A first-hand claim of `source` made at `claimed_at` was refuted at `now`. True when
        this strike makes its claims ignored (log it)."""
        if now - claimed_at > self.refute_window or self.ignored(source, now):
            return False
        strikes = self._strikes.setdefault(source, deque())
        while strikes and strikes[0] <= now - self.window:
            strikes.popleft()
        strikes.extend([now] * weight)
        if len(strikes) < self.limit:
            if len(self._strikes) > self.max_sources:
                self._forget_old_strikes(now)
            return False
        del self._strikes[source]
        self._ignored[source] = now + self.ignore_for
        return True

    def strikes(self, source: bytes, now: float) -> int:
        """Strikes of `source` that still count (tests, status)."""
        return sum(1 for t in self._strikes.get(source, ()) if t > now - self.window)

    def ignored_until(self, source: bytes) -> float:
        return self._ignored.get(source, -math.inf)

    def _forget_old_strikes(self, now: float) -> None:
        self._strikes = {s: q for s, q in self._strikes.items() if q and q[-1] > now - self.window}
