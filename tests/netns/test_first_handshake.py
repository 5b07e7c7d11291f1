"""Two real wireguard-go that configure each other as two daemons do that learn of each other
from the same gossip after a partition healed: at once (both initiate, and may cross), or one
a moment after the other (whose first initiation is then dropped). The smaller key's retry
(`handshake_restart_in`) gives them a session within about a second, never after WireGuard's
own 5 s retry."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import pytest

from meshd.core.endpoints import (
    RESTART_HANDSHAKE_AFTER_S,
    RESTART_HANDSHAKE_TIMES,
    handshake_restart_in,
)
from meshd.core.identity import WireGuardKey
from meshd.core.wgplan import MeshInterface
from meshd.lab import Lab
from tests.netns.conftest import Node, full_mesh, make_nodes

pytestmark = pytest.mark.netns

TRIALS = 4
WIREGUARD_RETRY_S = 5.0


def desired(nodes: list[Node], me: Node, reach: bool) -> MeshInterface:
    """`me`'s interface as the daemon configures it; `reach`: with the peer's endpoint (else
    it cannot initiate, as when the peer is behind a NAT, and only answers)."""
    d = full_mesh(nodes, me)
    # The daemon's default keepalive: WireGuard initiates as soon as the peer is configured.
    peers = tuple(
        dataclasses.replace(p, persistent_keepalive=25, endpoint=p.endpoint if reach else None)
        for p in d.device.peers
    )
    return dataclasses.replace(d, device=dataclasses.replace(d.device, peers=peers))


async def drive(node: Node, nodes: list[Node], restarts: dict[bytes, int], reach: bool) -> bool:
    """One round of what the daemon does for `node`; True when it has a session."""
    status = await node.reconciler.backend.read("mesh0")
    peers = status.peers if status is not None else {}
    for key, peer in peers.items():
        age = None if not peer.last_handshake else time.time() - peer.last_handshake
        restart_in = handshake_restart_in(node.key.public, key, node.reconciler.added_for(key), age)
        if restart_in == 0.0 and restarts.get(key, 0) < RESTART_HANDSHAKE_TIMES:
            restarts[key] = restarts.get(key, 0) + 1
            node.reconciler.restart_handshakes({key})
    await node.reconciler.apply(desired(nodes, node, reach))
    return bool(peers) and all(p.last_handshake for p in peers.values())


@pytest.mark.parametrize("late", [0.0, 0.3], ids=["at-once", "one-late-behind-nat"])
async def test_nodes_configuring_each_other_get_a_session_without_the_retry(
    lab3: Lab, late: float
) -> None:
    """At once: both initiate, and when they cross, the smaller key's retry gives them a
    session. One late: the smaller key's first initiation reaches a WireGuard that does not
    know it yet and is dropped, and the late one cannot initiate (it has no endpoint that
    reaches the other: a NAT): only the retry can give them a session."""
    nodes = make_nodes(lab3, 2)
    try:
        for trial in range(TRIALS):
            for n in nodes:
                n.key = WireGuardKey(os.urandom(32))  # new peers: a first handshake each time
            first, second = sorted(nodes, key=lambda n: n.key.public)
            t0 = time.monotonic()
            restarts: list[dict[bytes, int]] = [{}, {}]
            done = [False, False]
            while not all(done):
                elapsed = time.monotonic() - t0
                assert elapsed < WIREGUARD_RETRY_S - 1, f"trial {trial}: no session after {elapsed}"
                done[0] = await drive(first, nodes, restarts[0], reach=True)
                if elapsed >= late:
                    done[1] = await drive(second, nodes, restarts[1], reach=not late)
                await asyncio.sleep(0.05)
            assert not restarts[1]  # the larger key never re-creates
            if late:
                assert sum(restarts[0].values()) >= 1
                assert time.monotonic() - t0 < late + RESTART_HANDSHAKE_AFTER_S + 2
    finally:
        for n in nodes:
            await n.reconciler.close()
