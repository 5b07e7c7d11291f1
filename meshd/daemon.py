"""meshd: the composition root.

One object wires the pieces: the membership core (pure, `meshd.core.membership`), the transport
(UDP + streams), the data plane (WireGuard backend + reconciler, `meshd.adapters`), the local
API, persistence and signals. Data flows one way:

    sockets -> MeshNode.receive -> events -> desired MeshInterface -> reconciler -> kernel
    timers  -> MeshNode.handle_timer -> datagrams -> sockets

Everything runs on one uvloop event loop; nothing here blocks for long.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import importlib
import io
import ipaddress
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, cast

import uvloop

from meshd import keyfiles, logs
from meshd.adapters import systemd
from meshd.adapters.addresses import underlay_addresses
from meshd.adapters.dataplane import DataPlane
from meshd.adapters.egress import EgressGateway, roles_from_config
from meshd.adapters.netlink import NetlinkEvent, UnderlayAddressesChanged, UnderlayLinkChanged
from meshd.adapters.reconciler import Reconciler
from meshd.adapters.resolver import EndpointResolver
from meshd.adapters.store import StateStore
from meshd.adapters.transport import UNDERLAY, MeshTransport, Received
from meshd.adapters.underlayguard import UnderlayGuard
from meshd.adapters.wireguard import PeerStatus, WireGuardBackend, select_backend
from meshd.aio import at_deadlines, keep_running, wait_event
from meshd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    load_config,
    markdown_table,
    split_host_port,
)
from meshd.core import membership as ms
from meshd.core.announce import PEER_SWITCH_LAG_MS, Announcement, AnnouncementVerifier
from meshd.core.cert import Certificate, check_revocation, decode_revocation
from meshd.core.config import MembershipConfig
from meshd.core.endpoints import (
    RESTART_HANDSHAKE_AFTER_S,
    RESTART_HANDSHAKE_TIMES,
    STALE_HANDSHAKE_S,
    EndpointChoice,
    handshake_restart_in,
    preferred_order,
)
from meshd.core.errors import MeshError, Reject, RemoteProtocolError
from meshd.core.identity import WireGuardKey, key_id
from meshd.core.joingate import JoinGate
from meshd.core.keyclaims import WgKeyClaims
from meshd.core.pairrepair import FRESH_HANDSHAKE_S, PairRepairs, RepairStep
from meshd.core.psk import PskSecrets
from meshd.core.ratelimit import SourceRateLimiter
from meshd.core.routes import GatewayOffer, Held, RoutePolicy, choose_gateways, parse_accept
from meshd.core.wgplan import MESHD_FWMARK, MeshInterface, Prefix, WgDevice, WgPeer, as_prefix
from meshd.core.wire import Channel, MemberState
from meshd.metrics import Registry
from meshd.node import NodeIdentity, StartupError, load_identity, load_psk

log = logging.getLogger("meshd")

LEAVE_DEADLINE_S = 2.0
"""How long a graceful leave may take before exit: the LEFT announcement reaches every node in
milliseconds by eager forwarding; this bounds the wait when the network is gone."""
STOP_TASKS_DEADLINE_S = 3.0
"""How long the daemon's tasks may take to finish once cancelled on shutdown; a task that takes
longer is logged with its stack and left behind, so that a stop always ends."""
RECONCILE_PERIOD_S = 10.0
"""A full reconciliation pass (read everything, plan, apply) runs this often even when nothing
seems to have changed: it repairs drift netlink does not report (`wg set` by hand). Deleted
routes and interfaces are reported by netlink and repaired at once."""
ENDPOINT_PERIOD_S = 2.0
"""The desired state is recomputed this often so that a peer whose handshake went stale moves
on to its next announced endpoint; it is pushed to the data plane only when it changed."""
SEED_RESOLVE_PERIOD_S = 60.0
"""Seeds given by name are resolved again this often (and on underlay changes): a seed that
moved is found again without a restart."""
WG_KEY_LEAD_S = 10.0
"""A new WireGuard key is announced this long before the switch: an announcement reaches every
node of a LAN mesh of 1,000 in well under a second (bench sim), so ten times that is room for
loss and retransmission. A peer that still missed it switches on the announcement signed right
after the switch."""
WG_KEY_SWITCH_CLEAR_S = (2.0, 3.0)
"""No WireGuard key switch within 2 s before or 3 s after a PSK change (epoch boundary or secret
activation). The switch needs a fresh handshake (the switching node stops sending on its
sessions), and a handshake that runs while the two nodes disagree about the PSK fails; WireGuard
retries only 5 s later, after the failure detector has declared the peer dead. 3 s covers the
peers' switch lag (0.5 s), the handshake and clock differences of a second or two."""
CERT_LEAVE_MARGIN_S = 5.0
"""A node whose certificate is about to expire leaves this long before, while its signed leave
is still valid everywhere (a LEFT announcement with an expired certificate would be refused);
the margin covers clock differences between nodes."""
PSK_REFUSAL_SHOWN_S = 300.0
"""A peer refused for a PSK mismatch is listed in status warnings for this long after the last
refusal."""
PERSIST_DELAY_S = 1.0
"""Known peers are written this long after a membership change (coalescing bursts), so that even
a crash of every node soon after a change leaves each one a list of peers to re-form from."""


class Clock:
    """Unix time that never jumps: wall clock at start plus monotonic time since. The core's
    timers must not fire early or late when NTP steps the clock; certificate validity only needs
    seconds of accuracy, which a monotonic clock anchored at start keeps for months."""

    def __init__(self) -> None:
        self._wall = time.time()
        self._mono = time.monotonic()

    def __call__(self) -> float:
        return self._wall + (time.monotonic() - self._mono)


class Daemon:
    def __init__(self, config: Config, node: NodeIdentity, *, rng: random.Random | None = None):
        self.config = config
        self.node = node
        self.clock = Clock()
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self.store = StateStore(config.state_dir)
        self.wg_key = self.store.wireguard_key()
        self.next_wg: tuple[WireGuardKey, int] | None = self.store.next_wireguard_key()
        """The rotation in progress: our next WireGuard key and its switch time (Unix ms)."""
        self.psk: PskSecrets | None = node.psk
        self._keys_changed = asyncio.Event()
        """Wakes the key loop: a rotation began, a peer announced one, the PSK file changed."""
        self._psk_refused: dict[str, tuple[str, float]] = {}
        """Peer name -> (why, when) of the last refusal for a PSK mismatch (status warnings)."""
        self._psk_write_failed = False
        """Set after a failed write of the ratcheted PSK file (said once, not every epoch)."""
        self.registry = Registry()
        self._define_metrics()
        self.stop_requested = asyncio.Event()
        self._timer_changed = asyncio.Event()
        self._persist_wanted = asyncio.Event()
        self._last_alive: dict[bytes, bytes] = {}
        """Newest ALIVE announcement of every member, persisted as restart contacts."""
        self._endpoint_choice: dict[bytes, EndpointChoice] = {}
        self.pair_repairs = PairRepairs()
        """Repairs of degraded pairs (meshd.core.pairrepair), run by `_repair_pairs`."""
        self._recompute_timer: asyncio.TimerHandle | None = None
        self._read_before_apply = False
        self._local_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        """Networks of our underlay addresses (`own_endpoints`): peers' endpoints on them are
        tried first (`preferred_order`)."""
        self._gateways: dict[Prefix, Held] = {}
        """Advertised prefix -> the member we route it through, since when (for stability)."""
        self._refused: dict[Prefix, str] = {}
        self._gateway_rtt: dict[bytes, float | None] = {}
        """Probe RTT of each gateway when the routes were last chosen (shown by status)."""
        self.route_policy = RoutePolicy(
            parse_accept(config.accept_routes),
            config.use_exit,
            tuple(as_prefix(p) for p in config.advertise_prefixes),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.clean_stop = True
        """False once a task would not stop when cancelled: the exit code says so (a bug)."""
        self._held: list[ms.Transmit] = []
        self._tunnelled: frozenset[str] = frozenset()
        """Overlay addresses of the WireGuard peers as last applied: while the data plane is
        being applied, overlay traffic to any other address is held (`_after_core`)."""
        self._apply_task: asyncio.Task[None] | None = None
        self._apply_again = False
        self._left = False
        self._leave_spread = asyncio.Event()
        """Set once our signed leave has been sent its retransmit limit of times."""
        self.backend: WireGuardBackend | None = None
        self.reconciler: Reconciler | None = None
        self.dataplane: DataPlane | None = None
        self.egress = EgressGateway(
            roles_from_config(
                config.interface, config.advertise_prefixes, config.egress_nat,
                config.egress_bridges, config.protected_ranges, config.nat64,
                config.nat64_prefix, config.nat64_pool,
            ),
            config.state_dir, node.cert.addresses[0], config.tayga,
        )  # fmt: skip
        self._last_desired: MeshInterface | None = None
        self.key_claims = WgKeyClaims()
        """Who holds each WireGuard key: members announcing one held by another are left out."""
        self._key_left_out: frozenset[bytes] = frozenset()
        """Members left out of WireGuard at the last planning pass for a key conflict."""
        self.underlay_guard = UnderlayGuard(config.interface, config.meshd_port)
        """A kernel cap on underlay traffic to our port (meshd.adapters.underlayguard)."""
        self.seed_resolver = EndpointResolver(
            lambda *_: None, period=SEED_RESOLVE_PERIOD_S, on_answers=self._seed_answers
        )
        self._seeds_joined = False
        """Set once start() sent the first join: answers resolved before that are its own."""
        self._contacts_saved = 0
        """`MeshNode.contacts_changed` when the contacts were last persisted."""
        self._own_hosts: frozenset[str] = frozenset()
        """Our underlay addresses (`own_endpoints`): a seed address among them with our meshd
        port is ourselves (a seed list that names the node itself is normal)."""
        self.transport: MeshTransport | None = None
        self.api: Any = None  # meshd.api.ApiServer, imported late (see start)
        self.core: ms.MeshNode | None = None
        self.verifier = AnnouncementVerifier(
            node.trust, is_revoked=self._is_revoked, psk_ids=self.psk.ids if self.psk else ()
        )
        self.join_gate = JoinGate(self.verifier, SourceRateLimiter(rate=10.0, burst=20.0))
        """Underlay traffic (join requests) per source, cheap checks, then a global budget of
        signature checks, before the core sees it (meshd.core.joingate)."""
        self._revoked_serials: set[tuple[bytes, int]] = set()
        self._revocations: dict[tuple[bytes, int], bytes] = {}

    # --- start and stop ------------------------------------------------------------------------

    def _membership_config(self) -> MembershipConfig:
        return (
            MembershipConfig.local()
            if self.config.membership == "local"
            else MembershipConfig.lan()
        )

    def _is_revoked(self, cert: Certificate) -> bool:
        return (cert.ca_key, cert.serial) in self._revoked_serials

    def _load_persisted(self, now: float) -> tuple[list[Announcement], list[Any]]:
        revocations = []
        for raw in self.store.revocations():
            try:
                rev = decode_revocation(raw)
                check_revocation(rev, self.node.trust)
            except RemoteProtocolError as exc:
                log.warning("ignoring a persisted revocation: %s", exc)
                continue
            revocations.append(rev)
            self._revoked_serials.add((rev.ca_key, rev.serial))
            self._revocations[(rev.ca_key, rev.serial)] = rev.raw
        peers = []
        for raw in self.store.peers():
            try:
                ann = self.verifier.verify(raw, now)
            except RemoteProtocolError as exc:
                log.info("forgetting a persisted peer: %s", exc)
                continue
            if ann.node_id != self.node.identity.public:
                peers.append(ann)
        return peers, revocations

    async def own_endpoints(self) -> list[tuple[str, int]]:
        """Our endpoints (configured, or our underlay addresses); also notes the networks we
        are on, which decide the order in which peers' endpoints are tried."""
        mesh = ipaddress.ip_network(self.node.cert.addresses[0] + "/48", strict=False)
        underlay = [
            iface
            for iface in await underlay_addresses({self.config.interface})
            if iface.ip not in mesh
        ]
        self._local_networks = tuple(iface.network for iface in underlay)
        self._own_hosts = frozenset(str(iface.ip) for iface in underlay) | {
            split_host_port(e, "endpoints")[0] for e in self.config.endpoints
        }
        if self.config.endpoints:
            return [split_host_port(e, "endpoints") for e in self.config.endpoints]
        out = [(str(iface.ip), self.config.listen_port) for iface in underlay]
        # IPv6 first: no NAT in the way on most networks.
        out.sort(key=lambda e: ipaddress.ip_address(e[0]).version == 4)
        return out[:8]

    async def resolve_seeds(self) -> list[tuple[str, int]]:
        """Seed addresses now, resolving every name (the resolver keeps watching them)."""
        for seed in self.config.seeds:
            host, port = split_host_port(seed, "seeds")
            if not _is_ip_literal(host):
                self.seed_resolver.watch(host, port)
                await self.seed_resolver.refresh(host, port, force=True)
        return self.seed_addresses()

    def seed_addresses(self) -> list[tuple[str, int]]:
        """Every address of every seed: IP literals as they are, every A and AAAA record of a
        name (several seed nodes behind one name), our own addresses left out."""
        out: list[tuple[str, int]] = []
        for seed in self.config.seeds:
            host, port = split_host_port(seed, "seeds")
            hosts = (host,) if _is_ip_literal(host) else self.seed_resolver.addresses(host, port)
            for address in hosts:
                seed_address = (_canonical_host(address), port)
                if seed_address not in out and not self._is_own(seed_address):
                    out.append(seed_address)
        return out

    def _is_own(self, address: tuple[str, int]) -> bool:
        if address[1] != self.config.meshd_port:
            return False  # another meshd on this host (another mesh) is not us
        return address[0] in self._own_hosts or ipaddress.ip_address(address[0]).is_loopback

    def _seed_answers(self, name: str, port: int, answers: tuple[str, ...]) -> None:
        """A seed name resolves to other addresses now: look at them for another mesh; with no
        live member, join through them at once."""
        if self.core is None or self._left or not self._seeds_joined:
            return
        seeds = self.seed_addresses()
        log.info("seed %s resolves to %s", name, ", ".join(answers))
        if self.core.live_members():
            self.core.set_seeds(seeds, self.clock())
        else:
            self.core.join(seeds, self.clock())
        self._after_core()

    def _on_netlink(self, event: NetlinkEvent) -> None:
        if isinstance(event, UnderlayAddressesChanged | UnderlayLinkChanged):
            self.seed_resolver.trigger()
            self._spawn(self._reannounce())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a side task whose failure is logged, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        task.add_done_callback(_log_task_failure)

    def _repair_pairs(self) -> None:
        """The repair steps due for degraded pairs (meshd.core.pairrepair): re-create the
        member's WireGuard peer, ask it through another member to initiate towards us, or move
        to its next announced endpoint and re-create it."""
        if self.core is None or self.reconciler is None or self._left:
            return
        now = self.clock()
        restart: set[bytes] = set()
        for node_id, step in self.pair_repairs.plan(self.core.degraded(), now):
            member = self.core.member(node_id)
            if member is None:
                continue
            repair = self.pair_repairs.get(node_id)
            log.info(
                "pair with %s: %s (attempt %d)",
                member.ann.name, step.value, repair.attempts if repair else 0,
            )  # fmt: skip
            if step is RepairStep.ASK_TO_INITIATE:
                self.core.ask_to_initiate(node_id, now)
                self._after_core()
                continue
            wg_key = member.ann.wg_key_at(now)
            age = _handshake_age(self._peer_status(wg_key), now)
            if age is not None and age < FRESH_HANDSHAKE_S:
                log.info("pair with %s: WireGuard handshake %.0f s ago; peer left as it is",
                         member.ann.name, age)  # fmt: skip
                continue
            choice = self._endpoint_choice.get(node_id)
            if step is RepairStep.NEXT_ENDPOINT and choice is not None:
                choice.next_endpoint(now)
            restart.add(wg_key)
        if restart:
            self._update_desired()  # with the endpoint chosen above
            self.reconciler.restart_handshakes(restart)

    async def _reannounce(self) -> None:
        """Our underlay addresses changed: set every peer's endpoint again (drops WireGuard's
        cached source address), sign an announcement with the new endpoints and send it to
        every member through the tunnel, so that peers switch at once (by the announcement,
        and by WireGuard's roaming when we are behind a NAT)."""
        if self.core is None or self._left:
            return
        endpoints = await self.own_endpoints()
        if tuple(endpoints) == self.core.announcement.endpoints:
            return
        if self.reconciler is not None:
            await self.reconciler.resend_endpoints()  # before tell_members' packets leave
        if self.core is None or self._left:
            return
        self.core.update_self(self.clock(), endpoints=endpoints)
        self.core.tell_members()
        self._after_core()
        self._persist_wanted.set()
        log.info("underlay changed; announced endpoints %s",
                 ", ".join(_endpoint_text(e) for e in endpoints) or "none")  # fmt: skip

    async def start(self) -> None:
        """Start in the order that makes a new node reachable soonest: the join request goes
        out on the underlay first, while wireguard-go starts; the local API comes last."""
        now = self.clock()
        self._ratchet_psk(now)
        if self.next_wg is not None and self.next_wg[1] <= now * 1000:
            # Restarted after the switch time: the switch is simply done now.
            self.wg_key, self.next_wg = self.next_wg[0], None
            self.store.finish_wireguard_rotation(self.wg_key)
        peers, revocations = self._load_persisted(now)
        self.transport = MeshTransport(
            self.config.meshd_port,
            self.config.interface,
            list(self.node.cert.addresses),
            self._on_message,
            stream_from=self._is_member_overlay,
        )
        await self.transport.start()
        self._spawn(self.underlay_guard.start())  # nft takes ~20 ms: beside the join
        self.core = ms.MeshNode(
            self._membership_config(),
            identity=self.node.identity,
            certificate=self.node.cert,
            trust=self.node.trust,
            wg_public_key=self.wg_key.public,
            endpoints=await self.own_endpoints(),
            meshd_port=self.config.meshd_port,
            rng=self.rng,
            now=now,
            prefixes=self.config.advertise_prefixes,
            last_version=self.store.version(),
            verifier=self.verifier,
            peers=peers,
            revocations=revocations,
            contacts=self.store.contacts(),
            psk_ids=self.psk.ids if self.psk else (),
        )
        if self.next_wg is not None:  # restarted during a rotation: announce it again
            self.core.update_self(
                now, next_wg_public_key=self.next_wg[0].public, next_wg_key_at=self.next_wg[1]
            )
        self.store.save_version(self.core.announcement.version)
        seeds = await self.resolve_seeds()
        if seeds:
            self.core.join(seeds, now)
        elif self.seed_resolver.errors:
            log.warning("no seed could be resolved; retrying in the background")
        elif self.config.seeds:
            log.info("every seed address is this node's own; waiting for others to join")
        self._seeds_joined = True
        self._after_core()  # the join request leaves now; overlay traffic waits for WireGuard
        self.backend = await select_backend(
            cast(Literal["auto", "kernel", "userspace"], self.config.backend),
            socket_dir=self.config.wireguard_run_dir,
            on_exit=self._wireguard_exited,
            binary=self.config.wireguard_go,
        )
        dataplane = DataPlane(self.backend, period=RECONCILE_PERIOD_S, on_netlink=self._on_netlink)
        dataplane.set_desired(self.desired_interface([]))
        await dataplane.reconciler.converge()
        await dataplane.start()  # reconciler loop, netlink monitor, resolver
        # Only now does `_after_core` see a data plane: until here it held overlay traffic.
        self.dataplane, self.reconciler = dataplane, dataplane.reconciler
        # Our addresses were read before the netlink monitor started: a change in between
        # (a DHCP lease renewed as the host boots, a restarted node moved at once) raised no
        # event, and we would announce an address we no longer have for good (issue 27: NATed
        # peers, which cannot be reached first, never found the node again). Read them again.
        self._spawn(self._reannounce())
        await self.egress.start()  # forwarding, nftables, tayga: after the interface exists
        # Members learnt while WireGuard was starting (the join reply, persisted peers) are
        # applied now, and the overlay traffic held for them is released once they are in.
        self._apply_task = asyncio.get_running_loop().create_task(self._apply_now())
        loops: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("timer", self._timer_loop),
            ("desired", self._desired_loop),
            ("seed-resolver", self.seed_resolver.run),
            ("persist", self._persist_loop),
            ("watchdog", self._watchdog_loop),
            ("keys", self._key_loop),
            ("loop-lag", self._lag_loop),
        )
        for what, loop_fn in loops:
            # A failed pass is logged, counted and run again: a loop that ended would stop
            # what it drives for good while the daemon looks healthy (issue #22).
            task = asyncio.create_task(keep_running(what, loop_fn, self._loop_failed), name=what)
            task.add_done_callback(_log_task_failure)
            self._tasks.append(task)
        # aiohttp takes 0.3-0.4 s to import. Done here, in a thread, so that neither the join
        # request nor the answers to the first probes of the new member wait for it.
        api = await asyncio.to_thread(importlib.import_module, "meshd.api")
        self.api = api.ApiServer(self, self.config.socket)
        await self.api.start()
        log.info(
            "started %s (%s) in mesh %s: interface %s, WireGuard port %d, meshd port %d, "
            "%d known peers, seeds %s",
            self.node.cert.name,
            ", ".join(self.node.cert.addresses),
            self.config.mesh,
            self.config.interface,
            self.config.listen_port,
            self.config.meshd_port,
            len(peers),
            ", ".join(self.config.seeds) or "none",
        )
        systemd.notify(f"READY=1\nSTATUS=member of {self.config.mesh}, {len(peers)} known peers")

    async def leave(self) -> dict[str, Any]:
        """Signed graceful leave; returns once it has been spread (or the deadline passed)."""
        assert self.core is not None
        if not self._left:
            self._left = True
            self.core.leave(self.clock())
            self._after_core()
            if self.core.live_members():  # with nobody to tell, there is nothing to wait for
                await wait_event(self._leave_spread, LEAVE_DEADLINE_S)
            log.info(
                "left the mesh (%s)",
                "announced"
                if self.core.leave_finished or not self.core.live_members()
                else "deadline",
            )
        return {"message": "left the mesh"}

    async def stop(self) -> None:
        systemd.notify("STOPPING=1")
        if self.core is not None and not self._left:
            with contextlib.suppress(Exception):
                await self.leave()
        if self._recompute_timer is not None:
            self._recompute_timer.cancel()
        tasks = [*self._tasks, *self._side_tasks, *([self._apply_task] if self._apply_task else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TASKS_DEADLINE_S)
            for task in stuck:  # a bug, not a peer's doing: say where it hangs, exit anyway
                stack = io.StringIO()
                task.print_stack(file=stack)
                log.error("task %s did not stop when cancelled: %s",
                          task.get_name(), stack.getvalue())  # fmt: skip
                self.clean_stop = False
        self._save_state()
        if self.api is not None:
            await self.api.stop()
        if self.transport is not None:
            await self.transport.close()
        await self.underlay_guard.stop()
        try:
            await self.egress.stop()
        except (MeshError, OSError) as exc:
            log.error("removing gateway roles: %s", exc)
        if self.dataplane is not None:
            with contextlib.suppress(MeshError, OSError):
                await self.dataplane.stop(destroy=not self.config.keep_interface)
        elif self.backend is not None:
            await self.backend.close()

    # --- the core's inputs and outputs ------------------------------------------------------

    def _on_message(self, received: Received) -> None:
        if self.core is None:
            return
        if received.channel == UNDERLAY:
            refused = self.join_gate.admit(
                received.data, received.source[0], self.clock(), time.monotonic()
            )
            if refused is not None:
                self.m_rejected.inc(reason=refused.reason.value)
                return
        self.core.receive(received.data, received.source, self.clock(), Channel(received.channel))
        self._after_core()

    def _is_member_overlay(self, host: str) -> bool:
        """True when `host` (canonical text) is an overlay address of a live member: the only
        sources whose streams are read (MeshTransport). Certificates hold canonical text."""
        if self.core is None:
            return False
        return any(host in ann.cert.addresses for ann in self.core.live_members())

    def _after_core(self) -> None:
        """Send what the core wants sent, act on its events, and re-arm its timer.

        When membership changed, the new peers must be in WireGuard before anything is sent to
        their overlay addresses (else the first probe fails and raises a false suspicion): the
        data plane is applied at once and overlay traffic to addresses not yet in WireGuard is
        held until it is done. Traffic to the others goes at once: a pass takes tens of
        milliseconds, hundreds on a busy host, and holding everything delayed each hop of a
        death's gossip by that much and made probes sent meanwhile look failed (bench faults,
        N=30: a death took 0.3 s to reach all, and 45 suspicions were refuted in one run; none
        since)."""
        assert self.core is not None
        membership_changed = False
        for event in self.core.events():
            membership_changed |= self._on_event(event)
        if self.core.answered is not None:
            self._confirm_neighbour(self.core.answered)
            self.core.answered = None
        self._held.extend(self.core.datagrams_to_send())
        if membership_changed or self.core.contacts_changed != self._contacts_saved:
            self._persist_wanted.set()
        if self.reconciler is None:
            pass  # starting: start() applies the data plane once WireGuard is up
        elif self._apply_task is not None and not self._apply_task.done():
            self._apply_again |= membership_changed
        elif membership_changed:
            self._apply_task = asyncio.get_running_loop().create_task(self._apply_now())
        busy = self.reconciler is None or not (self._apply_task is None or self._apply_task.done())
        self._send_held(ready=self._tunnelled if busy else None)
        if self._left and self.core.leave_finished:
            self._leave_spread.set()
        self._timer_changed.set()

    def _confirm_neighbour(self, node_id: bytes) -> None:
        """A member answered our probe through the tunnel: confirm the underlay neighbour
        towards the endpoint WireGuard uses for it (at the last status read, a few seconds old
        at most; after a roam the next answer confirms the new one)."""
        member = self.core.member(node_id) if self.core is not None else None
        if member is None or self.transport is None:
            return
        stats = self._peer_status(member.ann.wg_key_at(self.clock()))
        if stats is not None and stats.peer.endpoint is not None:
            self.transport.confirm_neighbour(stats.peer.endpoint)

    def _send_held(self, ready: frozenset[str] | None = None) -> None:
        """Send the held traffic; with `ready`, overlay traffic only to those addresses (the
        rest stays held)."""
        assert self.transport is not None
        keep = []
        for out in self._held:
            if (
                ready is not None
                and out.channel is not Channel.UNDERLAY
                and _canonical_host(out.destination[0]) not in ready
            ):
                keep.append(out)
            elif out.channel is Channel.STREAM:
                self.transport.send_stream(out.destination, out.data)
            else:
                self.transport.send(out.destination, out.data)
        self._held = keep

    async def _apply_now(self) -> None:
        assert self.dataplane is not None and self.reconciler is not None
        assert self.core is not None
        try:
            while True:
                self._apply_again = False
                if self._read_before_apply:
                    self._read_before_apply = False
                    await self.refresh()
                desired = self.desired_interface(self.core.live_members())
                self._last_desired = desired
                try:
                    await self.dataplane.apply_now(desired)
                    self._tunnelled = tunnelled_addresses(desired)
                except MeshError as exc:
                    log.warning("applying membership change to %s: %s", self.config.interface, exc)
                    self.reconciler.trigger()  # its own loop retries with back-off
                if not self._apply_again:
                    break
        finally:
            self._send_held()

    def _on_event(self, event: ms.Event) -> bool:
        if isinstance(event, ms.PeerJoined | ms.PeerUpdated | ms.PeerAlive):
            self._last_alive[event.announcement.node_id] = event.announcement.raw
        if (
            isinstance(event, ms.PeerJoined | ms.PeerUpdated)
            and event.announcement.next_wg_public_key is not None
        ):
            self._keys_changed.set()
        if isinstance(event, ms.MessageRejected):
            self.m_rejected.inc(reason=event.reason.value)
            if event.reason is Reject.PSK_MISMATCH:
                self._psk_refusal(event.detail)
                return False
            log.debug("rejected from %s: %s %s", event.source[0], event.reason.value, event.detail)
            return False
        if isinstance(event, ms.PeerJoined | ms.PeerDead | ms.PeerLeft):
            # Not in WireGuard yet, or on its way out: its traffic waits for the apply.
            gone = {_canonical_host(a) for a in event.announcement.cert.addresses}
            self._tunnelled = self._tunnelled - gone
        if isinstance(event, ms.PeerJoined):
            log.info(
                "peer %s joined (%s)", event.announcement.name, event.announcement.cert.addresses[0]
            )
        elif isinstance(event, ms.PeerUpdated):
            log.info("peer %s updated its announcement", event.announcement.name)
            # Its endpoints moved: the endpoint choice needs what WireGuard has learnt since
            # (roaming from the packet that brought the news), not the last periodic read.
            self._read_before_apply |= event.announcement.endpoints != event.previous.endpoints
        elif isinstance(event, ms.PairDegraded):
            log.warning(
                "pair with %s degraded: our direct probes fail while others reach it; repairing",
                self._member_name(event.node_id),
            )
            # Step 1 of the repair: perhaps we moved unnoticed (meshd.core.pairrepair).
            self._spawn(self._reannounce())
            asyncio.get_running_loop().call_soon(self._repair_pairs)
            return False
        elif isinstance(event, ms.PairRestored):
            log.info("pair with %s works directly again", self._member_name(event.node_id))
            return False
        elif isinstance(event, ms.HandshakeWanted):
            member = self.core.member(event.node_id) if self.core else None
            if member is not None and self.reconciler is not None:
                log.info("%s asks for a handshake; re-creating its peer", member.ann.name)
                self.reconciler.restart_handshakes({member.ann.wg_key_at(self.clock())})
            return False
        elif isinstance(event, ms.PeerSuspected):
            member = self.core.member(event.node_id) if self.core else None
            log.info("peer %s suspected", member.ann.name if member else key_id(event.node_id))
            return False  # still a WireGuard peer: nothing to apply or persist
        elif isinstance(event, ms.PeerAlive):
            log.info("peer %s refuted suspicion", event.announcement.name)
        elif isinstance(event, ms.PeerDead):
            log.warning("peer %s declared dead", event.announcement.name)
        elif isinstance(event, ms.PeerLeft):
            log.info("peer %s left", event.announcement.name)
        elif isinstance(event, ms.ClaimsIgnored):
            member = self.core.member(event.node_id) if self.core else None
            log.warning(
                "peer %s: its suspect/dead claims were refuted again and again; ignoring its "
                "claims for %.0f s",
                member.ann.name if member else key_id(event.node_id),
                event.until - self.clock(),
            )
            return False
        elif isinstance(event, ms.RevocationAdded):
            rev = event.revocation
            self._revoked_serials.add((rev.ca_key, rev.serial))
            self._revocations[(rev.ca_key, rev.serial)] = rev.raw
            log.warning("certificate serial %d revoked (%s)", rev.serial, rev.reason or "no reason")
            self._save_revocations()
        return True

    async def _timer_loop(self) -> None:
        assert self.core is not None
        while True:
            self._timer_changed.clear()
            delay = self.core.get_timer() - self.clock()
            if delay > 0:
                await wait_event(self._timer_changed, min(delay, 60.0))
                continue  # re-read the deadline: it may have moved
            assert self.transport is not None
            self.transport.read_pending()  # answers that arrived in time count as in time
            self.core.handle_timer(self.clock())
            self._after_core()

    # --- the data plane -----------------------------------------------------------------------

    def _choose_gateways(self, live: list[Announcement]) -> dict[bytes, list[Prefix]]:
        """Which advertised prefixes go to which member (meshd.core.routes); logs changes."""
        assert self.core is not None
        me = self.node.identity.public
        offers = []
        for ann in live:
            if ann.node_id == me or not ann.prefixes:
                continue
            member = self.core.member(ann.node_id)
            offers.append(
                GatewayOffer(
                    ann.node_id,
                    tuple(as_prefix(p) for p in ann.prefixes),
                    member is not None and member.state is MemberState.ALIVE,
                    self.core.rtt(ann.node_id),
                )
            )
        if not offers and not self._gateways:
            return {}  # most meshes: nobody advertises anything, nothing to undo
        underlay = [
            ipaddress.ip_address(host)
            for ann in [*live, self.core.announcement]
            for host, _port in ann.endpoints
        ]
        choice = choose_gateways(
            offers, self.route_policy, underlay, self._gateways, time.monotonic()
        )
        names = {ann.node_id: ann.name for ann in live}
        for prefix, node_id in choice.gateways.items():
            if prefix not in self._gateways or self._gateways[prefix].node_id != node_id:
                log.info("routing %s through %s", prefix, names.get(node_id, key_id(node_id)))
        for prefix in self._gateways.keys() - choice.gateways.keys():
            log.info("no longer routing %s through the mesh", prefix)
        refused = {r.prefix: r.reason for r in choice.refused}
        for prefix, reason in refused.items():
            if self._refused.get(prefix) != reason:
                log.warning("not routing %s through the mesh: %s", prefix, reason)
        self._gateways, self._refused = choice.held, refused
        self._gateway_rtt = {o.node_id: o.rtt for o in offers}
        by_member: dict[bytes, list[Prefix]] = {}
        for prefix, node_id in choice.gateways.items():
            by_member.setdefault(node_id, []).append(prefix)
        return by_member

    def desired_interface(self, live: list[Announcement]) -> MeshInterface:
        """The whole interface as it should be: our key, port and addresses, and one WireGuard
        peer per live member with AllowedIPs from its certificate's addresses plus the
        advertised prefixes we route through it (one gateway per prefix, `_choose_gateways`)."""
        now = self.clock()
        me = self.node.identity.public
        psk = self.psk.active(now) if self.psk else None
        peers = []
        live = self._without_key_conflicts(live)
        routed = self._choose_gateways(live) if self.core is not None else {}
        live_ids = {ann.node_id for ann in live}
        for gone in set(self._endpoint_choice) - live_ids:
            del self._endpoint_choice[gone]
        own_wg_key = self._own_wg_key(now)
        recheck_in = math.inf  # a pending move or a handshake restart is due then
        restart: set[bytes] = set()  # peers to re-create for a first handshake
        reconciler = self.reconciler
        for ann in live:
            if ann.node_id == me:
                continue
            wg_key = ann.wg_key_at(now)
            stats = self._peer_status(wg_key)
            choice = self._endpoint_choice.setdefault(ann.node_id, EndpointChoice())
            endpoint = choice.update(
                preferred_order(ann.endpoints, self._local_networks),
                _handshake_age(stats, now),
                stats.peer.endpoint if stats else None,
                now,
            )
            allowed = list(_networks(ann.cert.addresses))
            allowed += routed.get(ann.node_id, [])
            if endpoint is not None and reconciler and choice.restarts < RESTART_HANDSHAKE_TIMES:
                restart_in = handshake_restart_in(
                    own_wg_key.public, wg_key, reconciler.added_for(wg_key),
                    _handshake_age(stats, now),
                )  # fmt: skip
                if restart_in == 0.0 and reconciler.restart_pending(wg_key):
                    restart_in = RESTART_HANDSHAKE_AFTER_S  # asked for; look again once done
                if restart_in == 0.0:
                    choice.restarts += 1
                    restart.add(wg_key)
                elif restart_in is not None:
                    recheck_in = min(recheck_in, restart_in)
            if choice.switch_at is not None:
                recheck_in = min(recheck_in, max(0.0, choice.switch_at - now))
            peers.append(
                WgPeer(
                    public_key=wg_key,
                    endpoint=endpoint,
                    allowed_ips=tuple(allowed),
                    persistent_keepalive=self.config.persistent_keepalive,
                    preshared_key=psk.pair_psk(me, ann.node_id) if psk else None,
                )
            )
        # The mark lets policy rules keep WireGuard's own packets out of an exit route.
        device = WgDevice(own_wg_key.private, self.config.listen_port, tuple(peers), MESHD_FWMARK)
        if reconciler is not None:
            if restart:
                reconciler.restart_handshakes(restart)
            if recheck_in < math.inf:
                self._recompute_soon(recheck_in)
        addresses = tuple(
            ipaddress.ip_interface(f"{a}/{128 if ipaddress.ip_address(a).version == 6 else 32}")
            for a in self.node.cert.addresses
        )
        return MeshInterface.with_peer_routes(
            self.config.interface, device, addresses, self.config.mtu
        )

    def _without_key_conflicts(self, live: list[Announcement]) -> list[Announcement]:
        """`live` without the members that announce a WireGuard key we or another member hold
        (meshd.core.keyclaims); each new conflict is counted and logged once."""
        own_keys = [self.wg_key.public] + ([self.next_wg[0].public] if self.next_wg else [])
        known = [m.ann for m in self.core.members()] if self.core is not None else []
        plan = self.key_claims.plan(self.node.identity.public, own_keys, live, known)
        for conflict in plan.fresh:
            self.m_rejected.inc(reason=Reject.CONFLICT.value)
            names = {ann.node_id: ann.name for ann in live}
            holder = conflict.holder
            log.warning(
                "WireGuard key %s is announced by %s; held by %s: leaving %s out",
                key_id(conflict.key),
                ", ".join(names.get(n, key_id(n)) for n in conflict.left_out),
                "us" if holder == self.node.identity.public
                else "nobody first" if holder is None
                else names.get(holder, key_id(holder)),
                "them" if len(conflict.left_out) > 1 else "it",
            )  # fmt: skip
        self._key_left_out = plan.left_out
        return [ann for ann in live if ann.node_id not in plan.left_out]

    async def refresh(self) -> None:
        """Current WireGuard handshake times and counters for status, peers and metrics; a
        wedged backend delays the answer by at most a second, then the last figures are used."""
        if self.dataplane is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.dataplane.refresh_status()

    def _peer_status(self, wg_public_key: bytes) -> PeerStatus | None:
        return self.reconciler.peer_status.get(wg_public_key) if self.reconciler else None

    def _wireguard_exited(self, ifname: str) -> None:
        log.warning("wireguard-go for %s exited; restarting it and re-applying state", ifname)
        if self.reconciler is not None:
            # The new wireguard-go knows no endpoint WireGuard had learnt: every peer gets its
            # announced one again (a fresh choice; the old handshakes are gone with it).
            self.reconciler.peer_status = {}
            self._endpoint_choice.clear()
            if self.core is not None and self.dataplane is not None:
                self._update_desired()
            self.reconciler.trigger()

    def _recompute_soon(self, delay: float) -> None:
        """Recompute the desired state in `delay` s (a pending move or a handshake restart is
        due), sooner than the periodic pass (ENDPOINT_PERIOD_S)."""
        loop = asyncio.get_running_loop()
        if self._recompute_timer is not None:
            if self._recompute_timer.when() <= loop.time() + delay:
                return  # the pending one is sooner; it schedules the next if still needed
            self._recompute_timer.cancel()

        def due() -> None:
            self._recompute_timer = None
            task = loop.create_task(self._recompute())
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

        self._recompute_timer = loop.call_later(delay, due)

    async def _recompute(self) -> None:
        # What WireGuard reports now: whether it roamed decides a pending move.
        await self.refresh()
        if self.dataplane is not None and self.core is not None:
            self._update_desired()

    def _update_desired(self) -> None:
        assert self.dataplane is not None and self.core is not None
        desired = self.desired_interface(self.core.live_members())
        if desired != self._last_desired:  # a pass at 1,000 peers costs ~0.2 s: only on change
            self._last_desired = desired
            self.dataplane.set_desired(desired)

    async def _desired_loop(self) -> None:
        """Recompute the desired interface periodically (see ENDPOINT_PERIOD_S); membership
        changes are applied at once, in `_apply_now`."""
        assert self.dataplane is not None
        while True:
            await asyncio.sleep(ENDPOINT_PERIOD_S)
            await self.dataplane.refresh_status()
            self._update_desired()
            self._repair_pairs()

    # --- keys that rotate: pair PSK epochs, PSK secret roll, WireGuard key ---------------------

    def _own_wg_key(self, now: float) -> WireGuardKey:
        if self.next_wg is not None and now * 1000 >= self.next_wg[1]:
            return self.next_wg[0]
        return self.wg_key

    def _begin_rotation(self, now: float) -> int:
        """Create the next WireGuard key, persist it with its switch time, announce both."""
        assert self.core is not None
        if self._left:
            raise MeshError("rotating the WireGuard key: this node left the mesh")
        if self.next_wg is not None:
            return self.next_wg[1]  # one rotation at a time; this one is already announced
        key = WireGuardKey(os.urandom(32))
        at = now + WG_KEY_LEAD_S
        if self.psk is not None:
            at = self.psk.clear_of_changes(at, *WG_KEY_SWITCH_CLEAR_S)
        at_ms = int(at * 1000)
        self.store.save_next_wireguard_key(key, at_ms)  # before announcing: survives a crash
        self.next_wg = (key, at_ms)
        self.core.update_self(now, next_wg_public_key=key.public, next_wg_key_at=at_ms)
        self._after_core()
        self._persist_wanted.set()
        self._keys_changed.set()
        log.info("WireGuard key rotation: next key %s announced, switching in %.1f s",
                 key_id(key.public), at - now)  # fmt: skip
        return at_ms

    async def _finish_rotation(self, now: float) -> None:
        """Our switch time came: the device takes the new key (desired_interface already uses
        it), then we announce it as current, which tells late peers to switch too."""
        assert self.core is not None and self.next_wg is not None
        await self._apply_keys()
        key = self.next_wg[0]
        self.store.finish_wireguard_rotation(key)
        self.wg_key, self.next_wg = key, None
        if not self._left:
            self.core.update_self(now, wg_public_key=key.public)
            self.core.tell_underlay(now)  # gossip would wait in the tunnel for the new key
            self._after_core()
        self._persist_wanted.set()
        log.info("WireGuard key rotation: switched to %s", key_id(key.public))

    def _key_deadline(self, now: float) -> float:
        """The next moment something about keys changes: our switch, a peer's switch, a PSK
        epoch or secret activation, or our scheduled rotation."""
        times = [now + 60.0]
        if not self._left:
            times.append(self.node.cert.not_after - CERT_LEAVE_MARGIN_S)
        if self.next_wg is not None:
            times.append(self.next_wg[1] / 1000)
        elif (due := self._rotation_due_at()) is not None:
            times.append(due)
        if self.psk is not None:
            times.append(self.psk.next_change(now))
        if self.core is not None:
            lag = PEER_SWITCH_LAG_MS / 1000
            times += [
                ann.next_wg_key_at / 1000 + lag
                for ann in self.core.live_members()
                if ann.next_wg_public_key is not None and ann.next_wg_key_at / 1000 + lag > now
            ]
        return min(times)

    async def _key_loop(self) -> None:
        # Woken early (a rotation began, a peer announced one) or at the deadline: either way
        # act on whatever is due now (`at_deadlines` never plans past a deadline not acted on).
        changed = self._keys_changed
        await at_deadlines(self._key_deadline, self._keys_pass, self.clock, changed, "keys")

    async def _keys_pass(self, now: float) -> None:
        if not self._left and now >= self.node.cert.not_after - CERT_LEAVE_MARGIN_S:
            log.error(
                "certificate serial %d expires at %s: leaving the mesh (renew it with "
                "meshctl cert issue, then restart meshd)",
                self.node.cert.serial,
                time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.node.cert.not_after)),
            )
            await self.leave()
        self._ratchet_psk(now)
        if self.next_wg is not None and now * 1000 >= self.next_wg[1]:
            await self._finish_rotation(now)
        elif (due := self._rotation_due_at()) is not None and now >= due:
            self._begin_rotation(now)
        # Handed to the reconciler, not awaited: a slow pass must not hold up the next key
        # deadline (the ratchet write, a secret activation).
        self._update_desired()

    def _rotation_due_at(self) -> float | None:
        """When our scheduled WireGuard key rotation is due (none while one is in progress,
        when rotation is off, or after we left)."""
        if self.next_wg is not None or not self.config.wg_key_rotation_s or self._left:
            return None
        return self.store.wireguard_key_since() + self.config.wg_key_rotation_s

    async def _apply_keys(self) -> None:
        """Apply the desired interface now (a key or PSK changed at this instant)."""
        if self.dataplane is None or self.core is None:
            return
        desired = self.desired_interface(self.core.live_members())
        self._last_desired = desired
        try:
            await self.dataplane.apply_now(desired)
            self._tunnelled = tunnelled_addresses(desired)
        except MeshError as exc:
            log.warning("applying new keys to %s: %s", self.config.interface, exc)
            if self.reconciler is not None:
                self.reconciler.trigger()

    def _ratchet_psk(self, now: float) -> None:
        """Advance the PSK secrets to the epoch of `now` and write them back, so the file never
        holds a key from which an earlier epoch's PSKs could be derived."""
        if self.psk is None:
            return
        ratcheted = self.psk.ratcheted(now)
        if ratcheted == self.psk:
            return
        old_ids = self.psk.ids
        self.psk = ratcheted
        try:
            keyfiles.rewrite_secret(Path(self.config.psk_file), ratcheted.to_text().encode())
            self._psk_write_failed = False
        except OSError as exc:
            if not self._psk_write_failed:
                log.warning("cannot advance the PSK ratchet in %s (%s): the file still holds an "
                            "earlier epoch's key", self.config.psk_file, exc.strerror)  # fmt: skip
            self._psk_write_failed = True
        if ratcheted.ids != old_ids:
            self._psk_ids_changed(ratcheted)

    def _psk_ids_changed(self, psk: PskSecrets | None) -> None:
        ids = psk.ids if psk else ()
        self.verifier.psk_ids = ids
        if self.core is not None and not self._left:
            self.core.update_self(self.clock(), psk_ids=ids)
            self._after_core()
        log.info("mesh PSK secrets now %s", ", ".join(i.hex() for i in ids) or "none")

    def _reload_psk(self) -> None:
        if not self.config.psk_file:
            return
        try:
            psk = load_psk(Path(self.config.psk_file))
        except StartupError as exc:
            log.error("reload refused, keeping the current PSK secrets: %s", exc)
            return
        old_ids = self.psk.ids if self.psk else ()
        if psk.ids == old_ids:
            log.info("reload: PSK secrets unchanged")
            return
        self.psk = psk
        self._ratchet_psk(self.clock())
        if self.psk.ids != old_ids:
            self._psk_ids_changed(self.psk)
        self._keys_changed.set()

    def _psk_refusal(self, detail: str) -> None:
        name = detail.split("'")[1] if detail.count("'") >= 2 else "?"
        now = self.clock()
        last = self._psk_refused.get(name)
        if last is None or now - last[1] > 60.0:  # one line a minute per peer, not per packet
            log.warning("refusing peer %s: %s", name, detail)
        self._psk_refused[name] = (detail, now)

    def _psk_status(self) -> dict[str, Any] | None:
        if self.psk is None:
            return None
        now = self.clock()
        chain = self.psk.active(now)
        return {
            "secret_ids": [i.hex() for i in self.psk.ids],
            "active_id": chain.secret_id.hex(),
            "period_s": chain.period,
            "epoch": chain.epoch,
            "next_change_at": self.psk.next_change(now),
        }

    # --- persistence and supervision ------------------------------------------------------------

    def _save_state(self) -> None:
        """Persist our version and the last ALIVE announcement of every member the core still
        knows, tombstones included: after every node restarts at once (each having seen the
        others leave), these are the contacts the mesh re-forms through. A tombstone's expiry
        in the core drops it from here too."""
        if self.core is None:
            return
        known = {m.ann.node_id for m in self.core.members()}
        # A member left out for announcing a key another holds is no restart contact: after a
        # restart it would come back together with the holder, and neither could be told to
        # have held the key first (meshd.core.keyclaims).
        peers = [
            raw
            for node_id, raw in self._last_alive.items()
            if node_id in known and node_id not in self._key_left_out
        ]
        self._contacts_saved = self.core.contacts_changed
        try:
            self.store.save_version(self.core.announcement.version)
            self.store.save_peers(peers)
            self.store.save_contacts(self.core.contacts())
        except OSError as exc:
            log.error("saving state to %s: %s", self.config.state_dir, exc)

    def _save_revocations(self) -> None:
        try:
            self.store.save_revocations(sorted(self._revocations.values()))
        except OSError as exc:
            log.error("saving revocations to %s: %s", self.config.state_dir, exc)

    async def _persist_loop(self) -> None:
        while True:
            await self._persist_wanted.wait()
            await asyncio.sleep(PERSIST_DELAY_S)
            self._persist_wanted.clear()
            self._save_state()

    def _loop_failed(self, what: str) -> None:
        self.m_loop_failures.inc(loop=what)

    async def _lag_loop(self) -> None:
        """How late a 100 ms timer fires: the longest the event loop was blocked, give or take
        the interval (exported as `meshd_loop_lag_max_seconds`, the largest since start, and
        `meshd_loop_lag_seconds`, the last). A stall of the loop is what starves probes into
        false suspicions (issue #22: floods, stream bombs)."""
        interval = 0.1
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval)
            lag = max(0.0, time.monotonic() - start - interval)
            self.m_loop_lag.set(lag)
            if lag > self.m_loop_lag_max.get():
                self.m_loop_lag_max.set(lag)

    async def _watchdog_loop(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # --- the local API (meshd.api.Control) -------------------------------------------------------

    def _define_metrics(self) -> None:
        m = self.registry
        self.m_rejected = m.counter("meshd_rejected_messages_total", "Messages refused, by reason.")
        self.m_loop_failures = m.counter(
            "meshd_loop_failures_total", "Failed passes of the daemon's loops (each runs again)."
        )
        self.m_loop_lag = m.gauge(
            "meshd_loop_lag_seconds", "How late the last 100 ms timer of the event loop fired."
        )
        self.m_loop_lag_max = m.gauge(
            "meshd_loop_lag_max_seconds",
            "Longest lateness of a 100 ms event-loop timer since start: the longest stall.",
        )
        passes = m.counter("meshd_reconcile_passes_total", "Data plane reconciliation passes.")
        peers = m.gauge("meshd_peers", "Members by membership state.")
        handshake = m.gauge(
            "meshd_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake, per peer.",
        )
        msgs = m.counter("meshd_gossip_messages_total", "Membership messages, by direction.")
        nbytes = m.counter("meshd_gossip_bytes_total", "Membership bytes, by direction.")
        cert_left = m.gauge(
            "meshd_certificate_expiry_seconds", "Seconds until this node's certificate expires."
        )
        health = m.gauge("meshd_local_health", "Lifeguard local health score (0 is healthy).")
        merges = m.counter(
            "meshd_mesh_merges_total",
            "Joins of another mesh of our CA found at a seed address or old contact.",
        )
        checks = m.counter(
            "meshd_mesh_checks_total", "Checks of seed addresses and old contacts for another mesh."
        )
        degraded = m.gauge(
            "meshd_degraded_pairs",
            "Live members we reach only through others (direct probes fail): repairs under way.",
        )
        split = m.gauge(
            "meshd_split_suspected",
            "Seed addresses and contacts answering from a node outside our mesh (a split).",
        )

        def collect() -> None:
            now = self.clock()
            cert_left.set(self.node.cert.not_after - now)
            if self.core is None:
                return
            peers.clear()
            for state in MemberState:
                if state is not MemberState.UNKNOWN:
                    peers.set(0, state=state.name.lower())
            for member in self.core.members():
                peers.inc(state=member.state.name.lower())
            handshake.clear()
            for view in self.peers():
                if view["handshake_age_s"] is not None:
                    handshake.set(view["handshake_age_s"], peer=view["name"])
            stats = self.core.stats
            msgs.set(stats.get("sent_msgs", 0), direction="out")
            msgs.set(stats.get("recv_msgs", 0), direction="in")
            nbytes.set(stats.get("sent_bytes", 0), direction="out")
            nbytes.set(stats.get("recv_bytes", 0), direction="in")
            health.set(self.core.health)
            merges.set(stats.get("merges", 0))
            checks.set(stats.get("mesh_checks", 0))
            split.set(len(self.core.split_suspected()))
            degraded.set(len(self.core.degraded()))
            if self.reconciler is not None:
                passes.set(self.reconciler.passes)

        m.on_collect(collect)

    def metrics(self) -> str:
        return self.registry.render()

    def peers(self) -> list[dict[str, Any]]:
        if self.core is None:
            return []
        now = self.clock()
        out = []
        degraded = self.core.degraded()
        for member in self.core.members():
            ann = member.ann
            stats = self._peer_status(ann.wg_key_at(now))
            endpoint = stats.peer.endpoint if stats else None
            since = degraded.get(ann.node_id)
            repair = self.pair_repairs.get(ann.node_id) if since is not None else None
            out.append(
                {
                    "name": ann.name,
                    "node_id": keyfiles.encode_key(ann.node_id).decode().strip(),
                    "overlay_addresses": list(ann.cert.addresses),
                    "state": member.state.name.lower(),
                    "version": ann.version,
                    "wg_public_key": _key_text(ann.wg_key_at(now)),
                    "endpoints": [_endpoint_text(e) for e in ann.endpoints],
                    "endpoint": _endpoint_text(endpoint) if endpoint else None,
                    "handshake_age_s": _handshake_age(stats, now),
                    "rx_bytes": stats.rx_bytes if stats else 0,
                    "tx_bytes": stats.tx_bytes if stats else 0,
                    "rtt_ms": _ms(self.core.rtt(ann.node_id)),
                    "prefixes": list(ann.prefixes),
                    "degraded_for_s": None if since is None else round(now - since, 1),
                    "repair": None
                    if repair is None or repair.step is None
                    else f"{repair.step.value} (attempt {repair.attempts})",
                }
            )
        return out

    def _member_name(self, node_id: bytes) -> str:
        member = self.core.member(node_id) if self.core is not None else None
        return member.ann.name if member is not None else key_id(node_id)

    def warnings(self) -> list[str]:
        out = []
        left = self.node.cert.not_after - self.clock()
        if left < 14 * 86400:
            out.append(
                f"certificate expires in {left / 86400:.1f} days; renew it "
                "(meshctl cert issue) and send SIGHUP"
            )
        now = self.clock()
        for name, (why, when) in sorted(self._psk_refused.items()):
            if now - when < PSK_REFUSAL_SHOWN_S:
                out.append(f"refusing peer {name}: {why}")
        for split in self.split():
            out.append(
                f"mesh may be split: {split['address']} answers as {split['node']}, in a mesh of "
                f"{split['members']} that is not ours, for {split['for_s']:.0f} s (merging)"
            )
        return out

    def split(self) -> list[dict[str, Any]]:
        """Seed addresses and contacts that answer from another mesh (`status`, warnings)."""
        if self.core is None:
            return []
        now = self.clock()
        return [
            {
                "address": _endpoint_text(s.address),
                "node": self._member_name(s.node_id),
                "members": s.members,
                "for_s": round(now - s.since, 1),
            }
            for s in self.core.split_suspected()
        ]

    def health(self) -> tuple[bool, str]:
        if self.core is None:
            return False, "starting"
        if self._left:
            return False, "left the mesh"
        live = [p for p in self.peers() if p["state"] in ("alive", "suspect")]
        fresh = [
            p
            for p in live
            if p["handshake_age_s"] is not None and p["handshake_age_s"] < STALE_HANDSHAKE_S
        ]
        direct = [p for p in fresh if p["degraded_for_s"] is None]
        degraded = sum(1 for p in live if p["degraded_for_s"] is not None)
        if fresh and not direct:
            # It reaches members only through others: a restart (a new container) is more
            # likely to help than waiting (docs/operations.md, "Health").
            return False, f"no peer reachable directly ({degraded} of {len(live)} degraded)"
        if fresh:
            if degraded:
                return True, (
                    f"{len(direct)} of {len(live)} peers reachable directly, {degraded} degraded "
                    "(see meshctl status)"
                )
            # A suspected split keeps the node healthy: it reaches its peers, restarting it
            # would not merge anything, and the merge runs by itself (docs/operations.md).
            split = " (mesh may be split: see meshctl status)" if self.split() else ""
            return True, f"{len(fresh)} of {len(live)} peers reachable{split}"
        if not live and not self.config.seeds:
            return True, "first node: no seeds configured and no peers yet"
        return False, f"no peer reachable ({len(live)} known)"

    def status(self) -> dict[str, Any]:
        assert self.core is not None
        me = self.core.announcement
        healthy, _ = self.health()
        return {
            "node": {
                "name": self.node.cert.name,
                "mesh": self.config.mesh,
                "node_id": keyfiles.encode_key(self.node.identity.public).decode().strip(),
                "overlay_addresses": list(self.node.cert.addresses),
                "wg_public_key": _key_text(self._own_wg_key(self.clock()).public),
                "wg_next_key": _key_text(self.next_wg[0].public) if self.next_wg else None,
                "wg_next_key_at": self.next_wg[1] / 1000 if self.next_wg else None,
                "psk": self._psk_status(),
                "interface": self.config.interface,
                "backend": self.backend.kind if self.backend else "none",
                "listen_port": self.config.listen_port,
                "meshd_port": self.config.meshd_port,
                "endpoints": [_endpoint_text(e) for e in me.endpoints],
                "version": me.version,
                "certificate_serial": self.node.cert.serial,
                "certificate_expires_at": self.node.cert.not_after,
                "local_health": self.core.health,
                "routes": {
                    str(prefix): {
                        "gateway": self._member_name(held.node_id),
                        "rtt_ms": _ms(self._gateway_rtt.get(held.node_id)),
                    }
                    for prefix, held in self._gateways.items()
                },
                "routes_refused": {str(p): reason for p, reason in self._refused.items()},
            },
            "connected": healthy,
            "split": self.split(),
            "warnings": self.warnings(),
            "peers": self.peers(),
        }

    async def rotate(self) -> dict[str, Any]:
        """`meshctl rotate`: announce a new WireGuard key now; switch WG_KEY_LEAD_S later."""
        pending = self.next_wg is not None
        at_ms = self._begin_rotation(self.clock())
        when = time.strftime("%H:%M:%S UTC", time.gmtime(at_ms / 1000))
        what = "a rotation is already under way" if pending else "new WireGuard key announced"
        return {
            "message": f"{what}; switching at {when}",
            "next_key": _key_text(self.next_wg[0].public) if self.next_wg else None,
            "switch_at": at_ms / 1000,
        }

    async def apply_revocation(self, record: bytes) -> dict[str, Any]:
        assert self.core is not None
        try:
            rev = decode_revocation(record)
            check_revocation(rev, self.node.trust)
        except RemoteProtocolError as exc:
            raise MeshError(f"revocation refused: {exc}") from None
        self.core.add_revocation(rev, self.clock())
        self._after_core()
        return {"message": f"revocation of serial {rev.serial} applied and spreading"}

    # --- signals -----------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the PSK file and the certificate again; a renewed certificate or a new
        set of PSK secrets is announced at once."""
        self._reload_psk()
        try:
            node = load_identity(self.config)
        except StartupError as exc:
            log.error("reload refused, keeping the current certificate: %s", exc)
            return
        if node.cert.raw == self.node.cert.raw:
            log.info("reload: certificate unchanged")
            return
        self.node = node
        assert self.core is not None
        if self._left:
            log.warning("reload: certificate serial %d loaded, but this node left the mesh; "
                        "restart meshd to join again", node.cert.serial)  # fmt: skip
            return
        self.core.update_self(self.clock(), certificate=node.cert)
        self._after_core()
        self._keys_changed.set()  # a new expiry time
        log.info(
            "reload: certificate serial %d (valid until %s) announced",
            node.cert.serial,
            time.strftime("%Y-%m-%d", time.gmtime(node.cert.not_after)),
        )


def _log_task_failure(task: asyncio.Task[None]) -> None:
    """A daemon loop ended by an exception is a bug: say so at once, with the traceback."""
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


def _key_text(key: bytes) -> str:
    return keyfiles.encode_key(key).decode().strip()


def _endpoint_text(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tunnelled_addresses(desired: MeshInterface) -> frozenset[str]:
    """The overlay host addresses (canonical text) an applied interface has a peer for."""
    return frozenset(
        str(net.network_address)
        for peer in desired.device.peers
        for net in peer.allowed_ips
        if net.prefixlen == net.max_prefixlen
    )


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=65536)
def _canonical_host(host: str) -> str:
    # Cached: asked for every datagram held during an apply, for the same few addresses.
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@functools.lru_cache(maxsize=65536)
def _networks(addresses: tuple[str, ...]) -> tuple[Prefix, ...]:
    # Cached: every desired-state pass asks for every member's, and parsing is most of its cost.
    return tuple(ipaddress.ip_network(a) for a in addresses)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _handshake_age(stats: PeerStatus | None, now: float) -> float | None:
    if stats is None or stats.last_handshake is None:
        return None
    return max(0.0, now - stats.last_handshake)


async def run(config: Config) -> int:
    try:
        node = load_identity(config)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    loop = asyncio.get_running_loop()
    daemon = Daemon(config, node)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
    except (MeshError, OSError) as exc:
        log.error("cannot start: %s", exc)
        await daemon.stop()
        return 1
    try:
        await daemon.stop_requested.wait()
        log.info("stopping")
    finally:
        await daemon.stop()
    return 0 if daemon.clean_stop else 1


_M_ARENA_MAX = -8  # glibc <malloc.h>


def use_one_malloc_arena() -> bool:
    """Ask glibc for a single malloc arena; True when it agreed.

    meshd runs Python in one thread, but a few helper threads (importing the API, DNS lookups)
    would each get an arena of their own, and their fragments stay resident: ~2 MB of the
    daemon's ~50 MB (measured with MALLOC_ARENA_MAX=1). Must run before any thread starts."""
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        return False


def main(argv: list[str] | None = None) -> int:
    use_one_malloc_arena()
    parser = argparse.ArgumentParser(prog="meshd", description="WireGuard mesh daemon.")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML config file (default: $MESHD_CONFIG or {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--help-config", action="store_true", help="list every config field")
    args = parser.parse_args(argv)
    if args.help_config:
        print(markdown_table(), end="")
        return 0
    path = args.config or Path(os.environ.get("MESHD_CONFIG", DEFAULT_CONFIG_PATH))
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"meshd: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_level)
    return uvloop.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
