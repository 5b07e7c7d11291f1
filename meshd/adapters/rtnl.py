"""pyroute2 async sockets that work on uvloop as well as on the stock asyncio loop.

pyroute2 0.9.7 receives netlink messages through `loop.create_datagram_endpoint(sock=...)`.
uvloop's UDP handle accepts only AF_INET/AF_INET6/AF_UNIX and fails with
`ValueError: cannot open a UDP handle, invalid family 16` (pyroute2#1335, uvloop#676).
pyroute2 only needs the loop to *receive* (it sends with a plain `socket.send`), so the classes
below replace the endpoint setup with `ReaderTransport`, a minimal datagram transport built on
`loop.add_reader()`, which both loops support for any file descriptor.

This depends on pyroute2 internals (`self.local.transport`, `CoreDatagramProtocol`), which is why
pyproject.toml pins pyroute2 to 0.9.x; tests/netns/test_rtnl.py runs it under uvloop.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2.iproute.linux import AsyncIPRoute
from pyroute2.netlink.core import CoreDatagramProtocol
from pyroute2.netlink.generic.wireguard import WG_GENL_NAME, AsyncWireGuard, wgmsg
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

#: Multicast groups of the netlink monitor: links, addresses and routes of both families.
MONITOR_GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)

#: Receive buffer of every socket: a burst of route events (1,000+ peers) must fit between two
#: loop iterations; an overflow costs an ENOBUFS recovery (reopen + re-dump).
RCVBUF = 4 * 1024 * 1024


class ReaderTransport(asyncio.DatagramTransport):
    """Feeds every datagram of a non-blocking socket to a pyroute2 protocol."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any, bufsize: int
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._bufsize = bufsize
        self._closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)
        protocol.connection_made(self)

    def _on_readable(self) -> None:
        # Drain everything that is queued: one wake-up per burst, not per message.
        while not self._closed:
            try:
                data = self._sock.recv(self._bufsize)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ENOBUFS: the kernel dropped messages; pyroute2 turns this into an error
                # message for the waiting request, and the monitor reopens and re-dumps.
                self._protocol.error_received(exc)
                if exc.errno != errno.ENOBUFS:
                    self.abort()
                return
            self._protocol.datagram_received(data, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sock if name == "socket" else default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        on_lost = getattr(self._protocol, "on_con_lost", None)
        if on_lost is not None and not on_lost.done():
            self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()


def _setup_reader_endpoint(nlsock: Any) -> None:
    if getattr(nlsock.local, "transport", None) is not None:
        return
    protocol = CoreDatagramProtocol(
        nlsock.connection_lost, nlsock.enqueue, nlsock._error_event, nlsock.status
    )
    transport = ReaderTransport(
        asyncio.get_running_loop(), nlsock.socket, protocol, max(nlsock.status["rcvsize"], 65536)
    )
    nlsock.local.transport, nlsock.local.protocol = transport, protocol


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in_netns(netns: str, family: int, kind: int, proto: int) -> socket.socket:
    """A socket created inside the network namespace `netns` (as `ip netns` names it).

    pyroute2 enters a namespace by forking a child that hands the socket back; pyroute2 then
    SIGTERMs the child, and the child shares the event loop's signal wake-up fd, so the *parent*
    loop sees a SIGTERM (a daemon with a SIGTERM handler would shut down; reproduced with uvloop
    and asyncio, tests/netns/test_netlink.py). Instead, a short-lived thread calls setns(2) on
    itself (namespaces are per thread), creates the socket and exits: no fork, no signal, ~0.1 ms.
    A missing namespace is an error (FileNotFoundError), never created.
    """
    if not netns or "/" in netns or netns in (".", ".."):
        raise ValueError(f"bad network namespace name {netns!r}")
    result: list[socket.socket | BaseException] = []

    def enter_and_create() -> None:
        try:
            with open(f"/run/netns/{netns}", "rb") as handle:
                if _libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"entering network namespace {netns}: {os.strerror(err)}")
            result.append(socket.socket(family, kind, proto))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=enter_and_create, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class _NetnsSocket:
    """Mixin: pyroute2 socket created by `socket_in_netns` instead of pyroute2's fork."""

    meshd_netns: str | None = None

    def setup_socket(self) -> socket.socket:
        if self.meshd_netns is None:
            return super().setup_socket()  # type: ignore[misc,no-any-return]
        status: Any = self.status  # type: ignore[attr-defined]
        spec: Any = self.spec  # type: ignore[attr-defined]
        sock = socket_in_netns(self.meshd_netns, socket.AF_NETLINK, socket.SOCK_DGRAM,
                               spec["family"])  # fmt: skip
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, status["sndbuf"])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, status["rcvbuf"])
        return sock


class IPRoute(_NetnsSocket, AsyncIPRoute):  # type: ignore[misc]
    """`pyroute2.AsyncIPRoute` with the uvloop-safe receive path and fork-free namespaces."""

    async def setup_endpoint(self) -> None:
        _setup_reader_endpoint(self)


class WireGuardGenl(_NetnsSocket, AsyncWireGuard):  # type: ignore[misc]
    """`pyroute2.AsyncWireGuard` (kernel WireGuard, generic netlink) with the uvloop-safe
    receive path and fork-free namespaces."""

    async def setup_endpoint(self) -> None:
        if getattr(self.local, "transport", None) is not None:
            return
        _setup_reader_endpoint(self)
        await self.bind(WG_GENL_NAME, wgmsg)


async def collect(result: Any) -> list[Any]:
    """The messages of a pyroute2 request: "get" answers a list, "dump" an async iterator."""
    if hasattr(result, "__aiter__"):
        return [m async for m in result]
    return list(result)


def open_iproute(netns: str | None = None, groups: int = 0, rcvbuf: int = RCVBUF) -> IPRoute:
    """An rtnetlink socket in `netns` (None: ours). The socket is made on first use; a missing
    namespace is an error then (pyroute2's own `netns=` would silently create it unless
    `flags=0`, and forks: see `socket_in_netns`)."""
    ipr = IPRoute(rcvbuf=rcvbuf, groups=groups)
    ipr.meshd_netns = netns
    return ipr


def open_wireguard_genl(netns: str | None = None) -> WireGuardGenl:
    wg = WireGuardGenl()
    wg.meshd_netns = netns
    return wg


# --- fast route dump ---------------------------------------------------------------------------
#
# pyroute2 decodes every attribute of every message in Python: ~150 µs per route, so a dump of
# the 2,000 routes of a 1,000-peer mesh took 0.2-0.4 s and dominated every reconcile pass and
# monitor snapshot. Routes are read with this minimal parser instead (three attributes; ~5 µs per
# route). Writes still go through pyroute2.

_NLMSG_HDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_RTM_NEWROUTE, _RTM_GETROUTE = 24, 26
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTA_DST, _RTA_OIF, _RTA_TABLE = 1, 4, 15


@dataclass(frozen=True)
class RouteEntry:
    """One route as the fast dump reports it."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    oif: int | None
    table: int
    proto: int


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, sequence number, body offset, end offset) of each netlink message in one
    receive buffer; stops at a truncated or malformed header."""
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            return
        yield kind, seq, offset + _NLMSG_HDR.size, offset + length
        offset += (length + 3) & ~3


def _attributes(data: bytes, pos: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each route attribute between `pos` and `end`."""
    while pos + _RTATTR.size <= end:
        alen, atype = _RTATTR.unpack_from(data, pos)
        if alen < _RTATTR.size:
            return
        yield atype, data[pos + _RTATTR.size : pos + alen]
        pos += (alen + 3) & ~3


def _error_code(data: bytes, body: int) -> int:
    """The errno of an NLMSG_ERROR message (0 for an ack)."""
    code: int = -struct.unpack_from("=i", data, body)[0]
    return code


@functools.lru_cache(maxsize=65536)
def _route_prefix(dst: bytes, dst_len: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    # Cached: every pass dumps every route of the host, mostly the same ones as the last.
    return ipaddress.ip_network((dst, dst_len))


def parse_route_messages(data: bytes) -> tuple[list[RouteEntry], bool]:
    """Routes in one netlink receive buffer, and whether the dump is done."""
    routes: list[RouteEntry] = []
    for kind, _seq, body, end in _messages(data):
        if kind == _NLMSG_DONE:
            return routes, True
        if kind == _NLMSG_ERROR:
            code = _error_code(data, body)
            raise OSError(code, f"dumping routes: {os.strerror(code)}")
        if kind == _RTM_NEWROUTE:
            family, dst_len, _s, _t, table, proto, _sc, _ty, _f = _RTMSG.unpack_from(data, body)
            dst: bytes | None = None
            oif: int | None = None
            for atype, value in _attributes(data, body + _RTMSG.size, end):
                if atype == _RTA_DST:
                    dst = value
                elif atype == _RTA_OIF:
                    oif = struct.unpack("=I", value)[0]
                elif atype == _RTA_TABLE:
                    table = struct.unpack("=I", value)[0]
            size = 4 if family == socket.AF_INET else 16
            routes.append(RouteEntry(_route_prefix(dst or bytes(size), dst_len), oif, table, proto))
    return routes, False


def open_route_socket(netns: str | None = None) -> socket.socket:
    """A raw rtnetlink socket for `dump_routes` and `change_routes`, in `netns` (None: ours)."""
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    else:
        sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    sock.bind((0, 0))
    return sock


async def dump_routes(sock: socket.socket) -> list[RouteEntry]:
    """All IPv4 and IPv6 routes, every table. One dump at a time per socket; after an error,
    close the socket and open a new one (a half-read dump would confuse the next)."""
    loop = asyncio.get_running_loop()
    request = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
    header = _NLMSG_HDR.pack(
        _NLMSG_HDR.size + len(request), _RTM_GETROUTE, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
    )
    sock.send(header + request)
    routes: list[RouteEntry] = []
    while True:
        batch, done = parse_route_messages(await _recv(loop, sock))
        routes += batch
        if done:
            return routes


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(1 << 20)
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _set_once, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


# --- bulk route changes ------------------------------------------------------------------------
#
# Same reason as the dump: one pyroute2 request/ack round trip costs ~0.4 ms of Python, so the
# 2,000 routes of a 1,000-peer mesh took ~0.9 s. Here requests go out in chunks and the acks are
# matched by sequence number afterwards.

_RTM_DELROUTE = 25
_NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x4, 0x200, 0x400
_RT_SCOPE_UNIVERSE, _RT_SCOPE_LINK, _RT_SCOPE_NOWHERE = 0, 253, 255
_RTN_UNICAST = 1
_RT_TABLE_MAIN = 254
_CHUNK = 256  # acks of one chunk fit easily in the receive buffer


def _attr(kind: int, value: bytes) -> bytes:
    raw = _RTATTR.pack(_RTATTR.size + len(value), kind) + value
    return raw + bytes(-len(raw) % 4)


def _route_request(
    seq: int,
    add: bool,
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
    oif: int,
    proto: int,
    table: int = _RT_TABLE_MAIN,
) -> bytes:
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    if add:
        # A device route: link scope for IPv4 as `ip route add P dev D` does; IPv6 has no scope.
        scope = _RT_SCOPE_LINK if dst.version == 4 else _RT_SCOPE_UNIVERSE
        kind, flags, rtype = _RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_EXCL, _RTN_UNICAST
    else:
        scope, kind, flags, rtype = _RT_SCOPE_NOWHERE, _RTM_DELROUTE, 0, 0
    # rtm_table is 8 bits; a larger table number goes in RTA_TABLE (as iproute2 does).
    body = _RTMSG.pack(
        family, dst.prefixlen, 0, 0, table if table < 256 else 252, proto, scope, rtype, 0
    )
    body += _attr(_RTA_DST, dst.network_address.packed) + _attr(_RTA_OIF, struct.pack("=I", oif))
    body += _attr(_RTA_TABLE, struct.pack("=I", table))
    flags |= _NLM_F_REQUEST | _NLM_F_ACK
    return _NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), kind, flags, seq, 0) + body


async def change_routes(
    sock: socket.socket,
    changes: list[tuple[bool, ipaddress.IPv4Network | ipaddress.IPv6Network]],
    oif: int,
    proto: int,
    table: int = _RT_TABLE_MAIN,
) -> list[int]:
    """Add (True) or delete (False) device routes via `oif` in `table` with protocol
    `proto`; returns one errno per change (0 = done). Deleting matches `proto`, so a route of
    another protocol is never removed."""
    loop = asyncio.get_running_loop()
    results = [0] * len(changes)
    for start in range(0, len(changes), _CHUNK):
        chunk = changes[start : start + _CHUNK]
        # Sequence numbers 2.. (1 is the dump's); index = seq - 2.
        sock.send(
            b"".join(
                _route_request(start + i + 2, add, dst, oif, proto, table)
                for i, (add, dst) in enumerate(chunk)
            )
        )
        await _read_acks(loop, sock, results, len(chunk))
    return results


async def _read_acks(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, results: list[int], pending: int
) -> None:
    """Read netlink acks until `pending` more have arrived. Requests carry sequence numbers
    2.. (1 is a dump's); the errno of the ack to sequence s goes to `results[s - 2]`."""
    while pending:
        data = await _recv(loop, sock)
        for kind, seq, body, _end in _messages(data):
            if kind == _NLMSG_ERROR and 2 <= seq < len(results) + 2:
                results[seq - 2] = _error_code(data, body)
                pending -= 1


# --- policy rules (exit routes) ----------------------------------------------------------------
#
# pyroute2 0.9's rule() drops an attribute whose value is 0 (suppress_prefixlength 0 is the
# point of the first rule), so rules are encoded here like the routes above.

_RTM_NEWRULE, _RTM_DELRULE, _RTM_GETRULE = 32, 33, 34
_FRA_PRIORITY, _FRA_FWMARK, _FRA_SUPPRESS_PREFIXLEN, _FRA_TABLE, _FRA_FWMASK = 6, 10, 14, 15, 16
_FRA_PROTOCOL = 21
_FR_ACT_TO_TBL = 1
_FIB_RULE_INVERT = 0x2


@dataclass(frozen=True)
class Rule:
    """A policy rule `[not] fwmark M lookup TABLE [suppress_prefixlength N]` at a priority."""

    family: int
    """AF_INET or AF_INET6."""
    priority: int
    table: int
    fwmark: int | None = None
    """Match this mark (all 32 bits); None matches every packet."""
    invert: bool = False
    """Match packets *without* the mark (`not fwmark M`)."""
    suppress_prefixlength: int | None = None
    """Ignore answers of this prefix length or shorter (0: ignore the default route)."""


def _rule_request(seq: int, add: bool, rule: Rule, proto: int) -> bytes:
    flags = _FIB_RULE_INVERT if rule.invert else 0
    body = _RTMSG.pack(rule.family, 0, 0, 0, 0, 0, 0, _FR_ACT_TO_TBL, flags)
    body += _attr(_FRA_PRIORITY, struct.pack("=I", rule.priority))
    body += _attr(_FRA_PROTOCOL, struct.pack("=B", proto))
    if add:
        body += _attr(_FRA_TABLE, struct.pack("=I", rule.table))
        if rule.fwmark is not None:
            body += _attr(_FRA_FWMARK, struct.pack("=I", rule.fwmark))
            body += _attr(_FRA_FWMASK, struct.pack("=I", 0xFFFFFFFF))
        if rule.suppress_prefixlength is not None:
            body += _attr(_FRA_SUPPRESS_PREFIXLEN, struct.pack("=I", rule.suppress_prefixlength))
        kind, mflags = _RTM_NEWRULE, _NLM_F_CREATE | _NLM_F_EXCL
    else:
        kind, mflags = _RTM_DELRULE, 0
    mflags |= _NLM_F_REQUEST | _NLM_F_ACK
    return _NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), kind, mflags, seq, 0) + body


async def dump_rule_priorities(sock: socket.socket, proto: int) -> set[tuple[int, int]]:
    """(family, priority) of every policy rule carrying protocol `proto`."""
    loop = asyncio.get_running_loop()
    request = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
    sock.send(
        _NLMSG_HDR.pack(
            _NLMSG_HDR.size + len(request), _RTM_GETRULE, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
        )
        + request
    )
    found: set[tuple[int, int]] = set()
    while True:
        data = await _recv(loop, sock)
        for kind, _seq, body, end in _messages(data):
            if kind == _NLMSG_DONE:
                return found
            if kind == _NLMSG_ERROR:
                code = _error_code(data, body)
                raise OSError(code, f"dumping rules: {os.strerror(code)}")
            if kind == _RTM_NEWRULE:
                family = data[body]
                priority, rule_proto = 0, 0
                for atype, value in _attributes(data, body + _RTMSG.size, end):
                    if atype == _FRA_PRIORITY:
                        priority = struct.unpack_from("=I", value)[0]
                    elif atype == _FRA_PROTOCOL:
                        rule_proto = value[0]
                if rule_proto == proto:
                    found.add((family, priority))


async def change_rules(
    sock: socket.socket, changes: list[tuple[bool, Rule]], proto: int
) -> list[int]:
    """Add (True) or delete (False) policy rules with protocol `proto`; one errno per change.
    Deleting matches family, priority and protocol, so nobody else's rule is removed."""
    loop = asyncio.get_running_loop()
    sock.send(b"".join(_rule_request(i + 2, add, r, proto) for i, (add, r) in enumerate(changes)))
    results = [0] * len(changes)
    await _read_acks(loop, sock, results, len(changes))
    return results
