"""Who gets a WireGuard peer when members announce the same key (issue #22, finding 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import Config
from meshd.core.announce import Announcement, sign_announcement
from meshd.core.errors import LocalProtocolError
from meshd.core.keyclaims import KeyConflict, KeyPlan, WgKeyClaims
from meshd.core.wgplan import WgDevice, WgPeer
from meshd.node import NodeIdentity
from tests.unit.helpers import MESH, NOW, TRUST, node_cert, node_key

ME = node_key(100).public
OWN, OWN_NEXT = b"\x01" * 32, b"\x02" * 32
KB, KB_NEXT, KC, KD = b"\x0b" * 32, b"\x0c" * 32, b"\x0d" * 32, b"\x0e" * 32


def member(n: int, key: bytes, next_key: bytes | None = None) -> Announcement:
    return sign_announcement(
        node_key(n), node_cert(n), version=1, wg_public_key=key, endpoints=[],
        meshd_port=51821, issued_at=int(NOW * 1000), next_wg_public_key=next_key,
        next_wg_key_at=int(NOW * 1000) + 10_000 if next_key else 0,
    )  # fmt: skip


def nid(n: int) -> bytes:
    return node_key(n).public


def test_the_bug_two_members_with_one_key_break_the_device() -> None:
    # What desired_interface built before: one peer per live member, one key twice.
    with pytest.raises(LocalProtocolError, match="listed twice"):
        WgDevice(bytes(32), 51820, (WgPeer(KB), WgPeer(KB)))


def test_distinct_keys_leave_everybody_in() -> None:
    claims = WgKeyClaims()
    live = [member(2, KB, KB_NEXT), member(3, KC)]
    assert claims.plan(ME, [OWN], live) == KeyPlan(frozenset(), (), ())


def test_the_member_that_held_a_key_first_keeps_it_and_the_newcomer_is_left_out() -> None:
    claims = WgKeyClaims()
    b, c = member(2, KB), member(3, KC)
    claims.plan(ME, [OWN], [b, c])
    evil = member(4, KD, next_key=KB)  # announces B's key as its next one
    conflict = KeyConflict(KB, nid(2), (nid(4),))
    assert claims.plan(ME, [OWN], [b, c, evil]) == KeyPlan(
        frozenset({nid(4)}), (conflict,), (conflict,)
    )
    # Reported once; still decided the same way on every pass.
    assert claims.plan(ME, [OWN], [evil, c, b]) == KeyPlan(frozenset({nid(4)}), (conflict,), ())
    # The newcomer stops claiming it: in again, and a new conflict would be reported afresh.
    assert claims.plan(ME, [OWN], [b, c, member(4, KD)]) == KeyPlan(frozenset(), (), ())


def test_our_own_current_and_next_keys_always_win() -> None:
    claims = WgKeyClaims()
    live = [member(2, OWN), member(3, KC, next_key=OWN_NEXT), member(4, KD)]
    assert claims.plan(ME, [OWN, OWN_NEXT], live) == KeyPlan(
        frozenset({nid(2), nid(3)}),
        (KeyConflict(OWN, ME, (nid(2),)), KeyConflict(OWN_NEXT, ME, (nid(3),))),
        (KeyConflict(OWN, ME, (nid(2),)), KeyConflict(OWN_NEXT, ME, (nid(3),))),
    )


def test_members_first_seen_together_with_one_key_are_both_left_out() -> None:
    claims = WgKeyClaims()
    b, evil = member(2, KB), member(4, KB)
    conflict = KeyConflict(KB, None, tuple(sorted([nid(2), nid(4)])))
    assert claims.plan(ME, [OWN], [b, evil, member(3, KC)]) == KeyPlan(
        frozenset({nid(2), nid(4)}), (conflict,), (conflict,)
    )
    # One of them goes: the other holds the key from now on.
    assert claims.plan(ME, [OWN], [b]) == KeyPlan(frozenset(), (), ())
    assert claims.plan(ME, [OWN], [b, evil]).left_out == {nid(4)}


def test_a_holder_keeps_its_key_while_it_is_a_tombstone() -> None:
    # The victim restarts (declared dead, then back): the attacker, live meanwhile, must not
    # inherit its key.
    claims = WgKeyClaims()
    b, evil = member(2, KB), member(4, KB)
    claims.plan(ME, [OWN], [b], known=[b])
    assert claims.plan(ME, [OWN], [evil], known=[b, evil]) == KeyPlan(
        frozenset({nid(4)}),
        (KeyConflict(KB, nid(2), (nid(4),)),),
        (KeyConflict(KB, nid(2), (nid(4),)),),
    )
    assert claims.plan(ME, [OWN], [b, evil], known=[b, evil]).left_out == {nid(4)}
    # Once the core forgot the holder's record, the key is free to be held by another.
    claims.plan(ME, [OWN], [], known=[evil])
    assert claims.plan(ME, [OWN], [evil], known=[evil]).left_out == frozenset()


def test_our_own_record_among_the_live_is_not_a_claim() -> None:
    claims = WgKeyClaims()
    own = sign_announcement(
        node_key(100), node_cert(100), version=1, wg_public_key=OWN, endpoints=[],
        meshd_port=51821, issued_at=0,
    )  # fmt: skip
    assert claims.plan(ME, [OWN], [own, member(2, KB)]) == KeyPlan(frozenset(), (), ())


async def test_daemon_plans_one_peer_per_key_and_counts_the_conflict(tmp_path: Path) -> None:
    from meshd.daemon import Daemon  # the planning is wired into desired_interface

    daemon = Daemon(
        Config(mesh=MESH, state_dir=tmp_path), NodeIdentity(TRUST, node_key(100), node_cert(100))
    )
    own = daemon.wg_key.public
    b = member(2, KB)
    assert [p.public_key for p in daemon.desired_interface([b]).device.peers] == [KB]
    evil = member(4, KB)  # B's key as its own
    thief = member(5, own)  # ours
    desired = daemon.desired_interface([b, evil, thief, member(3, KC)])
    assert [p.public_key for p in desired.device.peers] == [KB, KC]
    assert daemon.registry.render().count('meshd_rejected_messages_total{reason="conflict"} 2') == 1
    daemon.desired_interface([b, evil, thief, member(3, KC)])  # counted once, not per pass
    assert 'meshd_rejected_messages_total{reason="conflict"} 2' in daemon.registry.render()
