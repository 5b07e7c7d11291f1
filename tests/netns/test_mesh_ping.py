"""Two and three namespaces configured only through backend + reconciler reach each other."""

from __future__ import annotations

import pytest

from meshd.lab import Lab
from tests.netns.conftest import full_mesh, make_nodes

pytestmark = pytest.mark.netns


@pytest.mark.parametrize(("count", "family"), [(2, 6), (3, 4)])
async def test_full_mesh_pings_over_v6_and_v4_overlay(lab3: Lab, count: int, family: int) -> None:
    nodes = make_nodes(lab3, count)
    try:
        for n in nodes:
            await n.reconciler.converge(full_mesh(nodes, n, family))
        # Every ordered pair, both overlay families.
        for a in nodes:
            for b in nodes:
                if a is not b:
                    await a.host.wait_ping(str(b.v6.ip), within=10)
                    await a.host.wait_ping(str(b.v4.ip), within=10)
        # Converged: a second pass changes nothing, and the handshakes are visible.
        for n in nodes:
            assert await n.reconciler.apply() == []
            assert len(n.reconciler.peer_status) == count - 1
        statuses = [await nodes[0].reconciler.backend.read("mesh0")]
        assert all(s is not None for s in statuses)
        assert all(
            p.last_handshake is not None and p.rx_bytes > 0
            for s in statuses
            if s is not None
            for p in s.peers.values()
        )
    finally:
        for n in nodes:
            await n.reconciler.close()
