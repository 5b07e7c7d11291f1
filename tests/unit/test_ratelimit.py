from meshd.core.ratelimit import SourceRateLimiter, TokenBucket, source_group


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


def test_ipv6_sources_are_grouped_by_64() -> None:
    # Issue #22: rotating through one /64 gave every address a fresh burst.
    rl = SourceRateLimiter(rate=1, burst=2)
    assert [rl.allow(f"2001:db8:0:7::{i:x}", 0.0) for i in range(1, 5)] == [
        True, True, False, False,
    ]  # fmt: skip
    assert rl.allow("2001:db8:0:8::1", 0.0)  # the next /64 is another source
    assert [rl.allow(h, 0.0) for h in ("192.0.2.1", "192.0.2.2")] == [
        True,
        True,
    ]  # IPv4: per address


def test_source_groups() -> None:
    assert source_group("2001:db8:0:7:a:b:c:d") == "2001:db8:0:7::/64"
    assert source_group("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_group("192.0.2.1") == "192.0.2.1"
    assert source_group("not an address") == "not an address"


def test_token_bucket_is_one_budget_with_burst_and_rate() -> None:
    bucket = TokenBucket(rate=100, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.005)  # half a token
    assert bucket.take(0.01)
    assert [bucket.take(60.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
