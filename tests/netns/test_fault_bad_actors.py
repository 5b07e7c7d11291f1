"""Bad actors against a live mesh of real daemons: a meshd whose certificate comes from another
CA, a join request carrying an expired certificate, and the replayed join request of a node
that has left. None is admitted, no member's state or WireGuard configuration changes, and each
refusal is counted under its reason. (Unit tests cover the same checks on the core alone,
tests/netns/test_daemon_junk.py covers malformed datagrams.)"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshd.adapters.store import StateStore
from meshd.ca import CertificateAuthority
from meshd.core import wire
from meshd.core.announce import AnnouncementVerifier, sign_announcement
from meshd.core.cert import TrustAnchor
from meshd.core.identity import SigningKey
from meshd.lab import Lab, wait_for
from meshd.meshlab import MESHD_PORT, MeshdNode, MeshLab

pytestmark = pytest.mark.netns

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for datagram in sys.argv[3:]:
    s.sendto(bytes.fromhex(datagram), (sys.argv[1], int(sys.argv[2])))
"""


def join_request(announcement: bytes) -> bytes:
    return wire.encode(wire.JoinRequest(os.urandom(8), announcement, 0, wire.MemberState.UNKNOWN))


async def rejected(node: MeshdNode, reason: str) -> float:
    line = f'meshd_rejected_messages_total{{reason="{reason}"}} '
    for text in (await node.client.metrics()).splitlines():
        if text.startswith(line):
            return float(text.rsplit(" ", 1)[1])
    return 0.0


async def membership(node: MeshdNode) -> list[tuple[Any, ...]]:
    status = await node.status()
    assert status is not None
    return sorted((p["name"], p["state"], p["version"]) for p in status["peers"])


async def test_foreign_ca_expired_certificate_and_replay_are_refused(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}fb", hosts=4) as lab:
        mesh = MeshLab(lab, tmp_path)
        nodes = [mesh.add_node(i, seeds=[0] if i else []) for i in range(3)]
        seed, member, leaver = nodes
        await mesh.start_mesh(nodes, within=40)

        # The leaver's last ALIVE announcement, as the others persisted it; then it leaves.
        trust = TrustAnchor(mesh.mesh, (mesh.ca.key.public,))
        store = StateStore(member.directory / "state")

        def persisted_alive() -> list[bytes]:
            verifier = AnnouncementVerifier(trust)
            now = time.time()
            return [r for r in store.peers() if verifier.verify(r, now).name == leaver.name]

        async def persisted() -> bool:
            return bool(persisted_alive())

        await wait_for(persisted, 10, "the member to persist its peers")
        [old_alive] = persisted_alive()
        assert await mesh.stop(leaver) == 0

        async def left_everywhere() -> bool:
            for n in (seed, member):
                if (leaver.name, "left") not in {(m[0], m[1]) for m in await membership(n)}:
                    return False
            return True

        await wait_for(left_everywhere, 10, "the leave to be seen")
        before = {n.name: await membership(n) for n in (seed, member)}
        wg_before = await mesh.wireguard_peer_names([seed, member])
        counts = {r: await rejected(seed, r) for r in ("unknown_ca", "cert_expired", "stale")}

        # 1. A real meshd with a certificate from another CA (that it trusts itself).
        rogue_ca = CertificateAuthority.init(tmp_path / "rogue-ca", mesh.mesh, force=True)
        rogue = mesh.add_node(3, seeds=[0], name="rogue", ca=rogue_ca)
        await mesh.start(rogue)
        await mesh.wait_api(rogue)

        async def rogue_refused() -> bool:
            return await rejected(seed, "unknown_ca") > counts["unknown_ca"]

        await wait_for(rogue_refused, 10, "the seed to refuse the rogue's join request")

        # 2. A join request with a certificate of the mesh's CA that expired an hour ago.
        identity = SigningKey(os.urandom(32))
        now = int(time.time())
        expired = mesh.ca.issue(
            name="expired", identity_key=identity.public, ipv4=None, ipv4_pool="100.64.0.0/16",
            prefixes=[], roles=[], not_before=now - 7200, not_after=now - 3600,
        )  # fmt: skip
        ann = sign_announcement(
            identity, expired, version=now * 1000, wg_public_key=os.urandom(32),
            endpoints=[(str(lab.hosts[3].underlay_v6.ip), 51820)], meshd_port=MESHD_PORT,
            issued_at=now * 1000,
        )  # fmt: skip
        # 3. The replayed join request of the node that left.
        # The replay goes first: once the expired one is counted, both have been handled (one
        # socket, in order), and a stale refusal may also come from ordinary gossip.
        datagrams = [join_request(old_alive).hex(), join_request(ann.raw).hex()]
        await lab.hosts[3].run(
            sys.executable, "-c", SEND, str(seed.host.underlay_v6.ip), str(MESHD_PORT), *datagrams
        )

        async def both_refused() -> bool:
            return await rejected(seed, "cert_expired") > counts["cert_expired"]

        await wait_for(both_refused, 10, "the seed to refuse the expired and replayed requests")
        assert await rejected(seed, "stale") > counts["stale"]
        assert {n.name: await membership(n) for n in (seed, member)} == before
        assert await mesh.wireguard_peer_names([seed, member]) == wg_before
        assert await rogue.wireguard_peers() == {}
        assert await mesh.unreachable_pairs([seed, member]) == []
        assert rogue.running and seed.running
        rogue.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
