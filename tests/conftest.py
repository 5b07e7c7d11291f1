"""Shared test setup: every async test runs on uvloop, as the daemon does."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    # pytest-asyncio >= 1.5: the supported way to choose the loop (the event_loop_policy fixture
    # is deprecated). tests/unit/test_loop.py asserts this took effect.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def run_prefix() -> str:
    """Per-run prefix for namespaces, interfaces and files, so parallel runs never collide and
    leftovers are attributable. Short: interface names are limited to 15 characters."""
    return f"m{os.getpid() % 100000:05d}"


_netns_counter = itertools.count()


@pytest.fixture
def netns(run_prefix: str) -> Iterator[str]:
    """A bare network namespace, removed after the test even when it fails (a test that needs
    no lab: a namespace is two commands, a lab dozens). Skips unless root."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    name = f"{run_prefix}-ns{next(_netns_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
