"""Equal version, different content is a conflict, and the state hash covers content (issue #22,
finding 6; docs/decisions.md D24). Before: counted as a duplicate, and the state hash covered
only (node, version), so a node could show different endpoints to different peers for ever."""

from __future__ import annotations

import random

from meshd.core import wire
from meshd.core.announce import Announcement, sign_announcement
from meshd.core.errors import Reject
from meshd.core.membership import MeshNode, MessageRejected, PeerUpdated, _rank
from meshd.core.wire import AnnounceItem, Channel, Gossip
from tests.unit.nodes import MESHD_PORT, NOW, WG_PORT, Lab


def _twin(lab: Lab, i: int, ann: Announcement, host: str) -> Announcement:
    """Another announcement of host i with the same version: only i's key can sign it."""
    h = lab.host(i)
    return sign_announcement(
        h.identity, h.cert, version=ann.version, wg_public_key=ann.wg_public_key,
        endpoints=[(host, WG_PORT)], meshd_port=MESHD_PORT, issued_at=ann.issued_at,
    )  # fmt: skip


def _pair(lab: Lab, ann: Announcement) -> tuple[Announcement, Announcement]:
    """Two announcements of host 2 with one version, ordered (kept, loser)."""
    twin = _twin(lab, 2, ann, "192.0.2.77")
    return (ann, twin) if _rank(ann.raw) < _rank(twin.raw) else (twin, ann)


def test_equal_version_different_content_is_a_conflict_and_the_lower_rank_is_kept() -> None:
    lab = Lab(3)
    a, _b, c = lab.converged(3)
    low, high = _pair(lab, c.announcement)
    src = lab.source_of(1, Channel.OVERLAY)
    a.receive(wire.encode(Gossip((AnnounceItem(high.raw),))), src, NOW)
    a.events()
    a.receive(wire.encode(Gossip((AnnounceItem(high.raw),))), src, NOW)  # same bytes: duplicate
    assert a.events() == []
    held = a.member(c.node_id)
    assert held is not None
    if held.ann == high:  # a held the higher-ranked one: the lower one replaces it
        a.receive(wire.encode(Gossip((AnnounceItem(low.raw),))), src, NOW)
        assert a.events() == [MessageRejected(Reject.CONFLICT, src), PeerUpdated(low, high)]
    a.receive(wire.encode(Gossip((AnnounceItem(high.raw),))), src, NOW)
    assert a.events() == [MessageRejected(Reject.CONFLICT, src)]
    assert a.member(c.node_id).ann == low  # type: ignore[union-attr]
    assert a.stats["rejected.conflict"] >= 1


def test_the_state_hash_covers_content_and_the_old_hash_is_still_recognised() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    low, high = _pair(lab, c.announcement)
    hosts = [lab.host(i) for i in range(3)]
    anns = [a.announcement, b.announcement]
    a2 = MeshNode(lab.config, identity=hosts[0].identity, certificate=hosts[0].cert,
                  trust=lab.net.trust, wg_public_key=hosts[0].wg_key,
                  endpoints=[(hosts[0].underlay, WG_PORT)], meshd_port=MESHD_PORT,
                  rng=random.Random(0), now=NOW, peers=[anns[1], high],
                  last_version=a.announcement.version - 1)  # fmt: skip
    b2 = MeshNode(lab.config, identity=hosts[1].identity, certificate=hosts[1].cert,
                  trust=lab.net.trust, wg_public_key=hosts[1].wg_key,
                  endpoints=[(hosts[1].underlay, WG_PORT)], meshd_port=MESHD_PORT,
                  rng=random.Random(1), now=NOW, peers=[anns[0], low],
                  last_version=b.announcement.version - 1)  # fmt: skip
    assert a2.digest()[1:] != () and set(a2.digest()) == set(b2.digest())
    # Same (node, version) sets: the hash of meshd before D24 agrees, the content hash not.
    assert a2.version_hash() == b2.version_hash()
    assert a2.state_hash() != b2.state_hash()
    # An older node sends the version hash: that is agreement, no push-pull.
    a2.receive(wire.encode(wire.StateCheck(b2.version_hash())), lab.source_of(1, Channel.OVERLAY),
               NOW)  # fmt: skip
    assert a2.datagrams_to_send() == [] and a2.stats["push_pull_mismatch"] == 0
    # A current node sends the content hash: anti-entropy finds the difference, and the
    # exchange leaves both with the lower-ranked announcement, the other refused as a conflict.
    lab.cores = {0: a2, 1: b2}
    a2.receive(wire.encode(wire.StateCheck(b2.state_hash())), lab.source_of(1, Channel.OVERLAY),
               NOW)  # fmt: skip
    lab.deliver(NOW)
    assert a2.stats["push_pull_mismatch"] == 1
    assert b2.stats["push_pull_content_mismatch"] + a2.stats["push_pull_content_mismatch"] >= 1
    rejected = [e.reason for i in (0, 1) for e in lab.events(i) if isinstance(e, MessageRejected)]
    assert Reject.CONFLICT in rejected
    assert a2.member(c.node_id).ann == low  # type: ignore[union-attr]
    assert b2.member(c.node_id).ann == low  # type: ignore[union-attr]
    assert a2.state_hash() == b2.state_hash()
