"""When to ping each registered contact, and when one is dead (api-behaviour.md §11).

Theory of operation. ``PingSchedule`` keeps one entry per binding (AoR, contact URI), told by
``track`` which bindings exist. It sends nothing: ``handle_timer(now)`` says which contacts
to ping now (``Ping``: the contact and a sequence number telling this ping from its
predecessors), which pings went unanswered and which contacts are dead; the caller sends
the OPTIONS and reports each outcome with ``answered`` or ``failed``. Time is the caller's
``now`` (a monotonic clock: a wall-clock step must neither fire every ping nor stall them).

The rules:

- A new binding is first pinged between one and two ``interval`` s after it appears (its
  ``spread``, 0-1, picks where): a thousand bindings restored at start-up, or registered in
  a burst, are pinged over a whole interval, not at once. Then every ``interval`` s from
  its previous ping.
- At most one ping per contact is in flight, and at most ``max_in_flight`` in all; a ping
  that finds no room waits in a queue (first due, first sent) for one that ends.
- A ping ends answered (any response: see below), failed (its transaction timed out, or the
  transport reported the phone unreachable: a TCP connect refused), not sent (it could not
  leave on our side: no socket, no route; the phone was never asked, so nothing counts), or
  missed: not answered within ``answer_within`` s nor
  before the contact's next ping is due (``min(answer_within, interval)``). A miss counts as
  a failure; a late answer to it counts for nothing.
- ``max_misses`` (3) failures in a row make the contact dead: it is forgotten and reported
  once, for the caller to remove its binding. Any answer, and ``heard`` (the phone
  refreshed its registration), resets the count.

Any response counts as an answer, a 4xx/5xx/6xx too: a phone that does not implement
OPTIONS answers 405 or 501, and it is alive. Restcomm removes the registration on an
error response above 400 (except 486 and 600); we do not, on purpose: removing a phone
that answers would stop its calls until it registers again.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

Key = tuple[str, str]  # (AoR, contact URI): a binding, as the location table tells them apart

MAX_MISSES = 3  # api-behaviour.md §11: "no response for 3 × the interval"
# Pings in flight at once, over all contacts: the answers of live phones take milliseconds,
# a dead phone holds its slot ``answer_within`` s; a tenth of a 2,000-phone table dead at
# once (a floor's switch off) still leaves room for the rest.
MAX_IN_FLIGHT = 256
ANSWER_WITHIN = 32.0  # 64·T1: Timer F of the OPTIONS' own transaction (RFC 3261 §17.1.2.2)


@dataclass(frozen=True, slots=True)
class Ping:
    """One ping to send: to the binding KEY, numbered SEQ (its outcome is reported so)."""

    key: Key
    seq: int


@dataclass(slots=True)
class Tick:
    """What ``handle_timer`` found due."""

    ping: list[Ping] = field(default_factory=list)  # send these now
    missed: list[Ping] = field(default_factory=list)  # given up: forget their transactions
    dead: list[Key] = field(default_factory=list)  # remove these bindings


@dataclass(slots=True)
class _Contact:
    due: float  # when its next ping is due
    wake: float  # when handle_timer next looks at it: DUE, or the in-flight ping's deadline
    misses: int = 0
    pending: int | None = None  # the seq of its ping in flight
    queued: bool = False  # due, waiting for room in flight


class PingSchedule:
    def __init__(self, interval: float, *, max_misses: int = MAX_MISSES,
                 max_in_flight: int = MAX_IN_FLIGHT,
                 answer_within: float = ANSWER_WITHIN) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.max_misses = max_misses
        self.max_in_flight = max_in_flight
        self.answer_within = min(answer_within, interval)
        self._contacts: dict[Key, _Contact] = {}
        self._by_aor: dict[str, set[str]] = {}
        # (wake, seq, key): an entry is live while it is its contact's ``wake``; the others
        # are skipped, and dropped all at once when they outnumber the contacts.
        self._heap: list[tuple[float, int, Key]] = []
        self._order: Iterator[int] = itertools.count()
        self._seq: Iterator[int] = itertools.count(1)
        self._ready: deque[Key] = deque()
        self.in_flight = 0

    def __len__(self) -> int:
        return len(self._contacts)

    # --- the bindings ---------------------------------------------------------------------

    def track(self, aor: str, uris: Collection[str], now: float,
              spread: Callable[[], float]) -> None:
        """AOR's bindings are now URIS: new ones are scheduled (first ping ``interval`` ×
        (1 + SPREAD()) from NOW), those gone are forgotten, the others keep their rhythm."""
        old = self._by_aor.get(aor, set())
        new = set(uris)
        for uri in old - new:
            self._forget((aor, uri))
        for uri in new - old:
            due = now + self.interval * (1.0 + min(max(spread(), 0.0), 1.0))
            self._contacts[(aor, uri)] = contact = _Contact(due=due, wake=due)
            self._push((aor, uri), contact)
        if new:
            self._by_aor[aor] = new
        else:
            self._by_aor.pop(aor, None)

    def heard(self, key: Key) -> None:
        """The contact proved alive otherwise (its phone refreshed the registration)."""
        contact = self._contacts.get(key)
        if contact is not None:
            contact.misses = 0

    def misses(self, key: Key) -> int | None:
        contact = self._contacts.get(key)
        return None if contact is None else contact.misses

    # --- outcomes -------------------------------------------------------------------------

    def answered(self, ping: Ping) -> bool:
        """PING got a response: the contact is alive. False when PING is over already
        (missed, or its contact gone): nothing changes."""
        contact = self._ended(ping)
        if contact is None:
            return False
        contact.misses = 0
        return True

    def failed(self, ping: Ping) -> bool:
        """PING timed out or could not be sent. True when that makes its contact dead: it
        is forgotten, and the caller removes the binding."""
        contact = self._ended(ping)
        if contact is None:
            return False
        return self._miss(ping.key, contact)

    def not_sent(self, ping: Ping) -> bool:
        """PING could not leave on our side (no socket, no route from here): it ends, and
        counts neither way, since the phone was never asked. False when it was over."""
        return self._ended(ping) is not None

    def _ended(self, ping: Ping) -> _Contact | None:
        contact = self._contacts.get(ping.key)
        if contact is None or contact.pending != ping.seq:
            return None
        contact.pending = None
        self.in_flight -= 1
        contact.wake = contact.due
        self._push(ping.key, contact)
        return contact

    def _miss(self, key: Key, contact: _Contact) -> bool:
        contact.misses += 1
        if contact.misses < self.max_misses:
            return False
        self._forget(key)
        uris = self._by_aor.get(key[0])
        if uris is not None:
            uris.discard(key[1])
            if not uris:
                del self._by_aor[key[0]]
        return True

    # --- time -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has something to do (a past time: now)."""
        if self._ready and self.in_flight < self.max_in_flight:
            return 0.0
        heap = self._heap
        while heap:
            when, _, key = heap[0]
            contact = self._contacts.get(key)
            if contact is not None and contact.wake == when and not contact.queued:
                return when
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> Tick:
        tick = Tick()
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            contact = self._contacts.get(key)
            if contact is None or contact.wake != when or contact.queued:
                continue
            if contact.pending is not None:  # its ping is over the deadline: missed
                missed = Ping(key, contact.pending)
                contact.pending = None
                self.in_flight -= 1
                tick.missed.append(missed)
                if self._miss(key, contact):
                    tick.dead.append(key)
                    continue
                if contact.due > now:
                    contact.wake = contact.due
                    self._push(key, contact)
                    continue
            contact.queued = True
            self._ready.append(key)
        while self._ready and self.in_flight < self.max_in_flight:
            key = self._ready.popleft()
            contact = self._contacts.get(key)
            if contact is None or not contact.queued:
                continue
            contact.queued = False
            contact.pending = seq = next(self._seq)
            contact.due = now + self.interval
            contact.wake = now + self.answer_within
            self.in_flight += 1
            self._push(key, contact)
            tick.ping.append(Ping(key, seq))
        return tick

    # --- the heap -------------------------------------------------------------------------

    def _push(self, key: Key, contact: _Contact) -> None:
        heapq.heappush(self._heap, (contact.wake, next(self._order), key))
        if len(self._heap) > 4 * len(self._contacts) + 64:
            self._heap = [(c.wake, next(self._order), k) for k, c in self._contacts.items()
                          if not c.queued]
            heapq.heapify(self._heap)

    def _forget(self, key: Key) -> None:
        contact = self._contacts.pop(key, None)
        if contact is not None and contact.pending is not None:
            self.in_flight -= 1
