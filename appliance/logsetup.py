"""Logging set-up shared by the main process and the media workers it spawns.

One line per event, no timestamp (journald adds its own), the level first. A media worker logs
in the same format, its logger names tagged with the worker (``appliance.media.worker[media-0]``),
at the level of the main process (the supervisor passes it as ``--log-level``).
"""

from __future__ import annotations

import logging
import sys

LOG_LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup(level: str, *, worker: str | None = None) -> None:
    """Log to stderr at LEVEL (one of LOG_LEVELS); WORKER tags a media worker's lines."""
    fmt = FORMAT if worker is None else FORMAT.replace("%(name)s", f"%(name)s[media-{worker}]")
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=fmt)


def current_level() -> str:
    """The main process's level as LOG_LEVELS spells it, for a worker's ``--log-level``."""
    level = logging.getLogger("appliance").getEffectiveLevel()
    for name in LOG_LEVELS:
        if level <= logging.getLevelNamesMapping()[name.upper()]:
            return name
    return LOG_LEVELS[-1]
