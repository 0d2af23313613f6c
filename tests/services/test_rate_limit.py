"""The token bucket that limits what a phone can spend: a burst, then one per interval."""

from __future__ import annotations

from appliance.services.rate_limit import TokenBucket


def test_a_burst_then_one_per_interval_per_key() -> None:
    bucket = TokenBucket(burst=3, interval=6.0)
    assert [bucket.take("mallory", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("mallory", 100.0) == 6.0  # the next token in one interval
    assert bucket.take("alice", 100.0) == 0.0  # another key has its own bucket
    assert bucket.take("mallory", 103.0) == 3.0  # half a token since
    assert bucket.take("mallory", 106.0) == 0.0
    assert bucket.take("mallory", 106.0) == 6.0
    # Back to full (not beyond) after a long quiet spell.
    assert [bucket.take("mallory", 1000.0) for _ in range(4)] == [0.0, 0.0, 0.0, 6.0]


def test_a_clock_that_goes_back_is_no_debt() -> None:
    bucket = TokenBucket(burst=1, interval=6.0)
    assert bucket.take("k", 1000.0) == 0.0
    assert bucket.take("k", 10.0) == 6.0  # the clock went back: no time passed, not -990 s
    assert bucket.take("k", 16.0) == 0.0


def test_memory_is_bounded() -> None:
    bucket = TokenBucket(burst=2, interval=1.0, max_keys=100)
    for n in range(1000):
        bucket.take(n, 0.0)
    assert len(bucket) == 100
    bucket.take("late", 10.0)  # every other bucket has filled up again: forgotten
    assert len(bucket) == 1
