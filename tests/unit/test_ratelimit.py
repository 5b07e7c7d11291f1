from meshd.core.ratelimit import SourceRateLimiter


def test_burst_then_rate_per_source() -> None:
    rl = SourceRateLimiter(rate=10, burst=3)
    assert [rl.allow("a", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert rl.allow("b", 0.0)  # another source has its own bucket
    assert not rl.allow("a", 0.05)  # half a token
    assert rl.allow("a", 0.1)  # one token after 100 ms at 10/s
    assert [rl.allow("a", 10.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_table_is_bounded_and_forgets_the_oldest() -> None:
    rl = SourceRateLimiter(rate=1, burst=1, max_sources=2)
    assert rl.allow("a", 0.0) and rl.allow("b", 0.0)
    assert not rl.allow("a", 0.0)  # a is empty, and now the most recent
    assert rl.allow("c", 0.0)  # evicts b, the least recently seen
    assert rl.allow("b", 0.0)  # b starts over with a full bucket (evicts a)
    assert rl.allow("a", 0.0)  # and so does a
