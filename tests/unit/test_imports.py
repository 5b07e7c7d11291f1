"""What the daemon loads at start-up: every module costs resident memory on every machine."""

import subprocess
import sys

PROBE = """
import sys
import meshd.daemon, meshd.api
unused = sorted(m for m in ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.nl80211", "sqlite3")
                if m in sys.modules)
print("unused:", unused)
from pyroute2 import AsyncIPRoute, IPRoute, NDB  # the real package, loaded on first use
from pyroute2.iproute.linux import AsyncIPRoute as Direct
print("same:", AsyncIPRoute is Direct, NDB.__module__)
"""


def test_daemon_does_not_load_the_parts_of_pyroute2_it_does_not_use() -> None:
    # A fresh interpreter: pytest's own process has imported pyroute2 in full already.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert "unused: []" in out
    assert "same: True pyroute2.ndb.main" in out


def test_glibc_accepts_the_single_malloc_arena() -> None:
    # In a fresh interpreter: it must be set before a thread has allocated.
    out = subprocess.run(
        [sys.executable, "-c", "from meshd.daemon import use_one_malloc_arena as f; print(f())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "True"
