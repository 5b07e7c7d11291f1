"""Many-node scenarios on the simulated LAN (virtual time, default LAN settings unless noted)."""

from __future__ import annotations

from collections import Counter

from meshd.core.config import MembershipConfig
from meshd.core.membership import MessageRejected, PeerDead, PeerJoined, PeerSuspected
from meshd.core.wire import MemberState
from tests.sim.simnet import SimNet


def event_types(net: SimNet) -> Counter[str]:
    return Counter(type(r.event).__name__ for r in net.recorded)


def test_join_converges_everywhere() -> None:
    n = 200
    net = SimNet(n, seed=11)
    net.start_converged(range(n - 1))
    net.run_for(2)
    joiner = net.hosts[n - 1]
    t0 = net.now
    net.start(n - 1, seeds=[0, 1])
    assert net.run_for(5, lambda: set(net.views(joiner.node_id).values()) == {MemberState.ALIVE})
    assert net.now - t0 < 0.5
    net.run_for(1)  # the joiner's bulk pull over the stream
    assert joiner.core is not None and len(joiner.core.live_members()) == n - 1
    # Each old member saw exactly one join; the joiner saw everyone, from the pull.
    joined = Counter(r.observer for r in net.recorded if isinstance(r.event, PeerJoined))
    assert joined == Counter({i: 1 for i in range(n - 1)} | {n - 1: n - 1})


def test_crash_is_detected_by_all_and_nobody_else_is_accused() -> None:
    n = 100
    net = SimNet(n, seed=12)
    net.start_converged()
    net.run_for(3)
    victims = (17, 33, 51)
    took = []
    for v in victims:
        victim = net.hosts[v].node_id
        net.crash(v)
        t0 = net.now

        def all_see_dead(victim: bytes = victim) -> bool:
            views = net.views(victim)
            return {s for i, s in views.items() if net.hosts[i].up} == {MemberState.DEAD}

        assert net.run_for(20, all_see_dead)
        took.append(net.now - t0)
        net.run_for(3)
    # Each within the longest a suspicion can last (nobody confirms it) plus its probe; most
    # much sooner, as the confirmations shorten it (Lifeguard IV-B).
    _, longest = net.config.suspicion_bounds(n)
    assert max(took) < longest + 1.0
    assert sorted(took)[1] < 4.0
    net.run_for(10)
    dead = {(r.observer, r.event.announcement.node_id) for r in net.recorded
            if isinstance(r.event, PeerDead)}  # fmt: skip
    assert dead == {(i, net.hosts[v].node_id) for v in victims for i in range(n)
                    if i != v and (i not in victims or i > v)}  # fmt: skip
    suspected = {r.event.node_id for r in net.recorded if isinstance(r.event, PeerSuspected)}
    assert suspected == {net.hosts[v].node_id for v in victims}


def test_leave_is_seen_by_all_quickly() -> None:
    n = 100
    net = SimNet(n, seed=13)
    net.start_converged()
    net.run_for(2)
    leaver = net.hosts[42]
    assert leaver.core is not None
    leaver.core.leave(net.now)
    net._after(42)
    t0 = net.now
    assert net.run_for(
        5,
        lambda: (
            set(v for i, v in net.views(leaver.node_id).items() if i != 42) == {MemberState.LEFT}
        ),
    )
    assert net.now - t0 < 0.5
    assert net.run_for(5, lambda: leaver.core is not None and leaver.core.leave_finished)
    assert event_types(net) == Counter({"PeerLeft": n - 1})


def test_no_false_positive_at_10_percent_loss_for_an_hour() -> None:
    n = 6
    net = SimNet(n, seed=14, loss=0.10)
    net.start_converged()
    net.run_for(3600)
    types = event_types(net)
    # Suspicions happen (that is what 10 % loss does to probes) and every one was refuted.
    assert types["PeerSuspected"] > 0
    assert types["PeerDead"] == 0 and types["PeerSuspected"] == types["PeerAlive"]
    assert {len(h.core.live_members()) for h in net.hosts if h.core} == {n - 1}


def test_partition_heals_after_it_ends() -> None:
    n = 40
    net = SimNet(n, seed=15)
    net.start_converged()
    net.run_for(2)
    left, right = range(n // 2), range(n // 2, n)
    net.partition([left, right])
    net.run_for(30)
    # Both halves declared the other dead (this is where wesher stays split forever).
    assert {len(h.core.live_members()) for h in net.hosts if h.core} == {n // 2 - 1}
    net.heal()
    t0 = net.now
    assert net.run_for(
        120, lambda: {len(h.core.live_members()) for h in net.hosts if h.core} == {n - 1}
    )
    healed_after = net.now - t0
    assert healed_after < 60
    net.run_for(10)
    snap = net.snapshot()
    for view in snap.values():
        assert {s for (_, _, s) in view[1:]} == {MemberState.ALIVE}  # type: ignore[misc]


def test_restarted_node_with_lost_state_rejoins_and_wins() -> None:
    n = 30
    net = SimNet(n, seed=16)
    net.start_converged()
    net.run_for(2)
    node = net.hosts[7]
    assert node.core is not None
    old_version = node.core.announcement.version
    net.crash(7)
    assert net.run_for(20, lambda: set(net.views(node.node_id).values()) == {MemberState.DEAD})
    net.recorded.clear()
    net.start(7, seeds=[0])  # fresh install: no version, no peers
    assert net.run_for(5, lambda: set(net.views(node.node_id).values()) == {MemberState.ALIVE})
    new_version = node.core.announcement.version  # type: ignore[union-attr]
    assert new_version > old_version
    assert all(
        h.core.member(node.node_id).version == new_version  # type: ignore[union-attr]
        for h in net.hosts
        if h.core and h.index != 7
    )
    net.run_for(2)
    assert len(node.core.live_members()) == n - 1  # type: ignore[union-attr]
    joined = Counter(r.observer for r in net.recorded if isinstance(r.event, PeerJoined))
    assert joined == Counter({i: 1 for i in range(n) if i != 7} | {7: n - 1})


def test_flood_of_replayed_and_stale_gossip_changes_nothing() -> None:
    n = 20
    net = SimNet(n, seed=17, config=MembershipConfig.local())
    net.start_converged()
    net.tap = []
    # Churn while recording everything on the wire: updates, a false suspicion, a leave, a crash.
    for k in range(3):
        net.hosts[3].core.update_self(net.now, endpoints=[(f"192.0.2.{k + 1}", 51820)])  # type: ignore[union-attr]
        net._after(3)
        net.run_for(1)
    net.hosts[4].core.leave(net.now)  # type: ignore[union-attr]
    net._after(4)
    net.crash(5)
    net.run_for(10)
    captured, net.tap = net.tap, None
    before = net.snapshot()
    net.recorded.clear()
    # Replay all of it, twice, within one second.
    for copy in range(2):
        for m, (j, data, source, ch) in enumerate(captured):
            if net.hosts[j].up:
                net.inject(j, data, source, ch, at=net.now + (copy + m / len(captured)) / 2)
    net.run_for(2)
    assert net.snapshot() == before
    assert [r.event for r in net.recorded if not isinstance(r.event, MessageRejected)] == []
    assert net.rejected["stale"] > 0


def one_mesh(net: SimNet) -> bool:
    """Every up node holds every other up node alive."""
    up = net.up_indices()
    return all(len(h.core.live_members()) == len(up) - 1 for h in net.hosts if h.up and h.core)


def test_meshes_formed_apart_through_different_seeds_merge_when_a_path_opens() -> None:
    # The same seed list everywhere (each seed lists itself too), but the two halves cannot
    # reach each other while they start: each forms a mesh around the seed it reaches.
    n = 12
    net = SimNet(n, seed=21)
    left, right = range(n // 2), range(n // 2, n)
    net.partition([left, right])
    for i in range(n):
        net.start(i, seeds=[0, n // 2])
    net.run_for(20)
    assert {len(h.core.live_members()) for h in net.hosts if h.core} == {n // 2 - 1}
    checks_before = sum(h.core.stats["mesh_checks"] for h in net.hosts if h.core)
    assert checks_before > 0  # each node kept looking at the seed it could not reach
    net.heal()
    t0 = net.now
    assert net.run_for(30, lambda: one_mesh(net))
    assert net.now - t0 < net.config.seed_retry_max + 3
    merges = sum(h.core.stats["merges"] for h in net.hosts if h.core)
    assert merges >= 1
    # Once merged, every seed is a member: looking across falls silent (after one more check
    # by each node whose check of the other seed went unanswered while cut off: it learns
    # who answers there).
    net.run_for(1.5 * net.config.seed_retry_max + 1)
    checks = sum(h.core.stats["mesh_checks"] for h in net.hosts if h.core)
    net.run_for(60)
    assert sum(h.core.stats["mesh_checks"] for h in net.hosts if h.core) == checks
    assert all(h.core.split_suspected() == [] for h in net.hosts if h.core)


def test_a_partition_that_outlives_the_tombstones_heals_through_old_contacts() -> None:
    # No seeds at all: only what each node remembers of the other half.
    n = 12
    config = MembershipConfig.local()
    net = SimNet(n, seed=22, config=config)
    net.start_converged()
    net.run_for(2)
    left, right = range(n // 2), range(n // 2, n)
    net.partition([left, right])
    net.run_for(10 + config.tombstone_ttl + 2)
    # The other half is forgotten (tombstones reaped), not merely held dead.
    assert {len(h.core.members()) for h in net.hosts if h.core} == {n // 2 - 1}
    assert {len(h.core.contacts()) for h in net.hosts if h.core} == {n // 2}
    net.heal()
    t0 = net.now
    assert net.run_for(30, lambda: one_mesh(net))
    assert net.now - t0 < config.contact_retry_max + 3


def test_a_node_alone_for_long_keeps_asking_its_contacts() -> None:
    config = MembershipConfig.local()
    net = SimNet(6, seed=23, config=config)
    net.start_converged()
    net.run_for(2)
    net.partition([[0], range(1, 6)])
    net.run_for(600)  # forty tombstone lifetimes
    lonely = net.hosts[0].core
    assert lonely is not None and lonely.members() == []
    sent = lonely.stats["mesh_checks"]
    # Backed off, but still asking: about one check per contact per contact_retry_max.
    assert 5 * 550 / config.contact_retry_max / 2 < sent < 5 * 600 / config.merge_check_interval
    net.heal()
    assert net.run_for(config.contact_retry_max + 3, lambda: one_mesh(net))


def test_a_seed_list_that_names_the_node_itself_works() -> None:
    n = 6
    net = SimNet(n, seed=24)
    for i in range(n):
        net.start(i, seeds=[0, 1])  # 0 and 1 list themselves
    assert net.run_for(20, lambda: one_mesh(net))
    for i in (0, 1):
        core = net.hosts[i].core
        assert core is not None
        own = net.underlay_address(i)
        assert core.split_suspected() == []
        assert core.stats["merge_joins"] == 0
        assert own not in core.contacts()
