"""meshd's sockets: one UDP socket for join (underlay) and gossip (overlay), one TCP listener
for bulk state sync inside the tunnel.

Telling underlay from overlay: a datagram is *overlay* only if it arrived on the mesh interface
(IPV6_PKTINFO / IP_PKTINFO give the arrival interface). Such a packet was decrypted by WireGuard,
which checked that its source address is in the sending peer's AllowedIPs, so the source overlay
address authenticates the sender. A packet from the underlay that merely *claims* an overlay
source address arrives on another interface and is treated as underlay (join messages only).

Streams: each stream message is one TCP connection to the peer's overlay address carrying one
length-prefixed message, one way (a push-pull answer is another connection back). A connection
is read only when (checked in this order, before a byte is read; issue #22, finding 3):

1. its local address is one of our overlay addresses (else it did not come through the tunnel);
2. its peer address is a live member's overlay address (`stream_from`, the daemon's
   membership): a local process, or an underlay neighbour reaching our overlay address through
   the weak host model, has another source address. The arrival interface of an accepted TCP
   connection cannot be read on Linux (no IP_PKTINFO for it), but it is not needed: the
   SYN-ACK to a member's overlay address is routed into the tunnel and only that member can
   answer it, so a handshake from anyone else with that source does not complete;
3. fewer than `max_streams` streams are being read (each may hold up to `max_message` bytes:
   this bounds the memory of streams in flight);
4. its 4-byte length is at most `max_message`, refused before the body is read.

Refused connections are closed unread and counted in `streams_refused` by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from meshd.core.wgplan import MESHD_FWMARK

log = logging.getLogger(__name__)

Address = tuple[str, int]
MAX_DATAGRAM = 65535
MAX_STREAM_MESSAGE = 16 * 1024 * 1024  # 16 MiB: ~12,000 announcements of state in one sync
MAX_STREAMS = 64
"""Streams read at once, at most: a push-pull is one stream each way with one member every
push-pull interval, so even a large mesh has a few at a time; 64 full ones are 1 GiB at most."""
STREAM_TIMEOUT = 10.0

# Linux constants missing from Python's socket module on some builds.
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
MSG_PROBE = 0x10  # linux/socket.h; not in Python's socket module
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RCVBUF = 4 * 1024 * 1024


UNDERLAY, OVERLAY, STREAM = "underlay", "overlay", "stream"
"""Channels, as the membership core names them (`meshd.core.wire.Channel` values)."""


@dataclass(frozen=True)
class Received:
    data: bytes
    source: Address
    channel: str
    """UNDERLAY: a datagram from outside the tunnel (anyone may have sent it); OVERLAY: a
    datagram that came through the mesh interface (authenticated source); STREAM: a stream
    message through the tunnel (authenticated source)."""


@functools.lru_cache(maxsize=65536)
def _unmap(host: str) -> str:
    """`::ffff:192.0.2.1` -> `192.0.2.1`: peers know IPv4 endpoints in IPv4 form. Cached (as is
    `_socket_address`): asked for every datagram, for the same few addresses."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@functools.lru_cache(maxsize=65536)
def _socket_address(host: str) -> str:
    """The form of `host` our dual-stack socket sends to: IPv4 as `::ffff:a.b.c.d`."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    return f"::ffff:{addr}" if addr.version == 4 else host


def _arrival_ifindex(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            return int(struct.unpack_from("=I", data, 16)[0])  # in6_pktinfo: addr[16], ifindex
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 4:
            return int(struct.unpack_from("=i", data, 0)[0])  # in_pktinfo: ifindex first
    return None


class MeshTransport:
    def __init__(
        self,
        port: int,
        interface: str,
        overlay_addresses: list[str],
        on_message: Callable[[Received], None],
        *,
        stream_from: Callable[[str], bool],
        max_streams: int = MAX_STREAMS,
        max_message: int = MAX_STREAM_MESSAGE,
    ) -> None:
        """`stream_from(host)`: True when `host` (canonical text, IPv4 unmapped) is a live
        member's overlay address; only such peers' streams are read."""
        self.port = port
        self.interface = interface
        self.overlay_addresses = {str(ipaddress.ip_address(a)) for a in overlay_addresses}
        self.on_message = on_message
        self.stream_from = stream_from
        self.max_streams = max_streams
        self.max_message = max_message
        self._streams = 0
        """Streams being read now."""
        self.streams_refused: dict[str, int] = {}
        """Connections closed unread, by reason: "not_overlay", "not_member", "too_many",
        "oversize"."""
        self._udp: socket.socket | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.send_errors = 0

    def mesh_ifindex(self) -> int | None:
        try:
            return socket.if_nametoindex(self.interface)
        except OSError:
            return None  # interface not there (yet, or being repaired)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        # Room for bursts (a join storm, a push-pull of a large mesh) between two loop turns.
        # SO_RCVBUFFORCE passes net.core.rmem_max with CAP_NET_ADMIN, which meshd has.
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        # Join packets to seeds travel on the underlay: marked like WireGuard's, an exit route
        # never captures them (docs/egress.md). Needs CAP_NET_ADMIN, which meshd has.
        with contextlib.suppress(PermissionError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MESHD_FWMARK)
        sock.setblocking(False)
        try:
            sock.bind(("::", self.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"binding meshd UDP port {self.port}: {exc.strerror}"
            ) from None
        self._udp = sock
        loop.add_reader(sock.fileno(), self._read_datagrams)
        self._tcp = await asyncio.start_server(
            self._accept, host="::", port=self.port, reuse_address=True, limit=2**20
        )

    def read_pending(self) -> None:
        """Handle every datagram already waiting in the socket, now.

        The daemon calls this before acting on expired timers: after the loop stalled (start-up,
        a large reconcile, a starved host), libuv runs timers before it polls sockets, so an ack
        that arrived in time would otherwise be read only after its probe was declared failed,
        and a node would blame its peers for its own stall."""
        if self._udp is not None:
            self._read_datagrams(limit=4096)

    def _read_datagrams(self, limit: int = 64) -> None:
        assert self._udp is not None
        mesh_index = self.mesh_ifindex()
        for _ in range(limit):  # bounded batch: other callbacks get their turn
            try:
                data, ancdata, _flags, source = self._udp.recvmsg(MAX_DATAGRAM, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("receiving on meshd UDP port: %s", exc)
                continue
            self.bytes_received += len(data)
            ifindex = _arrival_ifindex(ancdata)
            channel = OVERLAY if mesh_index is not None and ifindex == mesh_index else UNDERLAY
            try:
                self.on_message(Received(data, (_unmap(source[0]), source[1]), channel))
            except Exception:  # the receive path must never take the socket down
                log.exception("handling a datagram from %s", source[0])

    def send(self, destination: Address, data: bytes) -> None:
        if self._udp is None:
            return
        host, port = destination
        try:
            self._udp.sendto(data, (_socket_address(host), port))
            self.bytes_sent += len(data)
        except OSError as exc:
            # No route yet (peer not configured), buffer full: gossip tolerates loss.
            self.send_errors += 1
            log.debug("sending %d bytes to %s: %s", len(data), destination, exc)

    def confirm_neighbour(self, endpoint: Address) -> None:
        """Tell the kernel that the neighbour towards a peer's WireGuard `endpoint` is
        reachable, as TCP does when its data is acknowledged (`MSG_CONFIRM`, send(2)). Call it
        when the peer answered a probe through the tunnel: the answer came from that endpoint,
        so our packets get there. WireGuard's UDP gives the kernel no such confirmation, so
        without it every neighbour entry goes stale after 15-45 s and is re-checked with an
        ARP or neighbour-discovery exchange: about a third of a node's idle packets at N=30
        (D21). `MSG_PROBE` with no data sends nothing; our socket has WireGuard's firewall
        mark, so the route, and hence the neighbour, is the one WireGuard's packets take."""
        if self._udp is None:
            return
        host, port = endpoint
        try:
            self._udp.sendto(b"", socket.MSG_CONFIRM | MSG_PROBE, (_socket_address(host), port))
        except OSError as exc:  # no route: nothing to confirm
            log.debug("confirming the neighbour towards %s: %s", host, exc)

    def send_stream(self, destination: Address, data: bytes) -> None:
        """Deliver one message reliably over TCP inside the tunnel, in the background."""
        task = asyncio.get_running_loop().create_task(self._send_stream(destination, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_stream(self, destination: Address, data: bytes) -> None:
        try:
            async with asyncio.timeout(STREAM_TIMEOUT):
                _, writer = await asyncio.open_connection(destination[0], destination[1])
                try:
                    writer.write(struct.pack("!I", len(data)) + data)
                    await writer.drain()
                    self.bytes_sent += len(data) + 4
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            self.send_errors += 1
            log.debug("stream to %s failed: %s", destination, exc)

    def _refuse(self, reason: str, host: str) -> None:
        self.streams_refused[reason] = self.streams_refused.get(reason, 0) + 1
        log.debug("stream from %s refused unread: %s", host, reason)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False
        try:
            local = _unmap(writer.get_extra_info("sockname")[0])
            peer = writer.get_extra_info("peername")
            host = _unmap(peer[0])
            # The checks of the module docstring, in order, all before a byte is read.
            if local not in self.overlay_addresses:
                self._refuse("not_overlay", host)  # not through the tunnel
                return
            if not self.stream_from(host):
                self._refuse("not_member", host)
                return
            if self._streams >= self.max_streams:
                self._refuse("too_many", host)
                return
            self._streams += 1
            counted = True
            async with asyncio.timeout(STREAM_TIMEOUT):
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                if length > self.max_message:
                    self._refuse("oversize", host)
                    log.info("stream from %s announced %d bytes; refused", host, length)
                    return
                data = await reader.readexactly(length)
            self.bytes_received += length + 4
            self.on_message(Received(data, (host, peer[1]), STREAM))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, struct.error) as exc:
            log.debug("stream receive failed: %s", exc)
        except Exception:
            log.exception("handling a stream message")
        finally:
            if counted:
                self._streams -= 1
            writer.close()

    async def close(self) -> None:
        if self._udp is not None:
            asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
