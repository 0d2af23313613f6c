"""Per-source budgets against scanners and password crackers (sip.md §3).

Two budgets per source address (an IP string; the caller decides whether ports count):

* failed digest authentications: ``max_failures`` within ``failure_window`` seconds ban the
  source for ``ban_time`` seconds (svcrack found a stock Kamailio's password at once). Each
  failure is noted with the login it tried; a correct password clears only that login's
  failures, so that holding one Client's password does not reset the count of guesses at
  another's. A source address can be spoofed over UDP, but a failure is counted only for a
  digest answering a nonce issued to that very address (``digest.Nonces``), so only whoever
  sees the replies sent to it can get it banned;
* unauthenticated requests: a token bucket of ``unauthenticated_per_minute`` (svwar/svmap
  sweeps, REGISTER floods).

Addresses ``exempt`` names (the providers' addresses, whose calls are taken without a digest)
are outside the unauthenticated budget only: their requests go on once their tokens are spent
(``exempt`` is asked only then: it is dearer than the bucket) — except what the caller says
is not ``exemptible``: a REGISTER (providers never register to us; the front door answers one
from there 403 without a digest, within the budget). A provider sends every inbound call's
INVITE, BYE and OPTIONS unauthenticated from one address, so a busy office would exhaust any
per-minute budget and its inbound calls would be cut. Whoever spoofs that address escapes the
budget too, but reaches only what the provider does (our DIDs, sip.md §3), and the proxy's and
the transport's own caps (transactions, calls, handlers in progress) still bound what a flood
of it costs.
Their failed digests count, and a ban holds against them, like anyone's. Sparing them would
give whoever sends from a provider's address unlimited password guesses: a host there at a
port that is not the provider's own is challenged like anyone, and so is a phone sharing the
address. And it is not needed to keep a blind
spoofer from getting a provider banned (which would cut the inbound calls): a failure counts
only for a digest answering a nonce issued to that very address (``digest.Nonces``), so only
whoever sees the replies sent there can get it banned, as for any address.

Sources ``spared`` names (an address *and port*: our own media workers' SIP sockets on
loopback) are never counted nor banned, whatever their address's record says: a bad digest
from one is a bug of ours, not a guess, and a ban of loopback would drop every worker's
signalling, and with it every call that needs one. Other ports of the same address are
counted and banned as usual.

What to do with a refused source is the caller's choice: reply 503/403 or drop, and log once.
Memory is bounded: at most ``max_sources`` records, the least recently seen evicted first,
except that a record holding a ban or failures is passed over for one of the
``EVICTION_SCAN`` oldest that holds neither. A source under attack keeps touching its record;
and a cracker who falls quiet while it sweeps OPTIONS from spoofed addresses (one cheap
packet each) does not wipe its own ban or failure count that way: only records that
themselves hold failures (a spoofed failed digest each) can push it out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Final

# fail2ban's asterisk jail defaults are maxretry 5 / findtime 10 min / bantime 10 min.
MAX_FAILURES: Final = 5
FAILURE_WINDOW: Final = 600.0
BAN_TIME: Final = 600.0
# A desk phone sends a handful of unauthenticated requests a minute (REGISTER before its
# challenge, OPTIONS); 60 leaves room for a phone rebooting with many lines.
UNAUTHENTICATED_PER_MINUTE: Final = 60
MAX_SOURCES: Final = 10_000  # ~200 bytes a record: ~2 MB worst case
EVICTION_SCAN: Final = 16  # oldest records looked at for one without a ban or failures


@dataclass
class _Record:
    failures: list[tuple[float, str]] = field(default_factory=list)  # (time, login)
    banned_until: float = 0.0
    tokens: float = -1.0  # -1: bucket not used yet (starts full)
    refilled_at: float = 0.0


class Guard:
    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        failure_window: float = FAILURE_WINDOW,
        ban_time: float = BAN_TIME,
        unauthenticated_per_minute: int = UNAUTHENTICATED_PER_MINUTE,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.ban_time = ban_time
        self.rate = unauthenticated_per_minute
        self.max_sources = max_sources
        self._records: OrderedDict[str, _Record] = OrderedDict()
        # Sources served past the unauthenticated budget (set by the composition root: the
        # providers'); their failures count and bans hold like anyone's.
        self.exempt: Callable[[str], bool] | None = None
        # (address, port) -> whether it is one of our media workers: never counted nor
        # banned (set by the composition root; see the module docstring).
        self.spared: Callable[[str, int], bool] | None = None

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, source: str, now: float) -> _Record:
        record = self._records.get(source)
        if record is None:
            record = self._records[source] = _Record()
            while len(self._records) > self.max_sources:
                self._evict(now)
        else:
            self._records.move_to_end(source)
        return record

    def _evict(self, now: float) -> None:
        """Drop one of the oldest records: the first without a ban or failures among the
        EVICTION_SCAN oldest, else the oldest."""
        for source, record in islice(self._records.items(), EVICTION_SCAN):
            if not record.failures and record.banned_until <= now:
                del self._records[source]
                return
        self._records.popitem(last=False)

    def is_spared(self, source: str, port: int | None) -> bool:
        return port is not None and self.spared is not None and self.spared(source, port)

    def is_banned(self, source: str, now: float, port: int | None = None) -> bool:
        """Whether SOURCE is banned; never for SOURCE:PORT when ``spared`` (asked only then:
        this runs for every datagram)."""
        record = self._records.get(source)
        if record is None or record.banned_until <= now or self.is_spared(source, port):
            return False
        self._records.move_to_end(source)
        return True

    def banned_for(self, source: str, now: float) -> float:
        """Seconds left of SOURCE's ban (0: not banned)."""
        record = self._records.get(source)
        return max(0.0, record.banned_until - now) if record is not None else 0.0

    def record_failure(self, source: str, now: float, login: str = "",
                       port: int | None = None) -> bool:
        """Count a failed authentication for LOGIN; True when this failure starts a ban.
        Counted from an ``exempt`` source too, never from a ``spared`` SOURCE:PORT (see the
        module docstring)."""
        if self.is_spared(source, port):
            return False
        record = self._record(source, now)
        horizon = now - self.failure_window
        # Only the last max_failures times matter, so the list never grows past that.
        record.failures = [f for f in record.failures
                           if f[0] > horizon][-self.max_failures + 1 :]
        record.failures.append((now, login))
        if len(record.failures) >= self.max_failures and record.banned_until <= now:
            record.banned_until = now + self.ban_time
            record.failures.clear()
            return True
        return False

    def record_success(self, source: str, login: str = "") -> None:
        """A correct password for LOGIN clears the failures counted for LOGIN (not those
        for other logins, nor an active ban)."""
        record = self._records.get(source)
        if record is not None and record.failures:
            record.failures = [f for f in record.failures if f[1] != login]

    def is_exempt(self, source: str) -> bool:
        return self.exempt is not None and self.exempt(source)

    def ban_notice(self, source: str) -> tuple[bool, str]:
        """What to log now that SOURCE is banned (``record_failure`` returned True): whether
        it is grave, and the line. A provider's address is: its inbound calls are dropped
        too until the ban ends, and the log must say why the office's phones stopped ringing.
        (This module does no I/O; the callers log.)"""
        line = (f"x {source} banned for {self.ban_time:.0f} s after {self.max_failures} "
                "failed authentications")
        if self.is_exempt(source):
            return True, line + ": it is a provider's address, whose inbound calls are " \
                "dropped until then"
        return False, line

    def allow_unauthenticated(self, source: str, now: float, *,
                              exemptible: bool = True) -> bool:
        """Spend one token of SOURCE's unauthenticated budget; False when exhausted, unless
        EXEMPTIBLE and SOURCE is exempt (asked only then)."""
        record = self._record(source, now)
        if record.tokens < 0:
            record.tokens, record.refilled_at = float(self.rate), now
        elapsed = max(0.0, now - record.refilled_at)
        record.tokens = min(float(self.rate), record.tokens + elapsed * self.rate / 60.0)
        record.refilled_at = now
        if record.tokens < 1.0:
            return exemptible and self.is_exempt(source)
        record.tokens -= 1.0
        return True

    def sweep(self, now: float) -> int:
        """Forget records with no ban, no recent failure and a full bucket; returns how many."""
        horizon = now - self.failure_window
        idle = [
            source
            for source, r in self._records.items()
            if r.banned_until <= now
            and not any(t > horizon for t, _ in r.failures)
            and (r.tokens < 0 or r.tokens + (now - r.refilled_at) * self.rate / 60.0 >= self.rate)
        ]
        for source in idle:
            del self._records[source]
        return len(idle)


class LogThrottle:
    """Whether a per-source log line is due: at most one per source every ``interval``
    seconds (a cracker or a spoofer sends hundreds a second), remembering at most
    ``max_sources`` sources, the least recently logged forgotten first."""

    def __init__(self, interval: float, max_sources: int = 1000) -> None:
        self.interval = interval
        self.max_sources = max_sources
        self._logged: OrderedDict[str, float] = OrderedDict()

    def due(self, source: str, now: float) -> bool:
        last = self._logged.get(source)
        if last is not None and now - last < self.interval:
            return False
        self._logged[source] = now
        self._logged.move_to_end(source)
        while len(self._logged) > self.max_sources:
            self._logged.popitem(last=False)
        return True
