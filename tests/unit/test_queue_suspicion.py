"""Broadcast queue (memberlist queue.go semantics) and Lifeguard suspicion timeouts."""

from __future__ import annotations

import dataclasses
import math

import pytest

from meshd.core.config import MembershipConfig
from meshd.core.queue import BroadcastQueue
from meshd.core.suspicion import Suspicion
from meshd.core.wire import AnnounceItem, DeadItem, SuspectItem, item_size

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def test_newer_news_about_a_node_replaces_older() -> None:
    q = BroadcastQueue(lambda: 3)
    q.push(A, SuspectItem(A, 1, B))
    q.push(C, SuspectItem(C, 1, B))
    q.push(A, AnnounceItem(b"refutation"))
    assert q.items() == [AnnounceItem(b"refutation"), SuspectItem(C, 1, B)]


def test_retransmit_limit_and_least_sent_first() -> None:
    q = BroadcastQueue(lambda: 2)
    q.push(A, DeadItem(A, 1, B))
    assert q.take(1000) == [DeadItem(A, 1, B)]
    q.push(C, DeadItem(C, 1, B))  # fresh news goes before news already sent once
    assert q.take(1000) == [DeadItem(C, 1, B), DeadItem(A, 1, B)]
    assert q.take(1000) == [DeadItem(C, 1, B)]  # A reached its limit of 2
    assert q.take(1000) == []
    assert len(q) == 0


def test_take_respects_the_byte_budget() -> None:
    q = BroadcastQueue(lambda: 5)
    big, small = AnnounceItem(bytes(500)), DeadItem(C, 1, B)
    q.push(A, big)
    q.push(C, small)
    assert q.take(item_size(small)) == [small]
    # big was never sent, small once: least-sent first
    assert q.take(item_size(big) + item_size(small)) == [big, small]


def test_retransmit_limit_grows_with_log_n() -> None:
    cfg = MembershipConfig.lan()
    assert [cfg.retransmit_limit(n) for n in (1, 9, 10, 99, 1000, 10000)] == [4, 4, 8, 8, 16, 20]


def test_a_cycle_share_below_the_probe_tick_is_refused() -> None:
    with pytest.raises(ValueError, match=r"cycle_interval 0\.4 s is below probe_interval 0\.5 s"):
        dataclasses.replace(MembershipConfig.lan(), cycle_interval=0.4)
    assert dataclasses.replace(MembershipConfig.lan(), cycle_interval=0.5).cycle_interval == 0.5


def test_suspicion_timeout_shrinks_logarithmically_with_confirmations() -> None:
    s = Suspicion(A, k=3, min_timeout=1.5, max_timeout=6.0, now=100.0)
    timeouts = [s.timeout]
    for sender in (B, C, b"d" * 32):
        assert s.confirm(sender)
        timeouts.append(s.timeout)
    expected = [6.0 - 4.5 * math.log(c + 1) / math.log(4) for c in range(4)]
    assert timeouts == pytest.approx(expected)
    assert s.deadline == pytest.approx(101.5)
    assert not s.confirm(b"e" * 32)  # beyond K: nothing more to gain


def test_suspicion_ignores_repeated_senders_and_k0_uses_minimum() -> None:
    s = Suspicion(A, k=2, min_timeout=1.0, max_timeout=4.0, now=0.0)
    assert not s.confirm(A)
    assert s.confirm(B) and not s.confirm(B)
    assert s.confirmations == 1
    assert Suspicion(A, k=0, min_timeout=1.0, max_timeout=4.0, now=0.0).timeout == 1.0


def test_lan_suspicion_bounds() -> None:
    cfg = MembershipConfig.lan()
    # Lifeguard's minimum (mult * log10(N) * interval) under a 2 s floor (real daemons stall).
    assert cfg.suspicion_bounds(5) == pytest.approx((2.0, 8.0))
    assert cfg.suspicion_bounds(1000) == pytest.approx((2.0, 8.0))
    assert cfg.suspicion_bounds(100_000) == pytest.approx((2.5, 10.0))
    # The simulation preset has no floor.
    assert MembershipConfig.local().suspicion_bounds(5) == pytest.approx((0.1, 0.4))
