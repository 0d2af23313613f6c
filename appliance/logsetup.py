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

LOG_LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup(level: str) -> None:
    """Log to stderr at LEVEL (one of LOG_LEVELS)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=FORMAT)


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
