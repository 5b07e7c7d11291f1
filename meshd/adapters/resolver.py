"""Endpoint re-resolution: peers and seeds given by DNS name follow their address changes.

Each watched (name, port) is resolved when first watched, every `period` seconds, and on demand:
`trigger()` after a netlink change (our underlay moved, so DNS views may differ), and
`refresh_stale(...)` when a peer's last handshake is older than WireGuard's REJECT_AFTER_TIME
(180 s) plus a margin, i.e. the tunnel is dead and the name may point elsewhere now.

A changed address is reported at once through `on_change(name, port, (ip, port))`; the daemon
puts it into the desired state. If the current address is still among the answers it is kept
(round-robin DNS must not make the endpoint flap). Seeds want every address instead (several
seed nodes behind one name): `addresses(name, port)` gives all answers, and `on_answers` is
called whenever that set changes. A failed lookup keeps the last good answers, is logged,
recorded in `errors`, and retried at the next occasion.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meshd.aio import wait_event

log = logging.getLogger(__name__)

ResolveFn = Callable[[str], Awaitable[list[str]]]
ChangeFn = Callable[[str, int, tuple[str, int]], None]
AnswersFn = Callable[[str, int, tuple[str, ...]], None]

#: WireGuard's REJECT_AFTER_TIME: after 180 s without a handshake no session can be alive; the
#: brief's "2 min + margin" is the rekey period (120 s) plus retries, which this covers.
STALE_HANDSHAKE_S = 180.0


async def system_resolve(name: str) -> list[str]:
    """Addresses of `name` from the system resolver (getaddrinfo: hosts file, DNS), in the
    resolver's order; an IP literal resolves to itself."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        name, None, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
    )
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


def handshake_stale(last_handshake: float | None, now: float, margin: float = 15.0) -> bool:
    """True when a peer's tunnel is certainly dead (`now` and `last_handshake` in Unix time).
    A peer that never completed a handshake is stale too."""
    return last_handshake is None or now - last_handshake > STALE_HANDSHAKE_S + margin


@dataclass
class Watched:
    name: str
    port: int
    address: str | None = None
    """Last good address, None until the first successful lookup."""
    answers: tuple[str, ...] = ()
    """Every address of the last good lookup, in the resolver's order."""
    error: str | None = None
    """Last failure, None after a success."""


class EndpointResolver:
    """Keeps the addresses of named endpoints current."""

    RETRY_FIRST = 1.0

    def __init__(
        self,
        on_change: ChangeFn,
        resolve: ResolveFn = system_resolve,
        period: float = 300.0,
        min_interval: float = 1.0,
        on_answers: AnswersFn | None = None,
    ) -> None:
        self.on_change = on_change
        self.on_answers = on_answers
        self.resolve = resolve
        self.period = period
        self.min_interval = min_interval
        """On-demand refreshes of one name closer than this are merged (no DNS storms)."""
        self.watched: dict[tuple[str, int], Watched] = {}
        self._last_try: dict[tuple[str, int], float] = {}
        self._wake = asyncio.Event()

    @property
    def errors(self) -> dict[str, str]:
        """Names whose last lookup failed, with the reason."""
        return {w.name: w.error for w in self.watched.values() if w.error is not None}

    def watch(self, name: str, port: int) -> None:
        if (name, port) not in self.watched:
            self.watched[(name, port)] = Watched(name, port)
            self.trigger()

    def unwatch(self, name: str, port: int) -> None:
        self.watched.pop((name, port), None)

    def addresses(self, name: str, port: int) -> tuple[str, ...]:
        """Every address the last good lookup of `name` gave (empty before the first)."""
        w = self.watched.get((name, port))
        return w.answers if w is not None else ()

    def endpoint(self, name: str, port: int) -> tuple[str, int] | None:
        w = self.watched.get((name, port))
        return (w.address, port) if w is not None and w.address is not None else None

    def trigger(self) -> None:
        """Re-resolve every name soon (netlink change)."""
        self._wake.set()

    async def refresh(self, name: str, port: int, force: bool = False) -> tuple[str, int] | None:
        """Resolve one name now; returns the endpoint in use afterwards."""
        key = (name, port)
        w = self.watched.get(key)
        if w is None:
            return None
        now = time.monotonic()
        if not force and now - self._last_try.get(key, -1e9) < self.min_interval:
            return self.endpoint(name, port)
        self._last_try[key] = now
        try:
            answers = await self.resolve(name)
            if not answers:
                raise OSError("no addresses")
        except (OSError, UnicodeError) as exc:
            w.error = f"resolving {name}: {exc}"
            log.warning("%s; keeping %s", w.error, w.address or "no address")
            return self.endpoint(name, port)
        w.error = None
        if tuple(answers) != w.answers:
            w.answers = tuple(answers)
            if self.on_answers is not None:
                self.on_answers(name, port, w.answers)
        if w.address not in answers:
            old, w.address = w.address, answers[0]
            log.info("endpoint %s:%d moved from %s to %s", name, port, old, w.address)
            self.on_change(name, port, (w.address, port))
        return self.endpoint(name, port)

    async def refresh_all(self, force: bool = False) -> None:
        for name, port in list(self.watched):
            await self.refresh(name, port, force)

    async def refresh_stale(
        self, handshakes: dict[tuple[str, int], float | None], now: float
    ) -> None:
        """Re-resolve the names whose peer's last handshake (Unix time) is stale."""
        for (name, port), last in handshakes.items():
            if handshake_stale(last, now):
                await self.refresh(name, port)

    async def run(self) -> None:
        """Resolve on every trigger and every `period` seconds until cancelled. After a failed
        lookup, retry sooner (1 s, doubling up to `period`): a lookup made while our own
        address was changing fails, and the next period may be minutes away."""
        retry = self.RETRY_FIRST
        while True:
            await self.refresh_all()
            wait = self.period
            if self.errors:
                wait, retry = min(retry, self.period), min(retry * 2, self.period)
            else:
                retry = self.RETRY_FIRST
            await wait_event(self._wake, wait)
            self._wake.clear()
