"""Netlink monitor: turns link/address/route messages into the few changes meshd acts on.

As in tailscale's netmon, a netlink message is only a hint: any message (re)starts a short
debounce timer, after which the monitor re-dumps links, addresses and meshd's routes, compares
the snapshot with the previous one (`diff_states`, pure) and publishes only real changes:

* `UnderlayAddressesChanged`: our global addresses outside the mesh changed (re-announce
  endpoints). One event per settled change, however many messages it took.
* `MeshInterfaceGone`: the mesh interface disappeared (repair).
* `MeshRoutesGone`: routes carrying meshd's protocol number disappeared (repair).
* `UnderlayLinkChanged`: an underlay link went down or came up (re-resolve, re-probe).

If the loop stalls long enough for the kernel to overflow the socket's receive buffer, events are
lost and every later read fails with ENOBUFS; the monitor then closes the socket, opens a new
one, re-binds and re-dumps, so the snapshot is right again (PLATFORM.md, "Events").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

from meshd.adapters.rtnl import (
    MONITOR_GROUPS,
    RCVBUF,
    IPRoute,
    collect,
    dump_routes,
    open_iproute,
    open_route_socket,
)
from meshd.core.wgplan import MESHD_ROUTE_PROTO, Prefix

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000


@dataclass(frozen=True)
class UnderlayAddressesChanged:
    old: frozenset[IPAddress]
    """Global underlay addresses before the change."""
    new: frozenset[IPAddress]
    """Global underlay addresses now."""


@dataclass(frozen=True)
class MeshInterfaceGone:
    ifname: str
    """The mesh interface that disappeared."""


@dataclass(frozen=True)
class MeshRoutesGone:
    prefixes: tuple[Prefix, ...]
    """meshd routes that disappeared while the mesh interface stayed."""


@dataclass(frozen=True)
class UnderlayLinkChanged:
    ifname: str
    """The underlay link."""
    up: bool
    """True when it came up (or appeared), False when it went down (or disappeared)."""


NetlinkEvent = UnderlayAddressesChanged | MeshInterfaceGone | MeshRoutesGone | UnderlayLinkChanged


@dataclass(frozen=True)
class NetState:
    """What the monitor watches, from one dump."""

    links: frozenset[tuple[str, bool]]
    """(name, up) of every underlay link (not lo, not the mesh interface)."""
    underlay: frozenset[IPAddress]
    """Global addresses on underlay links."""
    mesh_present: bool
    mesh_routes: frozenset[Prefix]


def diff_states(
    old: NetState,
    new: NetState,
    mesh_ifname: str,
    routes_deleted: frozenset[Prefix] = frozenset(),
    mesh_deleted: bool = False,
) -> list[NetlinkEvent]:
    """The real changes between two snapshots, in a stable order.

    `routes_deleted` / `mesh_deleted` come from deletion messages seen in between: a route
    re-added and deleted again within one debounce window is in neither snapshot's difference,
    yet it is gone and needs repair."""
    events: list[NetlinkEvent] = []
    old_links, new_links = dict(old.links), dict(new.links)
    for name in sorted(old_links.keys() | new_links.keys()):
        before, after = old_links.get(name, False), new_links.get(name, False)
        if before != after:
            events.append(UnderlayLinkChanged(name, after))
    if old.underlay != new.underlay:
        events.append(UnderlayAddressesChanged(old.underlay, new.underlay))
    if (old.mesh_present or mesh_deleted) and not new.mesh_present:
        events.append(MeshInterfaceGone(mesh_ifname))
    elif new.mesh_present:
        gone = (old.mesh_routes | routes_deleted) - new.mesh_routes
        if gone:
            key = lambda p: (p.version, int(p.network_address), p.prefixlen)  # noqa: E731
            events.append(MeshRoutesGone(tuple(sorted(gone, key=key))))
    return events


class NetlinkMonitor:
    """Watches one network namespace (None: ours) for changes relevant to `mesh_ifname`.

    Consume `events()` from one task.
    """

    def __init__(
        self,
        mesh_ifname: str = "mesh0",
        netns: str | None = None,
        debounce: float = 0.05,
        route_proto: int = MESHD_ROUTE_PROTO,
        rcvbuf: int = RCVBUF,
    ) -> None:
        self.mesh_ifname = mesh_ifname
        self.netns = netns
        self.debounce = debounce
        self.route_proto = route_proto
        self.rcvbuf = rcvbuf
        self.state: NetState | None = None
        self.reopens = 0
        """How often the event socket was reopened (ENOBUFS and other read errors)."""
        self._dirty = asyncio.Event()
        self._route_sock: socket.socket | None = None
        self._routes_deleted: set[Prefix] = set()
        self._mesh_deleted = False
        self.ready = asyncio.Event()
        """Set once the first snapshot is taken: changes after that are reported."""

    async def snapshot(self) -> NetState:
        ipr = open_iproute(self.netns)
        try:
            return await self._snapshot(ipr)
        finally:
            ipr.close()

    async def _snapshot(self, ipr: IPRoute) -> NetState:
        links: dict[int, tuple[str, bool]] = {}
        mesh_index = None
        for msg in await collect(await ipr.link("dump")):
            name = msg.get_attr("IFLA_IFNAME")
            if name == self.mesh_ifname:
                mesh_index = msg["index"]
            elif name != "lo":
                up = bool(msg["flags"] & IFF_UP) and bool(msg["flags"] & IFF_LOWER_UP)
                links[msg["index"]] = (name, up)
        underlay: set[IPAddress] = set()
        for msg in await collect(await ipr.addr("dump")):
            if msg["index"] not in links:
                continue
            ip = ipaddress.ip_address(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
            if not (ip.is_link_local or ip.is_loopback):
                underlay.add(ip)
        routes: set[Prefix] = set()
        if mesh_index is not None:
            if self._route_sock is None:
                self._route_sock = open_route_socket(self.netns)
            for r in await dump_routes(self._route_sock):
                if r.proto == self.route_proto and r.oif == mesh_index:
                    routes.add(r.dst)
        return NetState(
            frozenset(links.values()),
            frozenset(underlay),
            mesh_index is not None,
            frozenset(routes),
        )

    async def _listen(self, sock: IPRoute) -> None:
        while True:
            async for msg in sock.get():
                event = msg.get("event")
                if event == "RTM_NEWROUTE" and msg["proto"] == self.route_proto:
                    # One of ours appearing: the reconciler adding it, nothing to repair. A
                    # snapshot (two pyroute2 dumps) after every pass that adds routes was a
                    # tenth of a daemon's CPU during a 30-node partition heal.
                    continue
                if event == "RTM_DELROUTE" and msg["proto"] == self.route_proto:
                    dst = msg.get_attr("RTA_DST")
                    self._routes_deleted.add(ipaddress.ip_network(f"{dst}/{msg['dst_len']}"))
                elif event == "RTM_DELLINK" and msg.get_attr("IFLA_IFNAME") == self.mesh_ifname:
                    self._mesh_deleted = True
                self._dirty.set()

    def _diff(self, old: NetState, new: NetState) -> list[NetlinkEvent]:
        events = diff_states(
            old, new, self.mesh_ifname, frozenset(self._routes_deleted), self._mesh_deleted
        )
        self._routes_deleted.clear()
        self._mesh_deleted = False
        return events

    async def events(self) -> AsyncIterator[NetlinkEvent]:
        """Changes as they settle; runs until the consumer stops or the task is cancelled."""
        while True:
            sock = open_iproute(self.netns, groups=MONITOR_GROUPS, rcvbuf=self.rcvbuf)
            dump = open_iproute(self.netns)
            listener: asyncio.Task[None] | None = None
            try:
                await sock.bind(groups=MONITOR_GROUPS)
                listener = asyncio.create_task(self._listen(sock))
                # (Re)start from a fresh dump: events lost while no socket listened.
                new = await self._snapshot(dump)
                if self.state is not None:
                    for event in self._diff(self.state, new):
                        yield event
                self.state = new
                self.ready.set()
                while True:
                    waiter = asyncio.create_task(self._dirty.wait())
                    done, _ = await asyncio.wait(
                        {waiter, listener}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if listener in done:
                        waiter.cancel()
                        listener.result()  # raises the listener's error: reopen below
                    # Debounce: let a burst (an address replace, a link flap) settle.
                    await asyncio.sleep(self.debounce)
                    self._dirty.clear()
                    new = await self._snapshot(dump)
                    for event in self._diff(self.state, new):
                        log.debug("netlink: %s", event)
                        yield event
                    self.state = new
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # ENOBUFS (overflow) and any other socket error: reopen and re-dump.
                self.reopens += 1
                log.warning("netlink monitor in %s: %s; reopening", self.netns or "main", exc)
            finally:
                if listener is not None:
                    listener.cancel()
                    with contextlib.suppress(BaseException):
                        await listener
                sock.close()
                dump.close()
                if self._route_sock is not None:
                    self._route_sock.close()
                    self._route_sock = None
