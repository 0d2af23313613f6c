"""At most one of a kind of warning per key in an interval.

For Notifications that outside traffic can cause at will (every inbound SMS or call to a
number whose application is missing): one a minute says it as well as a thousand, and
spoofed traffic cannot grow the Notifications table with them."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

MAX_KEYS = 1024  # past this, keys not seen for an interval are forgotten


class Throttle:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}

    def allow(self, key: Hashable) -> bool:
        """True (and remembered) when nothing was allowed for KEY in the last interval."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if len(self._last) >= MAX_KEYS:
            self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
        self._last[key] = now
        return True
