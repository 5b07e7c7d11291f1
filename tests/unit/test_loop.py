import asyncio

import uvloop


async def test_async_tests_run_on_uvloop() -> None:
    # The daemon runs on uvloop; a silent fallback to the stock loop would hide uvloop-only bugs
    # such as pyroute2#1335.
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
