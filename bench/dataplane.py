"""Data-plane figures: applying 1,000 peers, and repair times of hand-made drift (root only).

    python -m bench dataplane --json [--peers 1000] [--repeat 5]

Everything runs in a throw-away namespace lab with real wireguard-go, rtnetlink and routes.
Repair times are medians over --repeat runs, measured from the moment the breaking command
returned until the interface is fully converged again (route back / interface configured /
wireguard-go restarted and configured), with the netlink monitor and the reconciler loop running
as in the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench._measure import cancel_on_signals
from meshd.adapters.netlink import NetlinkMonitor
from meshd.adapters.reconciler import Reconciler
from meshd.adapters.wireguard import UserspaceBackend
from meshd.core.identity import WireGuardKey
from meshd.core.wgplan import MeshInterface, WgDevice, WgPeer
from meshd.lab import Lab, LabHost, wait_for


def _peers(count: int) -> tuple[WgPeer, ...]:
    peers = []
    for i in range(count):
        key = WireGuardKey(os.urandom(32)).public
        v6 = ipaddress.ip_network(f"fd78::{i + 1:x}/128")
        v4 = ipaddress.ip_network(f"10.78.{(i + 1) // 256}.{(i + 1) % 256}/32")
        peers.append(WgPeer(key, (f"fd9b::{i + 1:x}", 51820), (v6, v4), os.urandom(32), 25))
    return tuple(peers)


def _desired(key: WireGuardKey, peers: tuple[WgPeer, ...]) -> MeshInterface:
    return MeshInterface.with_peer_routes(
        "mesh0",
        WgDevice(key.private, 51820, peers),
        (ipaddress.ip_interface("fd78::ffff/128"), ipaddress.ip_interface("10.78.255.254/32")),
    )


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def _has_route(host: LabHost, prefix: str) -> bool:
    r = await host.run("ip", "-6", "route", "show", prefix, "proto", "109", check=False)
    return "mesh0" in r.stdout


async def run(peer_count: int, repeat: int) -> dict[str, Any]:
    cancel_on_signals()
    figures: dict[str, Any] = {"peers": peer_count, "repeat": repeat}
    async with Lab(f"b{os.getpid() % 100000:05d}", hosts=1) as lab:
        host = lab[0]
        backend = host.userspace_backend()
        rec = Reconciler(backend, netns=host.netns)
        key = WireGuardKey(os.urandom(32))
        await rec.converge(_desired(key, ()))
        peers = _peers(peer_count)
        desired = _desired(key, peers)
        figures[f"apply_{peer_count}_peers_s"] = await _timed(lambda: rec.apply(desired))
        figures[f"noop_pass_{peer_count}_peers_s"] = await _timed(lambda: rec.apply(desired))
        assert rec.last_ops == [], "second pass over 1,000 peers changed something"
        figures[f"read_{peer_count}_peers_s"] = await _timed(lambda: backend.read("mesh0"))

        # The daemon's loop: monitor events trigger reconciler passes.
        rec.set_desired(desired)
        monitor = NetlinkMonitor("mesh0", host.netns)

        async def watch() -> None:
            async for _event in monitor.events():
                rec.trigger()

        tasks = [asyncio.create_task(rec.run()), asyncio.create_task(watch())]
        try:
            await asyncio.wait_for(monitor.ready.wait(), 10)
            await asyncio.wait_for(rec.converged.wait(), 30)
            probe = str(peers[0].allowed_ips[-1])  # an IPv6 /128 of the first peer

            async def converged_with_route() -> bool:
                return rec.converged.is_set() and await _has_route(host, probe)

            async def repair(breaker: Callable[[], Awaitable[Any]]) -> float:
                samples = []
                for _ in range(repeat):
                    rec.converged.clear()  # before breaking: a fast repair must not be missed
                    await breaker()
                    samples.append(await wait_for(converged_with_route, 30, "repair", 0.002))
                return statistics.median(samples)

            figures["repair_route_s"] = await repair(
                lambda: host.run("ip", "-6", "route", "del", probe, "dev", "mesh0")
            )
            figures["repair_interface_s"] = await repair(
                lambda: host.run("ip", "link", "del", "dev", "mesh0")
            )

            async def kill_wg() -> None:
                assert isinstance(backend, UserspaceBackend)
                pid = backend.pid("mesh0")
                assert pid is not None
                os.kill(pid, signal.SIGKILL)

            figures["repair_wireguard_go_s"] = await repair(kill_wg)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await rec.close()
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dataplane", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench dataplane: needs root (network namespaces)", file=sys.stderr)
        return 2
    figures = uvloop.run(run(args.peers, args.repeat))
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        for k, v in figures.items():
            print(f"{k:32} {v:.4f}" if isinstance(v, float) else f"{k:32} {v}")
    return 0
