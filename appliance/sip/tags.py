"""Random hex digits for To tags and nonce salts, read from ``os.urandom`` in bulk.

RFC 3261 §19.3 wants tags cryptographically random; ``secrets.token_hex`` is that, but costs
a system call and a conversion per tag, and the registrar writes one for every REGISTER it
answers (and a salt for every challenge). Here one ``os.urandom`` read, turned into hex once,
serves hundreds of them: each digit is handed out once, in order, so the tags are exactly as
random as ``token_hex``'s. A forked child starts on fresh bytes (``os.register_at_fork``), so
that it never hands out the digits its parent does.
"""

from __future__ import annotations

import os
from typing import Final

# Bytes per read: 8 192 hex digits, ~800 ten-digit tags.
BATCH: Final = 4096


class HexPool:
    """Hex digits from ``os.urandom``, read BATCH bytes at a time."""

    def __init__(self) -> None:
        self._digits = ""
        self._used = 0

    def take(self, count: int) -> str:
        """COUNT fresh random hex digits (at most ``2 * BATCH``)."""
        start = self._used
        end = start + count
        if end > len(self._digits):
            self._digits = os.urandom(BATCH).hex()
            start, end = 0, count
        self._used = end
        return self._digits[start:end]

    def reset(self) -> None:
        """Drop the digits read so far (a forked child's must not be its parent's)."""
        self._digits = ""
        self._used = 0


_POOL: Final = HexPool()
os.register_at_fork(after_in_child=_POOL.reset)


def random_hex(count: int) -> str:
    """COUNT cryptographically random hex digits (``secrets.token_hex(count // 2)``'s
    kind)."""
    return _POOL.take(count)
