"""INVITE branches the proxy has given up on, remembered for a while after their client
transaction ended: what a late 2xx from one of them needs (``sip.responses``).

Theory of operation. A branch's INVITE client transaction can end without a 2xx: Timer B
(the phone never answered, not even 100 Trying), a branch we cancelled (the caller's CANCEL,
Timer C, another phone answering) reaped after 64·T1 of silence, or the branch's own non-2xx
final once Timer D has run (at once over TCP). Its callee can still answer: its 200 crossed
our CANCEL, or a proxy or provider behind the branch forwards its own callee's late 2xx
after its 487 (RFC 3261 §16.7 step 5). RFC 6026 forbids a proxy to forward a response that
matches no client transaction, and rightly: anyone may put our Via on top of a forged
response. Dropped, though, the 2xx leaves the callee's phone believing it is connected,
retransmitting its 200 for 64·T1 with nobody on the line before it gives up with a BYE.

So the transaction leaves a small record behind (``Ended``): the branch's INVITE as we sent
it (the headers an ACK and a BYE copy: our Via, From, To, Call-ID, CSeq) and where it went,
for ``ENDED_FOR`` (64·T1, as long as a callee retransmits a 2xx), at most ``MAX_ENDED`` of
them (the oldest forgotten first). A 2xx whose top Via branch and CSeq method name one of
them (a fresh 64-bit branch of ours: not something a stranger can guess) gets our ACK and
BYE; its retransmissions our ACK again (``Ended.ack``). Nothing goes to the caller, and a
2xx matching no record is dropped as before.

Kept apart from ``sip.responses`` (which decides what a late 2xx does) because this is only
bookkeeping: no I/O, no logging, the clock passed in.
"""

from __future__ import annotations

from appliance.sip.hop import stub
from appliance.sip.message import Request
from appliance.sip.transaction import T1
from appliance.sip.transaction_keys import TransactionKey
from appliance.sip.wire import Target

# RFC 3261 §13.3.1.4: a UAS retransmits its 2xx for 64·T1 while no ACK comes (RFC 6026's
# Timer M waits as long), so that long after its branch ended its answer can still arrive.
ENDED_FOR = 64 * T1
# A record costs ~0.4 KB (the few headers below; measured with tracemalloc, 10,000 are
# ~4 MB). Every branch that ends without a 2xx leaves one for 32 s: a busy, declined,
# cancelled or unanswered call, or a forked call's losing phones. 10,000 cover ~300 such
# branches a second, the proxy's whole call rate (sip.md "Limits"); past that the oldest
# are forgotten first, and a late 2xx from one of them is dropped, as without this record.
MAX_ENDED = 10_000
# What ``forwarding.hang_up`` reads of the INVITE to build the ACK and the BYE.
ENDED_HEADERS = frozenset({"via", "from", "to", "call-id", "cseq"})


class Ended:
    """An ended INVITE branch: the INVITE as sent (``ENDED_HEADERS`` only), where it went,
    until when it is remembered, and our ACK once we have answered its 2xx (with where it
    went: sent again for each retransmission)."""

    __slots__ = ("request", "target", "until", "ack")

    def __init__(self, request: Request, target: Target, until: float,
                 ack: tuple[Request, Target] | None = None) -> None:
        self.request = request
        self.target = target
        self.until = until
        self.ack = ack


class EndedBranches:
    """The ended INVITE branches by client transaction key (``client_key``), oldest first.

    Every record is kept for the same ``keep_for``, on a monotonic clock, so insertion
    order is expiry order: expiring is popping from the front, with no heap."""

    def __init__(self, max_size: int = MAX_ENDED, keep_for: float = ENDED_FOR) -> None:
        self.max_size = max_size
        self.keep_for = keep_for
        self._records: dict[TransactionKey, Ended] = {}

    def __len__(self) -> int:
        return len(self._records)

    def remember(self, key: TransactionKey, request: Request, target: Target,
                 now: float) -> Ended | None:
        """Keep REQUEST (the INVITE of the branch with client transaction KEY, sent to
        TARGET) until NOW + ``keep_for``; a record already kept for KEY keeps its ACK and
        moves to the back. None when nothing is kept (``max_size`` 0, or a request that no
        longer has its Via)."""
        self.expire(now)
        if self.max_size <= 0 or not request.values("via"):
            return None  # nothing to keep, or nothing an ACK could be built from
        old = self._records.pop(key, None)
        record = Ended(stub(request, ENDED_HEADERS), target, now + self.keep_for,
                       old.ack if old is not None else None)
        self._records[key] = record
        while len(self._records) > self.max_size:
            del self._records[next(iter(self._records))]
        return record

    def get(self, key: TransactionKey, now: float) -> Ended | None:
        """The record kept for KEY, unless it has expired."""
        record = self._records.get(key)
        if record is None or record.until <= now:
            return None
        return record

    def expire(self, now: float) -> None:
        """Forget the records whose time is up."""
        records = self._records
        while records:
            key = next(iter(records))
            if records[key].until > now:
                return
            del records[key]

    def compact(self) -> None:
        """Recreate the dict (a dict never shrinks) after a burst has drained."""
        self._records = dict(self._records)
