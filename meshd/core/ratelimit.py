"""Per-source token buckets for traffic nobody has authenticated yet (join requests on the
underlay). A source may send `burst` messages at once and `rate` per second after that; the
rest is dropped before it costs a signature check. The table is bounded: the least recently
seen sources are forgotten first, so spoofed source addresses cannot grow it without limit."""

from __future__ import annotations

from collections import OrderedDict


class SourceRateLimiter:
    def __init__(self, rate: float = 10.0, burst: float = 20.0, max_sources: int = 4096) -> None:
        self.rate = rate
        """Tokens (messages) added per second."""
        self.burst = burst
        """Bucket size: messages a new or quiet source may send at once."""
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
