"""The lab harness removes everything it made, also when the body fails."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from meshd.lab import LAB_ROOT, Lab

pytestmark = pytest.mark.netns


def _exists(path: Path) -> bool:
    return path.exists()


async def test_cleanup_after_an_exception(run_prefix: str) -> None:
    prefix = f"{run_prefix[:6]}lb"
    pid = None
    with pytest.raises(RuntimeError, match="boom"):
        async with Lab(prefix, hosts=2) as lab:
            assert await lab[0].ping(str(lab[1].underlay_v4.ip))
            backend = lab[0].userspace_backend()
            await backend.create("mesh0")
            pid = backend.pid("mesh0")
            lab[0].write_etc("hosts", "192.0.2.1 x\n")
            await lab[1].spawn("sleep", "600")
            raise RuntimeError("boom")
    assert pid is not None
    leftovers = [
        p
        for p in (
            Path("/run/netns") / f"{prefix}-h0",
            Path("/run/netns") / f"{prefix}-h1",
            Path("/run/netns") / f"{prefix}-sw",
            Path("/etc/netns") / f"{prefix}-h0",
            LAB_ROOT / f"{prefix}-h0",
        )
        if await asyncio.to_thread(_exists, p)
    ]
    assert leftovers == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
