"""When SQLite cannot take a write: a full disk, a lock held by another process, an I/O error.

Those are the storage's faults, not a request's: the same write may succeed once space is
freed or the lock released, so the store raises StoreBusy (answered 503 with Retry-After)
and remembers the last one for /health. Each failing write would otherwise log a traceback
(thousands a minute under load, and journald's rate limit then silences the whole unit), so
the store logs one line per cause at most every LOG_INTERVAL seconds, counting the ones left
out, and one line when a write succeeds again. Callers need not log StoreBusy again.

Nothing here writes to find out whether writing works again (an SD card wears with every
write): the next write that succeeds clears the failure, and /health stops reporting one that
is older than FAILING_FOR, as no write since has said whether it still holds.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import StoreBusy

logger = logging.getLogger(__name__)

LOG_INTERVAL = 60.0  # seconds between two log lines about the same cause
FAILING_FOR = 300.0  # seconds a failed write keeps /health degraded when no write follows
# ...and at least this long when writes succeed meanwhile: on a nearly full disk some fit
# between others that fail, and /health (the LED, systemd's status) must not flicker.
HOLD_FOR = 60.0

# Primary result codes (the low byte of the extended ones: SQLITE_IOERR_WRITE...) of the
# storage's faults. A read-only file system (a kernel remounts a failing SD card read-only)
# is one too. SQLITE_CORRUPT is not: a damaged file is no passing state.
_UNAVAILABLE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR,
                          sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY})


@dataclass(frozen=True)
class Failure:
    cause: str  # SQLite's words: "database or disk is full", "database is locked"...
    at: float  # the clock's time of the last failed write with this cause


class WriteFailures:
    """The store's record of its failed writes: one per store, used on its thread only
    (the event loop reads ``last``, replaced whole)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 log_interval: float = LOG_INTERVAL) -> None:
        self._clock = clock
        self._log_interval = log_interval
        self.last: Failure | None = None
        self._logged_at: dict[int, float] = {}  # by primary result code
        self._left_out: dict[int, int] = {}
        self._failed = 0  # since the last "takes writes again" line
        self._wrote_since = False  # a write succeeded after ``last``
        self._recovered_at = -log_interval  # the last "takes writes again" line

    def unavailable(self, err: sqlite3.Error) -> StoreBusy | None:
        """ERR as StoreBusy when it is the storage's fault (then remembered and logged,
        throttled); None for any other error."""
        code = getattr(err, "sqlite_errorcode", None)
        if code is None or code & 0xFF not in _UNAVAILABLE:
            return None
        code &= 0xFF
        cause = str(err) or type(err).__name__
        now = self._clock()
        self.last = Failure(cause, now)
        self._wrote_since = False
        self._failed += 1
        logged = self._logged_at.get(code)
        if logged is not None and now - logged < self._log_interval:
            self._left_out[code] = self._left_out.get(code, 0) + 1
        else:
            self._logged_at[code] = now
            left_out = self._left_out.pop(code, 0)
            logger.error("x the database cannot be written: %s; writes fail (API: 503) "
                         "until it can%s", cause,
                         f" ({left_out} more since the last line)" if left_out else "")
        return StoreBusy(f"The appliance cannot write its database: {cause}", cause=cause)

    def wrote(self) -> None:
        """A write succeeded: the storage takes writes again.

        The throttle is kept: on a nearly full disk some writes succeed (an UPDATE that
        fits a WAL frame being reused) between others that fail, and that too must cost
        the log a line a minute, not a line a write."""
        if self.last is None or self._wrote_since:
            return
        now = self._clock()
        if now - self._recovered_at >= self._log_interval:
            self._recovered_at = now
            logger.warning("- the database takes writes again (%d writes failed meanwhile)",
                           self._failed)
            self._failed = 0
        self._wrote_since = True

    def failing(self, within: float = FAILING_FOR) -> tuple[str, float] | None:
        """The cause of the last failed write and how many seconds ago it was, when it was
        within the last WITHIN seconds and no write has succeeded since (or one has, but
        the failure is not HOLD_FOR old yet); else None."""
        last = self.last
        if last is None:
            return None
        ago = self._clock() - last.at
        if ago >= within or (self._wrote_since and ago >= HOLD_FOR):
            return None
        return (last.cause, ago)
