"""The proxy's branch and call deadlines (Timer C, reaping, call expiry) as one heap.

Entries are ``(deadline, seq, key)``; the key of a branch's entry is its client transaction,
not the ``Branch``: an entry left behind (Timer C of an answered branch) then holds no Branch
and Context until it is pruned. Entries are checked when due (the proxy's ``handle_timer``
asks the owner what the key's deadline is now): one made stale by a later change is skipped
or moved, so only a deadline brought *earlier* strictly needs ``arm``. When the heap has grown
well past what is live, it is pruned to one entry per live key, at its current deadline.

The owner passes ``deadline_of`` (a key's current deadline, None when the branch or call is
forgotten or has none) and ``live`` (how many branches and calls it tracks). A core module: no
I/O, no logging, no clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import TypeAlias

from appliance.sip.dialogs import Call
from appliance.sip.forwarding import Branch
from appliance.sip.transaction import Transaction

Key: TypeAlias = Transaction | Call  # a branch's client transaction, or a call


class Deadlines:
    """A heap of branch and call deadlines; see the module docstring."""

    def __init__(self, *, deadline_of: Callable[[Key], float | None],
                 live: Callable[[], int]) -> None:
        self._deadline_of = deadline_of
        self._live = live
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def earliest(self) -> float | None:
        """The earliest deadline in the heap (possibly stale), or None."""
        return self._heap[0][0] if self._heap else None

    def arm(self, item: Branch | Call) -> None:
        """Note ITEM's deadline (Timer C, reaping, call expiry) after setting it."""
        if item.deadline is not None:
            key = item.txn if isinstance(item, Branch) else item
            heapq.heappush(self._heap, (item.deadline, next(self._seq), key))
            if self.overgrown():
                self.prune()

    def pop_due(self, now: float) -> Key | None:
        """The key of the next entry due at NOW, taken off the heap; None when none is."""
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None

    def overgrown(self) -> bool:
        live = self._live()
        return len(self._heap) > live + live // 2 + 1024

    def prune(self) -> None:
        """Drop entries of forgotten branches and calls, and of deadlines that moved: they
        would otherwise hold finished calls until their old deadline (Timer C, 3 min)."""
        kept: dict[int, tuple[float, int, Key]] = {}
        for _, seq, key in self._heap:
            deadline = self._deadline_of(key)
            if deadline is not None:
                kept[id(key)] = (deadline, seq, key)  # one entry each, at its deadline
        self._heap = list(kept.values())
        heapq.heapify(self._heap)
