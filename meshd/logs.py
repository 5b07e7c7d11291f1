"""Structured logs to stderr: `time level logger message key=value ...`, one event per line.

journald and `podman logs` both take stderr; a line format that greps well beats JSON for the
people who read it at 3 a.m. No secret ever reaches a log call (keys are logged by key ID only).
"""

from __future__ import annotations

import logging
import sys
import time


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ms = int(record.msecs)
        line = (
            f"{stamp}.{ms:03d}Z {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every unix-socket client at INFO; pyroute2 is chatty at DEBUG.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
