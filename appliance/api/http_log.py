"""The HTTP server's own log: malformed requests in one throttled line each, not tracebacks.

aiohttp logs every request it cannot parse (a request line or header over its limits, a bad
header) at ERROR with a traceback of about ten lines. Anyone on the LAN can send those without
credentials, so each must cost the journal (kept in RAM on the Pi) a bounded amount: one
warning line, at most one every INTERVAL seconds, the ones left out counted in the next. Other
errors of the server (a bug of ours) keep their traceback."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from appliance.logsetup import LineThrottle

INTERVAL = 60.0  # seconds between two lines about malformed requests

logger = logging.getLogger("appliance.api.http")


class MalformedRequests(logging.Filter):
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 interval: float = INTERVAL) -> None:
        super().__init__()
        self._throttle = LineThrottle(clock, interval)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RequestPayloadError):  # a body it could not decode, answered
            error = error.__cause__  # 400 by the handler already
        if not isinstance(error, HttpProcessingError):
            return True
        left_out = self._throttle.due()
        if left_out is None:
            return False
        source = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = str(error.message or type(error).__name__).strip()[:160]
        record.msg = "x malformed HTTP request from %s answered %s: %s%s"
        record.args = (source, error.code, reason,
                       f" ({left_out} more since the last line)" if left_out else "")
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def server_logger() -> logging.Logger:
    """The logger to hand aiohttp's server (``AppRunner(..., logger=...)``), with a fresh
    throttle for each server started."""
    for old in [f for f in logger.filters if isinstance(f, MalformedRequests)]:
        logger.removeFilter(old)
    logger.addFilter(MalformedRequests())
    return logger
