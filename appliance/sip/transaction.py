"""RFC 3261 §17 transactions as pure state machines (with the RFC 6026 Accepted state).

Theory of operation (aioquic style). A transaction never touches a socket or a clock. Feed it
``receive(msg, now)`` (and, on the server side, ``send(response, now)``); ask ``get_timer()``
when it next needs waking and call ``handle_timer(now)`` then; after each call drain
``pop_actions()``: ``Transmit`` (send these bytes to the peer), ``Deliver`` (pass this
message up to the TU), ``TimedOut`` (Timer B/F/H expired: tell the TU), ``TransportFailed``
(what the owner reported with ``transport_error``: tell the TU) and ``Terminated`` (forget
the transaction).

Rule 1: every state change goes through a class's ``TRANSITIONS`` table and ``_set_state``.
Rule 2: an input the table does not list is ignored when a peer sent it (a stray or late
retransmission) and raises ``SipStateError`` when our own TU asked for it.
A timer of zero (reliable transports, sip.md §2.3 table) fires on the spot.

The RFC 6026 Accepted state keeps an INVITE transaction alive for 64·T1 after a 2xx so that
INVITE retransmissions are absorbed (server) and 2xx retransmissions still reach the TU
(client) instead of being mistaken for new transactions.

Lingering is cheap: a proxy at a few hundred calls/s holds tens of thousands of transactions
that only wait for their last timer (Completed, Accepted, Confirmed), so such a transaction is
reduced to what can still happen to it: its key, state and deadline, the bytes of the final
response it resends (not the response), and of its request only the headers it may still
build a message from (``stub``): an INVITE client in Completed ACKs a retransmitted final
(``make_ack``), a UAS core in Accepted may build its 2xx retransmissions from ``request``
(``keep_request=False`` when the TU never does, as a proxy). Anything else keeps no request at
all: ``request`` is then a bare request of its method (read from its key), made when asked
for. ``TransactionTable`` keeps their timers in a heap, with no dict per transaction.

Where this differs from RFC 3261's figures, on purpose: an INVITE server in Confirmed answers
a late INVITE retransmission with its final's bytes again (the figure only absorbs ACKs; the
client's Completed state ACKs it again, which is absorbed); Timer D is 32 s whatever T1 (the
RFC's "at least 32 s"); a non-INVITE server the TU ``abandon``s (RFC 4320: no 408) lingers
for Timer J with no final; the RFC 2543 key leaves out the To tag, as pjsip does.

This module holds the machines and their actions only. Their keys are in
``sip.transaction_keys``, the messages they build (``stub``, ``make_trying``, ``make_ack``) in
``sip.hop``, and the table that matches messages to them and keeps their timers in
``sip.transaction_table``, which a transaction knows only as its ``Scheduler``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from appliance.sip.errors import SipStateError
from appliance.sip.hop import STUB_HEADERS, make_ack, make_trying, stub
from appliance.sip.message import Request, Response
from appliance.sip.transaction_keys import client_key, server_key
from appliance.sip.wire import Target

T1 = 0.5  # RTT estimate (RFC 3261 §17.1.1.1)
T2 = 4.0  # cap on non-INVITE and response retransmit intervals
T4 = 5.0  # maximum time a message stays in the network
TRYING_DELAY = 0.2  # RFC 3261 §17.2.1: 100 Trying if the TU is silent for 200 ms


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(enum.Enum):
    PROVISIONAL = "1xx"  # received (client) or sent by the TU (server)
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    REQUEST = "request retransmission"
    ACK = "ACK"
    TIMER_A = "A"
    TIMER_B = "B"
    TIMER_D = "D"
    TIMER_E = "E"
    TIMER_F = "F"
    TIMER_G = "G"
    TIMER_H = "H"
    TIMER_I = "I"
    TIMER_J = "J"
    TIMER_K = "K"
    TIMER_L = "L"
    TIMER_M = "M"
    TIMER_TRYING = "100 Trying"
    TRANSPORT_ERROR = "transport error"  # reported by the owner (§17.1.4, §17.2.4)


class Transmit:
    """Send ``message`` to the peer. ``data`` is its wire form, serialised on first use and
    kept for retransmissions (the transport serialises what it sends itself, so a message
    sent once is serialised once)."""

    __slots__ = ("message", "_data")

    def __init__(self, message: Request | Response, data: bytes | None = None) -> None:
        self.message = message
        self._data = data

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = bytes(self.message)
        return self._data

    def __repr__(self) -> str:
        return f"Transmit({self.message.start_line()!r})"


@dataclass(frozen=True)
class Deliver:
    """Pass ``message`` up to the transaction user."""

    message: Request | Response


@dataclass(frozen=True)
class TimedOut:
    """Timer B, F or H fired: the TU treats it as a 408 (client) or a lost ACK (server)."""

    timer: Input


@dataclass(frozen=True)
class TransportFailed:
    """A message of this transaction could not be sent (RFC 3261 §17.1.4, §17.2.4): a
    client's TU treats it as a 503 (§16.9 for a proxy); the transaction is over, except an
    INVITE server in Accepted, which still absorbs retransmissions (RFC 6026)."""


@dataclass(frozen=True)
class Terminated:
    """The transaction is over; remove it from the table."""


@dataclass(eq=False)
class SentResponse(Response):
    """A final response already sent, kept as its wire bytes only: what a lingering server
    transaction resends when the request is retransmitted (no header objects, no body)."""

    wire: bytes = b""

    def __bytes__(self) -> bytes:
        return self.wire

    @classmethod
    def of(cls, wire: bytes) -> SentResponse:
        """The response whose wire form is WIRE (as we serialised it), read from its status
        line: what a lingering transaction that kept only the bytes hands out to resend."""
        end = wire.find(b"\r\n")
        line = wire[: end if end >= 0 else len(wire)].decode("utf-8", "surrogateescape")
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        return cls(status=int(code), reason=reason, version=version, wire=wire)


Action = Transmit | Deliver | TimedOut | TransportFailed | Terminated
Msg = Request | Response | None
Table = dict[tuple[State, Input], State]


def _transmit(message: Request | Response) -> Transmit:
    return Transmit(message)


def response_input(status: int) -> Input:
    if status < 200:
        return Input.PROVISIONAL
    return Input.SUCCESS if status < 300 else Input.FAILURE


@dataclass
class Timers:
    """Configurable for tests and for links known to be slow; defaults per RFC 3261."""

    t1: float = T1
    t2: float = T2
    t4: float = T4


_DEFAULT_TIMERS = Timers()  # shared: nothing changes a transaction's Timers after creation


class Scheduler(Protocol):
    """The table holding a transaction (``sip.transaction_table.TransactionTable``), as the
    transaction sees it: told whenever the transaction starts a timer."""

    def schedule(self, txn: Transaction) -> None: ...


class Transaction:
    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], State]] = {}
    # Slots: tens of thousands linger at a few hundred calls/s; no per-instance dict.
    __slots__ = ("_request", "reliable", "timers", "state", "_timer", "_deadline", "_more",
                 "_actions", "_table", "_queued", "peer")

    def __init__(
        self, request: Request, *, reliable: bool, now: float, timers: Timers | None = None
    ) -> None:
        # The request; None once nothing is built from it any more (see ``request``).
        self._request: Request | None = request
        self.reliable = reliable
        self.timers = timers or _DEFAULT_TIMERS
        self.state = State.TRYING
        # Pending timers in the order they were first started (``_deadlines``): the first in
        # two slots, any others in a flat (timer, deadline, ...) tuple. At most two are
        # pending at a time and a lingering transaction has one: no dict, no tuple for it.
        self._timer: Input | None = None
        self._deadline: float | None = None
        self._more: tuple[Any, ...] = ()
        # Shared empty tuple until there is something to hand out (most of a lingering
        # transaction's life): an empty list per transaction would cost more than its state.
        self._actions: list[Action] | tuple[()] = ()
        self._table: Scheduler | None = None  # the table holding it (its timer heap)
        self._queued: float | None = None  # the deadline of its entry in that table's heap
        # Where the TU sends this transaction's messages. Kept here for the TU (one slot
        # instead of a TU dict keyed by transaction); the transaction itself never reads it.
        self.peer: Target | None = None

    # --- the surface the transport and TU use ------------------------------------------
    @property
    def request(self) -> Request:
        """The request, or once the transaction keeps none (see ``_release``) a request of
        its method alone (no URI, headers or body), made on each access."""
        request = self._request
        if request is not None:
            return request
        return Request(method=self._method)

    @property
    def _method(self) -> str:
        raise NotImplementedError

    def get_timer(self) -> float | None:
        if self._more:
            return min(self._deadline, *self._more[1::2])  # type: ignore[no-any-return]
        return self._deadline

    def handle_timer(self, now: float) -> None:
        while deadlines := self._deadlines:
            # The earliest; on a tie the first started, as min() over a dict's items gives.
            at = min(range(1, len(deadlines), 2), key=deadlines.__getitem__)
            if deadlines[at] > now:
                return
            self._deadlines = deadlines[: at - 1] + deadlines[at + 1 :]
            self._step(deadlines[at - 1], now, None)

    def transport_error(self, now: float) -> None:
        """The transport could not send what this transaction handed out (its owner knows:
        the transaction never touches one). Reported to the TU; then, in most states, over."""
        if (self.state, Input.TRANSPORT_ERROR) in self.TRANSITIONS:
            self._emit(TransportFailed())
            self._step(Input.TRANSPORT_ERROR, now, None)

    def pop_actions(self) -> list[Action]:
        actions, self._actions = self._actions, ()
        return actions if isinstance(actions, list) else []

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    # --- machinery ---------------------------------------------------------------------
    @property
    def _deadlines(self) -> tuple[Any, ...]:
        """The pending timers as a flat (timer, deadline, timer, deadline, ...) tuple."""
        if self._timer is None:
            return ()
        return (self._timer, self._deadline, *self._more)

    @_deadlines.setter
    def _deadlines(self, deadlines: tuple[Any, ...]) -> None:
        if deadlines:
            self._timer, self._deadline, self._more = deadlines[0], deadlines[1], deadlines[2:]
        else:
            self._timer = self._deadline = None
            self._more = ()

    def _emit(self, action: Action) -> None:
        if self._actions:
            self._actions.append(action)  # type: ignore[union-attr]
        else:
            self._actions = [action]

    def _step(self, event: Input, now: float, message: Msg) -> bool:
        new = self.TRANSITIONS.get((self.state, event))
        if new is None:
            return False
        old = self.state
        self._act(event, old, now, message)  # actions first, so Terminated comes last
        if new is not old:
            self._set_state(new, now)
        return True

    def _set_state(self, new: State, now: float) -> None:
        self.state = new
        if new is State.TERMINATED:
            self._deadlines = ()
            self._emit(Terminated())
        else:
            self._enter(new, now)

    def _start(self, timer: Input, delay: float, now: float) -> None:
        if delay <= 0:
            self._step(timer, now, None)
            return
        deadline = now + delay
        if self._timer is None or (self._timer is timer and not self._more):
            self._timer, self._deadline = timer, deadline  # the usual case: one timer
        else:
            deadlines = self._deadlines
            for at in range(0, len(deadlines), 2):
                if deadlines[at] is timer:  # restarted: keeps its place, as in a dict
                    self._deadlines = deadlines[: at + 1] + (deadline,) + deadlines[at + 2 :]
                    break
            else:
                self._deadlines = (*deadlines, timer, deadline)
        if self._table is not None:
            self._table.schedule(self)

    def _cancel(self, *timers: Input) -> None:
        if self._timer is None:
            return
        if not self._more:
            if self._timer in timers:
                self._timer = self._deadline = None
            return
        deadlines = self._deadlines
        self._deadlines = tuple(
            item for at in range(0, len(deadlines), 2) if deadlines[at] not in timers
            for item in deadlines[at : at + 2])

    def _act(self, event: Input, old: State, now: float, message: Msg) -> None:
        raise NotImplementedError

    def _enter(self, state: State, now: float) -> None:
        """Entry actions: the timers a state starts and stops."""

    def _release(self, keep: Collection[str] = STUB_HEADERS) -> None:
        """The transaction only lingers from here on (absorbing retransmissions until a
        timer ends it, up to 64·T1): keep of the request its method and URI, plus the KEEP
        headers (by default enough for ``make_response``, ``make_ack`` and ``make_cancel``),
        so that thousands of lingering transactions cost a few hundred bytes each rather
        than whole messages with their bodies. Without KEEP nothing is built from the
        request any more and none is kept (its method is in its key). Its key is already
        computed."""
        self._request = stub(self.request, keep) if keep else None


def _table(*rows: tuple[tuple[State, ...], tuple[Input, ...], State]) -> Table:
    return {(s, i): new for states, inputs, new in rows for s in states for i in inputs}


S, I = State, Input  # noqa: E741 - keeps the tables below readable


# --- client transactions ----------------------------------------------------------------


class ClientTransaction(Transaction):
    __slots__ = ("key", "_request_tx")

    def __init__(
        self, request: Request, *, reliable: bool, now: float, timers: Timers | None = None
    ) -> None:
        super().__init__(request, reliable=reliable, now=now, timers=timers)
        self.key = client_key(request)
        self._request_tx: Transmit | None = _transmit(request)  # None once never resent
        self._emit(self._request_tx)

    @property
    def _method(self) -> str:
        return self.key[1]

    def receive(self, response: Response, now: float) -> None:
        self._step(response_input(response.status), now, response)

    def _retransmit(self) -> None:
        if self._request_tx is not None:
            self._emit(self._request_tx)

    def _release(self, keep: Collection[str] = STUB_HEADERS) -> None:
        super()._release(keep)
        self._request_tx = None  # Timer A/E is over: never sent again


class InviteClientTransaction(ClientTransaction):
    __slots__ = ("_interval",)
    TRANSITIONS = _table(
        ((S.CALLING,), (I.TIMER_A,), S.CALLING),
        ((S.CALLING,), (I.TIMER_B,), S.TERMINATED),
        ((S.CALLING, S.PROCEEDING), (I.PROVISIONAL,), S.PROCEEDING),
        ((S.CALLING, S.PROCEEDING, S.ACCEPTED), (I.SUCCESS,), S.ACCEPTED),
        ((S.CALLING, S.PROCEEDING, S.COMPLETED), (I.FAILURE,), S.COMPLETED),
        ((S.COMPLETED,), (I.TIMER_D,), S.TERMINATED),
        ((S.ACCEPTED,), (I.TIMER_M,), S.TERMINATED),
        # Nothing is sent in Accepted: no transport error there.
        ((S.CALLING, S.PROCEEDING, S.COMPLETED), (I.TRANSPORT_ERROR,), S.TERMINATED),
    )

    def __init__(
        self, request: Request, *, reliable: bool, now: float, timers: Timers | None = None
    ) -> None:
        super().__init__(request, reliable=reliable, now=now, timers=timers)
        self.state = State.CALLING
        self._interval = self.timers.t1
        if not reliable:
            self._start(Input.TIMER_A, self._interval, now)
        self._start(Input.TIMER_B, 64 * self.timers.t1, now)

    def _act(self, event: Input, old: State, now: float, message: Msg) -> None:
        if event is Input.TIMER_A:  # doubles without a cap: B ends it after 6 retransmits
            self._retransmit()
            self._interval *= 2
            self._start(Input.TIMER_A, self._interval, now)
        elif event is Input.TIMER_B:
            self._emit(TimedOut(event))
        elif event is Input.FAILURE and isinstance(message, Response):
            if old is not State.COMPLETED:
                self._emit(Deliver(message))
            self._emit(_transmit(make_ack(self.request, message)))
        elif isinstance(message, Response):
            self._emit(Deliver(message))

    def _enter(self, state: State, now: float) -> None:
        self._cancel(Input.TIMER_A, Input.TIMER_B)
        if state is State.COMPLETED:
            self._start(Input.TIMER_D, 0 if self.reliable else 32.0, now)
        elif state is State.ACCEPTED:
            self._start(Input.TIMER_M, 64 * self.timers.t1, now)
        if state is State.COMPLETED:  # a retransmitted final is ACKed again: make_ack
            self._release()
        elif state is State.ACCEPTED:  # the ACK for a 2xx is the TU's: nothing is built here
            self._release(())


class NonInviteClientTransaction(ClientTransaction):
    __slots__ = ("_interval",)
    TRANSITIONS = _table(
        ((S.TRYING,), (I.TIMER_E,), S.TRYING),
        ((S.PROCEEDING,), (I.TIMER_E,), S.PROCEEDING),
        ((S.TRYING, S.PROCEEDING), (I.TIMER_F,), S.TERMINATED),
        ((S.TRYING, S.PROCEEDING), (I.PROVISIONAL,), S.PROCEEDING),
        ((S.TRYING, S.PROCEEDING, S.COMPLETED), (I.SUCCESS, I.FAILURE), S.COMPLETED),
        ((S.COMPLETED,), (I.TIMER_K,), S.TERMINATED),
        ((S.TRYING, S.PROCEEDING, S.COMPLETED), (I.TRANSPORT_ERROR,), S.TERMINATED),
    )

    def __init__(
        self, request: Request, *, reliable: bool, now: float, timers: Timers | None = None
    ) -> None:
        super().__init__(request, reliable=reliable, now=now, timers=timers)
        self._interval = self.timers.t1
        if not reliable:
            self._start(Input.TIMER_E, self._interval, now)
        self._start(Input.TIMER_F, 64 * self.timers.t1, now)

    def _act(self, event: Input, old: State, now: float, message: Msg) -> None:
        if event is Input.TIMER_E:
            self._retransmit()
            t2 = self.timers.t2
            self._interval = t2 if old is State.PROCEEDING else min(2 * self._interval, t2)
            self._start(Input.TIMER_E, self._interval, now)
        elif event is Input.TIMER_F:
            self._emit(TimedOut(event))
        elif isinstance(message, Response) and old is not State.COMPLETED:
            self._emit(Deliver(message))

    def _enter(self, state: State, now: float) -> None:
        if state is State.COMPLETED:
            self._cancel(Input.TIMER_E, Input.TIMER_F)
            self._start(Input.TIMER_K, 0 if self.reliable else self.timers.t4, now)
            self._release(())  # nothing is built from a finished non-INVITE client request


# --- server transactions ----------------------------------------------------------------


class ServerTransaction(Transaction):
    __slots__ = ("key", "_last")

    def __init__(
        self, request: Request, *, reliable: bool, now: float, timers: Timers | None = None
    ) -> None:
        super().__init__(request, reliable=reliable, now=now, timers=timers)
        self.key = server_key(request)
        # The last response sent; once the transaction only lingers, its bytes alone (all a
        # retransmission needs; ``last_response`` wraps them again when asked).
        self._last: Transmit | bytes | None = None
        self._emit(Deliver(request))

    @property
    def _method(self) -> str:
        return self.key[-1]

    @property
    def last_response(self) -> Transmit | None:
        last = self._last
        if isinstance(last, bytes):
            return Transmit(SentResponse.of(last), last)
        return last

    def receive(self, request: Request, now: float) -> None:
        """A retransmission of the request (or the ACK) matched to this transaction."""
        self._step(Input.ACK if request.method == "ACK" else Input.REQUEST, now, request)

    def send(self, response: Response, now: float) -> None:
        """The TU's response; SipStateError when this state cannot send it."""
        if not self._step(response_input(response.status), now, response):
            raise SipStateError(f"cannot send {response.status} in state {self.state.value}")

    def _resend(self) -> None:
        last = self.last_response
        if last is not None:
            self._emit(last)

    def _transmit_response(self, message: Msg) -> None:
        if isinstance(message, Response):
            self._last = last = _transmit(message)
            self._emit(last)

    def _release(self, keep: Collection[str] = STUB_HEADERS) -> None:
        super()._release(keep)
        if isinstance(self._last, Transmit):  # from here on only resent: its bytes will do
            self._last = self._last.data


class InviteServerTransaction(ServerTransaction):
    __slots__ = ("_interval", "_keep_request")
    TRANSITIONS = _table(
        ((S.PROCEEDING,), (I.REQUEST, I.PROVISIONAL, I.TIMER_TRYING), S.PROCEEDING),
        ((S.PROCEEDING, S.ACCEPTED), (I.SUCCESS,), S.ACCEPTED),
        ((S.ACCEPTED,), (I.REQUEST, I.ACK), S.ACCEPTED),
        ((S.ACCEPTED,), (I.TIMER_L,), S.TERMINATED),
        ((S.PROCEEDING,), (I.FAILURE,), S.COMPLETED),
        ((S.COMPLETED,), (I.REQUEST, I.TIMER_G), S.COMPLETED),
        ((S.COMPLETED,), (I.TIMER_H,), S.TERMINATED),
        ((S.COMPLETED, S.CONFIRMED), (I.ACK,), S.CONFIRMED),
        ((S.CONFIRMED,), (I.REQUEST,), S.CONFIRMED),
        ((S.CONFIRMED,), (I.TIMER_I,), S.TERMINATED),
        ((S.PROCEEDING, S.COMPLETED, S.CONFIRMED), (I.TRANSPORT_ERROR,), S.TERMINATED),
        # A 2xx retransmission the TU sent failed: Accepted still absorbs the INVITE's.
        ((S.ACCEPTED,), (I.TRANSPORT_ERROR,), S.ACCEPTED),
    )

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        now: float,
        timers: Timers | None = None,
        auto_trying: bool = True,
        keep_request: bool = True,
    ) -> None:
        """KEEP_REQUEST: keep the headers of the request a 2xx copies while in Accepted (a
        UAS core builds its 2xx retransmissions from ``request``); False when the TU never
        builds a response after its first 2xx (a proxy forwards the 2xx it receives)."""
        super().__init__(request, reliable=reliable, now=now, timers=timers)
        self.state = State.PROCEEDING
        self._interval = self.timers.t1
        self._keep_request = keep_request
        if auto_trying:
            self._start(Input.TIMER_TRYING, TRYING_DELAY, now)

    def _act(self, event: Input, old: State, now: float, message: Msg) -> None:
        if event is Input.TIMER_TRYING:
            if self._last is None:
                self._transmit_response(make_trying(self.request))
        elif old is State.ACCEPTED and event is Input.SUCCESS and message is not None:
            # The TU's own 2xx retransmission: sent, not kept (Accepted resends nothing, and
            # a 2xx with its SDP held for 64·T1 per call is what lingering must not cost).
            self._emit(_transmit(message))
        elif event in (Input.PROVISIONAL, Input.SUCCESS, Input.FAILURE):
            self._cancel(Input.TIMER_TRYING)
            self._transmit_response(message)
        elif event is Input.REQUEST and old is not State.ACCEPTED:
            self._resend()  # absorbed in Accepted: the TU retransmits its 2xx itself
        elif event is Input.TIMER_G:
            self._resend()
            self._interval = min(2 * self._interval, self.timers.t2)
            self._start(Input.TIMER_G, self._interval, now)
        elif event is Input.TIMER_H:
            self._emit(TimedOut(event))
        elif event is Input.ACK and old is State.ACCEPTED and message is not None:
            self._emit(Deliver(message))  # RFC 6026 §8.7: ACK for 2xx goes up

    def _enter(self, state: State, now: float) -> None:
        if state is State.ACCEPTED:
            # Nothing is resent from here: the TU retransmits its 2xx itself (RFC 6026).
            self._last = None
            self._release(STUB_HEADERS if self._keep_request else ())
            self._start(Input.TIMER_L, 64 * self.timers.t1, now)
            return
        if state is not State.PROCEEDING:
            # Completed and Confirmed resend the final's bytes and absorb the ACK by key:
            # nothing is built from the request any more.
            self._release(())
        if state is State.COMPLETED:
            if not self.reliable:
                self._start(Input.TIMER_G, self._interval, now)
            self._start(Input.TIMER_H, 64 * self.timers.t1, now)
        elif state is State.CONFIRMED:
            self._cancel(Input.TIMER_G, Input.TIMER_H)
            self._start(Input.TIMER_I, 0 if self.reliable else self.timers.t4, now)


class NonInviteServerTransaction(ServerTransaction):
    __slots__ = ()
    TRANSITIONS = _table(
        ((S.TRYING,), (I.REQUEST,), S.TRYING),
        ((S.TRYING, S.PROCEEDING), (I.PROVISIONAL,), S.PROCEEDING),
        ((S.PROCEEDING,), (I.REQUEST,), S.PROCEEDING),
        ((S.TRYING, S.PROCEEDING), (I.SUCCESS, I.FAILURE), S.COMPLETED),
        ((S.COMPLETED,), (I.REQUEST,), S.COMPLETED),
        # Timer J ends an abandoned transaction too (``abandon``: no final at all).
        ((S.TRYING, S.PROCEEDING, S.COMPLETED), (I.TIMER_J,), S.TERMINATED),
        ((S.TRYING, S.PROCEEDING, S.COMPLETED), (I.TRANSPORT_ERROR,), S.TERMINATED),
    )

    def send(self, response: Response, now: float) -> None:
        """As ``ServerTransaction.send``; a provisional other than 100 is refused too (RFC
        4320 §4.1: it would stop nothing, the client's Timer F runs regardless)."""
        if 100 < response.status < 200:
            raise SipStateError(f"no {response.status} to a non-INVITE (RFC 4320)")
        super().send(response, now)

    def abandon(self, now: float) -> None:
        """The TU will send no final response: RFC 4320 §4.2 forbids a 408 to a non-INVITE
        (the client's Timer F has fired, or is about to). Retransmissions still in flight are
        absorbed silently (no provisional resent) until Timer J ends the transaction, so they
        are not taken for new requests."""
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise SipStateError(f"cannot abandon in state {self.state.value}")
        self._last = None
        self._release(())
        self._start(Input.TIMER_J, 0 if self.reliable else 64 * self.timers.t1, now)

    def _act(self, event: Input, old: State, now: float, message: Msg) -> None:
        if event is Input.REQUEST:
            self._resend()  # nothing yet in Trying: the retransmission is just absorbed
        elif event in (Input.PROVISIONAL, Input.SUCCESS, Input.FAILURE):
            self._transmit_response(message)

    def _enter(self, state: State, now: float) -> None:
        if state is State.COMPLETED:
            # Nothing is built from a finished non-INVITE request any more (no response may
            # follow the final one): it resends its final response's bytes and matches by key.
            self._release(())
            self._start(Input.TIMER_J, 0 if self.reliable else 64 * self.timers.t1, now)


def server_transaction(
    request: Request, *, reliable: bool, now: float, timers: Timers | None = None
) -> ServerTransaction:
    """The right server transaction for a new request (never for an ACK)."""
    cls = InviteServerTransaction if request.method == "INVITE" else NonInviteServerTransaction
    return cls(request, reliable=reliable, now=now, timers=timers)


def client_transaction(
    request: Request, *, reliable: bool, now: float, timers: Timers | None = None
) -> ClientTransaction:
    cls = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
    return cls(request, reliable=reliable, now=now, timers=timers)
