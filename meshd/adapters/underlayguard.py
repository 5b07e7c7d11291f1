"""A kernel-side cap on meshd's UDP port from the underlay (nftables table `inet meshd_guard_IF`).

meshd reads join requests (underlay) and membership probes (overlay, from the mesh interface)
from one UDP socket (decision D5). A stranger flooding the port from rotating source addresses
fills that socket's receive queue faster than a Python loop can empty it, and the kernel then
drops whatever arrives next, probes included: `bench attack`'s 20,000 requests/s raised dozens
of false suspicions of the flooded node although the join gate dropped almost all of them
cheaply (the gate runs after the read; the loss is before it). This rule drops underlay traffic
to the port beyond `RATE` per second in the kernel, before the queue, and never touches what
arrives on the mesh interface: the probes keep their room.

The table is meshd's own, one per mesh interface (several meshes on a host each have theirs),
replaced atomically on start and deleted on stop. Without nftables (or without the right to
use it) meshd runs on and says so once: the cap is defence in depth, the join gate still holds.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

RATE = 3000
"""Underlay datagrams per second (and burst) let through to meshd's port, for all sources
together: above the join gate's own budget (2,000/s, meshd.core.joingate), so the gate sees
everything legitimate, and well below what the loop can read (~12,000/s measured)."""


def table_name(interface: str) -> str:
    return f"meshd_guard_{interface}"


def render_ruleset(interface: str, port: int, rate: int = RATE) -> str:
    """`nft -f` input replacing the guard table (declare, delete, define: atomic)."""
    table = table_name(interface)
    return (
        f"table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        f"  chain input {{\n"
        f"    type filter hook input priority -5; policy accept;\n"
        f'    iifname "{interface}" accept\n'
        f"    udp dport {port} limit rate over {rate}/second burst {rate} packets "
        f"counter drop\n"
        f"  }}\n"
        f"}}\n"
    )


async def _nft(*args: str, stdin: bytes | None = None, netns: str | None = None) -> tuple[int, str]:
    prefix = ("ip", "netns", "exec", netns) if netns else ()
    try:
        proc = await asyncio.create_subprocess_exec(
            *prefix, "nft", *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        return 127, exc.strerror or str(exc)
    _, err = await proc.communicate(stdin)
    return proc.returncode or 0, err.decode(errors="replace").strip()


class UnderlayGuard:
    """Installs the cap on start and removes it on stop."""

    def __init__(self, interface: str, port: int, netns: str | None = None) -> None:
        """`netns`: a network namespace to work in (tests); None: our own."""
        self.interface = interface
        self.port = port
        self.netns = netns
        self.installed = False
        self._attempted = False

    async def start(self) -> None:
        self._attempted = True
        ruleset = render_ruleset(self.interface, self.port)
        code, err = await _nft("-f", "-", stdin=ruleset.encode(), netns=self.netns)
        if code != 0:
            log.warning(
                "no kernel cap on the underlay meshd port (nftables table inet %s): %s",
                table_name(self.interface), err or f"nft exited {code}",
            )  # fmt: skip
            return
        self.installed = True

    async def stop(self) -> None:
        """Remove the table; also after a start that was cancelled half-way."""
        if self._attempted:
            await _nft("delete", "table", "inet", table_name(self.interface), netns=self.netns)
            self.installed = self._attempted = False
