"""The front door's dispatcher: the ``MessageHandler`` the transport feeds.

Theory of operation. Every message that parsed comes here. What happens to it:

| Message | Outcome |
|---|---|
| from a banned source (``Guard``) | dropped silently (1) |
| a response to our upstream REGISTER | to the trunk client |
| a response to our keep-alive OPTIONS (6) | to the pinger |
| any other response | to the proxy, if one is set; else dropped |
| a retransmission of a request we answered | our last response again |
| ACK | absorbed by our INVITE transaction; else to the proxy; else dropped |
| CANCEL matching an INVITE we answered | 200 (nothing left to cancel) |
| over the unauthenticated budget (2) | 503 + Retry-After, stateless |
| REGISTER | 420 for an unknown ``Require``; else the registrar |
| OPTIONS without a user part (for us) | 420 for an unknown ``Require``; else 200 (3) |
| anything else | 483 at Max-Forwards 0; 420 for an unknown ``Proxy-Require``; else (4) |
| a request that failed to parse | the transport's 400/416/505/513 within budget (2) (5) |

(1) Dropping is kinder than 403 against svcrack: it learns nothing and waits on time-outs.
The transport asks ``is_blocked`` first, so a banned source's datagrams are not even parsed.
A desk phone's address is banned like any other: a spoofer cannot get it banned blind, since
only a digest answering a nonce issued to that address counts as a failure there
(``digest.Nonces``).
(2) Per source IP; a source holding a live binding is exempt, so a phone's subscriptions and
calls never hit it, and so is a provider's address past its budget (``Guard.exempt``): every
inbound PSTN call comes from there unauthenticated. Not its REGISTERs: they spend the budget
and are answered 403 without digest work (providers never register to us). That is all a
provider's address is spared: its failed digests count and a ban holds against it as for any
source.
(3) With ``Allow`` (the proxied methods only once a proxy is set) and ``Accept``;
``Supported`` only when ``SUPPORTED`` names an option tag (it is empty today).
(4) The proxy, or **501 Not Implemented** while none is set (an unmatched CANCEL: 481).
(5) ``may_answer``, the transport's hook: past the budget the broken request is dropped.
(6) CSeq method OPTIONS, and the Via branch and Call-ID of a ping in flight
(``Pinger.on_response``); any other OPTIONS response is the proxy's.

Requests we answer ourselves run through a ``transaction`` server transaction, so UDP
retransmissions are answered from it rather than processed twice (a REGISTER retransmitted
with the same ``nc`` would otherwise look like a replay) and our non-2xx answers to INVITE are
retransmitted until ACKed. Requests for the proxy are not touched: the proxy owns their
transactions.

The proxy slot takes any ``MessageHandler``; ``app.py`` (or the proxy's own wiring) sets
``frontdoor.proxy``. ``sender`` is the transport, set once it exists. (Which TCP
connections may idle as long as a registered phone's flow is the registrar's business:
``Registrar.flows``.)
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from appliance.sip.errors import SipParseError, SipStateError
from appliance.sip.guard import Guard, LogThrottle
from appliance.sip.memory import BurstTrimmer
from appliance.sip.message import (
    Request,
    Response,
    make_response,
    max_forwards_status,
    unsupported_extensions,
)
from appliance.sip.pinger import Pinger
from appliance.sip.register_view import PlainRegister
from appliance.sip.registrar import Registrar
from appliance.sip.tags import random_hex
from appliance.sip.transaction import (
    Action,
    ServerTransaction,
    Transaction,
    Transmit,
    server_transaction,
)
from appliance.sip.transaction_table import TransactionTable
from appliance.sip.uri import SipUri, parse_uri
from appliance.sip.wire import (
    Activity,
    Incoming,
    MessageHandler,
    Sender,
    Target,
    Targets,
    reply_target,
)

logger = logging.getLogger(__name__)

# Option tags we implement as a UAS / proxy (Require, Proxy-Require → 420 otherwise).
SUPPORTED: tuple[str, ...] = ()
LOCAL_METHODS: Final = ("REGISTER", "OPTIONS")
PROXIED_METHODS: Final = ("INVITE", "ACK", "CANCEL", "BYE", "MESSAGE", "INFO", "NOTIFY",
                          "REFER", "SUBSCRIBE", "UPDATE", "PRACK")
ACCEPT: Final = "application/sdp"
RETRY_AFTER: Final = 60  # seconds, on 503 for an exhausted budget: the bucket refills in a minute
# Transactions we keep for requests we answer ourselves. Timer J holds a UDP one for 32 s,
# so this covers ~300 REGISTER/s sustained — 100x a 200-phone office. Past it we still
# answer, without absorbing retransmissions.
MAX_LOCAL_TRANSACTIONS: Final = 10_000
BUDGET_LOG_INTERVAL: Final = 60.0
MAX_LOGGED_SOURCES: Final = 1000


class FrontDoor:
    def __init__(
        self,
        *,
        registrar: Registrar,
        guard: Guard,
        clock: Callable[[], float],
        sender: Sender | None = None,
        proxy: MessageHandler | None = None,
    ) -> None:
        self.registrar = registrar
        self.guard = guard
        self.clock = clock  # wall clock, shared with the registrar and the guard
        self.sender = sender
        self.proxy = proxy
        self.trunk: MessageHandler | None = None  # sip.trunk: upstream registrations
        self.pinger: Pinger | None = None  # sip.pinger: keep-alive OPTIONS to the phones
        # The transport, told which TCP requests were within budget (``wire.Activity``).
        self.activity: Activity | None = None
        # Transactions keep where their responses go (``peer``) and their timers (the
        # table's heap): nothing here is per transaction.
        self._table = TransactionTable()
        self._targets = Targets()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._logged: OrderedDict[str, float] = OrderedDict()
        self._provider_registers = LogThrottle(BUDGET_LOG_INTERVAL, MAX_LOGGED_SOURCES)
        # Gives memory back once a REGISTER burst has drained.
        self._trimmer = BurstTrimmer(before=self._shrink)

    @property
    def transactions(self) -> int:
        return len(self._table)

    def full_budgets(self) -> list[str]:
        """Like ``Proxy.full_budgets``, for the requests answered here."""
        if len(self._table) >= MAX_LOCAL_TRANSACTIONS:
            return [f"local transactions ({len(self._table)} of {MAX_LOCAL_TRANSACTIONS})"]
        return []

    def allow(self) -> str:
        methods = LOCAL_METHODS + (PROXIED_METHODS if self.proxy is not None else ())
        return ", ".join(methods)

    def close(self) -> None:
        """Stop the transaction timer (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- MessageHandler -------------------------------------------------------------------

    def connection_closed(self, connection_id: str) -> None:
        self.registrar.connection_closed(connection_id)
        if self.proxy is not None:
            self.proxy.connection_closed(connection_id)

    def quick(self, data: bytes, source: tuple[str, int]) -> bytes | None:
        """The reply to DATA, a UDP datagram from SOURCE, when it is a plain REGISTER
        (``register_view``) that needs nothing the general path has: no transaction of
        ours holds it, its source is within its budget and its Client is cached. None: give
        DATA to the general path, which answers it exactly as this would have."""
        view = PlainRegister.parse(data, source)
        if view is None:
            return None
        ip = source[0]
        now = self.clock()
        if (self.guard.is_banned(ip, now, source[1])
                or (self._table.has_servers and self._table.holds(view.key))
                or not self._within_budget(ip, now, register=True)):
            return None
        if self._from_provider(ip, now):
            return view.reply(403, [], to_tag=_tag())
        return self.registrar.answer_plain(view, source, now)

    def is_blocked(self, ip: str, port: int) -> bool:
        """Whether everything from IP:PORT is dropped before parsing (the transport's hook):
        IP is banned, whoever else uses it (but one of our media workers, ``Guard.spared``)."""
        return self.guard.is_banned(ip, self.clock(), port)

    def may_answer(self, ip: str) -> bool:
        """Whether IP may have the error reply to a message that failed to parse (the
        transport's hook): a broken request spends the unauthenticated budget like any
        other, and past it is dropped (logged as the 503s are). (A banned source gets
        nothing either: the transport asks ``is_blocked`` first.)"""
        now = self.clock()
        if self._within_budget(ip, now):
            return True
        self._log_over_budget(ip, now)
        return False

    def _within_budget(self, ip: str, now: float, *, register: bool = False,
                       port: int | None = None) -> bool:
        """Whether IP may send one more request: a source with a live binding always may,
        and so does a media worker's socket (IP:PORT ``spared`` by the guard: each bridged
        call's legs and BYEs come from there, 127.0.0.1's budget would cut them past ~30
        calls a minute); any other spends one token of its unauthenticated budget, and a
        provider's address (the guard's ``exempt``) goes on past it — but not with a
        REGISTER (see ``_from_provider``). The quick REGISTER path and ``may_answer`` ask
        this too, so all three treat a source alike."""
        return (self.registrar.is_known_source(ip) or self.guard.is_spared(ip, port)
                or self.guard.allow_unauthenticated(ip, now, exemptible=not register))

    def _from_provider(self, ip: str, now: float) -> bool:
        """Whether a REGISTER from IP is refused (403, no digest work) as from a provider's
        address (``Guard.exempt``): providers never register to us, so nothing from there
        needs a challenge, and a 403 costs less than one. (Its failed digests would be
        counted like anyone's: this is not what bounds guesses from there.) A source with a
        live binding (a phone sharing the address) is not asked, and is answered like any
        phone: a phone's refresh pays nothing for this."""
        if self.registrar.is_known_source(ip) or not self.guard.is_exempt(ip):
            return False
        if self._provider_registers.due(ip, now):
            logger.warning("x REGISTER from %s, a provider's address: refused", ip)
        return True

    async def handle(self, incoming: Incoming) -> None:
        try:
            await self._handle(incoming)
        except SipParseError as err:
            # A header the parser accepted but a typed view cannot read (parsed lazily).
            message = incoming.message
            logger.debug("x %s from %s:%d: %s", message.start_line(), *incoming.source, err)
            if isinstance(message, Request) and message.method != "ACK":
                self._send(make_response(message, 400, to_tag=_tag()), reply_target(incoming))

    async def _handle(self, incoming: Incoming) -> None:
        message = incoming.message
        ip = incoming.source[0]
        now = self.clock()
        if self.guard.is_banned(ip, now, incoming.source[1]):
            return
        if isinstance(message, Response):
            # Responses to our own upstream REGISTERs go to the trunk client; those to our
            # keep-alive OPTIONS to the pinger (the OPTIONS it did not send: the proxy's).
            method = message.cseq.method
            if self.trunk is not None and method == "REGISTER":
                await self.trunk.handle(incoming)
            elif method == "OPTIONS" and self.pinger is not None \
                    and self.pinger.on_response(message):
                pass
            elif self.proxy is not None:
                await self.proxy.handle(incoming)
            return
        txn = self._table.match_request(message)
        if txn is not None:  # a retransmission, or the ACK of our non-2xx
            txn.receive(message, self._now())
            self._run(txn)
            return
        method = message.method
        if method == "ACK":
            if self.proxy is not None:
                await self.proxy.handle(incoming)
            return
        if method == "CANCEL":
            invite = self._table.match_cancel(message)
            if invite is not None:
                self._answer(incoming, make_response(message, 200, to_tag=_tag()))
                return
        register = method == "REGISTER"
        if not self._within_budget(ip, now, register=register, port=incoming.source[1]):
            self._over_budget(incoming, now)
            return
        if incoming.connection_id is not None and self.activity is not None:
            self.activity.vouch(incoming.connection_id)
        if register and self._from_provider(ip, now):
            self._answer(incoming, make_response(message, 403, to_tag=_tag()))
            return
        if register or (method == "OPTIONS" and _for_us(message)):
            await self._local(incoming, message)
        else:
            await self._forward(incoming, message)

    # --- requests we answer ---------------------------------------------------------------

    async def _local(self, incoming: Incoming, request: Request) -> None:
        unsupported = unsupported_extensions(request, SUPPORTED, proxy=False)
        if unsupported:
            response = make_response(request, 420, to_tag=_tag())
            response.add("Unsupported", ", ".join(unsupported))
            self._answer(incoming, response)
            return
        if request.method == "OPTIONS":
            response = make_response(request, 200, to_tag=_tag())
            response.add("Allow", self.allow())
            response.add("Accept", ACCEPT)
            if SUPPORTED:
                response.add("Supported", ", ".join(SUPPORTED))
            self._answer(incoming, response)
            return
        # Open the transaction before the registrar awaits, so that retransmissions
        # arriving meanwhile are absorbed.
        txn = self._open(incoming, request)
        try:
            reply = await self.registrar.handle(incoming)
        except Exception:
            # Not left in Trying, which has no timer: it would absorb the phone's
            # retransmissions unanswered and hold its table slot for ever. A 500 instead
            # (RFC 3261 §21.5.1), resent to retransmissions until Timer J ends it.
            self._fail(incoming, txn, request)
            raise  # the transport logs it, once
        if reply is None:
            if txn is not None:
                self._close(txn)
            return
        self._respond(incoming, txn, reply)

    async def _forward(self, incoming: Incoming, request: Request) -> None:
        status = max_forwards_status(request)
        if status is not None:
            self._answer(incoming, make_response(request, status, to_tag=_tag()))
            return
        unsupported = unsupported_extensions(request, SUPPORTED, proxy=True)
        if unsupported:
            response = make_response(request, 420, to_tag=_tag())
            response.add("Unsupported", ", ".join(unsupported))
            self._answer(incoming, response)
            return
        if self.proxy is not None:
            await self.proxy.handle(incoming)
            return
        if request.method == "CANCEL":
            self._answer(incoming, make_response(request, 481, to_tag=_tag()))
            return
        response = make_response(request, 501, to_tag=_tag())
        response.add("Allow", self.allow())
        self._answer(incoming, response)

    def _over_budget(self, incoming: Incoming, now: float) -> None:
        self._log_over_budget(incoming.source[0], now)
        request = incoming.message
        assert isinstance(request, Request)  # noqa: S101 - only requests reach here
        response = make_response(request, 503, to_tag=_tag())
        response.add("Retry-After", str(RETRY_AFTER))
        # Stateless on purpose: a flood must not fill the transaction table.
        self._send(response, reply_target(incoming))

    def _log_over_budget(self, ip: str, now: float) -> None:
        last = self._logged.get(ip)
        if last is None or now - last >= BUDGET_LOG_INTERVAL:
            self._logged[ip] = now
            self._logged.move_to_end(ip)
            while len(self._logged) > MAX_LOGGED_SOURCES:
                self._logged.popitem(last=False)
            logger.warning("x %s over its budget of %d unauthenticated requests a minute",
                           ip, self.guard.rate)

    # --- server transactions --------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _open(self, incoming: Incoming, request: Request) -> ServerTransaction | None:
        if len(self._table) >= MAX_LOCAL_TRANSACTIONS:
            return None
        try:
            txn = server_transaction(request, reliable=incoming.transport != "udp",
                                     now=self._now())
        except SipParseError:
            return None
        txn.pop_actions()  # the Deliver of the request: we are the TU
        txn.peer = self._targets.share(reply_target(incoming))
        self._table.add(txn)
        return txn

    def _answer(self, incoming: Incoming, response: Response) -> None:
        request = incoming.message
        assert isinstance(request, Request)  # noqa: S101 - only requests are answered
        self._respond(incoming, self._open(incoming, request), response)

    def _fail(self, incoming: Incoming, txn: ServerTransaction | None,
              request: Request) -> None:
        """Answer 500 to REQUEST, whose handling raised; when that fails too, TXN is dropped
        and this second failure only noted: the first is the one raised."""
        try:
            self._respond(incoming, txn, make_response(request, 500, to_tag=_tag()))
        except Exception as err:  # noqa: BLE001 - see above
            if txn is not None:
                self._close(txn)
            logger.warning("x cannot answer a failed %s either (%s): dropped",
                           request.method, type(err).__name__)

    def _respond(self, incoming: Incoming, txn: ServerTransaction | None,
                 response: Response) -> None:
        if txn is None:
            self._send(response, reply_target(incoming))
            return
        try:
            txn.send(response, self._now())
        except SipStateError:
            logger.exception("x cannot answer %s", response.start_line())
            self._close(txn)
            return
        except BaseException:
            self._close(txn)  # never left open unanswered, whatever failed
            raise
        self._run(txn)

    def _run(self, txn: ServerTransaction) -> None:
        """Carry out TXN's actions and make sure its next timer will fire (or drop it once
        it has terminated), even when carrying them out fails."""
        try:
            self._carry_out(txn, txn.pop_actions())
        finally:
            if txn.terminated:
                self._close(txn)
            else:
                self._arm()

    def _carry_out(self, txn: Transaction, actions: list[Action]) -> None:
        target = txn.peer
        for action in actions:
            if isinstance(action, Transmit) and target is not None:
                self._send(action.message, target, action.data)

    def _close(self, txn: ServerTransaction) -> None:
        self._table.remove(txn)

    def _arm(self) -> None:
        when = self._table.get_timer()
        if when is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        for txn, actions in self._table.handle_timer(self._now()):
            self._carry_out(txn, actions)  # the table has dropped those that terminated
        self._arm()
        self._trimmer.observe(len(self._table))

    def _shrink(self) -> None:
        """Recreate the tables that grew during a burst (a dict never shrinks)."""
        self._table.compact()
        self._targets.clear()

    def _send(self, message: Request | Response, target: Target,
              data: bytes | None = None) -> None:
        if self.sender is None:
            logger.warning("x no transport to send %s", message.start_line())
            return
        self.sender.send(message, target, data)


def _for_us(request: Request) -> bool:
    """An OPTIONS for the server itself: a SIP Request-URI without a user part."""
    try:
        uri = parse_uri(request.uri)
    except SipParseError:
        return False
    return isinstance(uri, SipUri) and uri.user is None


def _tag() -> str:
    return random_hex(10)
