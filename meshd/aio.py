"""Small asyncio helpers shared by the daemon and its adapters."""

from __future__ import annotations

import asyncio


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
