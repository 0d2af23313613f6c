"""The table of live transactions: matching messages to them, and their timers in one heap.

``TransactionTable`` holds the server and client transactions (``sip.transaction``) of one
owner (the front door, the proxy, the trunk) by key (``sip.transaction_keys``), finds the one
a request, a CANCEL (RFC 3261 §9.2) or a response belongs to, and keeps every transaction's
next deadline in one heap, so that its owner arms a single timer for all of them.

Kept apart from the state machines, which see the table only as what they tell when a timer
starts (``sip.transaction.Scheduler``): how transactions are found and woken changes for
other reasons than what each one does.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from appliance.sip.message import Request, Response
from appliance.sip.transaction import (
    Action,
    ClientTransaction,
    InviteServerTransaction,
    ServerTransaction,
    Transaction,
)
from appliance.sip.transaction_keys import TransactionKey, client_key, server_key


@dataclass
class TransactionTable:
    """Live transactions by key; the transport asks it for matches and the earliest timer.

    Timers are kept in a heap of (deadline, seq, transaction). ``add`` schedules a new
    transaction, and a transaction in the table schedules itself whenever it starts a timer
    (the only way a deadline can come earlier). Its latest entry is the live one (its
    ``_queued`` deadline, a slot rather than a dict entry per transaction); entries it left
    behind and those of removed transactions are stale: counted, skipped when they reach the
    top, and dropped all at once when they make up a quarter of the heap (an entry holds its
    transaction, finished or not, until its deadline). So ``get_timer`` is O(1) and
    ``handle_timer`` O(log n) per due timer (amortised), whatever the number of live
    transactions (a proxy at a few hundred calls/s keeps tens of thousands for 64·T1).
    """

    servers: dict[TransactionKey, ServerTransaction] = field(default_factory=dict)
    clients: dict[TransactionKey, ClientTransaction] = field(default_factory=dict)
    _heap: list[tuple[float, int, Transaction]] = field(default_factory=list, repr=False)
    _seq: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _stale: int = field(default=0, repr=False)  # heap entries that are no _queued one

    def __len__(self) -> int:
        return len(self.servers) + len(self.clients)

    def __iter__(self) -> Iterator[Transaction]:
        yield from self.servers.values()
        yield from self.clients.values()

    def add(self, txn: ServerTransaction | ClientTransaction) -> None:
        if isinstance(txn, ServerTransaction):
            self.servers[txn.key] = txn
        else:
            self.clients[txn.key] = txn
        txn._table = self
        self.schedule(txn)

    def remove(self, txn: Transaction) -> None:
        if isinstance(txn, ServerTransaction) and self.servers.get(txn.key) is txn:
            del self.servers[txn.key]
        elif isinstance(txn, ClientTransaction) and self.clients.get(txn.key) is txn:
            del self.clients[txn.key]
        else:
            return
        txn._table = None
        if txn._queued is not None:
            txn._queued = None
            self._stale += 1
            self._maybe_prune()

    def compact(self) -> None:
        """Recreate the dicts (they never shrink) and the heap after a burst has drained."""
        self.servers = dict(self.servers)
        self.clients = dict(self.clients)
        self._prune()

    def _live(self, txn: Transaction) -> bool:
        if isinstance(txn, ServerTransaction):
            return self.servers.get(txn.key) is txn
        return isinstance(txn, ClientTransaction) and self.clients.get(txn.key) is txn

    def schedule(self, txn: Transaction) -> None:
        """Note TXN's next timer (after anything that may have changed it)."""
        when = txn.get_timer()
        if when is None or not self._live(txn):
            return
        queued = txn._queued
        if queued == when:
            return
        if queued is not None:
            self._stale += 1  # superseded
        txn._queued = when
        heapq.heappush(self._heap, (when, next(self._seq), txn))
        self._maybe_prune()

    def _unqueue_stale(self) -> None:
        self._stale = max(self._stale - 1, 0)

    def _maybe_prune(self) -> None:
        if self._stale > 1024 and 4 * self._stale > len(self._heap):
            self._prune()

    def _prune(self) -> None:
        """Drop the stale entries: each holds its transaction, long finished perhaps, until
        its deadline comes up (or for ever, in a table whose timers nobody handles)."""
        kept: dict[int, tuple[float, int, Transaction]] = {}
        for entry in self._heap:
            txn = entry[2]
            if txn._queued == entry[0]:
                # A deadline that came back has two such entries: the first one would fire.
                first = kept.get(id(txn))
                if first is None or entry[1] < first[1]:
                    kept[id(txn)] = entry
        self._heap = list(kept.values())
        heapq.heapify(self._heap)
        self._stale = 0

    def match_request(self, request: Request) -> ServerTransaction | None:
        return self.servers.get(server_key(request))

    @property
    def has_servers(self) -> bool:
        """Whether any server transaction is alive (then ``holds`` may say yes)."""
        return bool(self.servers)

    def holds(self, key: TransactionKey) -> bool:
        """Whether a server transaction with KEY (``server_key``) is alive."""
        return key in self.servers

    def match_cancel(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL targets (RFC 3261 §9.2), if any."""
        key = server_key(cancel)
        txn = self.servers.get((*key[:-1], "INVITE"))
        return txn if isinstance(txn, InviteServerTransaction) else None

    def match_response(self, response: Response) -> ClientTransaction | None:
        return self.clients.get(client_key(response))

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, txn = heap[0]
            if txn._queued == when:
                return when
            heapq.heappop(heap)  # removed, or its timer moved (and was scheduled again)
            self._unqueue_stale()
        return None

    def handle_timer(self, now: float) -> list[tuple[Transaction, list[Action]]]:
        """Fire every due timer; returns each woken transaction's actions and drops the
        ones that terminated."""
        woken: list[tuple[Transaction, list[Action]]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, txn = heapq.heappop(heap)
            if txn._queued != when:
                self._unqueue_stale()
                continue
            txn._queued = None
            timer = txn.get_timer()
            if timer is None:
                continue
            if timer <= now:
                txn.handle_timer(now)
                woken.append((txn, txn.pop_actions()))
            if txn.terminated:
                self.remove(txn)
            else:
                self.schedule(txn)
        return woken
