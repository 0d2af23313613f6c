"""The warning throttle: one warning per key per interval, in bounded memory."""

from __future__ import annotations

from appliance.services.throttle import MAX_KEYS, Throttle


def test_the_warning_throttle_is_bounded_and_forgets_the_oldest_first() -> None:
    now = 0.0
    throttle = Throttle(60.0, clock=lambda: now, max_keys=3)
    assert all(throttle.allow(k) for k in "abc")
    assert not throttle.allow("a")
    assert throttle.allow("d")  # "a" forgotten: at most three remembered
    assert throttle.allow("a") and not throttle.allow("c") and not throttle.allow("d")
    now = 61.0
    assert throttle.allow("c")
    big = Throttle(60.0, clock=lambda: 0.0)
    for n in range(5 * MAX_KEYS):
        assert big.allow(n)
    assert len(big._last) == MAX_KEYS  # before: every key kept while all were recent
    assert not big.allow(5 * MAX_KEYS - 1)
