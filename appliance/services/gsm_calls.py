"""GSM voice [svc]: calls to the SIM's number and the ``modem`` outbound line.

Theory of operation (architecture.md "Who handles a call", modem.md §2.8-§2.9).

The modem carries one voice call at a time. Its audio reaches a media worker as a PCM tty,
and a worker leg is always a SIP call, so the GSM side of a call is a *loopback pair*:
``sip_leg`` (dialled by a worker; it runs the RCML, or is bridged to the phone) calls
``pcm_leg`` (a reserved incoming leg on a worker's own loopback port, answered here), and
the PCM tty is attached to ``pcm_leg`` (a custom AudioMediaPort paced at 20 ms, silence on
underrun: `media.worker.pcm_port`, `media.worker.pcm_tty`).

* **Incoming** (RING/+CLIP → `IncomingCall`): the IncomingPhoneNumber of ``[modem] number``
  decides. A VoiceUrl/VoiceApplicationSid runs its app (answered at once, CDR ``inbound``);
  the pseudo-URL ``client:<login>`` rings that Client's registered phones first and answers
  the GSM call (ATA) only once a phone answers, then bridges the two; anything else, and a
  number of an account that is not active (`services.call_apps`), is rejected (AT+CHUP).
* **Outgoing** (`dial`, the ``modem`` line of an outbound route): ATD, wait for ACTIVE, then
  the loopback pair whose SIP leg the caller is bridged to.
* **A second call while one is up** (call waiting, +CLCC stat 5): refused busy with
  ``AT+CHLD=0`` (UDUB) so the call in progress goes on; its CDR is ``busy``. Never AT+CHUP or
  ATH here: those end the active call too.
* **DTMF.** From the GSM side: the modem's own URC (+QTONEDET / +RXDTMF) when the modem
  accepted the command enabling it, else the in-band Goertzel detector on the PCM leg
  (`media.dtmf`), never both (a digit would count twice); digits go to the SIP leg, so a
  `<Gather>` of the app receives them. From the phone bridged to a GSM call: RFC 2833 digits
  become ``AT+VTS``.

Every modem command and media command sits in `asyncio.timeout`; every task is owned by the
calls service (`CallsService.spawn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from appliance.gsm.errors import ModemError
from appliance.gsm.state import (
    CallDtmfReceived,
    CallState,
    CallStateChanged,
    IncomingCall,
    VoiceAudio,
)
from appliance.media.engine import DtmfReceived, LegChanged, LegId, LegState, MediaEvent
from appliance.media.protocol import MediaError
from appliance.models import CallStatus, mint_sid
from appliance.rcml.runner import App, CallInfo, Hungup, LegEvents
from appliance.services.caller_id import client_caller
from appliance.services.dialing import DIAL_SECONDS, until_either_ends
from appliance.timefmt import iso

if TYPE_CHECKING:
    from appliance.models import PhoneNumber
    from appliance.services.calls import CallsService, LiveCall
    from appliance.services.telephony import CallLog

logger = logging.getLogger(__name__)

GSM_ACTIVE_S = 15.0  # an answered GSM call must be listed ACTIVE within this
GSM_COMMAND_S = 20.0  # ATD / ATA / AT+CHUP / AT+CHLD (the modem's own timeouts are shorter)
CLIENT_RING_S = 60.0  # a GSM call handed to a Client rings its phones this long at most
CLIENT_URL = "client:"  # VoiceUrl pseudo-URL: the number's calls ring that Client (as SmsUrl)


@dataclasses.dataclass
class GsmSession:
    """The one GSM voice call (the modem carries one at a time) and its worker legs."""

    number: str
    incoming: bool = True
    call_id: int | None = None  # the modem's id, once an event names it
    states: asyncio.Queue[CallStateChanged] = dataclasses.field(
        default_factory=asyncio.Queue)
    ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    active: bool = False
    sip_leg: LegId | None = None
    pcm_leg: LegId | None = None
    peer_leg: LegId | None = None  # the phone's leg bridged to sip_leg (its DTMF → AT+VTS)


def client_login(voice_url: str | None) -> str | None:
    """The Client login of a ``client:<login>`` VoiceUrl, else None."""
    if voice_url and voice_url.startswith(CLIENT_URL) and len(voice_url) > len(CLIENT_URL):
        return voice_url[len(CLIENT_URL):]
    return None


class GsmCalls:
    """The GSM half of `services.calls.CallsService`. It writes the CDRs of its calls
    itself (CALL_LOG); for the rest it goes through the service's public operations: the
    live-call table (`track_call`, `track_leg`, `live_call`, `forget`, `line_leg`,
    `end_line`), the media engine, the task set, number lookup (its ``apps``,
    `services.call_apps`), status callbacks and RCML runs."""

    def __init__(self, calls: CallsService, call_log: CallLog,
                 clock: Callable[[], datetime]) -> None:
        self._calls = calls
        self._log = call_log
        self._clock = clock
        # Set by the composition root: the modem, its PCM tty ([modem] audio_device,
        # "" = SMS only) and the SIM's number ([modem] number).
        self.modem: Any = None
        self.audio = ""
        self.number = ""
        self._session: GsmSession | None = None
        self._pcm_legs: dict[LegId, LegEvents] = {}  # the GSM side of a loopback pair
        self._refused: set[int] = set()  # modem call ids refused as waiting calls

    def ready(self) -> bool:
        """A modem with a PCM tty and audio support, and media workers to carry the call."""
        return (self.modem is not None and bool(self.audio)
                and self._calls.engine is not None
                and self.modem.voice_audio is not VoiceAudio.UNSUPPORTED)

    # -- events ------------------------------------------------------------------------------

    def on_modem_event(self, event: Any) -> None:
        """The modem's call events (app.py fans the modem's on_event out to here)."""
        session = self._session
        if isinstance(event, CallStateChanged):
            if session is None or not self._ours(session, event):
                return
            session.states.put_nowait(event)
            if event.state is CallState.ACTIVE:
                session.active = True
            elif event.state is CallState.ENDED:
                session.ended.set()
        elif isinstance(event, IncomingCall):
            if session is not None:
                if event.call_id is None or event.call_id != session.call_id:
                    self._calls.spawn(self._refuse_waiting(event),
                                      f"gsm refuse {event.number}")
                return
            if not self.ready():
                logger.info("- GSM call from %s not taken: no [modem] audio_device, no audio "
                            "support or no media workers", event.number or "unknown")
                return
            session = self._session = GsmSession(event.number or "", call_id=event.call_id)
            self._calls.spawn(self._run_inbound(session), f"gsm call {event.number}")
        elif isinstance(event, CallDtmfReceived):
            if session is not None and session.active and session.sip_leg is not None:
                self._to_sip_leg(session, event.digit)

    def _ours(self, session: GsmSession, event: CallStateChanged) -> bool:
        """Whether EVENT is about SESSION's call (not a waiting call being refused)."""
        if session.call_id is None:
            if event.call_id in self._refused or event.incoming != session.incoming:
                return False
            session.call_id = event.call_id
        if event.call_id != session.call_id:
            if event.state is CallState.ENDED:
                self._refused.discard(event.call_id)
            return False
        return True

    def on_media_event(self, event: MediaEvent) -> bool:
        """A worker event: True when it belongs to a PCM leg (consumed here). The digits of
        the phone bridged to the GSM call are also sent to the modem (RFC 2833 → AT+VTS)."""
        session = self._session
        pcm = self._pcm_legs.get(event.leg)
        if pcm is not None:
            pcm.put(event)
            if isinstance(event, DtmfReceived) and session is not None and \
                    session.pcm_leg == event.leg and session.sip_leg is not None:
                self._to_sip_leg(session, event.digit)  # found in the modem's audio
            return True
        if isinstance(event, DtmfReceived) and session is not None and session.active and \
                event.leg == session.peer_leg:
            self._calls.spawn(self._send_dtmf(event.digit), f"gsm dtmf {event.digit}")
        return False

    def _to_sip_leg(self, session: GsmSession, digit: str) -> None:
        """A GSM-side digit belongs to the app's (or bridged) SIP leg: a <Gather> gets it."""
        sip = self._calls.live_call(session.sip_leg or LegId(""))
        if sip is not None:
            logger.debug("< GSM DTMF %s", digit)
            sip.events.put(DtmfReceived(sip.info.leg, digit))

    async def _send_dtmf(self, digit: str) -> None:
        try:
            async with asyncio.timeout(GSM_COMMAND_S):
                await self.modem.send_dtmf(digit)
        except (ModemError, TimeoutError, ValueError) as err:
            logger.info("x DTMF %s not sent to the GSM call: %s", digit, err)

    async def _refuse_waiting(self, event: IncomingCall) -> None:
        """A second call while one is up: busy for it (AT+CHLD=0), the first goes on. Its
        CDR (when the SIM's number is an IncomingPhoneNumber) is ``busy``."""
        if event.call_id is not None:
            self._refused.add(event.call_id)
        logger.info("x GSM call from %s refused busy: a GSM call is up already",
                    event.number or "unknown")
        try:
            async with asyncio.timeout(GSM_COMMAND_S):
                await self.modem.reject_waiting()
        except (ModemError, TimeoutError) as err:
            logger.warning("x waiting GSM call not refused: %s", err)
        found = await self._calls.apps.match_number(self.number) if self.number else None
        if found is not None:
            log = self._log
            record = await log.opened(account_sid=found.account_sid,
                                      from_=event.number or "unknown", to=found.phone_number,
                                      direction="inbound", phone_number_sid=found.sid)
            await log.ended(record.sid, CallStatus.BUSY)

    # -- the loopback pair -------------------------------------------------------------------

    async def _hangup_modem(self, session: GsmSession) -> None:
        if session.ended.is_set():
            return
        with contextlib.suppress(ModemError, TimeoutError):
            async with asyncio.timeout(GSM_COMMAND_S):
                await self.modem.hangup()
        session.ended.set()

    async def _until_active(self, session: GsmSession, parent_events: LegEvents | None,
                            seconds: float,
                            on_ringing: Callable[[], Awaitable[None]] | None = None,
                            own: LiveCall | None = None) -> int:
        """200 once the GSM call is ACTIVE, else a final status: 486 busy, 480 no answer,
        487 the caller left (or OWN, a POST /Calls call, was canceled), 408 out of time,
        503 any other end."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        rang = False
        while not session.active:
            if (parent_events is not None and parent_events.ended) or (
                    own is not None and own.canceled):
                return 487
            if session.ended.is_set():
                reason = ""
                while not session.states.empty():
                    reason = session.states.get_nowait().reason or reason
                return {"BUSY": 486, "NO ANSWER": 480}.get(reason.upper(), 503)
            if loop.time() > until:
                return 408
            try:
                async with asyncio.timeout(0.2):
                    event = await session.states.get()
            except TimeoutError:
                continue
            if event.state is CallState.ENDED:
                session.states.put_nowait(event)
                session.ended.set()
            elif event.state is CallState.ALERTING and not rang:
                rang = True
                if on_ringing is not None:
                    await on_ringing()
        return 200

    async def _pcm_pair(self, session: GsmSession, sip_leg: LegId,
                        near: LegId | None) -> None:
        """Dial SIP_LEG (on NEAR's worker) to a reserved leg on a worker's loopback port,
        answer that leg and attach the modem's PCM tty to it. Raises MediaError or
        TimeoutError (the caller tears down)."""
        engine = self._calls.need_engine()
        slot = await engine.reserve_incoming()
        session.pcm_leg = slot.leg
        session.peer_leg = near
        events = self._pcm_legs[slot.leg] = LegEvents()
        async with asyncio.timeout(DIAL_SECONDS):
            await engine.dial(f"sip:gsm@{slot.host}:{slot.port}", leg=sip_leg,
                              headers={"X-Leg-Id": slot.leg}, ring_seconds=DIAL_SECONDS,
                              near=near)
            session.sip_leg = sip_leg
            while True:
                event = await events.next(None)
                if isinstance(event, LegChanged) and event.state is LegState.INCOMING:
                    break
            await engine.answer(slot.leg)
            # The modem's own detector when it has one, else ours: never both.
            await engine.pcm_attach(slot.leg, self.audio, dtmf=not self.modem.dtmf_urc)

    async def _teardown(self, session: GsmSession) -> None:
        engine = self._calls.need_engine()
        for leg in (session.pcm_leg, session.sip_leg):
            if leg is None:
                continue
            with contextlib.suppress(MediaError, TimeoutError):
                async with asyncio.timeout(DIAL_SECONDS):
                    if leg == session.pcm_leg:
                        await engine.pcm_detach(leg)
                    await engine.hangup(leg)
        await self._hangup_modem(session)
        if session.pcm_leg is not None:
            self._pcm_legs.pop(session.pcm_leg, None)
        if self._session is session:
            self._session = None

    async def _watch(self, session: GsmSession) -> None:
        """Until the GSM call or the loopback pair ends; then end the rest."""
        pcm_events = self._pcm_legs.get(session.pcm_leg or LegId(""))

        async def drain(events: LegEvents | None) -> None:
            with contextlib.suppress(Hungup):
                while events is not None:
                    await events.next(None)

        waits = [asyncio.ensure_future(session.ended.wait()),
                 asyncio.ensure_future(drain(pcm_events))]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await self._teardown(session)

    # -- incoming ----------------------------------------------------------------------------

    async def _run_inbound(self, session: GsmSession) -> None:
        """An incoming GSM call: the IncomingPhoneNumber of ``[modem] number`` runs its app
        on the SIP side of a loopback pair whose other leg carries the PCM tty, or rings the
        Client its VoiceUrl names. One CDR, direction inbound, From = the caller's number,
        To = the SIM's number."""
        calls = self._calls
        found = await calls.apps.match_number(self.number) if self.number else None
        if found is not None and await calls.apps.refused_inactive(
                found.account_sid, f"number {found.phone_number}",
                f"GSM call from {session.number or 'unknown'}"):
            found = None  # rejected as a number with no app is
        login = client_login(found.voice_url) if found is not None else None
        if found is not None and login is not None:
            await self._run_to_client(session, found, login)
            return
        app = await calls.apps.number_app(found) if found is not None else None
        if found is None or app is None:
            logger.info("x GSM call from %s rejected: [modem] number %r has no "
                        "IncomingPhoneNumber with a voice application or client:<login> "
                        "(of an active account)", session.number or "unknown", self.number)
            await self._hangup_modem(session)
            if self._session is session:
                self._session = None
            return
        live: LiveCall | None = None
        status = CallStatus.FAILED
        record = None
        try:
            async with asyncio.timeout(GSM_COMMAND_S):
                await self.modem.answer()
            code = await self._until_active(session, None, GSM_ACTIVE_S)
            if code != 200:
                logger.info("x GSM call from %s: not active after answering (%d)",
                            session.number, code)
                return
            record = await self._log.opened(account_sid=found.account_sid,
                                            from_=session.number or "unknown",
                                            to=found.phone_number, direction="inbound",
                                            phone_number_sid=found.sid)
            leg = LegId("LG" + mint_sid("CA")[2:])
            info = CallInfo(sid=record.sid, account_sid=found.account_sid,
                            from_=session.number or "unknown", to=found.phone_number,
                            direction="inbound", leg=leg, app=app, answered=True,
                            timestamp=iso(self._clock()))
            live = calls.track_call(info)
            logger.info("> call %s: GSM %s -> %s runs %s", record.sid, info.from_, info.to,
                        app.url)
            calls.post_status(info, "initiated")
            calls.post_status(info, "ringing")  # every app call reports all four events
            await self._pcm_pair(session, leg, None)
            async with asyncio.timeout(DIAL_SECONDS):
                await live.events.answered.wait()
            await self._log.answered(record.sid)
            calls.post_status(info, "answered")
            calls.spawn(self._watch(session), f"gsm watch {record.sid}")
            await calls.run_app(live)
            status = CallStatus.COMPLETED
        except (ModemError, MediaError, TimeoutError) as err:
            logger.info("x GSM call from %s failed: %s", session.number, err)
        except Exception as err:  # noqa: BLE001 - Hungup, or a bug: the CDR is closed anyway
            status = live.final_status(err) if live is not None else CallStatus.FAILED
        finally:
            await self._teardown(session)
            if live is not None:
                calls.forget(live)
            if record is not None:
                final = await self._log.ended(record.sid, status)
                if live is not None:
                    calls.post_status(live.info, "completed",
                                      final.duration if final is not None else 0)

    async def _run_to_client(self, session: GsmSession, found: PhoneNumber, login: str
                             ) -> None:
        """``VoiceUrl=client:<login>``: ring the Client's phones while the GSM call rings;
        when one answers, answer the GSM call (ATA) and bridge. CDR ``inbound`` from the
        caller to the SIM's number: completed, busy, no-answer or canceled (the mobile
        caller gave up)."""
        calls = self._calls
        engine = calls.need_engine()
        caller = session.number or "unknown"
        client = await calls.apps.account_client(found.account_sid, login)
        if client is None:
            logger.info("x GSM call from %s rejected: %s names no Client of the number's "
                        "account", caller, found.voice_url)
            await self._hangup_modem(session)
            if self._session is session:
                self._session = None
            return
        record = await self._log.opened(account_sid=found.account_sid, from_=caller,
                                        to=found.phone_number, direction="inbound",
                                        phone_number_sid=found.sid)
        leg = LegId("LG" + mint_sid("CA")[2:])
        phone = calls.track_call(CallInfo(sid=record.sid, account_sid=found.account_sid,
                                          from_=caller, to=found.phone_number,
                                          direction="inbound", leg=leg, app=App(""),
                                          timestamp=iso(self._clock())))
        gsm: LiveCall | None = None
        status = CallStatus.FAILED
        logger.info("> call %s: GSM %s -> %s rings Client %s", record.sid, caller,
                    found.phone_number, login)
        try:
            await calls.dial_client(leg, found.account_sid, client.login,
                                    ring_seconds=CLIENT_RING_S,
                                    from_user=client_caller(session.number))
            status = await self._until_phone_answers(session, phone, record.sid)
            if status is not CallStatus.IN_PROGRESS:
                return
            async with asyncio.timeout(GSM_COMMAND_S):
                await self.modem.answer()
            if await self._until_active(session, phone.events, GSM_ACTIVE_S) != 200:
                status = CallStatus.CANCELED
                return
            await self._log.answered(record.sid)
            status = CallStatus.COMPLETED
            gsm_leg = LegId("LG" + mint_sid("CA")[2:])
            gsm = calls.track_leg(CallInfo(sid=record.sid, account_sid=found.account_sid,
                                           from_=caller, to=login, direction="outbound-dial",
                                           leg=gsm_leg, app=App("")))
            await self._pcm_pair(session, gsm_leg, leg)
            async with asyncio.timeout(DIAL_SECONDS):
                await gsm.events.answered.wait()
                await engine.bridge(leg, gsm_leg)
            calls.spawn(self._watch(session), f"gsm watch {record.sid}")
            await until_either_ends(phone.events, gsm.events, None)
        except (ModemError, MediaError, TimeoutError) as err:
            logger.info("x GSM call from %s to Client %s failed: %s", caller, login, err)
        finally:
            if not phone.events.ended:
                with contextlib.suppress(MediaError, TimeoutError):
                    async with asyncio.timeout(DIAL_SECONDS):
                        await engine.hangup(leg)
            await self._teardown(session)
            for live in (phone, gsm):
                if live is not None:
                    calls.forget(live)
            await self._log.ended(record.sid, status)

    async def _until_phone_answers(self, session: GsmSession, phone: LiveCall,
                                   sid: str) -> CallStatus:
        """IN_PROGRESS once a phone answers; else BUSY, NO_ANSWER or CANCELED (the GSM
        caller hung up first)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + CLIENT_RING_S + DIAL_SECONDS
        while not phone.events.answered.is_set():
            if session.ended.is_set():
                return CallStatus.CANCELED
            if loop.time() > until:
                return CallStatus.NO_ANSWER
            try:
                event = await phone.events.next(0.2)
            except Hungup:
                code = phone.events.code
                return CallStatus.BUSY if code in (486, 600, 603) else CallStatus.NO_ANSWER
            if isinstance(event, LegChanged) and event.state is LegState.RINGING:
                await self._log.ringing(sid)
        return CallStatus.IN_PROGRESS

    # -- outgoing: the ``modem`` line --------------------------------------------------------

    async def dial(self, parent: CallInfo, parent_events: LegEvents, number: str, *,
                   deadline: float, near: LegId | None,
                   on_ringing: Callable[[], Awaitable[None]] | None,
                   own: LiveCall | None) -> tuple[LiveCall | None, int]:
        """The ``modem`` line: ATD<number>; once ACTIVE, a loopback pair whose SIP leg
        (on NEAR's worker, returned as the answered child) is what the caller bridges to.
        One GSM call at a time: 503 when the modem is busy or not usable."""
        calls = self._calls
        if not self.ready():
            logger.info("- call %s: line modem skipped: no modem, no [modem] audio_device, "
                        "or no audio support", parent.sid)
            return None, 503
        if self._session is not None:
            logger.info("- call %s: line modem skipped: a GSM call is up already", parent.sid)
            return None, 503
        session = self._session = GsmSession(number, incoming=False)
        loop = asyncio.get_running_loop()
        leg, child = await calls.line_leg(parent, number, own)
        logger.info("> call %s: %s out by the modem", parent.sid, number)
        code = 503
        try:
            async with asyncio.timeout(GSM_COMMAND_S):
                session.call_id = await self.modem.dial(number)
            code = await self._until_active(session, parent_events,
                                            max(1.0, deadline - loop.time()), on_ringing, own)
            if code == 200:
                if own is None:
                    await self._log.ringing(child.info.sid)
                await self._pcm_pair(session, leg, near)
                async with asyncio.timeout(DIAL_SECONDS):
                    await child.events.answered.wait()
                await self._log.answered(child.info.sid)
                calls.spawn(self._watch(session), f"gsm watch {child.info.sid}")
                return child, 200
        except (ModemError, MediaError, TimeoutError) as err:
            logger.info("x call %s: modem line: %s", parent.sid, err)
            code = 503
        await self._teardown(session)
        await calls.end_line(leg, child, code, own)
        return None, code
