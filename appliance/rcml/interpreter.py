"""The RCML interpreter: a pure step machine over parsed voice documents.

Theory of operation. The interpreter decides *what* happens next; the runner
(`rcml.runner`, not here) does it against the call, the media workers and the webhooks, and
reports back. Nothing here does I/O, reads a clock or logs: time arrives as `now`.

    interp = Interpreter(doc, call_sid=sid, base_params=params, document_url=url)
    action = interp.start(now)
    while not isinstance(action, Finished):
        result = await runner.execute(action)          # one Result per Action
        action = interp.resume(result, now)
    # report interp.take_warnings() as notifications; hang up if the call is still up

Which result answers which action is one table, `_TRANSITIONS` below. Rule 1: a row is
(state, type of the result) -> handler; a pair that is not in the table is a runner bug and
raises InterpreterError. Rule 2: `CallEnded` is accepted in every state and finishes; once
finished, every resume answers the same `Finished` again.

Restcomm behaviour kept (api-behaviour.md §10.2): Gather without `action`, or with nothing
collected (timeout, or only the finishOnKey), continues with the next verb and sends no
request; Digits go without the finishOnKey; Record, Dial and Sms without `action` continue
with the next verb; DialCallSid is the literal "null" when there was no call and
DialCallDuration "0" when unanswered; RecordingDuration is a double ("5.0"); an empty <Sms>
stops the interpreter with 14103; the Sms action is requested at once with
SmsStatus=sending (failed when nothing was queued).
Relative URLs are resolved against the URL of the document they came from.
The action of a Gather, Record or Dial that the caller's hang-up ended (DigitsCollected
HANGUP, RecordingDone digits "hangup", DialDone hung_up) is requested only to report: the
document it returns is not run, as Twilio.

Time: `now` is recorded (`started_at`, `last_step_at`) but decides nothing yet. The waits
of Gather, Record and Pause are media operations the runner times; the interpreter has no
timers of its own, so it needs no get_timer()/handle_timer().
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any, assert_never

from appliance.errors import ApplianceError
from appliance.rcml.parse import BUDGET_EXCEEDED, RcmlError, parse_response
from appliance.rcml.verbs import (
    Client,
    Conference,
    Dial,
    DialNoun,
    Document,
    Gather,
    GatherInput,
    Hangup,
    Number,
    Pause,
    Play,
    Prompt,
    Record,
    RecordMedia,
    Redirect,
    Reject,
    Say,
    Sip,
    Sms,
    Unsupported,
    Voice,
    VoiceVerb,
    Warning,
    absolute_url,
)

# Budgets (plivo's MAX_REDIRECT idea, aiosmtpd's CALL_LIMIT): a document server that answers
# every request with another <Redirect> must not keep a call (and us) busy forever.
MAX_REDIRECTS = 10  # consecutive document fetches with no caller-facing verb in between
MAX_VERBS = 1000  # verbs executed over the whole call, all documents together
EMPTY_SMS = 14103  # Restcomm: "<Sms> without a body" stops the interpreter
FETCH_FAILED = 11200  # Twilio "HTTP retrieval failure"


class InterpreterError(ApplianceError):
    """The runner fed a result the interpreter did not ask for: a local bug, not the peer's."""

    status = 500


# -- actions: what the runner must do next ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SayAction:
    text: str
    voice: Voice = Voice.MAN
    language: str = "en"
    loop: int = 1  # 0: until the call ends (the runner bounds it)


@dataclasses.dataclass(frozen=True)
class PlayAction:
    url: str
    loop: int = 1


@dataclasses.dataclass(frozen=True)
class PauseAction:
    seconds: int


PromptAction = SayAction | PlayAction | PauseAction


@dataclasses.dataclass(frozen=True)
class CollectDigits:
    """Play the prompts (the first key press stops them), then collect until finish_on_key,
    num_digits or `timeout` seconds without input. Answer with DigitsCollected."""

    prompts: tuple[PromptAction, ...]
    timeout: int
    finish_on_key: str
    num_digits: int | None
    input: GatherInput = GatherInput.DTMF
    language: str = "en-US"
    hints: tuple[str, ...] = ()
    partial_result_callback: str | None = None
    partial_result_callback_method: str = "POST"


@dataclasses.dataclass(frozen=True)
class RecordAction:
    """Beep (if play_beep), record until finish_on_key ("" = none), `timeout` seconds of
    silence or max_length seconds. Answer with RecordingDone (digits="hangup" on hang-up)."""

    timeout: int
    finish_on_key: str
    max_length: int
    play_beep: bool = True
    transcribe: bool = False
    transcribe_callback: str | None = None
    media: RecordMedia = RecordMedia.AUDIO_ONLY


@dataclasses.dataclass(frozen=True)
class DialAction:
    """Dial the nouns (in parallel, first answer wins; a Conference alone). Answer DialDone."""

    nouns: tuple[DialNoun, ...]
    timeout: int = 30
    time_limit: int = 14400
    caller_id: str | None = None
    record: bool = False


@dataclasses.dataclass(frozen=True)
class HangupAction:
    """Terminal: hang the call up."""


@dataclasses.dataclass(frozen=True)
class RejectAction:
    """Terminal: reject a ringing inbound call with `status` (603 or 486); a call already
    answered is hung up instead."""

    status: int


@dataclasses.dataclass(frozen=True)
class SendSms:
    """Queue an outbound-reply SMS. Answer SmsQueued(sid), or Done if it could not be queued
    (the runner reports why)."""

    text: str
    to: str | None
    from_: str | None
    status_callback: str | None = None


@dataclasses.dataclass(frozen=True)
class FetchDocument:
    """Request `url` with `params` (form body for POST, query string for GET). Answer
    DocumentFetched or FetchFailed."""

    url: str
    method: str
    params: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Finished:
    """The application is over: hang up if the call is still up. `error_code` set means it
    ended on an error to report as a notification; `url`/`method`: the request that failed,
    when one did."""

    error_code: int | None = None
    message: str = ""
    url: str = ""
    method: str = ""


Action = (SayAction | PlayAction | PauseAction | CollectDigits | RecordAction | DialAction
          | HangupAction | RejectAction | SendSms | FetchDocument | Finished)


# -- results: what the runner reports back -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Done:
    """A Say, Play or Pause finished (or an SMS could not be queued)."""


class GatherEnd(enum.Enum):
    FINISH_KEY = "finish-key"
    NUM_DIGITS = "num-digits"
    TIMEOUT = "timeout"
    HANGUP = "hangup"


@dataclasses.dataclass(frozen=True)
class DigitsCollected:
    """`digits` as pressed; a trailing finishOnKey is stripped here."""

    digits: str
    finished_by: GatherEnd
    speech_result: str | None = None


@dataclasses.dataclass(frozen=True)
class RecordingDone:
    url: str
    duration: float
    digits: str = ""  # the key that ended it, or "hangup"
    public_url: str | None = None


class DialStatus(enum.StrEnum):
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclasses.dataclass(frozen=True)
class DialDone:
    status: DialStatus
    call_sid: str | None = None
    duration: int = 0  # seconds answered
    recording_url: str | None = None
    public_recording_url: str | None = None
    ring_duration: int | None = None
    conference_sid: str | None = None  # <Dial><Conference>: the conference it was in
    hung_up: bool = False  # the caller hung up meanwhile: the action only reports


@dataclasses.dataclass(frozen=True)
class SmsQueued:
    sid: str


@dataclasses.dataclass(frozen=True)
class DocumentFetched:
    data: bytes
    content_type: str = "text/xml"


@dataclasses.dataclass(frozen=True)
class FetchFailed:
    message: str
    code: int = FETCH_FAILED


@dataclasses.dataclass(frozen=True)
class CallEnded:
    """The call is gone (hang-up, transfer): accepted in any state."""


Result = (Done | DigitsCollected | RecordingDone | DialDone | SmsQueued | DocumentFetched
          | FetchFailed | CallEnded)


# -- the machine -------------------------------------------------------------------------------


class Interpreter:
    class State(enum.Enum):
        NEW = "new"
        PLAYING = "playing"  # Say, Play or Pause
        GATHERING = "gathering"
        RECORDING = "recording"
        DIALING = "dialing"
        SENDING_SMS = "sending-sms"
        FETCHING = "fetching"
        FINISHED = "finished"

    def __init__(self, doc: Document, *, call_sid: str, base_params: Mapping[str, str],
                 document_url: str | None = None, max_redirects: int = MAX_REDIRECTS,
                 max_verbs: int = MAX_VERBS) -> None:
        self.call_sid = call_sid
        self.state = Interpreter.State.NEW
        self.started_at: float | None = None
        self.last_step_at: float | None = None
        self._doc = doc
        self._doc_url = document_url
        self._pos = 0
        self._params = {**base_params, "CallSid": call_sid}
        self._max_redirects = max_redirects
        self._max_verbs = max_verbs
        self._verbs_run = 0
        self._fetches = 0  # consecutive, reset by a caller-facing verb
        self._current: Gather | Record | Dial | Sms | None = None
        self._pending_url = ""
        self._pending_method = ""
        self._call_ended = False
        self._warnings: list[Warning] = list(doc.warnings)
        self._finished = Finished()

    # -- public ------------------------------------------------------------------------------

    def start(self, now: float) -> Action:
        if self.state is not Interpreter.State.NEW:
            raise InterpreterError(f"start() while {self.state.name}")
        self.started_at = self.last_step_at = now
        return self._advance()

    def resume(self, result: Result, now: float) -> Action:
        if self.state is Interpreter.State.NEW:
            raise InterpreterError("resume() before start()")
        self.last_step_at = now
        if self.state is Interpreter.State.FINISHED:
            return self._finished
        if isinstance(result, CallEnded):
            self._call_ended = True
            return self._finish()
        handler = _TRANSITIONS.get((self.state, type(result)))
        if handler is None:
            raise InterpreterError(f"{type(result).__name__} while {self.state.name}")
        return handler(self, result)

    def update_params(self, params: Mapping[str, str]) -> None:
        """Change request parameters for later fetches (e.g. CallStatus=in-progress)."""
        self._params.update(params)
        self._params["CallSid"] = self.call_sid

    def take_warnings(self) -> tuple[Warning, ...]:
        """Parse warnings of every document run so far, each returned once."""
        taken, self._warnings = tuple(self._warnings), []
        return taken

    # -- stepping ----------------------------------------------------------------------------

    def _set_state(self, new: Interpreter.State) -> None:
        self.state = new

    def _finish(self, error_code: int | None = None, message: str = "", *, url: str = "",
                method: str = "") -> Finished:
        self._set_state(Interpreter.State.FINISHED)
        self._finished = Finished(error_code, message, url, method)
        return self._finished

    def _advance(self) -> Action:
        while self._pos < len(self._doc.verbs):
            verb = self._doc.verbs[self._pos]
            self._pos += 1
            self._verbs_run += 1
            if self._verbs_run > self._max_verbs:
                return self._finish(BUDGET_EXCEEDED,
                                    f"more than {self._max_verbs} verbs executed")
            action = self._execute(verb)
            if action is not None:
                return action
        return self._finish()

    def _execute(self, verb: VoiceVerb) -> Action | None:
        """The action for one verb, or None when the verb needs nothing from the runner."""
        match verb:
            case Say() | Play() | Pause():
                self._fetches = 0
                self._set_state(Interpreter.State.PLAYING)
                return self._prompt(verb)
            case Gather():
                self._fetches = 0
                self._current = verb
                self._set_state(Interpreter.State.GATHERING)
                return CollectDigits(
                    tuple(self._prompt(p) for p in verb.nested), verb.timeout,
                    verb.finish_on_key, verb.num_digits, verb.input, verb.language,
                    verb.hints, self._abs(verb.partial_result_callback),
                    verb.partial_result_callback_method)
            case Record():
                self._fetches = 0
                self._current = verb
                self._set_state(Interpreter.State.RECORDING)
                return RecordAction(verb.timeout, verb.finish_on_key, verb.max_length,
                                    verb.play_beep, verb.transcribe,
                                    self._abs(verb.transcribe_callback), verb.media)
            case Dial():
                self._fetches = 0
                self._current = verb
                self._set_state(Interpreter.State.DIALING)
                return DialAction(tuple(self._noun(n) for n in verb.nouns), verb.timeout,
                                  verb.time_limit, verb.caller_id, verb.record)
            case Hangup():
                self._finish()
                return HangupAction()
            case Reject():
                self._finish()
                return RejectAction(verb.sip_status)
            case Redirect():
                return self._fetch(verb.url, verb.method, {})
            case Sms():
                if not verb.text:
                    return self._finish(EMPTY_SMS, "<Sms> without a body")
                self._current = verb
                self._set_state(Interpreter.State.SENDING_SMS)
                return SendSms(verb.text, verb.to or self._params.get("From"),
                               verb.from_ or self._params.get("To"),
                               self._abs(verb.status_callback))
            case Unsupported():
                return None  # reported as a parse warning
            case _:
                assert_never(verb)

    def _prompt(self, prompt: Prompt) -> PromptAction:
        match prompt:
            case Say():
                return SayAction(prompt.text, prompt.voice, prompt.language, prompt.loop)
            case Play():
                return PlayAction(self._abs(prompt.url) or prompt.url, prompt.loop)
            case Pause():
                return PauseAction(prompt.length)
            case _:
                assert_never(prompt)

    def _noun(self, noun: DialNoun) -> DialNoun:
        match noun:
            case Conference():
                return dataclasses.replace(noun, wait_url=self._abs(noun.wait_url))
            case Number() | Client() | Sip():
                return dataclasses.replace(noun, url=self._abs(noun.url),
                                           status_callback=self._abs(noun.status_callback))
            case _:
                assert_never(noun)

    def _abs(self, url: str | None) -> str | None:
        return absolute_url(self._doc_url, url)

    def _fetch(self, url: str, method: str, extra: Mapping[str, str]) -> Action:
        self._fetches += 1
        if self._fetches > self._max_redirects:
            return self._finish(BUDGET_EXCEEDED, f"more than {self._max_redirects} documents "
                                "fetched in a row without any call activity (redirect loop?)")
        self._pending_url = self._abs(url) or url
        self._pending_method = method
        self._set_state(Interpreter.State.FETCHING)
        return FetchDocument(self._pending_url, method, {**self._params, **extra})

    def _continue(self) -> Action:
        return self._finish() if self._call_ended else self._advance()

    # -- result handlers (rows of _TRANSITIONS) ------------------------------------------------

    def _on_done(self, result: Done) -> Action:
        return self._advance()

    def _on_digits(self, result: DigitsCollected) -> Action:
        gather = self._current
        assert isinstance(gather, Gather)  # set with GATHERING; not peer input
        digits = result.digits
        if (result.finished_by is GatherEnd.FINISH_KEY and digits
                and digits[-1] in gather.finish_on_key):
            digits = digits[:-1]
        self._call_ended = result.finished_by is GatherEnd.HANGUP
        if gather.action is None or not (digits or result.speech_result):
            return self._continue()
        extra = {"Digits": digits}
        if result.speech_result is not None:
            extra["SpeechResult"] = result.speech_result
        return self._fetch(gather.action, gather.method, extra)

    def _on_recording(self, result: RecordingDone) -> Action:
        record = self._current
        assert isinstance(record, Record)
        self._call_ended = result.digits == "hangup"
        if record.action is None:
            return self._continue()
        extra = {"RecordingUrl": result.url}
        if result.public_url is not None:
            extra["PublicRecordingUrl"] = result.public_url
        extra["RecordingDuration"] = str(float(result.duration))
        extra["Digits"] = result.digits
        return self._fetch(record.action, record.method, extra)

    def _on_dial(self, result: DialDone) -> Action:
        dial = self._current
        assert isinstance(dial, Dial)
        self._call_ended = result.hung_up
        if dial.action is None:
            return self._continue()
        extra = {"DialCallStatus": str(result.status),
                 "DialCallSid": result.call_sid or "null",
                 "DialCallDuration": str(result.duration)}
        if result.recording_url is not None:
            extra["RecordingUrl"] = result.recording_url
        if result.public_recording_url is not None:
            extra["PublicRecordingUrl"] = result.public_recording_url
        if result.ring_duration is not None:
            extra["DialRingDuration"] = str(result.ring_duration)
        if result.conference_sid is not None:
            extra["ConferenceSid"] = result.conference_sid  # OURS, as Twilio's conference events
        return self._fetch(dial.action, dial.method, extra)

    def _on_sms(self, result: SmsQueued | Done) -> Action:
        sms = self._current
        assert isinstance(sms, Sms)
        if sms.action is None:
            return self._advance()
        # Queued: "sending" at once, as Restcomm requests it; not queued (no modem, a number
        # refused, with a Notification): "failed", the docs' other value, and no SmsSid.
        extra = {"SmsStatus": "sending" if isinstance(result, SmsQueued) else "failed"}
        if isinstance(result, SmsQueued):
            extra["SmsSid"] = result.sid
        return self._fetch(sms.action, sms.method, extra)

    def _on_document(self, result: DocumentFetched) -> Action:
        if self._call_ended:  # the action of a Record/Gather/Dial ended by hang-up: report only
            return self._finish()
        try:
            doc = parse_response(result.data, result.content_type, self._pending_url)
        except RcmlError as err:
            return self._finish(err.code, f"{self._pending_url}: {err.message}",
                                url=self._pending_url, method=self._pending_method)
        self._doc, self._doc_url, self._pos = doc, self._pending_url, 0
        self._warnings.extend(doc.warnings)
        return self._advance()

    def _on_fetch_failed(self, result: FetchFailed) -> Action:
        return self._finish(result.code, f"{self._pending_url}: {result.message}",
                            url=self._pending_url, method=self._pending_method)


_S = Interpreter.State
_TRANSITIONS: dict[tuple[Interpreter.State, type[Any]], Callable[[Interpreter, Any], Action]] = {
    (_S.PLAYING, Done): Interpreter._on_done,
    (_S.GATHERING, DigitsCollected): Interpreter._on_digits,
    (_S.RECORDING, RecordingDone): Interpreter._on_recording,
    (_S.DIALING, DialDone): Interpreter._on_dial,
    (_S.SENDING_SMS, SmsQueued): Interpreter._on_sms,
    (_S.SENDING_SMS, Done): Interpreter._on_sms,
    (_S.FETCHING, DocumentFetched): Interpreter._on_document,
    (_S.FETCHING, FetchFailed): Interpreter._on_fetch_failed,
}
