"""A token bucket per key: a burst, then one every interval. Sans-I/O: the caller passes `now`.

Used for what a Client's phone can spend on the office's bill at will (a MESSAGE to a number
becomes an SMS by the modem, docs/sms.md "Limits"): the burst covers a person sending a few
texts in a row; the refill is about what the modem can send anyway, so a compromised phone
cannot queue hours of modem time.

A key's bucket that has filled up again is the same as one never used, so it is dropped: only
keys that took a token recently are remembered, and at most `max_keys` of them (the least
recently used forgotten first, which refills it: the price of bounded memory).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

MAX_KEYS = 4096


class TokenBucket:
    def __init__(self, burst: int, interval: float, max_keys: int = MAX_KEYS) -> None:
        """BURST tokens at most per key; one more every INTERVAL seconds."""
        self.burst = burst
        self.interval = interval
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # tokens, at

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        # A clock that went back counts as no time passed (not as a debt to wait out).
        elapsed = max(0.0, now - at)
        return min(float(self.burst), tokens + elapsed / self.interval)

    def take(self, key: Hashable, now: float) -> float:
        """0.0 when KEY had a token (taken), else the seconds until it has one."""
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            return (1.0 - tokens) * self.interval
        self._buckets[key] = (tokens - 1.0, now)
        self._buckets.move_to_end(key)
        self._forget(now)
        return 0.0

    def _forget(self, now: float) -> None:
        """Drop the full buckets at the old end, and the oldest beyond max_keys."""
        while self._buckets:
            key, (tokens, at) = next(iter(self._buckets.items()))
            full = tokens + max(0.0, now - at) / self.interval >= self.burst
            if not full and len(self._buckets) <= self._max_keys:
                break
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
