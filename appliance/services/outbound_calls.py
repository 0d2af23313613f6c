"""Calls out through the outbound routes [svc]: failover along a route's lines, the B2BUA,
and the ``[outbound] max_calls`` count.

Theory of operation (docs/gateways.md). A number goes out through the lines of the
``[[outbound.routes]]`` entry that covers it (``lines_for``): ``gateway:<FriendlyName>``
lines are dialled from a media worker through our own SIP front door to the gateway's
Proxy, the ``modem`` line is `services.gsm_calls`. `_dial_out` tries them in order: a line
that answers 5xx or 408, or gives no sign of life within SETUP_SECONDS, is given up for the
next one; RING_SECONDS (or the caller's ring time) bounds the whole. The provider sees
`caller_id_uri` (`services.caller_id`) as From. Three kinds of call go this way:

- A registered Client dials a number with no app (`route`, the router's hook): a worker
  answers it and bridges it (`bridge`, the B2BUA) to the first line that takes the call,
  forwarding ringing as 180. The same B2BUA rings a Client's phones for a provider's call
  to a ``client:<login>`` DID (`CallsService.route_gateway_invite`).
- ``<Dial><Number>`` (`dial_number`, from `services.dialing`): the answered line is bridged
  on the caller's worker.
- ``POST /Calls`` to a number (`originate`): one CDR (``outbound-api``); each line tried is
  a new leg of that call, and its RCML runs once a line answers.

Each costs money on behalf of an account, so that account must be active and its role allow
Create:Calls (`refusal`), as ``POST /Calls`` requires: a Client's call (`route`) and an
app's ``<Dial><Number>`` (`dial_number`) are checked here, ``POST /Calls`` by the API.

Every call going out counts under ``[outbound] max_calls`` (`max_calls`) while it rings or
talks; one that passed the check holds a place (`_place`) across its awaits, so concurrent
requests cannot all slip in.

`OutboundCalls` is the outbound-routes part of `services.calls.CallsService`, kept in its
own module for size, as `services.dialing` and `services.gsm_calls` are. It writes the CDRs
of the calls it places itself (CALL_LOG); for the rest it goes through the service's public
operations: the live-call table (`list_call`, `forget`, `need_room`), the legs a call places
(`open_child_cdr`, `ring_client`, `line_leg`, `admit_leg`, `until_answered`, `end_line`,
`end_child`), `to_worker`, `spawn`, `need_engine`, `post_status`, `run_app` and its GSM
half (`gsm.dial`). The service tells it which calls count as going out (`hold`,
`release`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from appliance.errors import Forbidden, InvalidInput, Unavailable
from appliance.media.engine import LegId
from appliance.media.protocol import MediaError
from appliance.models import CallRecord, CallStatus, Gateway, mint_sid
from appliance.rcml.runner import App, CallInfo, Hungup, LegEvents
from appliance.services.access import NOT_ACTIVE, Action, has_permission, is_active
from appliance.services.caller_id import ANONYMOUS, caller_id_uri, dialable
from appliance.services.dialing import DIAL_SECONDS, until_either_ends
from appliance.sip.dialogs import cdr_status
from appliance.sip.proxy_ports import Caller, Contact, Decision, Fork, Refuse
from appliance.timefmt import iso

if TYPE_CHECKING:
    from appliance.services.calls import CallsService, LiveCall
    from appliance.services.telephony import CallLog
    from appliance.sip.message import Request
    from appliance.sip.wire import Target

logger = logging.getLogger(__name__)

RING_SECONDS = 60.0  # an outbound leg rings this long at most
# 403 reason for a Client whose account's role may not place calls (api-behaviour.md §4)
CALLS_NOT_PERMITTED = "Missing permission RestComm:Create:Calls"


def no_plus_as_space(name: str, value: str) -> None:
    """InvalidInput when VALUE (the NAME parameter) starts or ends with a space: a phone
    number's "+" sent unencoded in a form body or query string (curl -d "From=+1…")
    arrives as a space, and would be dialled without it."""
    if value != value.strip():
        hint = (": a '+' sent unencoded in a form arrives as a space; send it as %2B"
                if value.strip()[:1].isdigit() else "")
        raise InvalidInput(f"{name} {value!r} starts or ends with a space{hint}")


def _reject_code(code: int) -> int:
    """What the caller hears when no line took the call: busy stays busy, a line failure
    (5xx, 408, nothing tried) is 503, other refusals are passed on."""
    if code == 408 or 500 <= code <= 599 or not 300 <= code <= 699:
        return 503
    return code


class OutboundCalls:
    """The outbound-routes half of `services.calls.CallsService` (see the module
    docstring)."""

    def __init__(self, calls: CallsService, call_log: CallLog,
                 clock: Callable[[], datetime],
                 front_door: Callable[[], tuple[str, int]]) -> None:
        self._calls = calls
        self._log = call_log
        self._clock = clock
        self._front_door = front_door
        # Set by the composition root: the outbound route's lines for a number ([outbound]
        # routes), the cap on outbound calls, the gateways and where each is reached
        # (sip.trunk.Trunk.resolve).
        self.lines_for: Callable[[str], tuple[str, ...]] = lambda _number: ()
        self.max_calls = 4
        self.gateways: Callable[[], Awaitable[list[Gateway]]] | None = None
        self.resolve: Callable[[Gateway], Awaitable[Target | None]] | None = None
        self._outbound: set[str] = set()  # CallSids of the calls going out now

    # -- the [outbound] max_calls count ------------------------------------------------------

    @property
    def going_out(self) -> int:
        """How many calls count against ``max_calls`` now."""
        return len(self._outbound)

    def hold(self, sid: str) -> None:
        """Call SID counts among the calls going out until `release`."""
        self._outbound.add(sid)

    def release(self, sid: str) -> None:
        """Call SID no longer counts as going out (nothing when it did not)."""
        self._outbound.discard(sid)

    @contextlib.contextmanager
    def _place(self) -> Iterator[None]:
        """Hold a place under ``max_calls`` from the check on: until the call is counted
        by its own sid (concurrent requests cannot all slip in), or, for a <Dial><Number>
        child, while it rings."""
        key = f"pending/{mint_sid('CA')}"
        self._outbound.add(key)
        try:
            yield
        finally:
            self._outbound.discard(key)

    # -- a Client's call to a number: the router's hook, the B2BUA ---------------------------

    async def route(self, request: Request, caller: Caller, number: str,
                    now: float) -> Decision | None:
        """A registered Client's INVITE to a number with no app: a worker answers it and
        bridges it to the first line of the number's outbound route that takes the call.
        None when no route covers NUMBER (the router answers 403 No Outbound Route); 403
        CALLS_NOT_PERMITTED when the caller's account lacks Create:Calls."""
        dialled = re.sub(r"[\s\-.()]", "", number)
        lines = self.lines_for(dialled)
        if not lines:
            return None
        # A call out costs money on behalf of the caller's account: its role must allow
        # placing calls and it must be active, as POST /Calls requires (a Client-to-Client
        # call needs nothing).
        refusal = await self.refusal(caller.account_sid)
        if refusal is not None:
            logger.warning("x call %s -> %s: account %s: %s", caller.login, dialled,
                           caller.account_sid, refusal)
            return Refuse(403, refusal)
        if len(self._outbound) >= self.max_calls:
            logger.warning("x call %s -> %s: %d outbound calls already ([outbound] max_calls)",
                           caller.login, dialled, len(self._outbound))
            return Refuse(503, "Too Many Outbound Calls")
        # Counted from the check on: to_worker awaits before the call holds its own place.
        with self._place():
            return await self._calls.to_worker(caller.account_sid, caller.login, dialled,
                                               None, None, lines=lines)

    async def refusal(self, account_sid: str) -> str | None:
        """Why ACCOUNT_SID may not place a call out (it costs money on its behalf), None
        when it may: its role must allow Create:Calls and it must be active, as POST /Calls
        requires (CALLS_NOT_PERMITTED, NOT_ACTIVE). The account service answers from
        memory (`AppResolver.account`)."""
        account = await self._calls.apps.account(account_sid)
        if account is None or not has_permission(account, Action.CREATE, "Calls"):
            return CALLS_NOT_PERMITTED
        if not is_active(account):
            return NOT_ACTIVE
        return None

    async def bridge(self, live: LiveCall) -> None:
        """The B2BUA: ring the number out (failover along the route), forward ringing as
        180, answer the caller when the far end answers, bridge, and hang up the other side
        when one side hangs up."""
        calls = self._calls
        info, engine = live.info, calls.need_engine()
        child: LiveCall | None = None
        rang = False

        async def ringing() -> None:
            nonlocal rang
            if not rang:
                rang = True
                with contextlib.suppress(MediaError, TimeoutError):
                    async with asyncio.timeout(DIAL_SECONDS):
                        await engine.answer(info.leg, code=180)

        try:
            if live.client is not None:
                child, code = await self._ring_local(info, live.events, live.client, ringing)
            else:
                child, code = await self._dial_out(info, live.events, info.to,
                                                   live.lines or (), ring_seconds=RING_SECONDS,
                                                   near=info.leg, on_ringing=ringing)
            if child is None:
                if not live.events.ended:
                    with contextlib.suppress(MediaError, TimeoutError):
                        async with asyncio.timeout(DIAL_SECONDS):
                            await engine.reject(info.leg, code=_reject_code(code))
                return
            async with asyncio.timeout(DIAL_SECONDS):
                await engine.answer(info.leg)
                await engine.bridge(info.leg, child.info.leg)
            await until_either_ends(live.events, child.events, None)
        except (MediaError, TimeoutError, Hungup) as err:
            logger.info("x call %s: bridge to %s ended: %s", info.sid, info.to,
                        err or type(err).__name__)
        except Exception:  # noqa: BLE001 - one call's bug must not take others down
            logger.exception("x call %s: bridge failed", info.sid)
        finally:
            for leg_live in (live, child):
                if leg_live is not None and not leg_live.events.ended:
                    with contextlib.suppress(MediaError, TimeoutError):
                        async with asyncio.timeout(DIAL_SECONDS):
                            await engine.hangup(leg_live.info.leg)
            if child is not None:
                await calls.end_child(child)
            calls.forget(live)  # which also releases its place among the calls going out

    async def _ring_local(self, parent: CallInfo, parent_events: LegEvents, login: str,
                          on_ringing: Callable[[], Awaitable[None]]
                          ) -> tuple[LiveCall | None, int]:
        """A provider's call to a ``client:`` DID: ring Client LOGIN's phones with the
        caller's number as From (an outbound-dial child CDR)."""
        sid = await self._calls.open_child_cdr(parent, login)
        return await self._calls.ring_client(parent, login, sid, ring_seconds=RING_SECONDS,
                                             cancel=parent_events, on_ringing=on_ringing,
                                             from_user=dialable(parent.from_) or ANONYMOUS)

    # -- <Dial><Number> ----------------------------------------------------------------------

    async def dial_number(self, parent: CallInfo, cancel: LegEvents, number: str,
                          lines: tuple[str, ...], *, ring_seconds: float,
                          caller_id: str | None) -> tuple[LiveCall | None, int]:
        """<Dial><Number>: NUMBER out through LINES with failover (as `route`), from
        PARENT's worker so the answered child can be bridged there; CANCEL ending stops it.
        403 when PARENT's account may not call out (`refusal`; the Dialer said why in a
        Notification before ringing). While it rings it counts among the [outbound]
        max_calls calls going out, like every other outbound call: 486 when that many are
        out already."""
        refusal = await self.refusal(parent.account_sid)
        if refusal is not None:
            logger.warning("x call %s: <Dial> %s: account %s: %s", parent.sid, number,
                           parent.account_sid, refusal)
            return None, 403
        if len(self._outbound) >= self.max_calls:
            logger.warning("x call %s: <Dial> %s: %d outbound calls already",
                           parent.sid, number, self.max_calls)
            return None, 486
        with self._place():
            return await self._dial_out(parent, cancel, number, lines,
                                        ring_seconds=ring_seconds, near=parent.leg,
                                        caller_id=caller_id)

    # -- POST /Calls to a number -------------------------------------------------------------

    async def originate(self, account_sid: str, *, from_: str, number: str, app: App,
                        ring_seconds: int) -> CallRecord:
        """POST /Calls to a number: out through the number's outbound route (failover as
        for <Dial><Number>), its RCML runs once a line answers. One CDR, outbound-api."""
        calls = self._calls
        lines = self.lines_for(number)
        if not lines:
            raise Forbidden(f"No outbound route for {number}: no [[outbound.routes]] prefix "
                            "covers it")
        calls.need_engine()  # after the route check: a number nobody can reach is a 403
        calls.need_room()
        if len(self._outbound) >= self.max_calls:
            raise Unavailable(f"Too many outbound calls ({self.max_calls} at once)")
        with self._place():  # counted from the check on, across the CDR's write
            record = await self._log.opened(account_sid=account_sid, from_=from_, to=number,
                                            direction="outbound-api")
        leg = LegId("LG" + mint_sid("CA")[2:])  # replaced by each line's leg
        info = CallInfo(sid=record.sid, account_sid=account_sid, from_=from_, to=number,
                        direction="outbound-api", leg=leg, app=app, answered=True,
                        timestamp=iso(self._clock()))
        live = calls.list_call(info)
        self._outbound.add(record.sid)
        calls.post_status(info, "initiated")
        calls.spawn(self._run_originated(live, lines, float(ring_seconds)),
                    f"call {record.sid}")
        return record

    async def _run_originated(self, live: LiveCall, lines: tuple[str, ...],
                              ring_seconds: float) -> None:
        calls = self._calls
        info, status = live.info, CallStatus.FAILED
        rang = False

        async def ringing() -> None:
            nonlocal rang
            if not rang:
                rang = True
                calls.post_status(info, "ringing")

        try:
            answered, code = await self._dial_out(info, LegEvents(), info.to, lines,
                                                  ring_seconds=ring_seconds, near=None,
                                                  on_ringing=ringing, caller_id=info.from_,
                                                  own=live)
            if answered is None:
                status = cdr_status(code, canceled=live.canceled)
                logger.info("x call %s to %s: no line took it (%d)", info.sid, info.to, code)
                return
            calls.post_status(info, "answered")
            await calls.run_app(live)
            status = CallStatus.COMPLETED
        except Exception as err:  # noqa: BLE001 - Hungup, or a bug: the CDR is closed anyway
            status = live.final_status(err)
        finally:
            if live.events.answered.is_set() and not live.events.ended:
                with contextlib.suppress(MediaError, TimeoutError):
                    async with asyncio.timeout(DIAL_SECONDS):
                        await calls.need_engine().hangup(info.leg)
            calls.forget(live)
            final = await self._log.ended(info.sid, live.closing_status(status))
            calls.post_status(info, "completed", final.duration if final is not None else 0)

    # -- failover along a route's lines ------------------------------------------------------

    async def _dial_out(self, parent: CallInfo, parent_events: LegEvents, number: str,
                        lines: tuple[str, ...], *, ring_seconds: float, near: LegId | None,
                        on_ringing: Callable[[], Awaitable[None]] | None = None,
                        caller_id: str | None = None, own: LiveCall | None = None,
                        ) -> tuple[LiveCall | None, int]:
        """Dial NUMBER through LINES in order until one answers. A line that answers 5xx or
        408, or gives no sign of life within SETUP_SECONDS, is given up for the next one;
        RING_SECONDS bounds the whole (a line gets what is left of it). Returns the answered
        child leg (its CDR open, direction outbound-dial), or None and the last final
        status. Each line tried gets its own child CDR; with OWN (``POST /Calls``) each try
        is a new leg of that call and its CDR is OWN's. The provider sees CALLER_ID
        (`caller_id_uri`)."""
        calls = self._calls
        engine, code = calls.need_engine(), 503
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ring_seconds
        gateways = {g.friendly_name: g for g in await self.gateways()} if self.gateways else {}
        for line in lines:
            if parent_events.ended or (own is not None and own.canceled):
                return None, 487
            if deadline - loop.time() < 1.0:
                logger.info("- call %s: no ringing time left for line %s", parent.sid, line)
                break
            if line == "modem":
                child, code = await calls.gsm.dial(parent, parent_events, number,
                                                   deadline=deadline, near=near,
                                                   on_ringing=on_ringing, own=own)
                if child is not None:
                    return child, 200
                if parent_events.ended:
                    return None, 487
                logger.info("x call %s: modem line failed (%d): trying the next line",
                            parent.sid, code)
                continue
            gateway = gateways.get(line.removeprefix("gateway:"))
            if gateway is None:
                logger.warning("x call %s: outbound route line %s: no gateway has that "
                               "FriendlyName", parent.sid, line)
                continue
            target = await self.resolve(gateway) if self.resolve is not None else None
            if target is None:
                continue
            leg, child = await calls.line_leg(parent, number, own)
            calls.admit_leg(leg, parent.account_sid, Fork(
                callee=number, contacts=(Contact(f"sip:{number}@{gateway.proxy}", target),),
                cdr_sid="", keep_credentials=True))
            host, port = self._front_door()
            from_uri = caller_id_uri(gateway, caller_id)
            logger.info("> call %s: %s out by gateway %s (%s:%s) as %s", parent.sid, number,
                        gateway.friendly_name, target.host, target.port, from_uri)
            try:
                async with asyncio.timeout(DIAL_SECONDS):
                    await engine.dial(f"sip:{number}@{gateway.proxy}", leg=leg,
                                      username=gateway.user_name, password=gateway.password,
                                      ring_seconds=min(600.0, deadline - loop.time()),
                                      near=near, proxy=f"sip:{host}:{port};lr",
                                      from_uri=from_uri)
                code = await calls.until_answered(child, parent_events, on_ringing)
            except (MediaError, TimeoutError) as err:
                logger.info("x call %s: gateway %s: %s", parent.sid, gateway.friendly_name, err)
                code = 503
            if code == 200:
                return child, 200
            await calls.end_line(leg, child, code, own)
            if parent_events.ended:
                return None, 487
            if not (code == 408 or 500 <= code <= 599):
                return None, code
            logger.info("x call %s: gateway %s answered %d: trying the next line", parent.sid,
                        gateway.friendly_name, code)
        return None, code
