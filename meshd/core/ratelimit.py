"""Rate limits for traffic nobody has authenticated yet (join requests on the underlay).

* `SourceRateLimiter`: per-source token buckets. A source may send `burst` messages at once and
  `rate` per second after that; the rest is dropped before it costs a signature check. IPv6
  sources are grouped by /64: one host usually holds a whole /64 (SLAAC, privacy addresses, a
  delegated prefix), so rotating through it must not buy a fresh bucket per address (issue
  #22). The table is bounded: the least recently seen sources are forgotten first, so spoofed
  source addresses cannot grow it without limit.
* `TokenBucket`: one bucket, for a budget shared by every source (the global budget of
  signature verifications, `meshd.core.joingate`): rotating or spoofed sources, which each
  get a fresh per-source bucket, still cannot take more than this between them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict


@functools.lru_cache(maxsize=4096)
def source_group(host: str) -> str:
    """The key a source is limited by: its /64 for IPv6 (an IPv4-mapped address counts as its
    IPv4 address), the address itself for IPv4; text that is no address stands for itself.
    Cached: asked for every underlay datagram."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class TokenBucket:
    """`burst` tokens at most, `rate` added per second; `take` spends one if there is one."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        """Tokens added per second."""
        self.burst = burst
        """Bucket size."""
        self._tokens = burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class SourceRateLimiter:
    def __init__(self, rate: float = 10.0, burst: float = 20.0, max_sources: int = 4096) -> None:
        self.rate = rate
        """Tokens (messages) added per second."""
        self.burst = burst
        """Bucket size: messages a new or quiet source may send at once."""
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        """Whether a message from address `source` may go on (its group, `source_group`)."""
        group = source_group(source)
        tokens, last = self._buckets.pop(group, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[group] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
