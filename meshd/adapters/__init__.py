"""Adapters: everything that touches sockets, netlink, WireGuard and files.

pyroute2's package `__init__` imports every module it has (NDB with sqlite3, IPDB, nl80211,
plan9, ...): ~60 modules, ~6 MB of resident memory and ~50 ms of start-up that meshd never uses.
meshd imports only the submodules it needs (`pyroute2.iproute.linux`, `pyroute2.netlink.*`), so
the package is registered here, before any adapter imports pyroute2, with its `__init__` run
lazily: a top-level name (`from pyroute2 import IPRoute`, in tests or a debugging session) runs
the real `__init__` on first use and gets the real object.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def _register_lazy_pyroute2() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return  # not installed: the adapters' own imports give the error
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")  # `from pyroute2 import config`
        del package.__getattr__
        loader.exec_module(package)  # the real __init__, in the same module object
        return getattr(package, name)

    package.__dict__["__getattr__"] = __getattr__  # PEP 562: consulted for missing names
    sys.modules["pyroute2"] = package


_register_lazy_pyroute2()
