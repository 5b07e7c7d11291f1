"""Small asyncio helpers shared by the daemon and its adapters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("meshd")


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` pass; True when it was set.

    The daemon's loops sleep like this between passes. `asyncio.wait_for` must not be used for
    it on Python 3.11: when the task is cancelled in the same loop iteration as the event is set,
    wait_for returns the result and swallows the cancellation (CPython gh-86296, fixed in 3.12),
    so the loop goes round again and shutdown hangs (seen once in ~6 demo runs). The
    `asyncio.timeout` context manager keeps the cancellation."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


DUE_BUT_UNDONE_RETRY_S = 1.0
"""How soon a deadline the pass left in the past is looked at again (see `at_deadlines`)."""


async def at_deadlines(
    next_after: Callable[[float], float],
    act: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
    wake: asyncio.Event,
    what: str,
) -> None:
    """Run `act(now)` at each deadline and whenever `wake` is set, forever. `next_after(t)` is
    the first moment after time `t` at which something is due.

    The next deadline is planned from the time of the last pass, not from a fresh reading of
    the clock: a timer can fire a millisecond early (uvloop counts whole milliseconds from the
    loop's cached time), and a pass that ran just before a deadline would otherwise plan the
    one after it and skip this one for a whole period (a PSK epoch left unratcheted for 10 s
    in test_keys). Such a pass is simply followed by another one, at the deadline."""
    now = clock()
    while True:
        wake.clear()
        deadline = next_after(now)
        if deadline <= now:
            # Due, yet the pass did not act on it (nothing can now, e.g. after a leave): look
            # again later instead of spinning.
            deadline = now + DUE_BUT_UNDONE_RETRY_S
        delay = deadline - clock()
        if delay > 0:
            log.debug("%s: next change in %.3f s", what, delay)
            await wait_event(wake, delay)
        now = clock()
        await act(now)


LOOP_RETRY_S = 1.0
"""How long a daemon loop that failed waits before it runs again: long enough that a failure
repeating on every pass costs little CPU, short enough that a transient one is soon over."""


async def keep_running(
    what: str,
    run: Callable[[], Awaitable[None]],
    on_failure: Callable[[str], None],
    retry_after: float = LOOP_RETRY_S,
) -> None:
    """Run the loop `run()` and, when it raises, run it again after `retry_after` seconds.

    A loop that ends on an exception stops whatever it drives for good (key rotation, the PSK
    ratchet, leave before certificate expiry: issue #22), while the daemon looks healthy. Each
    failure is counted by `on_failure(what)`; it is logged with its traceback, except when it
    repeats the previous failure of this loop exactly (same type and message), which is logged
    on one line at debug level so that a failure on every pass does not flood the log.
    Cancellation (`CancelledError`, a BaseException) ends it. Returns when `run` returns (a
    loop with nothing to do, such as the watchdog without systemd)."""
    last: tuple[type[BaseException], str] | None = None
    while True:
        try:
            await run()
            return
        except Exception as exc:
            on_failure(what)
            failure = (type(exc), str(exc))
            if failure == last:
                log.debug("%s loop failed again (%s: %s)", what, type(exc).__name__, exc)
            else:
                log.error("%s loop failed; running it again in %.1f s", what, retry_after,
                          exc_info=True)  # fmt: skip
            last = failure
        await asyncio.sleep(retry_after)
