"""Voice applications [svc]: the calls that run RCML in a media worker.

Theory of operation (architecture.md "Who handles a call").

Inbound (a registered Client dials a number or Client bound to an RCML app, or a Client with
its own VoiceUrl/VoiceApplicationSid dials anything): the router asks `route_invite`, which
resolves the app (`services.call_apps`), reserves a worker slot
(`MediaEngine.reserve_incoming`) and answers with a `Fork` to the slot's host:port carrying
`X-Leg-Id` and the CDR sid. The proxy forwards the INVITE there and keeps writing the
caller's CDR (direction ``inbound``) exactly as for a Client → Client call; the worker's
INCOMING event for that leg starts a `Runner` task.

Outbound (`POST /Calls`) is `services.api_calls`: a worker dials the Client through our own
front door, which lets that INVITE in unchallenged only from a worker's loopback address and
only for a leg admitted here (`admit_leg`, `media_caller`), and sends a leg meant for one of
the Client's phones there by the Fork `route_media_leg` hands the proxy. A number `To` goes
out through the outbound routes instead (`services.outbound_calls`).

Outside lines (docs/gateways.md): a provider's call to a DID is routed here
(`route_gateway_invite`) like a Client's, to the number's app on a worker; a number with a
``client:<login>`` VoiceUrl, or a Client's call to a number with no app, is bridged by a
worker instead (the B2BUA), which `services.outbound_calls` runs, together with every call
out through the outbound routes and the ``[outbound] max_calls`` count.

GSM voice (calls to the SIM's number, the ``modem`` line) is `services.gsm_calls`.

`services.dialing` (<Dial>), `services.gsm_calls`, `services.outbound_calls` and
`services.api_calls` (POST /Calls) are parts of this service kept in their own modules for
size. They use its public operations only, so the tables below stay this module's to
change: the live-call table (`track_call`, `track_leg`, `list_call`, `live_call`, `forget`,
`need_room`), the legs a call places (`open_child_cdr`, `ring_client`, `dial_client`,
`line_leg`, `admit_leg`, `until_answered`, `end_line`, `end_child`), and `to_worker`,
`spawn`, `need_engine`, `local_hosts`, `post_status`, `run_app`. Of the outbound part the
service calls `bridge` and the count (`hold`, `release`), its POST /Calls part calls
`originate`; the composition root wires its `route` to the router. The API places calls
through ``api_calls.originate``.

Which app a call runs is `services.call_apps` (``apps``, an `AppResolver`: `app_for`,
`match_number`, `number_app`, `account_client`, `unknown_did`). It only reads the store
and the SIP directory, so it needs none of the tables; the service and its parts ask it.

An account that stops being active (suspended, closed) is cut off (`cut_off`, called by
the account service): each of its live calls is ended as ``POST /Calls/{sid}
Status=completed`` ends one, and the apps of its numbers and Clients no longer run
(`services.call_apps`), nor do its apps' <Dial><Number> and <Sms> go out
(`services.outbound_calls`, `services.messaging`).

Every runner and originating task is owned by `self._tasks` and cancelled by `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import struct
import wave
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.errors import Gone, InvalidInput, NotFound, Unavailable
from appliance.media.engine import (
    HangupCause,
    LegChanged,
    LegId,
    LegState,
    MediaEngine,
    MediaEvent,
    NoCapacity,
)
from appliance.media.protocol import MediaError
from appliance.models import (
    CallStatus,
    Recording,
    RecordingSid,
    mint_sid,
)
from appliance.rcml.interpreter import DialAction, DialDone, SendSms
from appliance.rcml.runner import (
    App,
    CallInfo,
    Fetcher,
    Hungup,
    LegEvents,
    Runner,
    wav_seconds,
)
from appliance.services.api_calls import ApiCalls
from appliance.services.call_apps import AppResolver
from appliance.services.caller_id import client_caller_uri
from appliance.services.conferences import ConferencesService
from appliance.services.dialing import DIAL_SECONDS, Dialer
from appliance.services.gsm_calls import GsmCalls, client_login
from appliance.services.outbound_calls import OutboundCalls
from appliance.services.ports import StoreProtocol
from appliance.services.routing import did_in_to
from appliance.services.telephony import CallLog
from appliance.sip.dialogs import cdr_status
from appliance.sip.message import Request
from appliance.sip.proxy_ports import Caller, Contact, Decision, Fork, Refuse
from appliance.sip.wire import Target
from appliance.timefmt import callback_time, iso
from appliance.webhooks import WebhookError, Webhooks

logger = logging.getLogger(__name__)

MAX_LIVE = 200  # voice-app calls at once (the workers' slots bound it far lower)
NO_MEDIA = "Voice Applications Unavailable"  # 503 reason: [media] workers = 0, or all down
RESERVATION_S = 40.0  # a reserved inbound leg whose INVITE never arrives is dropped after this
SETUP_SECONDS = 15.0  # a line with no 18x and no answer by then is given up (failover)
# A stop (SIGTERM: a restart, an upgrade) ends every application's call as a hang-up would,
# then gives the apps this long to do what a hang-up makes them do (a <Record> saves its
# recording and requests its action) before their tasks are cancelled: a slow action URL
# does not hold the stop up for longer (systemd waits 90 s by default).
STOP_GRACE = 5.0

# What an app's own unanswered finals mean for its CDR (the proxy writes it: Fork.cdr_statuses),
# as Twilio reports them: 603 is its <Reject reason="rejected"> (no-answer; "busy" is a 486,
# busy anyway), 487 a POST /Calls/{sid} hang-up before it answered (canceled: `modify`; the
# caller's CANCEL is canceled anyway, and the proxy's Timer C a 408).
APP_FINALS = ((603, CallStatus.NO_ANSWER), (487, CallStatus.CANCELED))
_EVENTS = ("initiated", "ringing", "answered", "completed")
_CAUSE_STATUS = {HangupCause.BUSY: CallStatus.BUSY, HangupCause.NO_ANSWER: CallStatus.NO_ANSWER,
                 HangupCause.REJECTED: CallStatus.BUSY, HangupCause.FAILED: CallStatus.FAILED,
                 HangupCause.WORKER_DIED: CallStatus.FAILED}


@dataclasses.dataclass
class LiveCall:
    info: CallInfo
    events: LegEvents
    runner: Runner | None = None
    # The task that runs the runner and closes the call (its CDR, its `completed` callback):
    # what a stop waits for.
    task: asyncio.Task[None] | None = None
    canceled: bool = False  # hung up before it was answered (POST /Calls/{sid}, a cut-off)
    lines: tuple[str, ...] | None = None  # no app: bridged out through these lines (B2BUA)
    client: str | None = None  # no app: bridged to this Client's phones (a DID's client:)
    bridging: bool = False  # the B2BUA task is running

    def closing_status(self, status: CallStatus) -> CallStatus:
        """The CDR status of the call ending with STATUS: CANCELED instead when the API hung
        it up before it was answered (`canceled`; an answer that came first wins)."""
        if self.canceled and not self.events.answered.is_set():
            return CallStatus.CANCELED
        return status

    def final_status(self, err: BaseException) -> CallStatus:
        """The CDR status of a call whose run ended with ERR: the leg's hang-up cause when
        it ended (busy, no-answer, failed, else completed); with no cause ERR is a bug,
        logged with its traceback, and the call failed."""
        cause = self.events.cause
        if cause is None:
            logger.exception("x call %s failed", self.info.sid, exc_info=err)
            return CallStatus.FAILED
        return _CAUSE_STATUS.get(cause, CallStatus.COMPLETED)


class CallsService:
    def __init__(self, store: StoreProtocol, call_log: CallLog, webhooks: Webhooks,
                 clock: Callable[[], datetime], *, engine: MediaEngine | None,
                 notify: Callable[..., Any], say: Callable[[str, str, str], Any],
                 data_dir: Path, public_base: Callable[[], str],
                 front_door: Callable[[], tuple[str, int]],
                 worker_ports: Callable[[], set[int]] = set) -> None:
        self._store = store
        self._log = call_log
        self._webhooks = webhooks
        self._clock = clock
        self.engine = engine
        self._notify = notify
        self._say = say
        self._data_dir = data_dir
        self._public_base = public_base
        self._front_door = front_door
        self._worker_ports = worker_ports
        # MessagingService.send_from_client: (account, from, to number, body) -> SmsRecord
        self.send_sms: Callable[[str, str, str, str], Awaitable[Any]] | None = None
        self.conferences: ConferencesService | None = None  # <Dial><Conference>
        self._live: dict[LegId, LiveCall] = {}
        self._by_sid: dict[str, LiveCall] = {}
        self._dialled: dict[LegId, str] = {}  # outbound legs -> account sid (media_caller)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False  # stop() has begun: no call starts an app any more
        self._posts: set[asyncio.Task[None]] = set()  # StatusCallback requests under way
        # Which app a call runs (services.call_apps; the composition root sets its directory)
        self.apps = AppResolver(store, notify)
        # worker legs to a gateway, or to one phone of a Client (POST /Calls) -> their Fork
        self._gateway_legs: dict[LegId, Fork] = {}
        # <Dial> (services.dialing). local_hosts: our SIP domain and addresses (set by the
        # composition root; empty = every host is ours): a <Dial><Sip> URI elsewhere is
        # refused, and so is a POST /Calls one (services.api_calls).
        self.local_hosts: Callable[[], Collection[str]] = frozenset
        self._dialer = Dialer(self)
        # GSM voice (services.gsm_calls; the composition root sets its modem, audio, number)
        self.gsm = GsmCalls(self, call_log, clock)
        # Calls out through the outbound routes, and the B2BUA (services.outbound_calls; the
        # composition root sets its routes, max_calls, gateways and resolver)
        self.outbound = OutboundCalls(self, call_log, clock, front_door)
        # POST /Calls (services.api_calls; the composition root sets its contacts_of)
        self.api_calls = ApiCalls(self, store, call_log, clock)
        self._unsubscribe = engine.subscribe(self._on_event) if engine is not None else None

    # -- composition ---------------------------------------------------------------------------

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """End the calls: those running an app first as if the caller hung up, with GRACE
        seconds for their apps to end as they do then (`Runner.stop`) and for the calls to
        be closed and reported (CDR, `completed` StatusCallback); then every task is
        cancelled. No call starts an app meanwhile."""
        self._stopping = True
        apps = [live for live in self._by_sid.values() if live.runner is not None]
        if apps:
            logger.info("- stopping: %d application calls end", len(apps))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*(live.runner.stop() for live in apps
                                           if live.runner is not None))
                    tasks = {live.task for live in apps if live.task is not None}
                    if tasks:
                        await asyncio.wait(tasks)
                    while self._posts:
                        await asyncio.wait(set(self._posts))
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        """Run CORO as a task this service owns until it ends: `stop` cancels and awaits
        every one, so no call's task (runner, bridge, callback, GSM watcher) outlives the
        service or is lost (a bare create_task may be garbage-collected mid-call)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _fetcher(self) -> Fetcher:
        return Fetcher(request=self._webhooks.request, notify=self._notify, say=self._say,
                       save_recording=self._save_recording, send_sms=self._sms,
                       dial=self._dial,
                       cache_dir=self._data_dir / "cache",
                       recordings_dir=self._data_dir / "recordings")

    def post_status(self, info: CallInfo, event: str, duration: int | None = None) -> None:
        """StatusCallback (api-behaviour.md §10.1), fire and forget: initiated, ringing,
        answered, completed. Each request is its own owned task (order is not guaranteed
        when the application server is slow), so a slow application server never holds up
        the call itself."""
        url = info.app.status_callback
        if not url:
            return
        params = {"InstanceId": self._log.instance_id, "AccountSid": info.account_sid,
                  "CallSid": info.sid, "From": info.from_, "To": info.to,
                  "Direction": info.direction, "CallerName": "null", "ForwardedFrom": "null",
                  "CallStatus": event, "Timestamp": callback_time(self._clock()),
                  "CallbackSource": "call-progress-events",
                  "SequenceNumber": str(_EVENTS.index(event))}
        if duration is not None:
            params["CallDuration"] = str(duration)

        async def post() -> None:
            try:
                await self._webhooks.request(url, info.app.status_callback_method, params)
            except WebhookError as err:
                logger.info("x call %s: status callback %s failed: %s", info.sid, event, err)

        task = self.spawn(post(), f"status {info.sid} {event}")
        self._posts.add(task)  # a stop lets them finish within its grace
        task.add_done_callback(self._posts.discard)

    def live_count(self) -> int:
        return len(self._by_sid)

    def on_modem_event(self, event: Any) -> None:
        """The modem's call events (app.py fans the modem's on_event out to here)."""
        self.gsm.on_modem_event(event)

    # -- inbound: the router's hook ---------------------------------------------------------

    async def route_invite(self, request: Request, caller: Caller, user: str,
                           now: float) -> Decision | None:
        """A Fork to a media worker when this INVITE runs an RCML app; None when it does not
        (the router goes on with Client routing)."""
        app, number_sid = await self.apps.app_for(caller, user)
        if app is None:
            return None
        return await self.to_worker(caller.account_sid, caller.login, user, app, number_sid)

    async def to_worker(self, account_sid: str, from_: str, to: str, app: App | None,
                         number_sid: str | None, *, lines: tuple[str, ...] = (),
                         client: str | None = None) -> Decision:
        """Reserve a worker slot for an inbound leg and fork the INVITE there. APP runs on
        it; without an app the worker bridges the call (B2BUA) to CLIENT's phones, or else
        out through LINES."""
        if self.engine is None or self._stopping:
            return Refuse(503, NO_MEDIA)
        if len(self._by_sid) >= MAX_LIVE:
            return Refuse(503, "Too Many Application Calls")
        try:
            slot = await self.engine.reserve_incoming()
        except NoCapacity:
            return Refuse(503, NO_MEDIA)
        sid = self._log.new_sid()
        info = CallInfo(sid=sid, account_sid=account_sid, from_=from_, to=to,
                        direction="inbound", leg=slot.leg, app=app or App(""),
                        timestamp=iso(self._clock()))
        live = LiveCall(info, LegEvents(), lines=lines if app is None else None,
                        client=client if app is None else None)
        self._live[slot.leg] = live
        self._by_sid[sid] = live
        if live.lines:  # out by a route's lines; ringing a Client (no lines) is not going out
            self.outbound.hold(sid)
        # An INVITE that never reaches the worker (caller gone, send failed) frees its entry.
        asyncio.get_running_loop().call_later(RESERVATION_S, self._unclaimed, live)
        how = (f"runs {app.url}" if app is not None else f"rings Client {client}" if client
               else f"goes out by {', '.join(lines)}")
        logger.info("> call %s %s -> %s %s on worker %s", sid, from_, to, how,
                    slot.worker)
        target = Target("udp", slot.host, slot.port)
        return Fork(callee=to, contacts=(Contact(f"sip:{to}@{slot.host}:{slot.port}",
                                                 target),),
                    headers=(("X-Leg-Id", slot.leg),), cdr_sid=sid,
                    phone_number_sid=number_sid, account_sid=account_sid,
                    # A bridged call (no app) passes its callee's own answer on.
                    cdr_statuses=APP_FINALS if app is not None else ())

    # -- outside lines: calls from a gateway (calls out: services.outbound_calls) ------------

    async def route_gateway_invite(self, request: Request, caller: Caller,
                                   number: str) -> Decision:
        """A provider's INVITE to NUMBER (a DID): the IncomingPhoneNumber's app runs on a
        worker; a number without a voice app, no such number, or one of an account that is
        not active (`AppResolver.refused_inactive`) is refused 404. NUMBER being
        the gateway's UserName (the INVITE is addressed to the Contact we registered) and no
        IncomingPhoneNumber, the DID is the To user (``routing.did_in_to``)."""
        found = await self.apps.match_number(number)
        to_did = did_in_to(request, caller, number) if found is None else ""
        if to_did:
            number = to_did
            found = await self.apps.match_number(number)
        if found is None:
            self.apps.unknown_did(number, caller)
            return Refuse(404)
        if await self.apps.refused_inactive(
                found.account_sid, f"number {found.phone_number}",
                f"call from gateway {caller.gateway} ({caller.login})"):
            return Refuse(404)  # word for word an unknown DID's: tells the caller nothing
        login = client_login(found.voice_url)
        if login is not None:
            client = await self.apps.account_client(found.account_sid, login)
            if client is None:
                logger.info("x call from gateway %s to %s: %s names no Client of the "
                            "number's account", caller.gateway, found.phone_number,
                            found.voice_url)
                return Refuse(404, "No Such Client")
            return await self.to_worker(found.account_sid, caller.login, found.phone_number,
                                        None, found.sid, client=client.login)
        app = await self.apps.number_app(found)
        if app is None:
            logger.info("x call from gateway %s to %s: the number has no voice application",
                        caller.gateway, found.phone_number)
            return Refuse(404, "No Voice Application")
        return await self.to_worker(found.account_sid, caller.login, found.phone_number, app,
                                    found.sid)

    def route_media_leg(self, request: Request) -> Decision | None:
        """The Fork of a worker's INVITE for a leg dialled to a gateway (None: not one)."""
        return self._gateway_legs.get(LegId(request.get("X-Leg-Id") or ""))

    # -- the legs a call places --------------------------------------------------------------

    async def ring_client(self, parent: CallInfo, login: str, sid: str, *,
                          ring_seconds: float, cancel: LegEvents, from_user: str,
                          on_ringing: Callable[[], Awaitable[None]] | None = None,
                          ) -> tuple[LiveCall | None, int]:
        """Ring Client LOGIN's phones from PARENT's worker (the front door forks to each) as
        child call SID, until one answers, RING_SECONDS pass or CANCEL ends: the answered
        child leg, or None and the final status (the child CDR then closed). FROM_USER: as
        for `dial_client`."""
        leg = LegId("LG" + mint_sid("CA")[2:])
        child = LiveCall(CallInfo(sid=sid, account_sid=parent.account_sid, from_=parent.from_,
                                  to=login, direction="outbound-dial", leg=leg,
                                  app=parent.app), LegEvents())
        self._live[leg] = child
        try:
            await self.dial_client(leg, parent.account_sid, login, ring_seconds=ring_seconds,
                                   near=parent.leg, from_user=from_user)
            code = await self.until_answered(child, cancel, on_ringing)
        except (MediaError, TimeoutError) as err:
            logger.info("x call %s: ringing Client %s: %s", parent.sid, login, err)
            code = 503
        if code == 200:
            return child, 200
        await self.end_child(child, code)
        return None, code

    async def dial_client(self, leg: LegId, account_sid: str, login: str, *,
                          ring_seconds: float, from_user: str, near: LegId | None = None,
                          fork: Fork | None = None) -> None:
        """Place LEG (on NEAR's worker) to Client LOGIN through our own SIP front door, which
        forks it to each of the Client's registered phones like any call (NAT, TCP, several
        phones), or with FORK to the one phone it names; the proxy lets the worker's INVITE
        in unchallenged as ACCOUNT_SID's (`media_caller`: by the worker's address and the
        admitted X-Leg-Id, never by the From). The phones see ``FROM_USER@<front door
        host>`` as From: the caller ID `caller_id.client_caller` chose (never the worker's
        own ``w0``). Raises MediaError or TimeoutError."""
        self.admit_leg(leg, account_sid, fork)  # media_caller lets its INVITE through
        host, port = self._front_door()
        # FROM_USER may be an app's callerId or a network's caller ID: %-escaped, never raw
        from_uri = client_caller_uri(from_user, host)
        async with asyncio.timeout(DIAL_SECONDS):
            await self.need_engine().dial(f"sip:{login}@{host}:{port}", leg=leg,
                                          ring_seconds=ring_seconds, near=near,
                                          from_uri=from_uri)

    async def line_leg(self, parent: CallInfo, number: str, own: LiveCall | None
                        ) -> tuple[LegId, LiveCall]:
        """A fresh leg for one outbound line: a child call with its own outbound-dial CDR, or
        OWN (a POST /Calls record) re-pointed at the new leg; registered as live."""
        leg = LegId("LG" + mint_sid("CA")[2:])
        if own is None:
            sid = await self.open_child_cdr(parent, number)
            child = LiveCall(CallInfo(sid=sid, account_sid=parent.account_sid,
                                      from_=parent.from_, to=number,
                                      direction="outbound-dial", leg=leg, app=parent.app),
                             LegEvents())
        else:
            child = own
            child.info.leg, child.events = leg, LegEvents()
        self._live[leg] = child
        return leg, child

    async def end_line(self, leg: LegId, child: LiveCall, code: int, own: LiveCall | None
                       ) -> None:
        """LEG (from `line_leg`) did not take the call; CODE is its final status. A child
        call's CDR is closed; OWN's (POST /Calls) stays open for the next line, only the leg
        is dropped."""
        if own is None:
            await self.end_child(child, code)
        else:
            self._live.pop(leg, None)
            self._dialled.pop(leg, None)
            self._gateway_legs.pop(leg, None)

    async def until_answered(self, child: LiveCall, parent_events: LegEvents,
                              on_ringing: Callable[[], Awaitable[None]] | None) -> int:
        """200 once CHILD answers, else its final status (408 when it never showed a sign
        of life within SETUP_SECONDS; 487 when the caller hung up meanwhile)."""
        loop = asyncio.get_running_loop()
        setup_until = loop.time() + SETUP_SECONDS
        alive = False
        while True:
            if parent_events.ended:
                with contextlib.suppress(MediaError, TimeoutError):
                    async with asyncio.timeout(DIAL_SECONDS):
                        await self.need_engine().hangup(child.info.leg)
                return 487
            if not alive and loop.time() > setup_until:
                with contextlib.suppress(MediaError, TimeoutError):
                    async with asyncio.timeout(DIAL_SECONDS):
                        await self.need_engine().hangup(child.info.leg)
                return 408
            try:
                event = await child.events.next(0.2)
            except Hungup:
                return child.events.code or 503
            if isinstance(event, LegChanged) and event.state is LegState.RINGING:
                if not alive:
                    await self._log.ringing(child.info.sid)
                alive = True
                if on_ringing is not None:
                    await on_ringing()
            elif isinstance(event, LegChanged) and event.state is LegState.ANSWERED:
                await self._log.answered(child.info.sid)
                return 200

    async def end_child(self, child: LiveCall, code: int = 200) -> None:
        """Close a child leg: its CDR ends completed once it was answered, else with CODE's
        status (487: canceled), and it is forgotten. A child already closed is left alone,
        since a <Dial> race loser or a bridge may be ended from two places."""
        if self._live.get(child.info.leg) is not child:
            return  # already closed
        self.forget(child)
        self._gateway_legs.pop(child.info.leg, None)
        if child.events.answered.is_set():
            status = CallStatus.COMPLETED
        elif code == 487:
            status = CallStatus.CANCELED
        else:
            status = cdr_status(code, canceled=False)
        await self._log.ended(child.info.sid, status)

    def _on_event(self, event: MediaEvent) -> None:
        if self.gsm.on_media_event(event):
            return  # the GSM side of a loopback pair (services.gsm_calls)
        live = self._live.get(event.leg)
        if live is None:
            return
        live.events.put(event)
        if isinstance(event, LegChanged):
            if event.state is LegState.INCOMING and (live.lines is not None
                                                      or live.client is not None):
                if not live.bridging:
                    live.bridging = True
                    self.spawn(self.outbound.bridge(live), f"call {live.info.sid}")
            elif event.state is LegState.INCOMING and live.runner is None:
                live.runner = Runner(live.info, self.need_engine(), live.events,
                                     self._fetcher())
                live.task = self.spawn(self._run_inbound(live, live.runner),
                                       f"call {live.info.sid}")
                # The INVITE is at the app, which answers it (or not) when its RCML says:
                # the call rings meanwhile, as a POST /Calls call does at the phone.
                self.post_status(live.info, "initiated")
                self.post_status(live.info, "ringing")
            elif event.state is LegState.ENDED and live.runner is None and \
                    not live.bridging and live.info.direction == "inbound":
                self.forget(live)

    async def _run_inbound(self, live: LiveCall, runner: Runner) -> None:
        loop = asyncio.get_running_loop()
        answered_at: float | None = None

        def answered() -> None:
            nonlocal answered_at
            if answered_at is None:
                answered_at = loop.time()
                self.post_status(live.info, "answered")

        async def on_answer() -> None:
            await live.events.answered.wait()
            answered()

        watch = asyncio.ensure_future(on_answer())
        try:
            await runner.run()
        except Exception:  # noqa: BLE001 - one app's bug must not take others down
            logger.exception("x call %s: runner failed", live.info.sid)
        finally:
            watch.cancel()
            if live.events.answered.is_set():  # answered and ended before the watch woke
                answered()
            self.forget(live)
            # Whole seconds answered, as the CDR counts them (CallLog truncates too).
            duration = 0 if answered_at is None else max(0, int(loop.time() - answered_at))
            self.post_status(live.info, "completed", duration)

    async def run_app(self, live: LiveCall) -> None:
        """Run LIVE's RCML app on its leg to the end (Hungup if the leg ends first). The
        runner is kept on LIVE meanwhile, so that POST /Calls/{sid} can redirect it."""
        live.runner = Runner(live.info, self.need_engine(), live.events, self._fetcher())
        live.task = asyncio.current_task()
        await live.runner.run()

    def _unclaimed(self, live: LiveCall) -> None:
        if live.runner is None and not live.bridging and self._live.get(live.info.leg) is live:
            logger.info("x call %s: no INVITE reached the media worker", live.info.sid)
            self.forget(live)

    def track_leg(self, info: CallInfo) -> LiveCall:
        """A live leg: the engine's events for INFO.leg go to the returned LiveCall's events
        (LegEvents) until it is forgotten."""
        live = LiveCall(info, LegEvents())
        self._live[info.leg] = live
        return live

    def track_call(self, info: CallInfo) -> LiveCall:
        """A live call: `track_leg`, and listed by its sid, so POST /Calls/{sid} can end or
        redirect it and it counts in `live_count` (MAX_LIVE)."""
        live = self.track_leg(info)
        self._by_sid[info.sid] = live
        return live

    def list_call(self, info: CallInfo) -> LiveCall:
        """A live call listed by its sid only (POST /Calls/{sid}, `live_count`): no leg's
        events reach it until `line_leg` gives it one (a call that goes out line by line)."""
        live = LiveCall(info, LegEvents())
        self._by_sid[info.sid] = live
        return live

    def need_room(self, calls: int = 1) -> None:
        """Unavailable (503) unless CALLS more live calls fit under MAX_LIVE."""
        if len(self._by_sid) + calls > MAX_LIVE:
            raise Unavailable("Too many application calls")

    def admit_leg(self, leg: LegId, account_sid: str, fork: Fork | None = None) -> None:
        """A worker's INVITE for LEG goes through the front door unchallenged as
        ACCOUNT_SID's (`media_caller`), and with FORK to where FORK says (`route_media_leg`:
        a gateway, or one phone of a Client) rather than to the callee's phones; until LEG
        is forgotten or ended (`end_line`, `end_child`)."""
        self._dialled[leg] = account_sid
        if fork is not None:
            self._gateway_legs[leg] = fork

    def live_call(self, leg: LegId) -> LiveCall | None:
        """The live call or leg on LEG, None once it is forgotten: how an event that does
        not come from the engine (a digit the GSM modem heard) reaches that leg."""
        return self._live.get(leg)

    def forget(self, live: LiveCall) -> None:
        """LIVE's call or leg is over: its events are no longer routed, it is no longer
        listed, trusted or counted as outbound. Its CDR is the caller's to close."""
        self._live.pop(live.info.leg, None)
        self._by_sid.pop(live.info.sid, None)
        self._dialled.pop(live.info.leg, None)
        self._gateway_legs.pop(live.info.leg, None)
        self.outbound.release(live.info.sid)

    def need_engine(self) -> MediaEngine:
        """The media engine for a leg about to be placed, answered or bridged; Unavailable
        (503) when there is none ([media] workers = 0), the answer every voice path gives
        then."""
        if self.engine is None:
            raise Unavailable("no media workers: [media] workers = 0")
        return self.engine

    # -- the legs the workers dial: the proxy's trust hook ----------------------------------

    def media_caller(self, source: tuple[str, int], request: Request) -> Caller | None:
        """The proxy's trust hook: an INVITE from a worker's loopback SIP port for a leg that
        `admit_leg` admitted goes through unchallenged (and no other request does)."""
        leg = LegId(request.get("X-Leg-Id") or "")
        if (source[0] != "127.0.0.1" or source[1] not in self._worker_ports()
                or leg not in self._dialled or request.method != "INVITE"):
            return None
        return Caller(login="", account_sid=self._dialled[leg], media=True)

    # -- POST /Calls/{sid} -------------------------------------------------------------------

    async def modify(self, sid: str, *, status: str | None, app: App | None) -> None:
        live = self._by_sid.get(sid)
        if live is None:
            if await self._store.get_call(sid) is None:
                raise NotFound(f"The call {sid} was not found")
            raise Gone("Call is already completed.")
        engine = self.need_engine()
        if status is not None:
            if status not in ("completed", "canceled"):
                raise InvalidInput("Status must be completed or canceled")
            if status == "canceled" and live.events.answered.is_set():
                return  # canceled applies to calls still ringing (Restcomm)
            # Hung up through the API before it was answered, whichever Status said so: the
            # CDR is canceled, as Twilio reports it (not no-answer: nobody let it ring out).
            live.canceled = not live.events.answered.is_set()
            await self._end(live, engine)
            return
        if app is not None:
            if live.runner is None:
                live.info.app = app  # not running yet: it starts with the new app
            else:
                live.runner.redirect(app)

    async def _end(self, live: LiveCall, engine: MediaEngine) -> None:
        """Hang up LIVE's leg (an inbound one still ringing is refused 487); the task that
        runs the call then closes its CDR and tears down what it placed."""
        leg = live.info.leg
        with contextlib.suppress(MediaError, TimeoutError):
            async with asyncio.timeout(DIAL_SECONDS):
                # Only the runner keeps info.answered: a bridged call (B2BUA) is answered
                # by its leg's events alone, and the worker refuses to reject an answered
                # leg or one we placed (the phone leg of a GSM call to a Client): hung up.
                if (live.info.direction == "inbound" and not live.info.answered
                        and not live.events.answered.is_set()):
                    try:
                        await engine.reject(leg, code=487)
                        return
                    except MediaError as err:
                        logger.debug("- call %s: leg %s not rejected (%s): hung up",
                                     live.info.sid, leg, err)
                await engine.hangup(leg)

    def cut_off(self, account_sids: Collection[str]) -> None:
        """The accounts ACCOUNT_SIDS stopped being active (suspended, closed): every live
        call of theirs is ended as POST /Calls/{sid} Status=completed ends one. A call out
        through a gateway or the modem would otherwise go on costing money, and its app
        would go on running (a Client-to-Client call through the proxy costs nothing and is
        left to the phones)."""
        sids = set(account_sids)
        doomed = [live for live in self._by_sid.values() if live.info.account_sid in sids]
        if self.engine is None or not doomed:
            return
        for live in doomed:
            logger.info("- call %s %s -> %s: hung up, account %s is no longer active",
                        live.info.sid, live.info.from_, live.info.to, live.info.account_sid)
            if not live.events.answered.is_set():
                # A POST /Calls call still ringing: no next line is tried, and the modem
                # line (no worker leg to hang up until it answers) gives up too.
                live.canceled = True
            self.spawn(self._end(live, self.engine), f"cut off {live.info.sid}")

    # -- <Dial> -------------------------------------------------------------------------------

    async def _dial(self, runner: Runner, action: DialAction) -> DialDone:
        """<Dial>: the nouns are rung in parallel and the first to answer is bridged
        (services.dialing); a <Conference> is services.conferences'."""
        if self.conferences is not None and self.conferences.wants(action):
            return await self.conferences.dial(runner, action)
        return await self._dialer.dial(runner, action)

    async def open_child_cdr(self, parent: CallInfo, to: str) -> str:
        """Open the CDR of a leg that PARENT places to TO and return its CallSid: each leg a
        call places has its own CDR (direction outbound-dial, ParentCallSid = PARENT's),
        answered or not, for DialCallSid and Calls?ParentCallSid to name."""
        record = await self._log.opened(account_sid=parent.account_sid, from_=parent.from_,
                                        to=to, direction="outbound-dial",
                                        parent_call_sid=parent.sid)
        return record.sid

    # -- what the runner saves ---------------------------------------------------------------

    async def _save_recording(self, call: CallInfo, path: Path, duration: float
                              ) -> tuple[str, str]:
        return await self._keep_recording(call.account_sid, call.sid, path, duration)

    async def _keep_recording(self, account_sid: str, call_sid: str, path: Path,
                              duration: float) -> tuple[str, str]:
        now = self._clock()
        sid = RecordingSid(mint_sid("RE"))
        final = path.with_name(f"{sid}.wav")
        await asyncio.to_thread(path.replace, final)
        await self._store.insert_recording(Recording(
            sid=sid, account_sid=account_sid,  # type: ignore[arg-type]
            call_sid=call_sid, duration=duration, file_path=str(final), date_created=now,
            date_updated=now))
        url = (f"{self._public_base()}/restcomm/2012-04-24/Accounts/{account_sid}"
               f"/Recordings/{sid}.wav")
        return url, sid

    async def recover_recordings(self) -> int:
        """Keep what a <Record> cut short by a crash or a power cut had recorded: its file is
        still under the name it was recorded to (``<CallSid>-<ns>.wav``, renamed to its
        RecordingSid only once saved), its header perhaps never finished. At start-up each
        such file of a known call becomes a Recording of that call (its header made whole,
        so players read it); a file of no call we know, or with under half a second of
        sound, is removed. Returns how many were kept."""
        directory = self._data_dir / "recordings"
        found = await asyncio.to_thread(_left_recordings, directory)
        kept = 0
        for path, call_sid in found:
            call = await self._store.get_call(call_sid)
            seconds = await asyncio.to_thread(finish_wav, path)
            if call is None or seconds < 0.5:
                logger.info("- recording %s left by a stop: %s; removed", path.name,
                            "no such call" if call is None else "nothing recorded")
                await asyncio.to_thread(path.unlink, True)
                continue
            _, sid = await self._keep_recording(call.account_sid, call_sid, path, seconds)
            logger.warning("- recording of call %s cut short by a crash or power cut kept as "
                           "%s (%.1f s)", call_sid, sid, seconds)
            kept += 1
        return kept

    async def _sms(self, call: CallInfo, sms: SendSms) -> str:
        if self.send_sms is None:
            raise Unavailable("SMS cannot be sent")
        record = await self.send_sms(call.account_sid, sms.from_ or call.to,
                                     sms.to or call.from_, sms.text)
        return str(record.sid)


# A recording's working name (rcml.runner): its call's SID, then a nanosecond stamp.
_WORKING_NAME = re.compile(r"((?:ID[0-9a-f]{32}-)?CA[0-9a-f]{32})-\d+\.wav")


def _left_recordings(directory: Path) -> list[tuple[Path, str]]:
    """The recordings under DIRECTORY still under their working name, with their CallSid."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        match = _WORKING_NAME.fullmatch(path.name)
        if match is not None and path.is_file():
            found.append((path, match.group(1)))
    return found


def finish_wav(path: Path) -> float:
    """Make the WAV header at PATH whole (a recorder killed before closing it leaves its
    RIFF and data sizes at 0: players, and Python's wave, then read no sound) and return
    its length in seconds; 0.0 when it is no PCM WAV file."""
    seconds = wav_seconds(path)
    if seconds > 0:
        return seconds
    try:
        raw = path.read_bytes()
        if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
            return 0.0
        fmt: tuple[int, int, int] | None = None  # channels, rate, bytes per sample
        at = 12
        while at + 8 <= len(raw):
            kind, size = raw[at:at + 4], struct.unpack("<I", raw[at + 4:at + 8])[0]
            if kind == b"fmt " and size >= 16:
                tag, channels, rate = struct.unpack("<HHI", raw[at + 8:at + 16])
                bits = struct.unpack("<H", raw[at + 22:at + 24])[0]
                if tag != 1 or not channels or not rate or bits not in (8, 16, 24, 32):
                    return 0.0
                fmt = (channels, rate, bits // 8)
            elif kind == b"data":
                if fmt is None:
                    return 0.0
                data = raw[at + 8:]
                frame = fmt[0] * fmt[2]
                repaired = path.with_name(path.name + ".part")
                with wave.open(str(repaired), "wb") as out:
                    out.setnchannels(fmt[0])
                    out.setsampwidth(fmt[2])
                    out.setframerate(fmt[1])
                    out.writeframes(data[:len(data) - len(data) % frame])
                repaired.replace(path)
                return wav_seconds(path)
            at += 8 + size + (size & 1)
    except (OSError, EOFError, wave.Error, struct.error):
        pass
    return 0.0
