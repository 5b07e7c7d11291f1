"""The core is sans-IO: it must not reach for the event loop, sockets, clocks, the OS or a
global random source. This test parses every module under meshd/core and fails on such an
import, so a shortcut cannot slip in unnoticed."""

import ast
from pathlib import Path

import meshd.core

FORBIDDEN = {"asyncio", "socket", "aiohttp", "pyroute2", "time", "os", "random", "uvloop",
             "subprocess", "threading", "select", "selectors", "datetime"}  # fmt: skip


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def test_core_imports_no_io() -> None:
    core = Path(meshd.core.__file__).parent
    files = sorted(core.rglob("*.py"))
    assert len(files) >= 5  # the walk really found the core
    offenders = []
    for path in files:
        for name, line in _imports(ast.parse(path.read_text(), str(path))):
            # `random` is allowed only as a type (random.Random injected): see membership.
            if name in FORBIDDEN and not (name == "random" and _only_typing_random(path)):
                offenders.append(f"{path.name}:{line} imports {name}")
    assert offenders == []


def _only_typing_random(path: Path) -> bool:
    """`import random` is fine when the module only uses `random.Random` as a type (the
    instance is injected); a call such as `random.random()` is not."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            return False
    return True


def test_purity_check_catches_an_offender() -> None:
    bad = ast.parse("import os\nfrom time import monotonic\nimport asyncio.events\n")
    assert [n for n, _ in _imports(bad)] == ["os", "time", "asyncio"]
