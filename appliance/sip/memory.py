"""Giving memory back after a burst of SIP load.

A few hundred calls a second leave tens of thousands of lingering transactions and calls
for 64·T1 (sip.proxy). Once they are gone, CPython has freed the objects, but glibc keeps
the freed heap pages mapped: the process's RSS stays at its peak. ``trim()`` runs a full
garbage collection and then glibc's ``malloc_trim(0)``, which returns free pages to the
kernel. CPython's own small-object arenas are returned when they empty, so what remains
after a trim is what long-lived objects (bindings, caches) pin down in partly used arenas.

``BurstTrimmer`` decides when: after the number of live items it is told about has risen
past ``threshold`` and then fallen below ``fraction`` of its peak. It costs a few
milliseconds each time, a few times per burst at most. Before it trims, the owner shrinks its
big dicts, in place where others hold them too (``compact``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable
from typing import Any

from appliance.sip.headers import clear_parse_caches

logger = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return function


_TRIM = _malloc_trim()


def trim() -> None:
    """Empty the SIP parse caches, collect garbage, then hand free heap pages back to the
    kernel (glibc only)."""
    clear_parse_caches()
    gc.collect()
    give_back()


def give_back() -> None:
    """Hand the free heap pages of every malloc arena back to the kernel (glibc only; a
    no-op elsewhere). The caller collects garbage first if it wants that freed too."""
    if _TRIM is not None:
        _TRIM(0)


def compact(table: dict[Any, Any]) -> None:
    """Shrink TABLE to the size of what it holds now (a dict never gives back the room a
    burst made it grow). In place, not replaced by a copy: its owner may have handed the very
    same dict to its collaborators."""
    live = dict(table)
    table.clear()
    table.update(live)


class BurstTrimmer:
    def __init__(self, *, threshold: int = 2000, fraction: float = 0.1,
                 before: Callable[[], None] | None = None) -> None:
        self.threshold = threshold
        self.fraction = fraction
        # Run before each trim: the owner shrinks its big dicts (a dict never shrinks by itself,
        # and one sized for a burst's tens of thousands of entries stays that size).
        self.before = before
        self._peak = 0

    def observe(self, live: int) -> bool:
        """Note the current number of live items; trims (and returns True) when a burst
        that reached the threshold has drained."""
        if live > self._peak:
            self._peak = live
            return False
        if self._peak >= self.threshold and live <= self._peak * self.fraction:
            logger.debug("- burst of %d drained to %d: trimming memory", self._peak, live)
            self._peak = live
            if self.before is not None:
                self.before()
            trim()
            return True
        return False
