"""Two real wireguard-go that configure each other at once, as two daemons that learn of each
other from the same gossip after a partition healed: the tie-break of `first_endpoint` gives
them a session at once or after its short deferral, never after WireGuard's 5 s retry (both
initiating collide)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import pytest

from meshd.core.endpoints import FIRST_HANDSHAKE_DEFER_S, first_endpoint
from meshd.core.identity import WireGuardKey
from meshd.core.wgplan import MeshInterface
from meshd.lab import Lab
from tests.netns.conftest import Node, full_mesh, make_nodes

pytestmark = pytest.mark.netns

TRIALS = 5
WIREGUARD_RETRY_S = 5.0


def desired(nodes: list[Node], me: Node, known_for: float) -> MeshInterface:
    """`me`'s interface as the daemon configures it `known_for` s after learning of the other."""
    d = full_mesh(nodes, me)
    peers = tuple(
        dataclasses.replace(
            p,
            persistent_keepalive=25,  # the daemon's default: initiates as soon as configured
            endpoint=first_endpoint(me.key.public, p.public_key, known_for, p.endpoint, True),
        )
        for p in d.device.peers
    )
    return dataclasses.replace(d, device=dataclasses.replace(d.device, peers=peers))


async def session_on_both(nodes: list[Node]) -> bool:
    for n in nodes:
        status = await n.reconciler.backend.read("mesh0")
        if status is None or not all(p.last_handshake for p in status.peers.values()):
            return False
    return True


async def test_nodes_configuring_each_other_at_once_get_a_session_without_the_retry(
    lab3: Lab,
) -> None:
    nodes = make_nodes(lab3, 2)
    try:
        for trial in range(TRIALS):
            for n in nodes:
                n.key = WireGuardKey(os.urandom(32))  # new peers: a first handshake each time
            t0 = time.monotonic()
            await asyncio.gather(*(n.reconciler.apply(desired(nodes, n, 0.0)) for n in nodes))
            deferred_done = False
            while not await session_on_both(nodes):
                elapsed = time.monotonic() - t0
                assert elapsed < WIREGUARD_RETRY_S - 1, f"trial {trial}: no session after {elapsed}"
                if not deferred_done and elapsed >= FIRST_HANDSHAKE_DEFER_S:
                    # The deferral is over: the larger key configures the endpoint; a peer that
                    # never had one is re-created by the plan, and initiates at once.
                    deferred_done = True
                    for n in nodes:
                        await n.reconciler.apply(desired(nodes, n, FIRST_HANDSHAKE_DEFER_S))
                await asyncio.sleep(0.02)
    finally:
        for n in nodes:
            await n.reconciler.close()
