"""Logging set-up shared by the main process and the media workers it spawns.

One line per event, no timestamp (journald adds its own), the level first. A media worker logs
in the same format, its logger names tagged with the worker
(``appliance.media.worker.server[media-0]``), at the level of the main process: the supervisor
passes both as ``--log-level`` and ``--log-format`` (the worker imports no appliance module
but its own and the protocol's, tests/core/test_layers.py).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from appliance.errors import StoreBusy

LOG_LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup(level: str) -> None:
    """Log to stderr at LEVEL (one of LOG_LEVELS)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=FORMAT)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, StoreFaultsInBrief) for f in handler.filters):
            handler.addFilter(StoreFaultsInBrief())
    asyncio_logger = logging.getLogger("asyncio")
    for old in [f for f in asyncio_logger.filters if isinstance(f, OutOfResourcesInBrief)]:
        asyncio_logger.removeFilter(old)
    asyncio_logger.addFilter(OutOfResourcesInBrief())


class StoreFaultsInBrief(logging.Filter):
    """A line reporting a write the database could not take (StoreBusy: a full disk, another
    process's lock, an I/O error) keeps its words but loses its traceback, for the cause:
    the store logs that fault itself, once a minute, and with the disk full every message
    and call step would otherwise add ~30 lines to a journal kept in RAM (whose rate limit
    then silences the whole unit). Any other fault keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        for _ in range(3):  # the fault itself, or what it was raised from
            if error is None or isinstance(error, StoreBusy):
                break
            error = error.__cause__ or error.__context__
        if isinstance(error, StoreBusy):
            record.msg = f"{record.msg} (the database: {error.cause.replace('%', '%%')})"
            record.exc_info = None
            record.exc_text = None
        return True


class LineThrottle:
    """At most one line every INTERVAL seconds of CLOCK; the ones left out are counted, for
    the next line to say (the log filters for what a peer can make us log at will)."""

    def __init__(self, clock: Callable[[], float], interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._next = 0.0
        self._left_out = 0

    def due(self) -> int | None:
        """None: leave this line out (counted). Else the line is logged: how many were left
        out since the last one."""
        now = self._clock()
        if now < self._next:
            self._left_out += 1
            return None
        self._next = now + self._interval
        left_out, self._left_out = self._left_out, 0
        return left_out


class OutOfResourcesInBrief(logging.Filter):
    """asyncio's "socket.accept() out of system resource" (EMFILE: no file descriptor left;
    it retries the accept a second later and logs again, with a traceback) costs the journal
    one line, without the traceback, at most one every INTERVAL seconds, the ones left out
    counted in the next: a connection flood made it log 3-7 MB/s. Anything else asyncio
    logs passes unchanged."""

    INTERVAL = 60.0
    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 interval: float = INTERVAL) -> None:
        super().__init__()
        self._throttle = LineThrottle(clock, interval)

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(self.MESSAGE)):
            return True
        left_out = self._throttle.due()
        if left_out is None:
            return False
        error = record.exc_info[1] if record.exc_info else None
        record.msg = ("x out of file descriptors: new connections wait (%s)%s; see LimitNOFILE "
                      "in docs/install.md")
        record.args = (error or "no error given",
                       f", {left_out} more since the last line" if left_out else "")
        record.exc_info = None
        record.exc_text = None
        return True


def worker_format(worker: str) -> str:
    """FORMAT with the logger names tagged with the media worker WORKER."""
    return FORMAT.replace("%(name)s", f"%(name)s[media-{worker}]")


def current_level() -> str:
    """The main process's level as LOG_LEVELS spells it, for a worker's ``--log-level``."""
    level = logging.getLogger("appliance").getEffectiveLevel()
    for name in LOG_LEVELS:
        if level <= logging.getLevelNamesMapping()[name.upper()]:
            return name
    return LOG_LEVELS[-1]
