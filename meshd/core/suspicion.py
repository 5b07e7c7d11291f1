"""Lifeguard dynamic suspicion timeout (Dadgar et al. 2018, section IV-B; memberlist suspicion.go).

A suspicion starts with the maximum timeout. Each *independent* confirmation (a suspect claim
from a member that did not suspect the node before) shortens it logarithmically towards the
minimum, reached after K confirmations:

    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(K + 1))

So a real crash, which every prober notices, is declared quickly, while a single node with a
bad link (a lone suspicion) waits long enough for the suspected node to refute.
"""

from __future__ import annotations

import math


class Suspicion:
    """The timer of one suspected node. Pure: the owner asks `deadline` and compares to now."""

    __slots__ = ("_k", "_max", "_min", "confirmations", "senders", "start")

    def __init__(self, sender: bytes, k: int, min_timeout: float, max_timeout: float,
                 now: float) -> None:  # fmt: skip
        self._k = max(0, k)
        self._min = min_timeout
        self._max = max(max_timeout, min_timeout)
        self.start = now
        self.senders: set[bytes] = {sender}
        """Who suspects it; the first sender does not count as a confirmation."""
        self.confirmations = 0

    def confirm(self, sender: bytes) -> bool:
        """Count an independent confirmation; True if it was new (then re-broadcast it, as
        memberlist does, so that others shorten their timers too)."""
        if self.confirmations >= self._k or sender in self.senders:
            return False
        self.senders.add(sender)
        self.confirmations += 1
        return True

    @property
    def timeout(self) -> float:
        if self._k < 1:
            return self._min
        frac = math.log(self.confirmations + 1) / math.log(self._k + 1)
        return max(self._min, self._max - (self._max - self._min) * frac)

    @property
    def deadline(self) -> float:
        return self.start + self.timeout
