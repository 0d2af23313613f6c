"""At most one of a kind of warning per key in an interval.

For Notifications that outside traffic can cause at will (every inbound SMS or call to a
number whose application is missing): one a minute says it as well as a thousand, and
spoofed traffic cannot grow the Notifications table with them."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

# At most this many keys are remembered, the least recently allowed forgotten first: spoofed
# traffic with ever new keys cannot grow memory, at the price of a forgotten key's warning
# coming again before its interval is over.
MAX_KEYS = 1024


class Throttle:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: OrderedDict[Hashable, float] = OrderedDict()  # oldest allowed first

    def allow(self, key: Hashable) -> bool:
        """True (and remembered) when nothing was allowed for KEY in the last interval."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return True
