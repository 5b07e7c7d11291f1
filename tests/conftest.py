"""Shared test setup: every async test runs on uvloop, as the daemon does."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
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
