"""The repair schedule of degraded pairs (meshd.core.pairrepair)."""

from __future__ import annotations

import itertools

from meshd.core.pairrepair import MAX_DELAY_S, PairRepairs, RepairStep

A, B = b"a" * 32, b"b" * 32


def test_steps_alternate_with_a_doubling_delay_and_stop_when_the_pair_is_restored() -> None:
    repairs = PairRepairs()
    taken: list[tuple[float, RepairStep]] = []
    t = 100.0
    while t < 300:
        for node_id, step in repairs.plan({A: 99.0}, t):
            assert node_id == A
            taken.append((t, step))
        t += 0.5
    assert [s for _, s in taken[:4]] == [
        RepairStep.RECREATE, RepairStep.ASK_TO_INITIATE, RepairStep.NEXT_ENDPOINT,
        RepairStep.RECREATE,
    ]  # fmt: skip
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(taken)]
    assert gaps[:5] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert max(gaps) == MAX_DELAY_S
    repair = repairs.get(A)
    assert repair is not None and repair.since == 99.0 and repair.attempts == len(taken)
    # Restored: forgotten; a new degradation starts over with a re-creation.
    assert repairs.plan({}, t) == [] and repairs.get(A) is None
    assert repairs.plan({A: t}, t) == [(A, RepairStep.RECREATE)]


def test_each_pair_has_its_own_schedule() -> None:
    repairs = PairRepairs()
    assert repairs.plan({A: 1.0}, 10.0) == [(A, RepairStep.RECREATE)]
    assert repairs.plan({A: 1.0, B: 10.5}, 11.0) == [(B, RepairStep.RECREATE)]
    assert repairs.plan({A: 1.0, B: 10.5}, 12.0) == [(A, RepairStep.ASK_TO_INITIATE)]
    assert repairs.next_deadline() == 13.0
