"""The reconciler: makes the mesh interface what membership wants, and keeps it so.

One pass = read the actual state (backend for WireGuard, rtnetlink for link, addresses and the
routes carrying `MESHD_ROUTE_PROTO`), `plan()` against the desired state, execute the plan.
`run()` repeats a pass whenever `trigger()` is called (desired state changed, the netlink monitor
saw drift, wireguard-go died) and every `period` seconds as a safety net; a failed pass is retried
with backoff. Because every pass starts from a fresh read, drift made by hand (`wg set`,
`ip route del`, `ip link del`, a killed wireguard-go) is repaired the same way as a first start,
and a pass over a converged interface changes nothing.

Only routes with meshd's protocol number are ever read, changed or deleted; a route someone else
made with the same destination is left alone (our add then fails with EEXIST, which is logged).
Default routes (an exit, docs/egress.md) go to MESHD_EXIT_TABLE and come with two policy rules
(`exit_rules`); a default route whose rules are missing is read as missing, so the next pass
puts both back. The rules are removed on stop (`remove_exit_rules`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from meshd.adapters.rtnl import (
    IPRoute,
    Rule,
    change_routes,
    change_rules,
    collect,
    dump_routes,
    dump_rule_priorities,
    open_iproute,
    open_route_socket,
)
from meshd.adapters.wireguard import (
    DeviceStatus,
    PeerStatus,
    WireGuardBackend,
    WireGuardError,
    describe,
)
from meshd.aio import wait_event
from meshd.core.errors import MeshError
from meshd.core.wgplan import (
    MESHD_EXIT_TABLE,
    MESHD_FWMARK,
    MESHD_ROUTE_PROTO,
    AddAddress,
    AddPeer,
    Address,
    AddRoute,
    CreateInterface,
    MeshInterface,
    Op,
    Prefix,
    RemoveAddress,
    RemoveRoute,
    SetLinkUp,
    SetMtu,
    UpdatePeer,
    WgOp,
    plan,
    resend_endpoints,
    restart_peers,
)

log = logging.getLogger(__name__)

IFF_UP = 0x1
_LINK_OPS = (SetMtu, SetLinkUp, AddAddress, RemoveAddress, AddRoute, RemoveRoute)
RT_TABLE_MAIN = 254
EXIT_RULE_PRIORITY = 5208
"""Priority of the first of the two exit rules (the second takes the next number); below
32766 (main), like wg-quick's and Tailscale's rules, so they are consulted first."""


def exit_rules(family: int) -> tuple[Rule, Rule]:
    """What makes a default route in MESHD_EXIT_TABLE safe (wg-quick's scheme): first look in
    main ignoring its default route, so local subnets, the underlay and mesh host routes stay
    as they are; then everything not marked as WireGuard's (or meshd's underlay) traffic goes
    to the exit table. Marked traffic falls through to main: the tunnel never carries itself."""
    return (
        Rule(family, EXIT_RULE_PRIORITY, RT_TABLE_MAIN, suppress_prefixlength=0),
        Rule(family, EXIT_RULE_PRIORITY + 1, MESHD_EXIT_TABLE, MESHD_FWMARK, invert=True),
    )


class ReconcileError(MeshError):
    """A pass could not finish; the message names the step and the interface."""


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if hasattr(msg, "get_attr") else msg.get(name)


class Reconciler:
    """Converges one mesh interface (in `netns`, None = ours) to the desired state."""

    def __init__(
        self,
        backend: WireGuardBackend,
        netns: str | None = None,
        period: float = 30.0,
        route_proto: int = MESHD_ROUTE_PROTO,
    ) -> None:
        self.backend = backend
        if backend.on_exit is None:
            # A dead wireguard-go is repaired by the next pass (re-create + re-apply).
            backend.on_exit = lambda _ifname: self.trigger()
        self.netns = netns
        self.period = period
        self.route_proto = route_proto
        self.desired: MeshInterface | None = None
        self.peer_status: dict[bytes, PeerStatus] = {}
        """Handshake time and counters of every peer, from the last pass."""
        self.passes = 0
        self.last_ops: list[Op] = []
        self.converged = asyncio.Event()
        """Set after a pass that succeeded with no newer trigger pending; cleared by
        `trigger()`."""
        self._wake = asyncio.Event()
        self._ipr: IPRoute | None = None
        self._route_sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._resend_endpoints = False
        self._added_at: dict[bytes, float] = {}
        """time.monotonic() when each peer was last added to WireGuard (`added_for`)."""
        self._restart: set[bytes] = set()

    # --- public API --------------------------------------------------------------------------

    def set_desired(self, desired: MeshInterface) -> None:
        """Replace the desired state and schedule a pass."""
        self.desired = desired
        self.trigger()

    async def resend_endpoints(self) -> None:
        """A pass now that also sets every peer's endpoint again, although it did not change:
        after our underlay address changed (`wgplan.resend_endpoints`). A failed pass leaves
        it to the next one."""
        self._resend_endpoints = True
        if self.desired is None:
            return
        try:
            await self.apply()
        except (MeshError, NetlinkError, OSError) as exc:
            log.warning("setting the endpoints of %s again: %s", self.desired.name, exc)
            self.trigger()

    def restart_handshakes(self, keys: set[bytes]) -> None:
        """Re-create these peers in the next pass if they still have had no handshake, so that
        WireGuard initiates now rather than after its 5 s retry (`wgplan.restart_peers`)."""
        self._restart |= keys
        self.trigger()

    def restart_pending(self, public_key: bytes) -> bool:
        return public_key in self._restart

    def added_for(self, public_key: bytes) -> float | None:
        """Seconds since the peer was added to WireGuard (or re-created); None: it is not in
        WireGuard, as far as this reconciler knows."""
        added = self._added_at.get(public_key)
        return None if added is None else time.monotonic() - added

    def trigger(self) -> None:
        """Schedule a pass soon (cheap; calls are coalesced)."""
        self.converged.clear()
        self._wake.set()

    async def apply(self, desired: MeshInterface | None = None) -> list[Op]:
        """One pass now: read, plan, execute. Returns the operations executed."""
        if desired is not None:
            self.desired = desired
        if self.desired is None:
            raise ReconcileError("reconciling: no desired state yet")
        asked = time.monotonic()
        async with self._lock:
            want = self.desired
            started = time.monotonic()
            actual, status = await self.read_actual(want.name)
            read = time.monotonic()
            ops = plan(want, actual)
            if self._resend_endpoints:
                self._resend_endpoints = False
                ops += resend_endpoints(want.device, actual.device if actual else None, ops)
            restart = set(self._restart)
            if restart:
                # Only peers that still have had no handshake in this read: the caller decided
                # on figures that may be seconds old, and re-creating a peer drops its session.
                peers = status.peers if status is not None else {}
                fresh = {k for k in restart if k in peers and not peers[k].last_handshake}
                ops += restart_peers(want.device, actual.device if actual else None, ops, fresh)
            if actual is None and status is not None:
                # The link is gone but the backend still answers (wireguard-go outliving its
                # tun): start from scratch.
                await self.backend.destroy(want.name)
            await self._execute(want.name, ops)
            self._note_added(want, ops)
            # Pending until done: asked again meanwhile, a peer was re-created twice within
            # milliseconds, and wireguard-go drops the second initiation as a flood (20 ms).
            self._restart -= restart
            if ops:
                # Every pass that changed something, whoever asked for it (the loop, a membership
                # change applied at once, a key switch): the log is where an outage is traced.
                log.info("reconciled %s: %s", want.name, describe_ops(ops))
                # Where a slow pass spent its time (30 daemons on 2 cores: seconds).
                log.debug("pass: %.3f s waiting, %.3f s reading, %.3f s planning and executing",
                          started - asked, read - started, time.monotonic() - read)  # fmt: skip
                for op in ops:
                    if isinstance(op, AddPeer | UpdatePeer) and op.peer.endpoint is not None:
                        log.debug("WireGuard peer %s: endpoint %s",
                                  base64.b64encode(op.peer.public_key).decode(),
                                  op.peer.endpoint)  # fmt: skip
            self.passes += 1
            self.last_ops = ops
            if status is not None:
                self.peer_status = dict(status.peers)
            return ops

    def _note_added(self, want: MeshInterface, ops: list[Op]) -> None:
        now = time.monotonic()
        wanted = want.device.peer_map()
        self._added_at = {k: t for k, t in self._added_at.items() if k in wanted}
        for op in ops:
            if isinstance(op, AddPeer):
                self._added_at[op.peer.public_key] = now

    async def refresh_status(self) -> None:
        """Re-read handshake times and counters (one backend read; nothing is planned or
        changed). A pass refreshes them too, but passes are rare when nothing changes, and
        `meshctl status` and the endpoint choice want them current. A failed read keeps the
        previous figures: the next pass reports and repairs what is wrong."""
        if self.desired is None:
            return
        try:
            status = await self.backend.read(self.desired.name)
        except (MeshError, NetlinkError, OSError) as exc:
            log.debug("reading status of %s: %s", self.desired.name, exc)
            return
        if status is not None:
            self.peer_status = dict(status.peers)

    async def converge(self, desired: MeshInterface | None = None, passes: int = 3) -> list[Op]:
        """Apply until a pass finds nothing to do; returns all operations executed."""
        done: list[Op] = []
        for _ in range(passes):
            ops = await self.apply(desired)
            if not ops:
                if not self._wake.is_set():  # a pending trigger means "not known converged"
                    self.converged.set()
                return done
            done += ops
        raise ReconcileError(
            f"reconciling {self.desired and self.desired.name}: still "
            f"changing after {passes} passes: {describe_ops(self.last_ops)}"
        )

    async def run(self) -> None:
        """Reconcile on every trigger and every `period` seconds until cancelled."""
        backoff = 0.05
        while True:
            await wait_event(self._wake, self.period)
            self._wake.clear()
            if self.desired is None:
                continue
            try:
                await self.apply()
            except Exception as exc:
                # Whatever failed (backend, netlink, a bug), the loop must survive: a dead
                # reconciler would silently stop all repairs.
                log.warning(
                    "reconciling %s: %s: %s (retry in %.2f s)",
                    self.desired.name, type(exc).__name__, exc, backoff,
                )  # fmt: skip
                self._drop_socket()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()
                continue
            backoff = 0.05
            # No verification pass: every operation reported success, and later drift comes
            # back through the monitor, on_exit or the periodic pass.
            if not self._wake.is_set():
                self.converged.set()

    async def close(self) -> None:
        self._drop_socket()

    # --- reading -----------------------------------------------------------------------------

    def _socket(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = open_iproute(self.netns)
        return self._ipr

    def _drop_socket(self) -> None:
        if self._route_sock is not None:
            self._route_sock.close()
            self._route_sock = None
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    async def _link(self, ifname: str) -> Any | None:
        try:
            links = await collect(await self._socket().link("get", ifname=ifname))
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return links[0] if links else None

    async def read_actual(self, ifname: str) -> tuple[MeshInterface | None, DeviceStatus | None]:
        """The interface as it is (None when the link or the WireGuard device is missing), and
        the backend's status."""
        try:
            status = await self.backend.read(ifname)
            link = await self._link(ifname)
            if link is None or status is None:
                return None, status
            return await self._read_link_state(ifname, link, status), status
        except (NetlinkError, OSError) as exc:
            self._drop_socket()
            raise ReconcileError(f"reading {ifname}: {exc}") from None

    async def _read_link_state(self, ifname: str, link: Any, status: DeviceStatus) -> MeshInterface:
        index = link["index"]
        ipr = self._socket()
        addresses: list[Address] = []
        for msg in await collect(await ipr.addr("dump", index=index)):
            ip = _attr(msg, "IFA_LOCAL") or _attr(msg, "IFA_ADDRESS")
            iface = ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}")
            if not (iface.version == 6 and iface.ip.is_link_local):
                addresses.append(iface)
        if self._route_sock is None:
            self._route_sock = open_route_socket(self.netns)
        routes: list[Prefix] = [
            r.dst
            for r in await dump_routes(self._route_sock)
            if r.proto == self.route_proto
            and r.oif == index
            and (r.table == RT_TABLE_MAIN or (r.table == MESHD_EXIT_TABLE and not r.dst.prefixlen))
        ]
        # A default route counts as present only with its policy rules: if someone deleted
        # them, the route is planned again and the rules come back with it.
        rules = await dump_rule_priorities(self._route_sock, self.route_proto)
        routes = [
            r
            for r in routes
            if r.prefixlen
            or {(rule.family, rule.priority) for rule in exit_rules(_family(r))} <= rules
        ]
        return MeshInterface(
            ifname,
            status.device,
            tuple(addresses),
            _attr(link, "IFLA_MTU"),
            bool(link["flags"] & IFF_UP),
            tuple(routes),
        )

    # --- executing ---------------------------------------------------------------------------

    async def _execute(self, ifname: str, ops: Sequence[Op]) -> None:
        wg_ops: list[WgOp] = []
        link_ops: list[Op] = []
        for op in ops:
            if isinstance(op, CreateInterface):
                try:
                    await self.backend.create(op.name)
                except WireGuardError as exc:
                    raise ReconcileError(f"creating {ifname}: {exc}") from None
            elif isinstance(op, _LINK_OPS):
                link_ops.append(op)
            else:
                wg_ops.append(op)
        # WireGuard first (one UAPI transaction), then link, addresses and routes.
        await self.backend.apply(ifname, wg_ops)
        if not link_ops:
            return
        link = await self._link(ifname)
        if link is None:
            raise ReconcileError(f"configuring {ifname}: the interface vanished")
        index = link["index"]
        ipr = self._socket()
        for op in link_ops:
            if isinstance(op, AddRoute | RemoveRoute):
                continue
            try:
                await self._link_op(ipr, index, op)
            except NetlinkError as exc:
                raise ReconcileError(f"{describe_op(op)} on {ifname}: {exc}") from None
        route_ops = [op for op in link_ops if isinstance(op, AddRoute | RemoveRoute)]
        if route_ops:
            await self._route_ops(ifname, index, route_ops)

    async def _route_ops(self, ifname: str, index: int, ops: list[AddRoute | RemoveRoute]) -> None:
        if self._route_sock is None:
            self._route_sock = open_route_socket(self.netns)
        main = [op for op in ops if op.prefix.prefixlen]
        exits = [op for op in ops if not op.prefix.prefixlen]
        codes = await change_routes(
            self._route_sock, [(isinstance(op, AddRoute), op.prefix) for op in main],
            index, self.route_proto,
        )  # fmt: skip
        if exits:
            codes += await change_routes(
                self._route_sock, [(isinstance(op, AddRoute), op.prefix) for op in exits],
                index, self.route_proto, MESHD_EXIT_TABLE,
            )  # fmt: skip
            wanted = self.desired.routes if self.desired is not None else ()
            await self._sync_exit_rules({_family(r) for r in wanted if not r.prefixlen})
        for op, code in zip(main + exits, codes, strict=True):
            if code == errno.EEXIST and isinstance(op, AddRoute):
                # "add", not "replace": replace would take over someone else's route with the
                # same destination and metric. Theirs stays; we log and keep planning it.
                log.debug("route %s on %s exists and is not ours; left alone", op.prefix, ifname)
            elif code == errno.ESRCH and isinstance(op, RemoveRoute):
                pass  # already gone
            elif code != 0:
                raise ReconcileError(
                    f"{describe_op(op)} on {ifname}: [Errno {code}] {os.strerror(code)}"
                )

    async def _sync_exit_rules(self, families: set[int]) -> None:
        """Exit rules for exactly `families` (those with a default route via the mesh)."""
        assert self._route_sock is not None
        have = await dump_rule_priorities(self._route_sock, self.route_proto)
        changes: list[tuple[bool, Rule]] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for rule in exit_rules(family):
                present = (family, rule.priority) in have
                if family in families and not present:
                    changes.append((True, rule))
                elif family not in families and present:
                    changes.append((False, rule))
        if not changes:
            return
        codes = await change_rules(self._route_sock, changes, self.route_proto)
        for (add, rule), code in zip(changes, codes, strict=True):
            if code not in (0, errno.EEXIST, errno.ENOENT):
                verb = "adding" if add else "removing"
                raise ReconcileError(
                    f"{verb} policy rule {rule.priority}: [Errno {code}] {os.strerror(code)}"
                )

    async def remove_exit_rules(self) -> None:
        """Remove meshd's policy rules (on stop; the interface's routes go with it)."""
        try:
            if self._route_sock is None:
                self._route_sock = open_route_socket(self.netns)
            await self._sync_exit_rules(set())
        except (OSError, ReconcileError) as exc:
            log.warning("removing policy rules: %s", exc)

    async def _link_op(self, ipr: IPRoute, index: int, op: Op) -> None:
        if isinstance(op, SetMtu):
            await ipr.link("set", index=index, mtu=op.mtu)
        elif isinstance(op, SetLinkUp):
            await ipr.link("set", index=index, state="up" if op.up else "down")
        elif isinstance(op, AddAddress):
            await ipr.addr(
                "replace", index=index, address=str(op.address.ip),
                prefixlen=op.address.network.prefixlen,
            )  # fmt: skip
        elif isinstance(op, RemoveAddress):
            try:
                await ipr.addr(
                    "del", index=index, address=str(op.address.ip),
                    prefixlen=op.address.network.prefixlen,
                )  # fmt: skip
            except NetlinkError as exc:
                if exc.code != errno.EADDRNOTAVAIL:
                    raise


def _family(prefix: Prefix) -> int:
    return socket.AF_INET if prefix.version == 4 else socket.AF_INET6


def describe_op(op: Op) -> str:
    """An operation for logs and errors (never a key)."""
    if isinstance(op, SetMtu):
        return f"setting MTU {op.mtu}"
    if isinstance(op, SetLinkUp):
        return "setting link up" if op.up else "setting link down"
    if isinstance(op, AddAddress):
        return f"adding address {op.address}"
    if isinstance(op, RemoveAddress):
        return f"removing address {op.address}"
    if isinstance(op, AddRoute):
        return f"adding route {op.prefix}"
    if isinstance(op, RemoveRoute):
        return f"removing route {op.prefix}"
    if isinstance(op, CreateInterface):
        return f"creating {op.name}"
    return f"setting {describe([op])}"


def describe_ops(ops: Sequence[Op]) -> str:
    counts: dict[str, int] = {}
    for op in ops:
        counts[type(op).__name__] = counts.get(type(op).__name__, 0) + 1
    return ", ".join(f"{n}x{k}" for k, n in counts.items()) or "nothing"
