"""MeshNode state machine, driven synchronously with virtual time. Whole event lists asserted."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core import membership as ms
from meshd.core import wire
from meshd.core.announce import AnnouncementVerifier
from meshd.core.cert import issue_revocation
from meshd.core.config import MembershipConfig
from meshd.core.errors import Reject
from meshd.core.membership import (
    ClaimsIgnored,
    MeshNode,
    MessageRejected,
    PeerAlive,
    PeerDead,
    PeerJoined,
    PeerLeft,
    PeerSuspected,
    PeerUpdated,
    RevocationAdded,
)
from meshd.core.wire import AnnounceItem, Channel, DeadItem, Gossip, MemberState, SuspectItem
from tests.sim.simnet import MESH
from tests.unit.nodes import NOW, Lab

CORE = Path(__file__).resolve().parents[2] / "meshd" / "core"


def test_core_imports_no_io_clock_or_global_random() -> None:
    # STYLE.md: the core is sans-IO. Parse every module: no forbidden import, and `random` only
    # as the type of an injected generator (random.Random), never module-level functions.
    forbidden = {"asyncio", "socket", "time", "os", "aiohttp", "pyroute2", "datetime", "secrets"}
    problems: list[str] = []
    for path in sorted(CORE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
                if names == ["random"]:
                    problems.append(f"{path.name}: from random import ...")
            problems += [f"{path.name}: import {n}" for n in names if n in forbidden]
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
                and node.attr != "Random"
            ):
                problems.append(f"{path.name}:{node.lineno}: random.{node.attr}")
    assert problems == []


def gossip(*items: wire.Item) -> bytes:
    return wire.encode(Gossip(items))


def test_version_outranks_previous_and_wall_clock() -> None:
    lab = Lab(1)
    assert lab.core(0, now=NOW).announcement.version == int(NOW * 1000)
    # A restarted node that kept state but whose clock went backwards still grows.
    assert lab.core(0, now=NOW, last_version=int(NOW * 1000) + 500).announcement.version == (
        int(NOW * 1000) + 501
    )


def test_join_exchanges_announcements_without_amplification() -> None:
    lab = Lab(2)
    a = lab.core(0)
    b = lab.core(1)
    b.join([lab.net.underlay_address(0)], NOW)
    sent = lab.deliver(NOW)
    assert lab.events(0) == [PeerJoined(b.announcement)]
    assert lab.events(1) == [PeerJoined(a.announcement)]
    underlay = [(type(wire.decode(t.data, t.channel)), len(t.data)) for t in sent
                if t.channel is Channel.UNDERLAY]  # fmt: skip
    assert underlay == [
        (wire.JoinRequest, wire.JOIN_REQUEST_SIZE),
        (wire.JoinReply, underlay[1][1]),
    ]
    assert underlay[1][1] <= wire.JOIN_REQUEST_SIZE
    # The joiner pulled the seed's state over a stream inside the tunnel.
    streams = [wire.decode(t.data, t.channel) for t in sent if t.channel is Channel.STREAM]
    assert isinstance(streams[0], wire.PushPullRequest) and streams[0].digest is not None
    assert [m.state for m in a.members()] == [MemberState.ALIVE]
    assert [m.state for m in b.members()] == [MemberState.ALIVE]


def test_underlay_accepts_only_join_messages() -> None:
    lab = Lab(2)
    a, _ = lab.converged(2)
    src = lab.source_of(1, Channel.UNDERLAY)
    a.receive(wire.encode(wire.Ping(1)), src, NOW, Channel.UNDERLAY)
    assert a.events() == [MessageRejected(Reject.WRONG_CHANNEL, src)]
    assert a.datagrams_to_send() == []


def test_unsigned_claims_only_from_members() -> None:
    lab = Lab(3)
    a, _, c = lab.converged(3)
    stranger = ("fd00::99", 7946)
    a.receive(gossip(DeadItem(c.node_id, c.announcement.version, bytes(32))), stranger, NOW)
    assert a.events() == [MessageRejected(Reject.UNKNOWN_SENDER, stranger)]
    assert a.member(c.node_id).state is MemberState.ALIVE  # type: ignore[union-attr]
    assert a.datagrams_to_send() == []


def test_suspicion_is_refuted_by_a_higher_version() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    v = c.announcement.version
    a.receive(gossip(SuspectItem(c.node_id, v, b.node_id)), lab.source_of(1, Channel.OVERLAY), NOW)
    lab.deliver(NOW)
    assert c.announcement.version > v
    assert lab.events(0) == [PeerSuspected(c.node_id, v), PeerAlive(c.announcement)]
    # b sent the claim, so a does not forward it back; b just sees c's newer version.
    assert lab.events(1) == []
    assert lab.events(2) == []
    assert b.member(c.node_id).version == c.announcement.version  # type: ignore[union-attr]


def test_lone_suspicion_expires_into_dead_at_the_lifeguard_deadline() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    v = c.announcement.version
    a.receive(gossip(SuspectItem(c.node_id, v, b.node_id)), lab.source_of(1, Channel.OVERLAY), NOW)
    assert a.events() == [PeerSuspected(c.node_id, v)]
    # 3 nodes: fewer than K others can confirm, so the minimum applies (memberlist rule).
    lo, _ = lab.config.suspicion_bounds(3)
    a.handle_timer(NOW + lo - 1e-6)
    assert a.events() == []
    a.handle_timer(NOW + lo)
    assert a.events() == [PeerDead(c.announcement)]
    sent = [wire.decode(t.data, t.channel) for t in a.datagrams_to_send()]
    assert Gossip((DeadItem(c.node_id, v, a.node_id),)) in sent


def test_tombstone_blocks_stale_gossip_and_a_rejoin_wins() -> None:
    lab = Lab(3)
    old = lab.core(2, now=NOW - 10).announcement
    a, b, c = lab.converged(3)
    src = lab.source_of(1, Channel.OVERLAY)
    a.receive(gossip(DeadItem(c.node_id, c.announcement.version, b.node_id)), src, NOW)
    assert a.events() == [PeerDead(c.announcement)]
    a.receive(gossip(AnnounceItem(old.raw)), src, NOW + 1)
    a.receive(gossip(AnnounceItem(c.announcement.raw)), src, NOW + 1)  # replay: same version
    assert a.events() == [MessageRejected(Reject.STALE, src)]
    assert a.member(c.node_id).state is MemberState.DEAD  # type: ignore[union-attr]
    new = c.update_self(NOW + 2, endpoints=[("192.0.2.7", 51820)])
    a.receive(gossip(AnnounceItem(new.raw)), src, NOW + 2)
    assert a.events() == [PeerJoined(new)]
    assert a.member(c.node_id).state is MemberState.ALIVE  # type: ignore[union-attr]


def test_signed_leave_is_seen_and_old_alive_cannot_undo_it() -> None:
    lab = Lab(3)
    a, _b, c = lab.converged(3)
    alive = c.announcement
    c.leave(NOW)
    lab.deliver(NOW)
    assert lab.events(0) == [PeerLeft(c.announcement)]
    assert lab.events(1) == [PeerLeft(c.announcement)]
    src = lab.source_of(1, Channel.OVERLAY)
    a.receive(gossip(AnnounceItem(alive.raw)), src, NOW + 1)
    assert a.events() == [MessageRejected(Reject.STALE, src)]
    assert [m.state for m in a.members() if m.ann.node_id == c.node_id] == [MemberState.LEFT]


def test_dead_claim_about_self_is_refuted() -> None:
    lab = Lab(3)
    a, b, _ = lab.converged(3)
    v = a.announcement.version
    a.receive(gossip(DeadItem(a.node_id, v, b.node_id)), lab.source_of(1, Channel.OVERLAY), NOW)
    # We know the claim is false: b's claims are ignored for a while (issue #22, finding 5).
    assert a.events() == [ClaimsIgnored(b.node_id, NOW + lab.config.claim_ignore_for)]
    assert a.announcement.version == v + 1  # same millisecond: previous + 1
    assert a.health == 1  # Lifeguard IV-A: being suspected hints at a local problem
    sent = {wire.decode(t.data, t.channel) for t in a.datagrams_to_send()}
    assert Gossip((AnnounceItem(a.announcement.raw),)) in sent


def test_update_self_reaches_peers_as_peer_updated() -> None:
    lab = Lab(2)
    _a, b = lab.converged(2)
    old = b.announcement
    new = b.update_self(NOW + 1, endpoints=[("198.51.100.2", 51820)])
    lab.deliver(NOW + 1)
    assert lab.events(0) == [PeerUpdated(new, old)]


def test_restart_with_lost_state_outranks_old_record() -> None:
    lab = Lab(2)
    a, b = lab.converged(2)
    old = b.announcement
    b2 = lab.core(1, now=NOW + 5, wg=bytes(range(32)))  # fresh install: new key, no state
    b2.join([lab.net.underlay_address(0)], NOW + 5)
    lab.deliver(NOW + 5)
    assert lab.events(0) == [PeerUpdated(b2.announcement, old)]
    assert lab.events(1) == [PeerJoined(a.announcement)]


def test_revocation_drops_member_and_refuses_its_announcements() -> None:
    lab = Lab(3)
    a, _b, c = lab.converged(3)
    serial = c.announcement.cert.serial
    rev = issue_revocation(
        lab.net.ca, mesh=MESH, serial=serial, identity_key=c.node_id, revoked_at=0, reason="lost"
    )
    src = lab.source_of(1, Channel.OVERLAY)
    a.receive(gossip(wire.RevocationItem(rev.raw)), src, NOW)
    assert a.events() == [RevocationAdded(rev), PeerDead(c.announcement)]
    newer = c.update_self(NOW + 1, endpoints=[("192.0.2.9", 1)])
    a.receive(gossip(AnnounceItem(newer.raw)), src, NOW + 1)
    assert a.events() == [MessageRejected(Reject.REVOKED, src)]


def test_a_node_without_the_mesh_psk_is_refused_and_told_why() -> None:
    lab = Lab(2)
    secret_id = b"\x01" * 8
    verifier = AnnouncementVerifier(lab.net.trust, psk_ids=(secret_id,))
    a = lab.core(0, psk_ids=(secret_id,), verifier=verifier)
    b = lab.core(1)  # no PSK secret
    b.join([lab.net.underlay_address(0)], NOW)
    sent = lab.deliver(NOW)
    # The seed refuses the joiner but still answers (no bigger than the request), so the joiner
    # refuses it in turn and both can say why; neither becomes a member.
    assert [e.reason for e in lab.events(0)] == [Reject.PSK_MISMATCH]  # type: ignore[attr-defined]
    assert [e.reason for e in lab.events(1)] == [Reject.PSK_MISMATCH]  # type: ignore[attr-defined]
    assert [type(wire.decode(t.data, t.channel)) for t in sent] == [
        wire.JoinRequest,
        wire.JoinReply,
    ]
    assert a.members() == [] and b.members() == []
    assert a.announcement.psk_ids == (secret_id,) and b.announcement.psk_ids == ()


def test_new_wireguard_key_is_told_over_the_underlay_without_a_state_sync() -> None:
    lab = Lab(2)
    a, b = lab.converged(2)
    old = b.announcement
    nxt = bytes(range(32))
    b.update_self(NOW + 1, next_wg_public_key=nxt, next_wg_key_at=int((NOW + 11) * 1000))
    switched = b.update_self(NOW + 11, wg_public_key=nxt)
    assert (switched.wg_public_key, switched.next_wg_public_key, switched.next_wg_key_at) == (
        nxt,
        None,
        0,
    )
    b.datagrams_to_send()  # the gossip inside the tunnel: lost, the tunnel waits for the key
    b.tell_underlay(NOW + 11)
    sent = lab.deliver(NOW + 11)
    kinds = [(type(wire.decode(t.data, t.channel)), t.channel) for t in sent]
    assert kinds[:2] == [(wire.JoinRequest, Channel.UNDERLAY), (wire.JoinReply, Channel.UNDERLAY)]
    assert Channel.STREAM not in {t.channel for t in sent}  # a notice, not a join: no push-pull
    assert lab.events(0) == [PeerUpdated(switched, old)]
    assert a.member(b.node_id).ann.wg_key_at(NOW + 11) == nxt  # type: ignore[union-attr]


def test_a_node_that_missed_a_revocation_learns_it_by_push_pull() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    rev = issue_revocation(
        lab.net.ca, mesh=MESH, serial=c.announcement.cert.serial, identity_key=c.node_id,
        revoked_at=0, reason="lost",
    )  # fmt: skip
    a.add_revocation(rev, NOW)
    a.datagrams_to_send()  # the gossip is lost: b was away
    assert a.state_hash() != b.state_hash()  # revocations are part of the state hash
    lab.events(0)
    # b's periodic hash-only push-pull reaches a; the hashes differ, so a starts a full one,
    # which carries its revocations.
    b_src = lab.source_of(1, Channel.STREAM)
    a.receive(wire.encode(wire.PushPullRequest(b.state_hash(), None)), b_src, NOW, Channel.STREAM)
    lab.deliver(NOW, drop={2})
    assert lab.events(1) == [RevocationAdded(rev), PeerDead(c.announcement)]
    assert a.state_hash() == b.state_hash()
    assert c.node_id not in {ann.node_id for ann in b.live_members()}


def test_a_member_whose_certificate_expired_is_dropped() -> None:
    lab = Lab(2)
    a, b = lab.converged(2)
    expiry = b.announcement.cert.not_after
    a.handle_timer(expiry - 1)
    assert [e for e in a.events() if isinstance(e, PeerDead)] == []
    a.handle_timer(expiry + 1)
    assert [e for e in a.events() if isinstance(e, PeerDead)] == [PeerDead(b.announcement)]
    assert a.live_members() == []


def test_failed_probe_goes_indirect_then_suspects_with_nacks_keeping_health() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    t = NOW
    while t < NOW + 1:
        t += 0.005
        a.handle_timer(t)
        b.handle_timer(t)
        lab.deliver(t, drop={2})
    # a pinged c directly, then asked b, b pinged c and nacked (a's own network is fine).
    # (b also runs its own probes; only the order of a's probe steps is asserted.)
    steps = iter(lab.log)
    expected = [(0, 2, "Ping"), (0, 1, "PingReq"), (1, 2, "Ping"), (1, 0, "Nack")]
    assert [e for e in expected if e in steps] == expected
    assert a.member(c.node_id).state is MemberState.DEAD  # type: ignore[union-attr]
    assert a.health == 0


def test_missing_nacks_raise_local_health() -> None:
    lab = Lab(3)
    a, _, _ = lab.converged(3)
    t = NOW
    while a.health == 0 and t < NOW + 2:
        t += 0.005
        a.handle_timer(t)
        lab.deliver(t, drop={1, 2})  # a's own link is down: no acks, no nacks
    assert a.health == 1
    # Probe interval is now scaled by health + 1 (Lifeguard IV-A).
    assert a.get_timer() - t <= 2 * lab.config.probe_interval


def test_ping_req_relay_sends_nack_then_forwards_late_ack() -> None:
    lab = Lab(3)
    _a, b, c = lab.converged(3)
    b.receive(wire.encode(wire.PingReq(77, c.node_id)), lab.source_of(0, Channel.OVERLAY), NOW)
    ping = b.datagrams_to_send()
    assert [(t.destination, type(wire.decode(t.data, t.channel))) for t in ping] == [
        ((lab.host(2).overlay, 7946), wire.Ping)
    ]
    b.handle_timer(NOW + 0.8 * lab.config.probe_timeout)
    assert [(t.destination, wire.decode(t.data, t.channel)) for t in b.datagrams_to_send()] == [
        (lab.source_of(0, Channel.OVERLAY), wire.Nack(77))
    ]
    seq = wire.decode(ping[0].data, Channel.OVERLAY).seq  # type: ignore[union-attr]
    b.receive(wire.encode(wire.Ack(seq)), lab.source_of(2, Channel.OVERLAY), NOW + 0.05)
    assert [wire.decode(t.data, t.channel) for t in b.datagrams_to_send()] == [wire.Ack(77)]


def test_push_pull_sends_only_what_the_peer_lacks() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    old = c.announcement
    new = c.update_self(NOW + 1, endpoints=[("192.0.2.1", 51820)])
    b.receive(gossip(AnnounceItem(new.raw)), lab.source_of(2, Channel.OVERLAY), NOW + 1)
    b.events()
    b.datagrams_to_send()
    req = wire.PushPullRequest(a.state_hash(), a.digest())
    b.receive(wire.encode(req), (lab.host(0).overlay, 50000), NOW + 1, Channel.STREAM)
    (reply,) = b.datagrams_to_send()
    msg = wire.decode(reply.data, reply.channel)
    assert reply.channel is Channel.STREAM
    assert msg == wire.PushPullReply(b.state_hash(), None, (new.raw,))
    a.receive(reply.data, (lab.host(1).overlay, 7946), NOW + 1, Channel.STREAM)
    assert a.events() == [PeerUpdated(new, old)]
    assert a.state_hash() == b.state_hash()


def test_converged_push_pull_is_one_hash() -> None:
    lab = Lab(3)
    a, b, _ = lab.converged(3)
    req = wire.encode(wire.PushPullRequest(a.state_hash(), None))
    b.receive(req, (lab.host(0).overlay, 50000), NOW, Channel.STREAM)
    assert b.datagrams_to_send() == [] and b.events() == []
    assert len(req) < 32


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1600), channel=st.sampled_from(list(Channel)))
def test_random_bytes_never_raise_or_change_state(data: bytes, channel: Channel) -> None:
    lab = _FUZZ_LAB
    a = lab.cores[0]
    before = [(m.ann.version, m.state) for m in a.members()]
    a.receive(data, lab.source_of(1, channel), NOW)
    a.receive(wire.PREFIX + data, lab.source_of(1, channel), NOW)
    assert [(m.ann.version, m.state) for m in a.members()] == before
    assert all(isinstance(e, MessageRejected) for e in a.events())
    a.datagrams_to_send()


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, 2000), byte=st.integers(0, 255), which=st.integers(0, 3))
def test_mutated_messages_never_raise(pos: int, byte: int, which: int) -> None:
    lab = _FUZZ_LAB
    a, b = lab.cores[0], lab.cores[1]
    samples = [
        (gossip(AnnounceItem(b.announcement.raw)), Channel.OVERLAY),
        (wire.encode(wire.JoinRequest(bytes(8), b.announcement.raw, 0, MemberState.UNKNOWN)),
         Channel.UNDERLAY),
        (wire.encode(wire.PushPullRequest(bytes(16), b.digest())), Channel.STREAM),
        (wire.encode(wire.PushPullReply(bytes(16), b.digest(), (b.announcement.raw,))),
         Channel.STREAM),
    ]  # fmt: skip
    data, channel = samples[which]
    mutated = bytearray(data)
    mutated[pos % len(mutated)] = byte
    a.receive(bytes(mutated), lab.source_of(1, channel), NOW)
    a.events()
    a.datagrams_to_send()


def _fuzz_lab() -> Lab:
    lab = Lab(2)
    lab.converged(2)
    return lab


_FUZZ_LAB = _fuzz_lab()


def test_direct_probe_round_trip_is_measured_and_smoothed() -> None:
    lab = Lab(2)
    a, b = lab.converged(2)
    assert a.rtt(b.node_id) is None
    t = NOW
    samples = []
    while len(samples) < 2:
        t += 0.01
        a.handle_timer(t)
        pings = [
            tx
            for tx in a.datagrams_to_send()
            if isinstance(wire.decode(tx.data, tx.channel), wire.Ping)
        ]
        for tx in pings:
            # The ack comes back 4 ms later (first probe), then 12 ms later (second).
            delay = 0.004 if not samples else 0.012
            b.receive(tx.data, lab.source_of(0, tx.channel), t + delay / 2, tx.channel)
            for back in b.datagrams_to_send():
                a.receive(back.data, lab.source_of(1, back.channel), t + delay, back.channel)
            samples.append(a.rtt(b.node_id))
    # First sample taken as is; the next one moves the estimate by 1/8 of the difference.
    assert samples[0] == pytest.approx(0.004, abs=1e-6)  # Unix-time floats: microseconds
    assert samples[1] == pytest.approx(0.004 + (0.012 - 0.004) / 8, abs=1e-6)


def test_stale_claim_is_answered_with_the_newer_announcement_once() -> None:
    # Regression (bench sim, N=100, 10 % loss): a node that held a suspicion but missed every
    # copy of the refutation declared a live node dead. Whoever sees its stale claim corrects it.
    lab = Lab(3)
    a, b, c = lab.converged(3)
    old = c.announcement.version
    new = c.update_self(NOW, endpoints=[("192.0.2.3", 51820)])
    src = lab.source_of(1, Channel.OVERLAY)
    a.receive(gossip(AnnounceItem(new.raw)), lab.source_of(2, Channel.OVERLAY), NOW)
    a.events()
    a.datagrams_to_send()
    for _ in range(3):  # a burst of the same stale claim: one answer per probe interval
        a.receive(gossip(SuspectItem(c.node_id, old, b.node_id)), src, NOW)
    assert a.events() == [MessageRejected(Reject.STALE, src)] * 3
    assert [(t.destination, wire.decode(t.data, t.channel)) for t in a.datagrams_to_send()] == [
        (src, Gossip((AnnounceItem(new.raw),)))
    ]


def test_eager_forwarding_survives_quiet_traffic() -> None:
    # Regression: the "don't send news back to its sender" set was only cleared when there
    # was news, so after some pings it held every member and eager forwarding went nowhere.
    lab = Lab(4)
    a, _b, c, d = lab.converged(4)
    for i in (1, 2, 3):
        a.receive(wire.encode(wire.Ping(i)), lab.source_of(i, Channel.OVERLAY), NOW)
    a.datagrams_to_send()
    a.receive(gossip(SuspectItem(d.node_id, d.announcement.version, c.node_id)),
              lab.source_of(2, Channel.OVERLAY), NOW)  # fmt: skip
    eager = {lab.index_of(t.destination[0]) for t in a.datagrams_to_send()}
    assert eager == {1, 3}  # everyone but the sender of the news


def test_unsigned_claim_about_our_future_version_is_refused() -> None:
    # A member must not be able to push our version to the end of its range (or make the
    # refutation overflow and raise out of receive).
    lab = Lab(2)
    a, b = lab.converged(2)
    v = a.announcement.version
    src = lab.source_of(1, Channel.OVERLAY)
    for claim in (SuspectItem(a.node_id, wire.MAX_VERSION, b.node_id),
                  DeadItem(a.node_id, v + 1, b.node_id)):  # fmt: skip
        a.receive(gossip(claim), src, NOW)
    assert a.events() == [MessageRejected(Reject.CONFLICT, src)] * 2
    assert a.announcement.version == v


def _probes_sent(core: object, lab: Lab) -> list[int | None]:
    """Indices of the hosts `core` just pinged (consumes its output)."""
    out = []
    for t in core.datagrams_to_send():  # type: ignore[attr-defined]
        if isinstance(wire.decode(t.data, t.channel), wire.Ping):
            out.append(lab.index_of(t.destination[0]))
    return out


def test_a_member_heard_from_within_the_cycle_is_not_probed() -> None:
    lab = Lab(3)
    a, _, _ = lab.converged(3)
    a.datagrams_to_send()
    cycle = 2 * lab.config.cycle_interval  # two live members
    t = NOW
    # Both members ping a every half interval: a has fresh evidence of both and never probes.
    while t < NOW + 3 * cycle:
        t += lab.config.probe_interval / 2
        for i in (1, 2):
            a.receive(wire.encode(wire.Ping(1)), lab.source_of(i, Channel.OVERLAY), t)
        a.handle_timer(t)
        assert _probes_sent(a, lab) == []
    # They fall silent: within a cycle (plus a tick) a probes each of them again.
    probed: set[int | None] = set()
    end = t + cycle + 2 * lab.config.probe_interval
    while t < end:
        t += lab.config.probe_interval / 2
        a.handle_timer(t)
        probed.update(_probes_sent(a, lab))
    assert probed == {1, 2}


def test_converged_state_check_is_one_datagram_and_a_mismatch_starts_a_push_pull() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    check = wire.encode(wire.StateCheck(a.state_hash()))
    assert len(check) < 32
    b.receive(check, lab.source_of(0, Channel.OVERLAY), NOW)
    assert b.datagrams_to_send() == [] and b.events() == []
    c.update_self(NOW + 1, endpoints=[("192.0.2.1", 51820)])
    b.receive(wire.encode(wire.StateCheck(c.state_hash())), lab.source_of(2, Channel.OVERLAY),
              NOW + 1)  # fmt: skip
    (sent,) = b.datagrams_to_send()
    assert sent.channel is Channel.STREAM and sent.destination[0] == lab.host(2).overlay
    assert isinstance(wire.decode(sent.data, sent.channel), wire.PushPullRequest)


def test_a_member_declared_dead_by_others_while_we_hear_it_is_told_on_the_underlay() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    a.datagrams_to_send()
    # c pinged a just now; then b's stale dead claim about c arrives (a healed partition).
    a.receive(wire.encode(wire.Ping(5)), lab.source_of(2, Channel.OVERLAY), NOW + 0.1)
    a.datagrams_to_send()
    claim = DeadItem(c.node_id, c.announcement.version, b.node_id)
    a.receive(gossip(claim), lab.source_of(1, Channel.OVERLAY), NOW + 0.2)
    assert [e for e in a.events() if isinstance(e, PeerDead)] == [PeerDead(c.announcement)]
    notices = [t for t in a.datagrams_to_send() if t.channel is Channel.UNDERLAY]
    # 3 / (live members) >= 1 here: the notice is certain. It asks c to refute.
    (notice,) = notices
    msg = wire.decode(notice.data, notice.channel)
    assert isinstance(msg, wire.JoinRequest) and msg.target_state is MemberState.DEAD
    assert notice.destination == lab.net.underlay_address(2)
    c.receive(notice.data, lab.source_of(0, Channel.UNDERLAY), NOW + 0.3, Channel.UNDERLAY)
    assert c.announcement.version > claim.version


def test_a_digest_holding_a_live_member_dead_is_forwarded_to_it_not_suspected() -> None:
    lab = Lab(3)
    a, b, c = lab.converged(3)
    for core in (a, b, c):
        core.datagrams_to_send()
    # a was on the other side of a partition: its digest holds c dead at c's current version.
    version = c.announcement.version
    digest = tuple(
        e._replace(state=MemberState.DEAD) if e.node_id == c.node_id else e for e in a.digest()
    )
    request = wire.encode(wire.PushPullRequest(a.state_hash(), digest))
    b.receive(request, (lab.host(0).overlay, 50000), NOW, Channel.STREAM)
    assert [e for e in b.events() if isinstance(e, PeerSuspected)] == []
    forwarded = [t for t in b.datagrams_to_send() if t.channel is Channel.OVERLAY]
    assert [(t.destination[0], wire.decode(t.data, t.channel)) for t in forwarded] == [
        (lab.host(2).overlay, Gossip((DeadItem(c.node_id, version, a.node_id),)))
    ]
    # Once per probe interval: the same digest again does not repeat it.
    b.receive(request, (lab.host(0).overlay, 50000), NOW + 0.01, Channel.STREAM)
    assert [t for t in b.datagrams_to_send() if t.channel is Channel.OVERLAY] == []
    # c refutes it.
    c.receive(forwarded[0].data, lab.source_of(1, Channel.OVERLAY), NOW + 0.01)
    assert c.announcement.version > version


def test_a_node_declared_dead_asks_every_member_it_holds_dead_at_once() -> None:
    lab = Lab(5)
    a, b, c, d, _ = lab.converged(5)
    a.datagrams_to_send()
    # a holds b and c dead (the other side of a partition) ...
    for dead in (b, c):
        a.receive(gossip(DeadItem(dead.node_id, dead.announcement.version, d.node_id)),
                  lab.source_of(3, Channel.OVERLAY), NOW + 0.1)  # fmt: skip
    a.datagrams_to_send()
    # ... and learns that the other side holds it dead: it asks both at once on the underlay.
    claim = DeadItem(a.node_id, a.announcement.version, d.node_id)
    a.receive(gossip(claim), lab.source_of(3, Channel.OVERLAY), NOW + 0.2)
    asked = [t for t in a.datagrams_to_send() if t.channel is Channel.UNDERLAY]
    assert sorted(t.destination for t in asked) == sorted(
        lab.net.underlay_address(i) for i in (1, 2)
    )
    for t in asked:
        msg = wire.decode(t.data, t.channel)
        assert isinstance(msg, wire.JoinRequest) and msg.target_state is MemberState.DEAD
    # Each refutes; their answers bring them back for a.
    for t in asked:
        receiver = lab.cores[lab.index_of(t.destination[0])]  # type: ignore[index]
        receiver.receive(t.data, lab.source_of(0, t.channel), NOW + 0.3, t.channel)
    lab.deliver(NOW + 0.3)
    assert {e.announcement.node_id for e in a.events() if isinstance(e, PeerJoined)} == {
        b.node_id,
        c.node_id,
    }
    # Declared dead again soon after: no second burst within the reconnect interval.
    for dead in (b, c):
        a.receive(gossip(DeadItem(dead.node_id, dead.announcement.version, d.node_id)),
                  lab.source_of(3, Channel.OVERLAY), NOW + 0.4)  # fmt: skip
    a.datagrams_to_send()
    claim = DeadItem(a.node_id, a.announcement.version, d.node_id)
    a.receive(gossip(claim), lab.source_of(3, Channel.OVERLAY), NOW + 0.5)
    assert [t for t in a.datagrams_to_send() if t.channel is Channel.UNDERLAY] == []


def test_a_member_that_just_became_live_is_not_probed_before_its_tunnel_can_be_up() -> None:
    config = dataclasses.replace(
        MembershipConfig.local(), first_probe_after=1.0, suspicion_min_floor=5.0
    )
    lab = Lab(7, config)
    a, b, *_ = lab.converged(6)  # cycle: 7 x 0.1 s, under first_probe_after
    new = lab.core(6)
    joined_at = NOW + 0.01
    a.receive(gossip(AnnounceItem(new.announcement.raw)), lab.source_of(1, Channel.OVERLAY),
              joined_at)  # fmt: skip
    # A rumoured suspicion would make a check the suspect at once (2K/(n-2) >= 1), but not a
    # member that only just became live.
    a.receive(gossip(SuspectItem(new.node_id, new.announcement.version, b.node_id)),
              lab.source_of(1, Channel.OVERLAY), joined_at)  # fmt: skip
    assert [type(e) for e in a.events()] == [PeerJoined, PeerSuspected]
    pinged_at: list[float] = []
    t = joined_at
    cycle = 7 * config.cycle_interval
    while t < joined_at + config.first_probe_after + cycle:
        a.handle_timer(t)
        del lab.log[:]
        lab.deliver(t)
        pinged_at += [t - joined_at for sender, receiver, kind in lab.log
                      if (sender, receiver, kind) == (0, 6, "Ping")]  # fmt: skip
        t += config.probe_interval / 2
    # Its evidence is due at first_probe_after: probed within a cycle from then, not before.
    assert pinged_at and config.first_probe_after <= pinged_at[0] < config.first_probe_after + cycle


def test_after_moving_a_node_tells_every_member_through_the_tunnel() -> None:
    lab = Lab(4)
    a, *_ = lab.converged(4)
    a.datagrams_to_send()
    new = a.update_self(NOW + 1, endpoints=[("192.168.3.2", 51820)])
    a.datagrams_to_send()  # the ordinary (eager) gossip of the update
    a.tell_members()
    sent = a.datagrams_to_send()
    assert sorted(t.destination[0] for t in sent) == sorted(lab.host(i).overlay for i in (1, 2, 3))
    for t in sent:
        assert t.channel is Channel.OVERLAY
        assert wire.decode(t.data, t.channel) == Gossip((AnnounceItem(new.raw),))


def test_a_probe_sent_before_a_member_died_does_not_suspect_it_after_it_rejoins() -> None:
    # bench faults at N=30 (2026-12-04): after a partition healed, nodes suspected members
    # half a second after those rejoined, because a probe sent while the member was still
    # suspect (before it was declared dead) ran out after the rejoin and counted against it.
    lab = Lab(3)
    a, b, c = lab.converged(3)
    t = NOW
    while not any(entry == (0, 2, "Ping") for entry in lab.log) and t < NOW + 5:
        t += 0.005
        a.handle_timer(t)
        lab.deliver(t, drop={2})  # c is cut off: a's probe of it gets no ack
    assert (0, 2, "Ping") in lab.log
    a.events()
    src = lab.source_of(1, Channel.OVERLAY)
    a.receive(gossip(DeadItem(c.node_id, c.announcement.version, b.node_id)), src, t)
    back = c.update_self(t + 0.01)  # c refutes its death (signs a newer version)
    a.receive(gossip(AnnounceItem(back.raw)), src, t + 0.01)
    # b's first-hand dead claim refuted 10 ms later reads as a lie (claimguard.py).
    assert [type(e) for e in a.events()] == [PeerDead, ClaimsIgnored, PeerJoined]
    # The old probe ends within this interval; c's new record is first probed only after
    # first_probe_after, and c answers from now on.
    end = t + lab.config.first_probe_after
    while t < end:
        t += 0.005
        a.handle_timer(t)
        lab.deliver(t, drop={1})  # b is cut off now: no relay can save the old probe
    assert [e for e in a.events() if isinstance(e, PeerSuspected) and e.node_id == c.node_id] == []
    assert a.member(c.node_id).state is MemberState.ALIVE  # type: ignore[union-attr]


def _exchanges(
    lab: Lab,
    cores: list[MeshNode],
    cycles: int,
    drop: Callable[[str], bool] = lambda a: False,
    start: float = NOW,
) -> list[tuple[float, int, int | None, str, bool]]:
    """Run the cores' timers for `cycles` probe cycles from `start`, delivering everything at
    once (a message to an address for which `drop` holds is lost): (time, sender, receiver,
    type, over IPv4) of every message."""
    out: list[tuple[float, int, int | None, str, bool]] = []
    t, end = start, start + cycles * len(cores) * lab.config.cycle_interval
    while t < end:
        t += 0.01
        for core in cores:
            core.handle_timer(t)
        seen = lab.deliver(t, lost=drop)
        log = lab.log[len(lab.log) - len(seen) :]
        out += [(t, i, j, kind, ":" not in tx.destination[0])
                for tx, (i, j, kind) in zip(seen, log, strict=True)]  # fmt: skip
    return out


def test_members_are_probed_on_ipv4_when_both_ends_have_an_ipv4_overlay_address() -> None:
    # D21: inside WireGuard a probe is 16 bytes shorter with IPv4+UDP headers than with IPv6.
    # Only when both ends have an IPv4 overlay address (one without has no source address of
    # that family), and only once the member showed it takes IPv4 (an older meshd refuses it).
    lab = Lab(3, ipv4=frozenset({0, 1}))
    cores = lab.converged(3)
    hosts = lab.net.hosts
    assert hosts[0].overlay_v4 and hosts[1].overlay_v4 and hosts[2].overlay_v4 is None
    sent = _exchanges(lab, cores, cycles=4)
    # The first probes go to IPv6, with an empty gossip to IPv4 beside them (the hello).
    hello = next(x for x in sent if x[4])
    assert hello[3] == "Gossip" and hello[1:3] in ((0, 1), (1, 0))
    # From the second cycle on, the pair with IPv4 uses it for everything; pairs with host 2
    # never do. Every pair kept exchanging, and nothing was refused or suspected.
    late = [x for x in sent if x[0] > NOW + 3 * lab.config.probe_interval]
    assert {(i, j, v4) for _, i, j, _, v4 in late} == {
        (0, 1, True), (1, 0, True), (0, 2, False), (2, 0, False), (1, 2, False), (2, 1, False)
    }  # fmt: skip
    # Streams (push-pull) always go to IPv6: meshd's stream listener takes IPv6 only.
    b = cores[0].member(cores[1].node_id)
    assert b is not None and b.address[0] == hosts[1].overlay_v4
    assert b.stream_address[0] == hosts[1].overlay
    pairs = {frozenset((i, j)) for _, i, j, kind, _ in late if kind == "Ping"}
    assert pairs == {frozenset(p) for p in ((0, 1), (0, 2), (1, 2))}
    assert [x[3] for x in sent if x[4]].count("Gossip") <= 2 * 3
    assert lab.events(0) == lab.events(1) == lab.events(2) == []


def test_a_pair_whose_ipv4_does_not_get_through_stays_on_ipv6() -> None:
    # An older meshd refuses what comes from an IPv4 overlay address (as good as lost) and never
    # sends from there. Three hellos at most per side, probes on IPv6, no suspicion.
    lab = Lab(2, ipv4=True)
    cores = lab.converged(2)
    sent = _exchanges(lab, cores, cycles=20, drop=lambda address: ":" not in address)
    hellos = sorted((i, j, kind) for _, i, j, kind, v4 in sent if v4)
    assert hellos == [(0, 1, "Gossip")] * 3 + [(1, 0, "Gossip")] * 3
    assert sum(1 for x in sent if x[3] == "Ping") >= 20
    assert lab.events(0) == lab.events(1) == []


def test_a_member_that_stops_taking_ipv4_is_probed_on_ipv6_again() -> None:
    # A member restarted with an older meshd: IPv4 worked, now it does not. The probe that
    # gets no answer over IPv4 is sent again over IPv6 at once and answered: no suspicion.
    lab = Lab(2, ipv4=True)
    cores = lab.converged(2)
    before = _exchanges(lab, cores, cycles=4)
    assert before[-1][4]  # on IPv4
    cut = before[-1][0]
    after = _exchanges(lab, cores, 20, drop=lambda address: ":" not in address, start=cut)
    # After a probe each way everything is on IPv6 but the hellos (3 a side in all, one of
    # them sent before the cut), and nobody was suspected.
    settled = cut + 2 * 2 * lab.config.probe_interval
    assert {x[3] for x in after if x[0] > settled and x[4]} <= {"Gossip"}
    assert len([x for x in before + after if x[4] and x[3] == "Gossip"]) <= 2 * 3
    assert sum(1 for x in after if x[0] > settled and x[3] == "Ack") >= 10
    assert lab.events(0) == lab.events(1) == []


def test_a_node_that_joined_compares_states_again_soon_after() -> None:
    # Nodes that join at about the same moment gossip each other's joins to members whose
    # WireGuard does not have them yet, which drops the news. A joiner compares its state with a
    # member `join_check_after` after the join instead of waiting for its first push-pull.
    config = dataclasses.replace(MembershipConfig.local(), push_pull_interval=60.0)
    lab = Lab(2, config)
    lab.core(0)
    b = lab.core(1)
    b.join([lab.net.underlay_address(0)], NOW)
    lab.deliver(NOW)
    checks = []
    t = NOW
    while t < NOW + 3 * config.join_check_after:
        t += 0.01
        for core in lab.cores.values():
            core.handle_timer(t)
        # The seed never joined: its first state check is 30-90 s away. So these are b's.
        checks += [(round(t - NOW, 2), lab.index_of(x.destination[0])) for x in lab.deliver(t)
                   if isinstance(wire.decode(x.data, x.channel), wire.StateCheck)]  # fmt: skip
    assert [seed for _, seed in checks] == [0]
    assert checks[0][0] == pytest.approx(config.join_check_after, abs=0.011)


def test_looking_across_finds_another_mesh_with_one_small_check_then_joins_it() -> None:
    lab = Lab(4)
    a, b = lab.converged(2)
    c = lab.core(2)
    d = lab.core(3, peers=[c.announcement])
    c2 = lab.core(2, peers=[d.announcement], last_version=c.announcement.version)
    for core in (a, b, c2, d):
        core.events()
    # a knows c's address as a seed; nothing else connects the two meshes {a, b} and {c, d}.
    a.set_seeds([lab.net.underlay_address(2)], NOW)
    a.handle_timer(NOW + 1)
    sent = lab.deliver(NOW + 1)
    kinds = [(type(wire.decode(t.data, t.channel)).__name__, len(t.data)) for t in sent
             if t.channel is Channel.UNDERLAY]  # fmt: skip
    assert kinds[:3] == [
        ("MeshCheck", wire.MESH_CHECK_SIZE),
        ("MeshCheckReply", kinds[1][1]),
        ("JoinRequest", wire.JOIN_REQUEST_SIZE),
    ]
    assert kinds[1][1] < wire.MESH_CHECK_SIZE
    assert a.stats["merges"] == 1
    # The push-pull after the join brought each side the other's members.
    assert {m.ann.name for m in a.members() if m.state is MemberState.ALIVE} == {"n1", "n2", "n3"}
    assert {m.ann.name for m in c2.members() if m.state is MemberState.ALIVE} == {"n0", "n1", "n3"}
    assert a.split_suspected() == []


def test_a_converged_node_whose_seeds_are_members_sends_no_checks() -> None:
    lab = Lab(3)
    a, _, _ = lab.converged(3)
    a.set_seeds([lab.net.underlay_address(1), lab.net.underlay_address(2)], NOW)
    for k in (1, 2):
        a.handle_timer(NOW + k)
        lab.deliver(NOW + k)  # one check each, answered by members: covered from now on
    assert a.stats["mesh_checks"] == 2 and a.stats["merge_joins"] == 0
    recheck = a.config.covered_recheck
    for k in range(3, int(recheck)):
        a.handle_timer(NOW + k)
        lab.deliver(NOW + k)
    assert a.stats["mesh_checks"] == 2  # nothing until the covered addresses' recheck
    for k in range(int(recheck), int(4 * recheck)):
        a.handle_timer(NOW + k)
        lab.deliver(NOW + k)
    assert a.stats["mesh_checks"] == 2 + 2 * 3 and a.stats["merge_joins"] == 0


def test_a_mesh_check_for_another_mesh_or_a_reply_to_no_check_is_refused() -> None:
    lab = Lab(2)
    a = lab.core(0)
    src = lab.source_of(1, Channel.UNDERLAY)
    a.receive(wire.encode(wire.MeshCheck(bytes(8), bytes(8))), src, NOW, Channel.UNDERLAY)
    reply = wire.MeshCheckReply(bytes(8), lab.host(1).node_id, bytes(16), 5)
    a.receive(wire.encode(reply), src, NOW, Channel.UNDERLAY)
    assert [e.reason for e in a.events() if isinstance(e, MessageRejected)] == [
        Reject.WRONG_MESH,
        Reject.UNKNOWN_SENDER,
    ]
    assert a.datagrams_to_send() == []
    assert a.split_suspected() == [] and a.stats["merge_joins"] == 0


def test_a_node_that_finds_itself_at_a_seed_address_never_joins_it() -> None:
    lab = Lab(1)
    a = lab.core(0)
    a.join([lab.net.underlay_address(0)], NOW)
    for k in range(1, 60):
        a.handle_timer(NOW + k / 2)
        lab.deliver(NOW + k / 2)
    assert a.members() == [] and a.stats["merge_joins"] == 0
    assert a.stats["mesh_checks"] == 1  # one check showed the address is ours


def test_a_pair_that_talks_only_through_others_is_degraded_on_both_sides_and_restored() -> None:
    lab = Lab(3)
    cores = lab.converged(3)
    cut = {(0, 1)}
    t = NOW
    degraded: dict[int, list[ms.Event]] = {0: [], 1: [], 2: []}

    def run(until: float, cut: set[tuple[int, int]] | None) -> None:
        nonlocal t
        while t < until:
            t += 0.05
            for c in cores:
                if c.get_timer() <= t:
                    c.handle_timer(t)
            lab.deliver(t, cut=cut)
            for i, c in enumerate(cores):
                degraded[i] += [
                    e for e in c.events() if isinstance(e, ms.PairDegraded | ms.PairRestored)
                ]

    run(NOW + 30, cut)
    # Both sides of the cut pair know it; nobody is suspected or dead (the third node relays).
    assert [type(e) for e in degraded[0]] == [ms.PairDegraded]
    assert [type(e) for e in degraded[1]] == [ms.PairDegraded]
    assert degraded[0][0].node_id == lab.host(1).node_id  # type: ignore[union-attr]
    assert degraded[2] == []
    assert set(cores[0].degraded()) == {lab.host(1).node_id}
    assert set(cores[2].degraded()) == set()
    assert all(m.state is MemberState.ALIVE for c in cores for m in c.members())
    # Found within the failure detection time: a cycle for the first failure, a tick more.
    cycle = 2 * cores[0].config.cycle_interval
    assert cores[0].degraded()[lab.host(1).node_id] < NOW + cycle + 1
    run(t + 3, None)  # the cut is lifted
    assert [type(e) for e in degraded[0]] == [ms.PairDegraded, ms.PairRestored]
    assert [type(e) for e in degraded[1]] == [ms.PairDegraded, ms.PairRestored]
    assert cores[0].degraded() == {} and cores[1].degraded() == {}


def test_a_healthy_mesh_has_no_degraded_pair() -> None:
    lab = Lab(4)
    cores = lab.converged(4)
    t = NOW
    while t < NOW + 60:
        t += 0.05
        for c in cores:
            if c.get_timer() <= t:
                c.handle_timer(t)
        lab.deliver(t)
    assert all(c.degraded() == {} and c.stats["probes_relayed_only"] == 0 for c in cores)


def test_a_degraded_pair_asks_the_other_side_through_a_member_to_initiate() -> None:
    lab = Lab(3)
    a, b, relay = lab.converged(3)
    b_id, a_id = lab.host(1).node_id, lab.host(0).node_id
    assert a.ask_to_initiate(b_id, NOW)
    sent = lab.deliver(NOW, cut={(0, 1)})
    assert [(lab.index_of(t.destination[0]), wire.decode(t.data, t.channel)) for t in sent] == [
        (2, wire.Initiate(b_id, True)),  # a -> the relay: "ask b"
        (1, wire.Initiate(a_id, False)),  # the relay -> b: "initiate towards a"
    ]
    assert b.events() == [ms.HandshakeWanted(a_id)]
    # Honoured once per initiate_min_interval; the relay passes one per probe interval.
    a.ask_to_initiate(b_id, NOW + 0.01)
    lab.deliver(NOW + 0.01, cut={(0, 1)})
    assert b.events() == []
    later = NOW + b.config.initiate_min_interval + 0.01
    a.ask_to_initiate(b_id, later)
    lab.deliver(later, cut={(0, 1)})
    assert b.events() == [ms.HandshakeWanted(a_id)]
    assert relay.events() == []


def test_a_member_can_only_have_others_initiate_towards_itself() -> None:
    lab = Lab(3)
    a, b, relay = lab.converged(3)
    src = lab.source_of(0, Channel.OVERLAY)
    # a asks the relay to ask b; the relay names a, whatever a claims.
    relay.receive(wire.encode(wire.Initiate(lab.host(1).node_id, True)), src, NOW)
    forwarded = [wire.decode(t.data, t.channel) for t in relay.datagrams_to_send()]
    assert forwarded == [wire.Initiate(lab.host(0).node_id, False)]
    # a claims to relay for b itself: nonsense, dropped.
    b.receive(wire.encode(wire.Initiate(lab.host(1).node_id, False)), src, NOW)
    # a claims to relay for the relay, whose pair with b works (b's probe was just answered
    # directly): dropped, a cannot make b restart a working pair.
    t = NOW
    while lab.host(2).node_id not in b._answered_directly and t < NOW + 30:
        t += 0.05
        for c in (a, b, relay):
            if c.get_timer() <= t:
                c.handle_timer(t)
        lab.deliver(t)
    assert lab.host(2).node_id in b._answered_directly
    b.receive(wire.encode(wire.Initiate(lab.host(2).node_id, False)), src, t)
    assert [e for e in b.events() if isinstance(e, ms.HandshakeWanted)] == []
    assert b.stats["initiate_dropped"] == 2


def test_a_leave_reaches_members_when_no_tunnel_carries_it() -> None:
    # A node that leaves right after it started may have no WireGuard session yet: its leave,
    # queued in the tunnel, dies with its wireguard-go. A few members hear it on the underlay.
    lab = Lab(3)
    a, b, c = lab.converged(3)
    a.leave(NOW)
    lab.deliver(NOW, lost=lambda destination: not destination.startswith("10."))
    assert [type(e) for e in b.events()] == [ms.PeerLeft]
    assert [type(e) for e in c.events()] == [ms.PeerLeft]
