"""The data plane as the daemon uses it: backend, reconciler, netlink monitor and resolver, wired.

    async with DataPlane(backend, netns=None) as dp:
        dp.set_desired(desired, named={peer_key: ("seed.example.org", 51820)})
        ...
        dp.peer_status            # handshake times and counters per peer

Wiring (one place, so the daemon cannot get it wrong):

* netlink `MeshInterfaceGone` / `MeshRoutesGone` -> reconciler pass (repair);
* netlink `UnderlayAddressesChanged` / `UnderlayLinkChanged` -> re-resolve names, and
  `on_netlink(event)` for the daemon (re-announce endpoints);
* wireguard-go exit -> reconciler pass (re-create, re-apply);
* peers whose endpoint is a name: the resolved address is put into the desired state; a changed
  address is applied at once; a peer without a handshake for longer than REJECT_AFTER_TIME +
  margin triggers a re-resolution of its name (checked every `stale_check` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from types import TracebackType

from meshd.adapters.netlink import (
    MeshInterfaceGone,
    MeshRoutesGone,
    NetlinkEvent,
    NetlinkMonitor,
)
from meshd.adapters.reconciler import Reconciler
from meshd.adapters.resolver import EndpointResolver, ResolveFn, system_resolve
from meshd.adapters.wireguard import PeerStatus, WireGuardBackend
from meshd.core.wgplan import MeshInterface, Op

log = logging.getLogger(__name__)


class DataPlane:
    """Keeps one mesh interface converged to the latest desired state."""

    def __init__(
        self,
        backend: WireGuardBackend,
        netns: str | None = None,
        *,
        period: float = 30.0,
        resolve: ResolveFn = system_resolve,
        resolve_period: float = 300.0,
        stale_check: float = 10.0,
        on_netlink: Callable[[NetlinkEvent], None] | None = None,
    ) -> None:
        self.reconciler = Reconciler(backend, netns=netns, period=period)
        self.resolver = EndpointResolver(self._on_resolved, resolve, period=resolve_period)
        self.netns = netns
        self.stale_check = stale_check
        self.on_netlink = on_netlink
        self.monitor: NetlinkMonitor | None = None
        self._desired: MeshInterface | None = None
        self._named: dict[bytes, tuple[str, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def peer_status(self) -> dict[bytes, PeerStatus]:
        return self.reconciler.peer_status

    async def refresh_status(self) -> None:
        await self.reconciler.refresh_status()

    def set_desired(
        self, desired: MeshInterface, named: dict[bytes, tuple[str, int]] | None = None
    ) -> None:
        """New desired state. `named` maps a peer's public key to a (DNS name, port) endpoint;
        those peers get the name's current address (or no endpoint until it resolves)."""
        self._remember(desired, named)
        self._push()

    async def apply_now(
        self, desired: MeshInterface, named: dict[bytes, tuple[str, int]] | None = None
    ) -> list[Op]:
        """Like `set_desired`, but apply in this task and return once applied (the daemon holds
        traffic to new peers until they are in WireGuard). Raises what a pass raises."""
        self._remember(desired, named)
        return await self.reconciler.apply(self._resolved(desired))

    def _remember(self, desired: MeshInterface, named: dict[bytes, tuple[str, int]] | None) -> None:
        self._desired = desired
        self._named = dict(named or {})
        for name, port in set(self._named.values()):
            self.resolver.watch(name, port)
        for name, port in set(self.resolver.watched) - set(self._named.values()):
            self.resolver.unwatch(name, port)

    def _push(self) -> None:
        if self._desired is None:
            return
        self.reconciler.set_desired(self._resolved(self._desired))

    def _resolved(self, desired: MeshInterface) -> MeshInterface:
        """`desired` with named endpoints replaced by their current addresses."""
        if self._named:
            peers = tuple(
                dataclasses.replace(p, endpoint=self.resolver.endpoint(*self._named[p.public_key]))
                if p.public_key in self._named
                else p
                for p in desired.device.peers
            )
            device = dataclasses.replace(desired.device, peers=peers)  # keeps key, port, mark
            desired = dataclasses.replace(desired, device=device)
        return desired

    def _on_resolved(self, name: str, port: int, endpoint: tuple[str, int]) -> None:
        self._push()

    async def _watch_netlink(self, monitor: NetlinkMonitor) -> None:
        async for event in monitor.events():
            if isinstance(event, MeshInterfaceGone | MeshRoutesGone):
                self.reconciler.trigger()
            else:
                self.resolver.trigger()
                if self.on_netlink is not None:
                    self.on_netlink(event)

    async def _watch_handshakes(self) -> None:
        while True:
            await asyncio.sleep(self.stale_check)
            status = self.reconciler.peer_status
            handshakes = {
                endpoint: status[key].last_handshake if key in status else None
                for key, endpoint in self._named.items()
            }
            await self.resolver.refresh_stale(handshakes, time.time())

    async def start(self) -> None:
        if self._desired is None:
            raise RuntimeError("starting the data plane: set_desired() first")
        # Resolve names before the first pass: configuring a peer without its endpoint first
        # costs a failed handshake attempt.
        await self.resolver.refresh_all(force=True)
        self.monitor = NetlinkMonitor(self._desired.name, self.netns)
        self._tasks = [
            asyncio.create_task(self.reconciler.run(), name="reconciler"),
            asyncio.create_task(self._watch_netlink(self.monitor), name="netlink-monitor"),
            asyncio.create_task(self.resolver.run(), name="resolver"),
            asyncio.create_task(self._watch_handshakes(), name="handshake-watch"),
        ]
        await self.monitor.ready.wait()

    async def stop(self, destroy: bool = True) -> None:
        """Stop the loops; `destroy` also removes the interface (wireguard-go is stopped)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if destroy:
            await self.reconciler.remove_exit_rules()
        await self.reconciler.close()
        if destroy and self._desired is not None:
            await self.reconciler.backend.destroy(self._desired.name)
        await self.reconciler.backend.close()

    async def __aenter__(self) -> DataPlane:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
