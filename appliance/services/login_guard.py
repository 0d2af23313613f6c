"""Failed API logins, per source address: logged, and limited as SIP's failed digests are.

Without this, a script on the LAN could try passwords as fast as the API answers (500 in 4 s
were measured) and nothing would say so. After MAX_FAILURES wrong passwords within
FAILURE_WINDOW from one address, that address gets 429 with Retry-After for BAN_TIME, right
password or not (a cracker must not learn that a guess was right). A request without
credentials is no failure: curl sends one before it is told to authenticate. The failures
are counted per login (``sip.guard.Guard``): the admin's right password does not wipe the
count of guesses at another account."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from appliance.errors import TooManyRequests
from appliance.sip.guard import Guard, LogThrottle

# More than SIP's 5: an admin mistyping in a browser or a script retrying is not a cracker.
MAX_FAILURES = 10
FAILURE_WINDOW = 600.0
BAN_TIME = 300.0
LOG_INTERVAL = 60.0  # seconds between two lines about one address's failures
MAX_SOURCES = 10_000

logger = logging.getLogger(__name__)


class LoginGuard:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 max_failures: int = MAX_FAILURES) -> None:
        self._clock = clock
        self._guard = Guard(max_failures=max_failures, failure_window=FAILURE_WINDOW,
                            ban_time=BAN_TIME, max_sources=MAX_SOURCES)
        self._logged = LogThrottle(LOG_INTERVAL)

    def check(self, source: str) -> None:
        """Raise TooManyRequests while SOURCE is banned."""
        left = self._guard.banned_for(source, self._clock())
        if left > 0:
            wait = math.ceil(left)
            raise TooManyRequests(f"Too many failed logins from {source}: try again in "
                                  f"{wait} s", retry_after=wait)

    def failed(self, source: str, user: str) -> None:
        now = self._clock()
        if self._guard.record_failure(source, now, user):
            logger.warning("x API: %s banned for %.0f s after %d failed logins (the last "
                           "for %r)", source, BAN_TIME, self._guard.max_failures, user[:64])
        elif self._logged.due(source, now):
            logger.warning("x API: failed login for %r from %s", user[:64], source)

    def succeeded(self, source: str, user: str) -> None:
        self._guard.record_success(source, user)
