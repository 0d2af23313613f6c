"""The RCML runner [svc]: runs one voice application on one call leg.

Theory of operation. The pure `Interpreter` decides what happens next; the runner does it
against the MediaEngine (play, record, collect digits), the webhooks (documents, audio) and
the store (recordings, notifications), and reports one Result per Action back:

    doc = first document (Url, then FallbackUrl)     -> Interpreter(doc, ...)
    action = interp.start(now)
    while not Finished: result = await self._execute(action); action = interp.resume(...)

The leg is answered lazily, before the first verb that needs audio: a document that starts
with <Reject> refuses the INVITE (603/486) without ever answering it. A document that runs
out of verbs first is answered and hung up (the app ran: `completed`); an app that failed
before answering (no document, bad RCML) refuses it with APP_FAILED_STATUS (`failed`). When
the far end hangs up, every wait ends at once with `Hungup` and the interpreter gets
`CallEnded`.

Events of the leg arrive from the calls service through `LegEvents.put` (the engine's
subscriber runs on the loop, so a plain asyncio.Queue is enough). Every remote call is
bounded: webhooks carry their own total timeout, media commands run under COMMAND_TIMEOUT.

A recording ends on finishOnKey, maxLength, hang-up or `timeout` seconds of silence (a
level watch in the worker, not voice activity detection: any sound above a quiet line's
noise counts as voice).

Interruptions. A live redirect (POST Calls/{sid} Url=) cancels the verb under way
(`_interruptible`) and stops its prompt. A prompt stopped reports its end (PlayFinished)
only a moment later, when the next document's first prompt may already play: every play
carries its own tag and a prompt waits for the end of its own tag, so the late end of the
one it replaced is never taken for it. A <Record> cancelled stops the recording and keeps
what was recorded, a Recording of the call, before the cancellation goes on; its action is
not requested (the redirect abandoned its document, as Twilio does). A graceful stop of
the service (`stop`) ends the leg as the caller's hang-up would, so the app ends as it does
then (a <Record> keeps its recording and reports it to its action with Digits=hangup).
Any other failure of a verb (a media worker refusing a command, a bug) is logged, is an
11100 Notification, and ends the call as an app error does.

Not done (reported, not faked): Gather speech input (DTMF only), transcription.
<Dial> is `services.dialing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import struct
import time
import urllib.parse
import wave
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from appliance.media import wavcache
from appliance.media.engine import (
    CommandFailed,
    DtmfReceived,
    HangupCause,
    LegChanged,
    LegId,
    LegState,
    MediaEngine,
    MediaEvent,
    PlayFinished,
    RecordFinished,
    VoiceMissing,
)
from appliance.media.protocol import MediaError
from appliance.rcml.interpreter import (
    Action,
    CallEnded,
    CollectDigits,
    DialAction,
    DialDone,
    DialStatus,
    DigitsCollected,
    DocumentFetched,
    Done,
    FetchDocument,
    FetchFailed,
    Finished,
    GatherEnd,
    HangupAction,
    Interpreter,
    PauseAction,
    PlayAction,
    RecordAction,
    RecordingDone,
    RejectAction,
    Result,
    SayAction,
    SendSms,
    SmsQueued,
)
from appliance.rcml.parse import RcmlError, parse_response
from appliance.rcml.verbs import Document, Voice
from appliance.webhooks import WebhookError, WebhookResponse

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 10.0  # seconds for one media command to be accepted
PLAY_LIMIT = 3600.0  # a prompt that never reports its end is abandoned after this
# How long the media worker has to close a recording that is stopped (its WAV header is
# written a frame or two after the stop; the worker itself gives up after 1 s).
RECORD_CLOSE = 5.0
MAX_LOOP = 100  # <Say loop="0"> / <Play loop="0">: "until the call ends", bounded
MAX_EVENTS = 1000  # queued events per leg (DTMF floods are dropped beyond this)
MAX_AUDIO = 20 * 1024 * 1024  # a <Play> file larger than this is refused (~21 min at 8 kHz)
FETCH_FAILED = 11200
PARSE_FAILED = 12100
MEDIA_FAILED = 11100  # OURS: a media command (play, record) failed on the worker
# The SIP status an unanswered call gets when its app failed (no document from the Url nor
# the FallbackUrl, bad RCML, a redirect budget...): a server error, so the caller's phone and
# the CDR (`failed`) tell a broken app from a callee that did not answer (480, no-answer).
# Not 503: a proxy turns a 503 into 500 anyway (RFC 3261 16.7), and 503 means overload.
APP_FAILED_STATUS = 500


class Hungup(Exception):
    """The leg ended while the runner waited on it."""


class PlayRefused(Exception):
    """A <Play> URL answered with something pjmedia cannot play."""


@dataclasses.dataclass(frozen=True)
class App:
    """Where a call's RCML comes from."""

    url: str
    method: str = "POST"
    fallback_url: str | None = None
    fallback_method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"


@dataclasses.dataclass
class CallInfo:
    sid: str
    account_sid: str
    from_: str
    to: str
    direction: str  # inbound | outbound-api
    leg: LegId
    app: App
    answered: bool = False  # the leg is up (outbound legs start answered)
    timestamp: str = ""


class LegEvents:
    """The events of one leg, in order; `ended` is sticky."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[MediaEvent] = asyncio.Queue(MAX_EVENTS)
        self.ended = False
        self.cause: HangupCause | None = None
        self.code = 0  # the final SIP status of an ended leg
        self.answered = asyncio.Event()

    def put(self, event: MediaEvent) -> None:
        if isinstance(event, LegChanged):
            if event.state is LegState.ENDED:
                self.ended = True
                self.cause = event.cause
                self.code = event.code
            elif event.state is LegState.ANSWERED:
                self.answered.set()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(event)

    async def next(self, seconds: float | None) -> MediaEvent | None:
        """The next event, None on timeout; Hungup once the leg has ended."""
        if self.ended and self._queue.empty():
            raise Hungup
        try:
            async with asyncio.timeout(seconds):
                event = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(event, LegChanged) and event.state is LegState.ENDED:
            raise Hungup
        return event


class Request(Protocol):
    """`Webhooks.request`: MAX_SIZE overrides its response-size limit (audio is larger)."""

    def __call__(self, url: str, method: str, params: Mapping[str, str], *,
                 max_size: int | None = None) -> Awaitable[WebhookResponse]: ...


class Fetcher:
    """What the runner needs from the outside world; `services.calls` fills it in."""

    def __init__(self, *, request: Request,
                 notify: Callable[..., Awaitable[Any]],
                 say: Callable[[str, str, str], Awaitable[Path]],
                 save_recording: Callable[[CallInfo, Path, float], Awaitable[tuple[str, str]]],
                 send_sms: Callable[[CallInfo, SendSms], Awaitable[str]],
                 dial: Callable[[Runner, DialAction], Awaitable[DialDone]] | None,
                 cache_dir: Path, recordings_dir: Path) -> None:
        self.request = request
        self.notify = notify
        self.say = say
        self.save_recording = save_recording
        self.send_sms = send_sms
        self.dial = dial
        self.cache_dir = cache_dir
        self.recordings_dir = recordings_dir


class Runner:
    def __init__(self, call: CallInfo, engine: MediaEngine, events: LegEvents,
                 out: Fetcher) -> None:
        self.call = call
        self.engine = engine
        self.events = events
        self.out = out
        self.redirect_to: App | None = None  # set by a live modification (POST Calls/{sid})
        self._interrupt = asyncio.Event()
        self._play_tag = 0  # the tag of the last play (PlayFinished.tag), 1 and up
        # The last document ran out of verbs (or hung up) with no error: an unanswered call
        # is then answered and hung up, as Twilio does, not refused as a failed app.
        self._ran_out = False
        # The last document request: its URL, the parameters sent, what came back (None:
        # nothing did), for the Notification when that document turns out bad.
        self._exchange: tuple[str, Mapping[str, str], WebhookResponse | None] = ("", {}, None)

    # -- params ------------------------------------------------------------------------------

    def params(self, status: str) -> dict[str, str]:
        c = self.call
        return {"CallSid": c.sid, "AccountSid": c.account_sid, "From": c.from_, "To": c.to,
                "CallStatus": status, "ApiVersion": "2012-04-24", "Direction": c.direction,
                "CallerName": "null", "ForwardedFrom": "null", "CallTimestamp": c.timestamp}

    def redirect(self, app: App) -> None:
        """Live modification: stop what the call does and run APP's RCML."""
        self.redirect_to = app
        self._interrupt.set()

    # -- the run -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """The service is stopping: end the leg now, as if the far end had hung up. The app
        then ends as it does on a hang-up: a <Record> keeps what it recorded and requests
        its action with Digits=hangup, a <Gather> reports the digits it has, a <Dial> ends
        its legs. The caller bounds how long that may take, and cancels the rest."""
        if self.events.ended:
            return
        logger.info("- call %s: ended by the service stopping", self.call.sid)
        with contextlib.suppress(MediaError, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                if not self.call.answered:
                    with contextlib.suppress(CommandFailed):  # answered meanwhile: hang up
                        await self.engine.reject(self.call.leg, code=503)
                        return
                await self.engine.hangup(self.call.leg)

    async def run(self) -> None:
        app: App | None = self.call.app
        try:
            while app is not None:
                self.redirect_to = None
                self._interrupt.clear()
                self._ran_out = False
                await self._run_app(app)
                app = self.redirect_to
        except Hungup:
            logger.info("- call %s: far end hung up", self.call.sid)
        except Exception as err:  # noqa: BLE001 - one verb's failure ends this call, in order
            logger.exception("x call %s: the application stopped on an error", self.call.sid)
            what = "media worker" if isinstance(err, MediaError | TimeoutError) else "internal"
            await self._notify(MEDIA_FAILED, f"call ended on a {what} error: "
                                             f"{type(err).__name__}: {err}")
        finally:
            await self._end()

    async def _run_app(self, app: App) -> None:
        status = "in-progress" if self.call.answered else "ringing"
        # A live redirect while the document is still on its way (an app server slow to
        # answer) takes effect at once, not once the old request has answered or timed out.
        fetch = asyncio.create_task(self._first_document(app, self.params(status)),
                                    name=f"document {self.call.sid}")
        stop = asyncio.create_task(self._interrupt.wait())
        try:
            await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetch
        if fetch.cancelled():
            return  # redirected: run() goes on with redirect_to
        doc = fetch.result()
        if doc is None:
            return
        interp = Interpreter(doc, call_sid=self.call.sid, base_params=self.params(status),
                             document_url=app.url)
        action: Action = interp.start(time.time())
        while not isinstance(action, Finished):
            await self._warnings(interp)
            try:
                result = await self._interruptible(action)
            except Hungup:
                result = CallEnded()
            except (MediaError, TimeoutError):
                if not self.events.ended:
                    raise
                result = CallEnded()  # the leg ended under the command (no-such-leg)
            if result is None:  # redirected by POST Calls/{sid}
                return
            if isinstance(result, CallEnded) and not self.events.ended:
                self.events.ended = True
            if self.events.ended:  # an action after the hang-up reports the call's end
                interp.update_params({"CallStatus": "completed"})
            elif self.call.answered:
                interp.update_params({"CallStatus": "in-progress"})
            action = interp.resume(result, time.time())
        await self._warnings(interp)
        if action.error_code is not None:
            url, sent, answer = self._exchange
            await self._notify(action.error_code, action.message, url=action.url,
                               method=action.method, exchange=(sent, answer)
                               if url == action.url and action.url else None)
        else:
            self._ran_out = True
        if self.events.ended:
            raise Hungup

    async def _interruptible(self, action: Action) -> Result | None:
        """ACTION's result, or None when a live redirect interrupted it."""
        work = asyncio.create_task(self._execute(action), name=f"verb {self.call.sid}")
        stop = asyncio.create_task(self._interrupt.wait())
        try:
            done, _ = await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the runner itself is cancelled: the verb too
            await self._abandon(work)
            raise
        finally:
            stop.cancel()
        if work in done:
            return work.result()
        await self._abandon(work)
        with contextlib.suppress(MediaError, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self.engine.stop_play(self.call.leg)
        return None

    async def _abandon(self, work: asyncio.Task[Result]) -> None:
        """Cancel the verb WORK and wait until it has cleaned up (a <Record> keeps what it
        recorded). Its failure then is logged: the verb was given up anyway."""
        work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the runner itself is cancelled
        except Hungup:
            pass
        except Exception:  # noqa: BLE001 - logged; what replaces the verb goes on
            logger.exception("x call %s: the interrupted verb failed", self.call.sid)

    async def _first_document(self, app: App, params: Mapping[str, str]) -> Document | None:
        tries = [(app.url, app.method)]
        if app.fallback_url:
            tries.append((app.fallback_url, app.fallback_method))
        for url, method in tries:
            resp: WebhookResponse | None = None
            try:
                resp = await self.out.request(url, method, params)
                return parse_response(resp.body, resp.content_type, url)
            except WebhookError as err:
                await self._notify(FETCH_FAILED, str(err), url=url, method=method,
                                   exchange=(params, err.response))
            except RcmlError as err:
                await self._notify(err.code, f"{url}: {err.message}", url=url, method=method,
                                   exchange=(params, resp))
        return None

    async def _end(self) -> None:
        """End the leg unless it ended already. An app whose document ran out of verbs ran
        and ended: answered (if it was not yet) and hung up, a `completed` call of ~0 s, as
        Twilio does; one that failed (no document, an error) leaves an unanswered call
        refused with APP_FAILED_STATUS, a `failed` call."""
        if self.events.ended:
            return
        if self._ran_out and not self.call.answered:
            with contextlib.suppress(MediaError, TimeoutError, Hungup):
                await self._answer()
            if self.events.ended:
                return
        with contextlib.suppress(MediaError, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                if self.call.answered:
                    await self.engine.hangup(self.call.leg)
                else:
                    await self.engine.reject(self.call.leg, code=APP_FAILED_STATUS)

    async def _warnings(self, interp: Interpreter) -> None:
        for warning in interp.take_warnings():
            await self._notify(warning.code, warning.message, warning=True)

    async def _notify(self, code: int, message: str, *, warning: bool = False, url: str = "",
                      method: str = "", exchange: tuple[Mapping[str, str],
                                                        WebhookResponse | None] | None = None
                      ) -> None:
        """A Notification for the call; EXCHANGE: the parameters sent to URL and what came
        back (None when nothing did), shown as the Notification's RequestVariables,
        ResponseHeaders and ResponseBody, so an app's author sees what we got."""
        details: dict[str, str] = {}
        if exchange is not None:
            sent, answer = exchange
            details["request_variables"] = urllib.parse.urlencode(sent)
            if answer is not None:
                details["response_headers"] = "\n".join(
                    f"{name}: {value}" for name, value in answer.headers.items())
                details["response_body"] = answer.body[:4096].decode("utf-8", "replace")
        try:
            await self.out.notify(self.call.account_sid, code, message, warning=warning,
                                  call_sid=self.call.sid, request_url=url,
                                  request_method=method, **details)
        except Exception:  # noqa: BLE001 - a lost notification must not end the call
            logger.exception("x notification %s for call %s not written", code, self.call.sid)

    # -- actions -----------------------------------------------------------------------------

    async def _execute(self, action: Action) -> Result:
        match action:
            case FetchDocument():
                return await self._fetch(action)
            case RejectAction():
                if not self.call.answered:
                    await self._cmd(self.engine.reject(self.call.leg, code=action.status))
                    self.events.ended = True
                    return CallEnded()
                await self._cmd(self.engine.hangup(self.call.leg))
                return CallEnded()
            case HangupAction():
                await self._answer()
                await self._cmd(self.engine.hangup(self.call.leg))
                self.events.ended = True
                return CallEnded()
            case SendSms():
                try:
                    return SmsQueued(await self.out.send_sms(self.call, action))
                except Exception as err:  # noqa: BLE001 - reported, the call goes on
                    await self._notify(14101, f"<Sms> not queued: {err}")
                    return Done()
        await self._answer()
        match action:
            case SayAction() | PlayAction() | PauseAction():
                await self._prompt(action, stop_on_digit=False)
                return Done()
            case CollectDigits():
                return await self._gather(action)
            case RecordAction():
                return await self._record(action)
            case DialAction():
                if self.out.dial is None:
                    await self._notify(13214, "<Dial> is not available")
                    return DialDone(DialStatus.FAILED)
                done = await self.out.dial(self, action)
                return dataclasses.replace(done, hung_up=True) if self.events.ended else done
        raise AssertionError(f"unhandled action {action!r}")

    async def _cmd(self, command: Awaitable[None]) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await command

    async def _answer(self) -> None:
        if self.call.answered:
            return
        await self._cmd(self.engine.answer(self.call.leg))
        self.call.answered = True
        # Media commands queue in the worker until the audio is up; wait for the answer
        # (the ACK) so that a hang-up meanwhile is seen first.
        while not self.events.answered.is_set():
            await self.events.next(COMMAND_TIMEOUT)

    async def _fetch(self, action: FetchDocument) -> Result:
        self._exchange = (action.url, action.params, None)
        try:
            resp = await self.out.request(action.url, action.method, action.params)
        except WebhookError as err:
            self._exchange = (action.url, action.params, err.response)
            return FetchFailed(str(err))
        self._exchange = (action.url, action.params, resp)
        return DocumentFetched(resp.body, resp.content_type or "text/xml")

    async def _speak(self, action: SayAction) -> Path:
        """The WAV of a <Say> in its voice; in the default voice, with a warning
        Notification, when the TTS engine has no such voice (no female voice installed)."""
        try:
            return await self.out.say(action.text, action.language, action.voice.value)
        except VoiceMissing as err:
            await self._notify(MEDIA_FAILED, f'<Say voice="{action.voice}">: {err}: spoken '
                               "in the default voice", warning=True)
            return await self.out.say(action.text, action.language, Voice.MAN.value)

    async def _prompt(self, action: SayAction | PlayAction | PauseAction, *,
                      stop_on_digit: bool) -> str:
        """Play one prompt; returns the digit that interrupted it ("" if none)."""
        if isinstance(action, PauseAction):
            return await self._wait_digit(float(action.seconds), stop_on_digit)
        try:
            if isinstance(action, SayAction):
                path = await self._speak(action)
            else:
                path = await self.fetch_audio(action.url)
        except (MediaError, WebhookError, PlayRefused, OSError) as err:
            code = MEDIA_FAILED if isinstance(err, MediaError | OSError) else FETCH_FAILED
            await self._notify(code, f"prompt not played: {err}")
            return ""
        loop = action.loop if action.loop > 0 else MAX_LOOP
        try:
            tag = await self._play(path, loop)
        except CommandFailed as err:
            if err.code != "bad-file":
                raise
            if isinstance(action, PlayAction):  # a damaged cached file: fetched anew next time
                play_cache(self.out.cache_dir).drop(path)
            await self._notify(MEDIA_FAILED, f"prompt not played: {err}")
            return ""
        deadline = time.monotonic() + PLAY_LIMIT
        while True:
            event = await self.events.next(max(0.0, deadline - time.monotonic()))
            if event is None:
                await self._cmd(self.engine.stop_play(self.call.leg))
                return ""
            if isinstance(event, PlayFinished) and event.tag == tag:
                return ""
            if isinstance(event, DtmfReceived) and stop_on_digit:
                # Its PlayFinished, coming after this, has a tag no later prompt waits for.
                await self._cmd(self.engine.stop_play(self.call.leg))
                return event.digit

    async def _play(self, path: Path, loop: int = 1) -> int:
        """Start playing PATH on the leg; returns the tag its PlayFinished will carry."""
        self._play_tag += 1
        tag = self._play_tag
        await self._cmd(self.engine.play(self.call.leg, str(path), loop=loop, tag=tag))
        return tag

    async def _wait_digit(self, seconds: float, stop_on_digit: bool) -> str:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            event = await self.events.next(left)
            if isinstance(event, DtmfReceived) and stop_on_digit:
                return event.digit
        return ""

    async def _gather(self, action: CollectDigits) -> Result:
        digits = ""
        for prompt in action.prompts:
            digit = await self._prompt(prompt, stop_on_digit=True)
            if digit:
                digits = digit
                break
        while True:
            if digits and digits[-1] in action.finish_on_key:
                return DigitsCollected(digits, GatherEnd.FINISH_KEY)
            if action.num_digits is not None and len(digits) >= action.num_digits:
                return DigitsCollected(digits, GatherEnd.NUM_DIGITS)
            digit = ""
            try:
                digit = await self._wait_digit(float(action.timeout), True)
            except Hungup:
                return DigitsCollected(digits, GatherEnd.HANGUP)
            if not digit:
                return DigitsCollected(digits, GatherEnd.TIMEOUT)
            digits += digit

    async def _record(self, action: RecordAction) -> Result:
        if action.play_beep:
            tag = await self._play(beep(self.out.cache_dir))
            await self._wait_for(lambda e: isinstance(e, PlayFinished) and e.tag == tag, 5.0)
        self.out.recordings_dir.mkdir(parents=True, exist_ok=True)
        path = self.out.recordings_dir / f"{self.call.sid}-{time.time_ns()}.wav"
        try:
            # timeout: seconds of the caller's silence end the recording (the worker watches
            # the level of what the leg receives; RecordFinished reason "silence").
            await self._cmd(self.engine.record(self.call.leg, str(path),
                                               max_seconds=float(action.max_length),
                                               silence_seconds=float(action.timeout)))
            key, hung_up, finished = await self._recording(action, path)
            if finished is None and not hung_up:  # the finishOnKey
                finished = await self._stop_recording(path)
        except asyncio.CancelledError:
            # A live redirect (or the service stopping) abandons the <Record>: the recording
            # is stopped, and what it holds kept, a Recording of the call, before the
            # cancellation goes on. No action: the document it belongs to is abandoned.
            await self._keep(path, await self._stop_recording(path), interrupted=True)
            raise
        url, duration = await self._keep(path, finished)
        return RecordingDone(url=url, duration=duration,
                             digits="hangup" if hung_up else key, public_url=url or None)

    async def _recording(self, action: RecordAction, path: Path
                         ) -> tuple[str, bool, RecordFinished | None]:
        """Until the recording at PATH ends: the finishOnKey that ended it (""), whether the
        leg ended (False), the worker's RecordFinished when it ended it (None)."""
        try:
            while True:
                event = await self.events.next(None)
                if isinstance(event, DtmfReceived) and event.digit in action.finish_on_key:
                    return event.digit, False, None
                # Matched by its file: that of a recording stopped earlier may come late.
                if isinstance(event, RecordFinished) and event.file == str(path):
                    return "", False, event
        except Hungup:
            return "", True, None

    async def _stop_recording(self, path: Path) -> RecordFinished | None:
        """Stop the leg's recording at PATH and wait for the worker to close its file; None
        when the leg ended first or the worker did not say so within RECORD_CLOSE."""
        with contextlib.suppress(Hungup, MediaError, TimeoutError):
            async with asyncio.timeout(RECORD_CLOSE):
                await self.engine.stop_record(self.call.leg)
                ended = await self._wait_for(
                    lambda e: isinstance(e, RecordFinished) and e.file == str(path),
                    RECORD_CLOSE)
                return ended if isinstance(ended, RecordFinished) else None
        return None

    async def _keep(self, path: Path, finished: RecordFinished | None, *,
                    interrupted: bool = False) -> tuple[str, float]:
        """Save the recording at PATH as a Recording of the call: its URL ("" when there is
        no file) and duration in seconds."""
        if finished is None:
            await asyncio.sleep(0.5)  # the worker closes the file when the leg ends
            # No RecordFinished (the caller hung up): the file says how long it is.
            duration = await asyncio.to_thread(wav_seconds, path)
        else:
            duration = finished.duration
        if not await asyncio.to_thread(path.exists):
            return "", duration
        # Saved to the end even when a redirect cancels the verb meanwhile: the file moved
        # to its Recording's name without the row would be an orphan.
        async def saved() -> tuple[str, str]:
            return await self.out.save_recording(self.call, path, duration)

        save = asyncio.create_task(saved())
        try:
            url, sid = await asyncio.shield(save)
        except asyncio.CancelledError:
            await save
            raise
        logger.info("- call %s recorded %s (%.1f s)%s", self.call.sid, sid, duration,
                    ", interrupted" if interrupted else "")
        return url, duration

    async def _wait_for(self, wanted: Callable[[MediaEvent], bool], seconds: float
                        ) -> MediaEvent | None:
        """The first event that is WANTED within SECONDS (the others are dropped)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            event = await self.events.next(left)
            if event is not None and wanted(event):
                return event
        return None

    async def fetch_audio(self, url: str, method: str = "GET", *,
                          audio_type: bool = False) -> Path:
        """A <Play> URL (or a <Conference> waitUrl) as a local WAV file, fetched once and
        cached by URL; a body pjmedia cannot play is refused (PlayRefused), never cached.
        AUDIO_TYPE: the answer must also say it is audio (a waitUrl's RCML is not run)."""
        files = play_cache(self.out.cache_dir)
        path = play_path(self.out.cache_dir, url)
        async with files.one_fetch(path):  # calls starting it together fetch it once
            if files.used(path):
                return path
            resp = await self.out.request(url, method, {}, max_size=MAX_AUDIO)
            kind = (resp.content_type or "").partition(";")[0].strip().lower()
            problem = ("not audio" if audio_type and not kind.startswith("audio/")
                       else wavcache.wav_problem(resp.body))
            if problem is not None:
                raise PlayRefused(f"{method} {url}: {kind or 'no type'}, "
                                  f"{len(resp.body)} bytes: {problem}")
            await asyncio.to_thread(files.store, path, resp.body)
            return path
            resp = await self.out.request(url, "GET", {}, max_size=MAX_AUDIO)
            problem = wavcache.wav_problem(resp.body)
            if problem is not None:
                raise PlayRefused(f"GET {url}: {resp.content_type or 'no type'}, "
                                  f"{len(resp.body)} bytes: {problem}")
            await asyncio.to_thread(files.store, path, resp.body)
            return path


def wav_seconds(path: Path) -> float:
    """The length of the WAV file at PATH in seconds (0.0 when it is missing or unreadable).
    A header whose frame count was never written (the recorder killed before closing it) is
    measured by the size of the file instead."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, frames = w.getframerate(), w.getnframes()
            if frames == 0:
                frame_bytes = w.getsampwidth() * w.getnchannels()
                frames = max(0, path.stat().st_size - 44) // max(1, frame_bytes)
    except (OSError, EOFError, wave.Error):
        return 0.0
    return round(frames / rate, 3) if rate > 0 else 0.0


def play_cache(cache_dir: Path) -> wavcache.FileCache:
    """The <Play>/waitUrl download cache under CACHE_DIR (shared by the runner and the
    conference service)."""
    return wavcache.cache(cache_dir / "play", wavcache.PLAY_CACHE_MAX)


def play_path(cache_dir: Path, url: str) -> Path:
    """Where URL's audio is cached. Versions before the "checked:" keys cached bodies cut
    short or not WAV at all: their files are never used again, and being the least recently
    used they are the first evicted."""
    return play_cache(cache_dir).path(hashlib.sha256(f"checked:{url}".encode()).hexdigest())


def beep(cache_dir: Path) -> Path:
    """A 0.4 s 800 Hz beep at 8 kHz, written once."""
    path = cache_dir / "beep.wav"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 800 * i / 8000)))
                          for i in range(3200))
        tmp = cache_dir / "beep.wav.part"
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(frames)
        tmp.replace(path)
    return path
