"""Suspect and dead claims count only authenticated first-hand senders (issue #22, finding 5).

Each test fails on the code before the fix: there any member could name invented senders to
forge Lifeguard confirmations, and any dead claim from any member declared a node dead at once,
forever.
"""

from __future__ import annotations

from meshd.core import wire
from meshd.core.claimguard import ClaimGuard
from meshd.core.errors import Reject
from meshd.core.membership import (
    ClaimsIgnored,
    MessageRejected,
    PeerAlive,
    PeerDead,
    PeerJoined,
    PeerSuspected,
)
from meshd.core.wire import AnnounceItem, Channel, DeadItem, Gossip, MemberState, SuspectItem
from tests.unit.nodes import NOW, Lab


def gossip(*items: wire.Item) -> bytes:
    return wire.encode(Gossip(items))


def _fake(i: int) -> bytes:
    return bytes([i]) * 32


def test_invented_senders_add_no_lifeguard_confirmation() -> None:
    lab = Lab(6)
    a, h, c, *_ = lab.converged(6)
    v = c.announcement.version
    src = lab.source_of(1, Channel.OVERLAY)  # h, the hostile member
    claims = [SuspectItem(c.node_id, v, _fake(i)) for i in range(1, 9)]
    a.receive(gossip(*claims), src, NOW)
    assert a.events() == [PeerSuspected(c.node_id, v)]
    m = a.member(c.node_id)
    assert m is not None and m.suspicion is not None
    # Before: 3 forged confirmations took the timeout to its minimum at once.
    assert m.suspicion.confirmations == 0
    _, hi = lab.config.suspicion_bounds(6)
    assert m.suspicion.deadline == NOW + hi
    # A first-hand claim of h counts once, a repeat not again.
    a.receive(gossip(SuspectItem(c.node_id, v, h.node_id)), src, NOW)
    a.receive(gossip(SuspectItem(c.node_id, v, h.node_id)), src, NOW)
    assert m.suspicion.confirmations == 1
    assert a.events() == []


def test_a_relayed_dead_claim_only_suspects_with_the_relays_vote() -> None:
    lab = Lab(6)
    a, _h, c, *_ = lab.converged(6)
    v = c.announcement.version
    a.receive(gossip(DeadItem(c.node_id, v, _fake(9))), lab.source_of(1, Channel.OVERLAY), NOW)
    assert a.events() == [PeerSuspected(c.node_id, v)]
    m = a.member(c.node_id)
    assert m is not None and m.state is MemberState.SUSPECT
    assert m.suspicion is not None and m.suspicion.confirmations == 1
    # Votes of three different relaying members: the Lifeguard minimum, then dead.
    for i in (3, 4):
        a.receive(gossip(DeadItem(c.node_id, v, _fake(9))), lab.source_of(i, Channel.OVERLAY), NOW)
    lo, _ = lab.config.suspicion_bounds(6)
    assert m.suspicion.deadline == NOW + lo
    a.handle_timer(NOW + lo)
    assert a.events() == [PeerDead(c.announcement)]


def test_a_refuted_first_hand_dead_claim_gets_its_maker_ignored() -> None:
    lab = Lab(6)
    a, h, c, *_ = lab.converged(6)
    src = lab.source_of(1, Channel.OVERLAY)
    v = c.announcement.version
    a.receive(gossip(DeadItem(c.node_id, v, h.node_id)), src, NOW)
    assert a.events() == [PeerDead(c.announcement)]  # the first claim works, as in SWIM
    back = c.update_self(NOW + 0.1)  # c hears of it and refutes within the window
    a.receive(gossip(AnnounceItem(back.raw)), lab.source_of(2, Channel.OVERLAY), NOW + 0.1)
    until = NOW + 0.1 + lab.config.claim_ignore_for
    assert [type(e) for e in a.events()] == [ClaimsIgnored, PeerJoined]
    # The attacker repeats: nothing happens, about any node, dead or suspect.
    a.receive(gossip(DeadItem(c.node_id, back.version, h.node_id),
                     SuspectItem(lab.cores[3].node_id, lab.cores[3].announcement.version,
                                 h.node_id)), src, NOW + 1)  # fmt: skip
    assert a.events() == []
    assert a.member(c.node_id).state is MemberState.ALIVE  # type: ignore[union-attr]
    assert a.stats["claims_ignored"] == 2
    # Until the ignore period ends.
    a.receive(gossip(SuspectItem(c.node_id, back.version, h.node_id)), src, until)
    assert a.events() == [PeerSuspected(c.node_id, back.version)]


def test_three_refuted_suspicions_within_the_window_get_the_claimant_ignored() -> None:
    lab = Lab(6)
    a, h, c, *_ = lab.converged(6)
    src = lab.source_of(1, Channel.OVERLAY)
    t = NOW
    for round_ in range(3):
        v = c.announcement.version
        a.receive(gossip(SuspectItem(c.node_id, v, h.node_id)), src, t)
        back = c.update_self(t + 0.05)
        a.receive(gossip(AnnounceItem(back.raw)), lab.source_of(2, Channel.OVERLAY), t + 0.05)
        events = a.events()
        expected: list[object] = [PeerSuspected(c.node_id, v)]
        if round_ == 2:
            expected.append(ClaimsIgnored(h.node_id, t + 0.05 + lab.config.claim_ignore_for))
        expected.append(PeerAlive(back))
        assert events == expected
        t += 1.0
    a.receive(gossip(SuspectItem(c.node_id, c.announcement.version, h.node_id)), src, t)
    assert a.events() == []


def test_a_claim_refuted_after_the_window_is_no_strike() -> None:
    # A partition or a restart: the dead member comes back long after the claim.
    lab = Lab(6)
    a, h, c, *_ = lab.converged(6)
    src = lab.source_of(1, Channel.OVERLAY)
    a.receive(gossip(DeadItem(c.node_id, c.announcement.version, h.node_id)), src, NOW)
    later = NOW + lab.config.claim_refute_window + 0.5
    back = c.update_self(later)
    a.receive(gossip(AnnounceItem(back.raw)), lab.source_of(2, Channel.OVERLAY), later)
    assert [type(e) for e in a.events()] == [PeerDead, PeerJoined]
    assert a.stats["claimants_ignored"] == 0


def test_claims_above_a_members_rate_are_dropped_and_counted() -> None:
    lab = Lab(6)
    a, *_ = lab.converged(6)
    src = lab.source_of(1, Channel.OVERLAY)
    burst = int(lab.config.claim_burst)
    unknown = [SuspectItem(_fake(i + 1), 1, _fake(7)) for i in range(16)]  # one datagram
    sent = 0
    while sent < burst + 48:
        a.receive(gossip(*unknown), src, NOW)
        sent += len(unknown)
    rejected = [e for e in a.events() if isinstance(e, MessageRejected)]
    assert rejected and {e.reason for e in rejected} == {Reject.RATE_LIMITED}
    assert a.stats["rejected.rate_limited"] == sent - burst
    assert a.stats["claims_unknown_node"] == burst


def test_claims_about_us_are_refuted_at_most_once_per_probe_interval() -> None:
    lab = Lab(3)
    a, b, _ = lab.converged(3)
    src = lab.source_of(1, Channel.OVERLAY)
    v = a.announcement.version
    a.receive(gossip(SuspectItem(a.node_id, v, b.node_id)), src, NOW)
    v2 = a.announcement.version
    assert v2 > v
    a.receive(gossip(SuspectItem(a.node_id, v2, b.node_id)), src, NOW + 0.01)
    assert a.announcement.version == v2 and a.stats["refutations_deferred"] == 1
    a.receive(gossip(SuspectItem(a.node_id, v2, b.node_id)), src, NOW + lab.config.probe_interval)
    assert a.announcement.version > v2


def test_claim_guard_strikes_expire_and_the_ignore_period_ends() -> None:
    g = ClaimGuard(rate=1, burst=2, limit=3, window=10, ignore_for=100, refute_window=5)
    x = b"x" * 32
    assert g.strike(x, 0, 0) is False and g.strike(x, 1, 1) is False
    assert g.strike(x, 11, 11) is False  # the first two have expired
    assert g.strikes(x, 11) == 1
    assert g.strike(x, 20, 10) is False  # refuted 10 s after the claim: no strike
    assert g.strike(x, 12, 12, weight=3) is True
    assert g.ignored(x, 50) and not g.ignored(x, 112)
    assert [g.allow(x, 0), g.allow(x, 0), g.allow(x, 0), g.allow(x, 1)] == [True, True, False, True]
