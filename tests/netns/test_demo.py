"""The README's first command runs this demo; it must pass on a fresh machine."""

import asyncio
import sys

import pytest

pytestmark = pytest.mark.netns


async def test_demo_forms_the_mesh_pings_every_pair_and_cleans_up() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshd.demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "40 of 40 pings answered" in text
    assert "meshd exit codes: [0, 0, 0, 0, 0]" in text
    assert "refused (bad_signature" in text
    lines = await asyncio.create_subprocess_exec(
        "ip", "netns", "list", stdout=asyncio.subprocess.PIPE
    )
    listed, _ = await lines.communicate()
    assert b"demo" not in listed  # every namespace of the demo is gone
