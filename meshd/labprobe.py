"""ICMPv6 echo from inside a lab namespace, sent by this process (root only).

Benchmarks that wait for "a ping succeeds from every node" used to start one `ping` process
per attempt and node: at 30 nodes polling every 50 ms that is hundreds of processes a second on
the cores the measured daemons run on, and the measurement slowed down what it measured. An
`EchoProbe` is one raw socket created in the namespace (`socket_in_netns`: no fork) and driven
by this process's event loop: a 48-byte request every `interval`, nothing else.

It also tells when the namespace got a route to the target: meshd installs a peer's route in
the same pass as the WireGuard peer, so the first send that does not fail with "unreachable"
marks the peer as configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass

from meshd.adapters.rtnl import socket_in_netns

ECHO_REQUEST, ECHO_REPLY = 128, 129
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENOKEY}


@dataclass
class EchoResult:
    """Monotonic times (`time.monotonic()`), None when it did not happen before the deadline."""

    route_at: float | None = None
    reply_at: float | None = None


class EchoProbe:
    """Echo requests to `target` from namespace `netns` until the first reply."""

    def __init__(self, netns: str, target: str, interval: float = 0.01) -> None:
        self.netns = netns
        self.target = str(ipaddress.IPv6Address(target))
        self.interval = interval
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.result = EchoResult()

    async def run(self, within: float) -> EchoResult:
        """Probe for at most `within` seconds; returns as soon as a reply arrived."""
        sock = socket_in_netns(
            self.netns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6
        )  # the kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets (RFC 3542)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        replied = loop.create_future()

        def on_readable() -> None:
            while True:
                try:
                    data, source = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return
                if len(data) < 8 or source[0].split("%")[0] != self.target:
                    continue
                kind, _code, _sum, ident = struct.unpack("!BBHH", data[:6])
                if kind == ECHO_REPLY and ident == self.ident and not replied.done():
                    replied.set_result(time.monotonic())

        loop.add_reader(sock.fileno(), on_readable)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._send_until(sock, replied)
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
        return self.result

    async def _send_until(self, sock: socket.socket, replied: asyncio.Future[float]) -> None:
        seq = 0
        while not replied.done():
            seq = (seq + 1) & 0xFFFF
            request = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, self.ident, seq) + bytes(40)
            try:
                sock.sendto(request, (self.target, 0))
                if self.result.route_at is None:
                    self.result.route_at = time.monotonic()
            except OSError as exc:
                if exc.errno not in _UNREACHABLE:
                    raise
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await asyncio.shield(replied)
        self.result.reply_at = replied.result()
        if self.result.route_at is None:
            self.result.route_at = self.result.reply_at
