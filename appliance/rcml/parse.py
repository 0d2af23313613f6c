"""RCML documents -> verbs. defusedxml only: the document comes from a remote URL.

Theory of operation. Everything is validated before anything runs (plivo's lesson): the whole
document is read into frozen `verbs` dataclasses first, so the interpreter never meets a bad
attribute half-way through a call. Three outcomes, by who is at fault and whether the call can
go on:

- `RcmlError(code)`: the document cannot run. 12100 (Twilio "Document parse failure"): not
  XML, an entity declaration or external entity (defusedxml), root not `<Response>`, a verb
  nested where it may not be (only Say/Play/Pause inside Gather, nouns only inside Dial, no
  children elsewhere), a Dial with nothing to dial, more than 10 nouns or a Conference with
  other nouns, a Redirect or noun without its text, too many Gather hints (Restcomm's
  50 x 100-character limit). 12300: over a size budget (kept from the first SMS
  version) or, in `parse_response`, a Content-Type that is neither RCML, audio nor text
  (Twilio "Invalid Content-Type").
- `Warning(code)` in `Document.warnings`: the document runs with the default in place of a
  bad value. Codes where Restcomm has one: 13310 (Gather finishOnKey not `[*#0-9]{1,12}`, `#`
  is used), 14104 (Sms method, POST is used). **OURS**: every other bad attribute value (a
  non-integer timeout, an unknown voice, a method that is neither GET nor POST ...) and every
  unknown or unsupported verb is reported as 12200 (Twilio "Schema validation warning")
  instead of being dropped silently as Restcomm does.
- Unknown attributes are ignored, as both Restcomm and Twilio do.

Tag and attribute names are case-sensitive (`<say>` is an unknown tag); namespaces are
ignored (Restcomm reads local names); attribute values and texts are stripped. As in
Restcomm's Parser, a bare `&` (one that does not start an entity reference) is read as `&amp;`,
so `<Redirect>http://h/x?a=1&b=2</Redirect>` works.

Two entry points share the same loading rules:
- `parse_document(data) -> list[SmsVerb]`: an SMS application's reply (Sms, Redirect; any
  other top-level verb becomes `Unsupported`). Unchanged for `services.messaging`.
- `parse_voice(data) -> Document`: a voice document, fully validated.
- `parse_response(data, content_type, url) -> Document`: a fetched voice response by its
  Content-Type (api-behaviour.md §10.1): XML/HTML is parsed, audio is played, text is spoken.
"""

from __future__ import annotations

import enum
import re
import xml.etree.ElementTree as ET  # noqa: S405 - only for the Element type; parsing is defused
from collections.abc import Callable
from typing import TypeVar

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from appliance.errors import ApplianceError
from appliance.rcml.verbs import (
    CALL_EVENTS,
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
    RejectReason,
    Say,
    Sip,
    Sms,
    SmsVerb,
    Unsupported,
    Voice,
    VoiceVerb,
    Warning,
)

# Budgets on what the remote application controls. Twilio caps a TwiML response at 64 KB;
# we allow Restcomm-sized documents but bound every dimension.
MAX_DOCUMENT = 256 * 1024
MAX_VERBS = 100  # top-level verbs per document
MAX_ELEMENTS = 1000  # all elements, nested ones included
MAX_NOUNS = 10  # per <Dial>: Twilio's limit on simultaneous <Number>s
MAX_HINTS = 50  # Restcomm Parser: "HotWords limit exceeded. There are more than 50 phrases"
MAX_HINT_LENGTH = 100  # ... "Hint with more than 100 characters found"

PARSE_FAILURE = 12100
SCHEMA_WARNING = 12200
BUDGET_EXCEEDED = 12300
INVALID_CONTENT_TYPE = 12300
GATHER_FINISH_ON_KEY = 13310
SMS_INVALID_METHOD = 14104

_FINISH_ON_KEY = re.compile(r"[*#0-9]{1,12}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")
_BARE_AMPERSAND = re.compile(rb"&(?!#?\w+;)")
# Verbs Restcomm declares but this interpreter does not run: reported, then skipped.
_UNSUPPORTED_VOICE = frozenset(
    {"Email", "Fax", "Language", "UssdMessage", "UssdCollect", "Enqueue", "Leave"})
_NOUNS = frozenset({"Number", "Client", "Sip", "Conference", "Uri", "Video", "Queue"})
_XML_TYPES = frozenset({"text/xml", "application/xml", "text/html"})
_AUDIO_TYPES = frozenset({"audio/wav", "audio/wave", "audio/x-wav"})


class RcmlError(ApplianceError):
    """The document cannot be run; `code` is the Twilio/Restcomm error code to report."""

    status = 400

    def __init__(self, message: str, code: int = PARSE_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _local(tag: object) -> str:
    # Comments and processing instructions have a non-str tag; they never reach here because
    # the default TreeBuilder drops them, but a str() keeps the type honest.
    return str(tag).rpartition("}")[2]


def _text(el: ET.Element) -> str:
    return (el.text or "").strip()


def _load(data: bytes) -> ET.Element:
    if len(data) > MAX_DOCUMENT:
        raise RcmlError(f"document larger than {MAX_DOCUMENT} bytes", BUDGET_EXCEEDED)
    try:
        root: ET.Element = fromstring(_BARE_AMPERSAND.sub(b"&amp;", data))
    # LookupError: an XML declaration naming an encoding Python does not know (expat asks)
    except (ET.ParseError, DefusedXmlException, ValueError, LookupError) as err:
        raise RcmlError(f"not a valid XML document: {err}", PARSE_FAILURE) from err
    if _local(root.tag) != "Response":
        raise RcmlError(f"the root element is <{_local(root.tag)}>, not <Response>",
                        PARSE_FAILURE)
    count = 0
    for _ in root.iter():
        count += 1
        if count > MAX_ELEMENTS:
            raise RcmlError(f"more than {MAX_ELEMENTS} elements", BUDGET_EXCEEDED)
    if len(root) > MAX_VERBS:
        raise RcmlError(f"more than {MAX_VERBS} verbs", BUDGET_EXCEEDED)
    return root


def _sms_method(value: str | None) -> str:
    upper = (value or "POST").strip().upper()
    return upper if upper in ("GET", "POST") else "POST"


def parse_document(data: bytes) -> list[SmsVerb]:
    """Parse an SMS application's RCML reply into verbs, in order. Only <Sms> and <Redirect>
    run there; any other top-level verb becomes `Unsupported(name)` for the caller to report."""
    root = _load(data)
    verbs: list[SmsVerb] = []
    for el in root:
        tag = _local(el.tag)
        if tag == "Sms":
            verbs.append(Sms(text=_text(el), to=el.get("to") or None,
                             from_=el.get("from") or None, action=el.get("action") or None,
                             method=_sms_method(el.get("method")),
                             status_callback=el.get("statusCallback") or None))
        elif tag == "Redirect":
            url = _text(el)
            if not url:
                raise RcmlError("<Redirect> without a URL", PARSE_FAILURE)
            verbs.append(Redirect(url=url, method=_sms_method(el.get("method"))))
        else:
            verbs.append(Unsupported(tag))
    return verbs


# -- voice ---------------------------------------------------------------------------------------

E = TypeVar("E", bound=enum.StrEnum)


class _Reader:
    """Typed access to one element's attributes: bad values become the default + a warning."""

    def __init__(self, el: ET.Element, warnings: list[Warning]) -> None:
        self.el = el
        self.name = _local(el.tag)
        self.warnings = warnings

    def warn(self, attr: str, value: str, used: object, code: int = SCHEMA_WARNING) -> None:
        self.warnings.append(Warning(
            code, f"<{self.name}> {attr}={value!r} is not valid; using {used!r}"))

    def str_(self, attr: str) -> str | None:
        return (self.el.get(attr) or "").strip() or None

    def text(self) -> str:
        return _text(self.el)

    def method(self, attr: str = "method", code: int = SCHEMA_WARNING) -> str:
        value = self.str_(attr)
        if value is None:
            return "POST"
        if value.upper() in ("GET", "POST"):
            return value.upper()
        self.warn(attr, value, "POST", code)
        return "POST"

    def int_(self, attr: str, default: int, minimum: int) -> int:
        value = self.str_(attr)
        if value is None:
            return default
        if _INTEGER.fullmatch(value) and int(value) >= minimum:
            return int(value)
        self.warn(attr, value, default)
        return default

    def opt_int(self, attr: str, minimum: int) -> int | None:
        value = self.str_(attr)
        if value is None:
            return None
        if _INTEGER.fullmatch(value) and int(value) >= minimum:
            return int(value)
        self.warn(attr, value, None)
        return None

    def bool_(self, attr: str, default: bool) -> bool:
        value = self.str_(attr)
        if value is None:
            return default
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.warn(attr, value, default)
        return default

    def enum_(self, attr: str, kind: type[E], default: E) -> E:
        value = self.str_(attr)
        if value is None:
            return default
        try:
            return kind(value)
        except ValueError:
            self.warn(attr, value, default.value)
            return default

    def events(self, attr: str = "statusCallbackEvent") -> tuple[str, ...]:
        value = self.str_(attr)
        if value is None:
            return ()
        tokens = [t for t in re.split(r"[,\s]+", value) if t]
        known = tuple(t for t in tokens if t in CALL_EVENTS)
        if len(known) != len(tokens):
            self.warn(attr, value, ",".join(known))
        return known

    def no_children(self) -> None:
        for child in self.el:
            raise RcmlError(f"<{self.name}> cannot contain <{_local(child.tag)}>",
                            PARSE_FAILURE)


def _say(r: _Reader) -> Say | None:
    r.no_children()
    if not r.text():
        r.warnings.append(Warning(SCHEMA_WARNING, "<Say> without text is skipped"))
        return None
    return Say(r.text(), voice=r.enum_("voice", Voice, Voice.MAN),
               language=r.str_("language") or "en", loop=r.int_("loop", 1, 0))


def _play(r: _Reader) -> Play | None:
    r.no_children()
    if not r.text():
        r.warnings.append(Warning(SCHEMA_WARNING, "<Play> without a URL is skipped"))
        return None
    return Play(r.text(), loop=r.int_("loop", 1, 0))


def _pause(r: _Reader) -> Pause:
    r.no_children()
    return Pause(r.int_("length", 1, 0))


def _input(r: _Reader) -> GatherInput:
    value = r.str_("input")
    if value is None:
        return GatherInput.DTMF
    tokens = frozenset(value.lower().split())
    if tokens == {"dtmf"}:
        return GatherInput.DTMF
    if tokens == {"speech"}:
        return GatherInput.SPEECH
    if tokens == {"dtmf", "speech"}:
        return GatherInput.DTMF_SPEECH
    r.warn("input", value, GatherInput.DTMF.value)
    return GatherInput.DTMF


def _hints(r: _Reader) -> tuple[str, ...]:
    value = r.str_("hints")
    if value is None:
        return ()
    hints = tuple(h.strip() for h in value.split(","))
    if len(hints) > MAX_HINTS:
        raise RcmlError(f"<Gather> hints: more than {MAX_HINTS} phrases", PARSE_FAILURE)
    if any(len(h) > MAX_HINT_LENGTH for h in hints):
        raise RcmlError(f"<Gather> hints: a phrase longer than {MAX_HINT_LENGTH} characters",
                        PARSE_FAILURE)
    return tuple(h for h in hints if h)


_PROMPTS: dict[str, Callable[[_Reader], Prompt | None]] = {
    "Say": _say, "Play": _play, "Pause": _pause}


def _gather(r: _Reader) -> Gather:
    nested: list[Prompt] = []
    for child in r.el:
        parse = _PROMPTS.get(_local(child.tag))
        if parse is None:
            raise RcmlError(f"<Gather> cannot contain <{_local(child.tag)}>; only Say, Play "
                            "and Pause", PARSE_FAILURE)
        prompt = parse(_Reader(child, r.warnings))
        if prompt is not None:
            nested.append(prompt)
    finish_on_key = r.str_("finishOnKey")
    if finish_on_key is not None and not _FINISH_ON_KEY.fullmatch(finish_on_key):
        r.warn("finishOnKey", finish_on_key, "#", GATHER_FINISH_ON_KEY)
        finish_on_key = None
    return Gather(
        action=r.str_("action"), method=r.method(), timeout=r.int_("timeout", 5, 1),
        finish_on_key=finish_on_key or "#", num_digits=r.opt_int("numDigits", 1),
        input=_input(r), language=r.str_("language") or "en-US", hints=_hints(r),
        partial_result_callback=r.str_("partialResultCallback"),
        partial_result_callback_method=r.method("partialResultCallbackMethod"),
        nested=tuple(nested))


def _record(r: _Reader) -> Record:
    r.no_children()
    finish_on_key = r.str_("finishOnKey")
    if finish_on_key == "-1":
        finish_on_key = ""
    elif finish_on_key is None:
        finish_on_key = Record.finish_on_key
    elif not _FINISH_ON_KEY.fullmatch(finish_on_key):
        r.warn("finishOnKey", finish_on_key, "#")
        finish_on_key = "#"
    return Record(
        action=r.str_("action"), method=r.method(), timeout=r.int_("timeout", 5, 1),
        finish_on_key=finish_on_key, max_length=r.int_("maxLength", 3600, 1),
        play_beep=r.bool_("playBeep", True), transcribe=r.bool_("transcribe", False),
        transcribe_callback=r.str_("transcribeCallback"),
        media=r.enum_("media", RecordMedia, RecordMedia.AUDIO_ONLY))


def _noun_text(r: _Reader) -> str:
    r.no_children()
    if not r.text():
        raise RcmlError(f"<{r.name}> without a target", PARSE_FAILURE)
    return r.text()


def _sip_uri(text: str) -> str:
    return text if text.lower().startswith(("sip:", "sips:")) else f"sip:{text}"


def _number(r: _Reader) -> Number:
    return Number(_noun_text(r), send_digits=r.str_("sendDigits"), url=r.str_("url"),
                  method=r.method(), status_callback=r.str_("statusCallback"),
                  status_callback_method=r.method("statusCallbackMethod"),
                  status_callback_event=r.events())


def _client(r: _Reader) -> Client:
    return Client(_noun_text(r).removeprefix("client:"), url=r.str_("url"), method=r.method(),
                  status_callback=r.str_("statusCallback"),
                  status_callback_method=r.method("statusCallbackMethod"),
                  status_callback_event=r.events())


def _sip(r: _Reader) -> Sip:
    return Sip(_sip_uri(_noun_text(r)), username=r.str_("username"),
               password=r.str_("password"), url=r.str_("url"), method=r.method(),
               status_callback=r.str_("statusCallback"),
               status_callback_method=r.method("statusCallbackMethod"),
               status_callback_event=r.events())


def _conference(r: _Reader) -> Conference:
    return Conference(
        _noun_text(r), muted=r.bool_("muted", False), beep=r.bool_("beep", True),
        start_conference_on_enter=r.bool_("startConferenceOnEnter", True),
        end_conference_on_exit=r.bool_("endConferenceOnExit", False),
        wait_url=r.str_("waitUrl"), wait_method=r.method("waitMethod"),
        max_participants=r.int_("maxParticipants", 40, 1))


_DIAL_NOUNS: dict[str, Callable[[_Reader], DialNoun]] = {
    "Number": _number, "Client": _client, "Sip": _sip, "Conference": _conference}


def _text_noun(text: str) -> DialNoun:
    """Restcomm's rule for a Dial text body: "@" → Sip, "client…" → Client, else Number."""
    if "@" in text:
        return Sip(_sip_uri(text))
    if text.startswith("client"):
        return Client(text.removeprefix("client:"))
    return Number(text)


def _dial_record(r: _Reader) -> bool:
    # Twilio spells the values record-from-answer / do-not-record; Restcomm true / false.
    value = r.str_("record")
    if value in ("record-from-answer", "record-from-ringing"):
        return True
    if value == "do-not-record":
        return False
    return r.bool_("record", False)


def _dial(r: _Reader) -> Dial:
    nouns: list[DialNoun] = []
    for child in r.el:
        tag = _local(child.tag)
        parse = _DIAL_NOUNS.get(tag)
        if parse is not None:
            nouns.append(parse(_Reader(child, r.warnings)))
        elif tag in _NOUNS:
            r.warnings.append(Warning(SCHEMA_WARNING, f"<Dial><{tag}> is not supported"))
        else:
            raise RcmlError(f"<Dial> cannot contain <{tag}>", PARSE_FAILURE)
    if len(nouns) > MAX_NOUNS:
        raise RcmlError(f"<Dial> with more than {MAX_NOUNS} nouns", PARSE_FAILURE)
    if any(isinstance(n, Conference) for n in nouns) and len(nouns) > 1:
        raise RcmlError("<Conference> must be the only noun of its <Dial>", PARSE_FAILURE)
    if nouns and r.text():
        r.warnings.append(Warning(SCHEMA_WARNING, "<Dial> text ignored: it has nouns"))
    elif not nouns:
        if not r.text():
            raise RcmlError("<Dial> with nothing to dial", PARSE_FAILURE)
        nouns.append(_text_noun(r.text()))
    return Dial(tuple(nouns), action=r.str_("action"), method=r.method(),
                timeout=r.int_("timeout", 30, 1), time_limit=r.int_("timeLimit", 14400, 1),
                caller_id=r.str_("callerId"), record=_dial_record(r))


def _hangup(r: _Reader) -> Hangup:
    r.no_children()
    return Hangup()


def _reject(r: _Reader) -> Reject:
    r.no_children()
    # "rejected" (the default) and anything unknown → 603; only "busy" → 486. No warning.
    busy = r.str_("reason") == "busy"
    return Reject(RejectReason.BUSY if busy else RejectReason.REJECTED)


def _redirect(r: _Reader) -> Redirect:
    r.no_children()
    if not r.text():
        raise RcmlError("<Redirect> without a URL", PARSE_FAILURE)
    return Redirect(r.text(), method=r.method())


def _sms(r: _Reader) -> Sms:
    # An empty body is kept: Restcomm reports 14103 and stops when it reaches it.
    r.no_children()
    return Sms(r.text(), to=r.str_("to"), from_=r.str_("from"), action=r.str_("action"),
               method=r.method(code=SMS_INVALID_METHOD),
               status_callback=r.str_("statusCallback"))


_VOICE_VERBS: dict[str, Callable[[_Reader], VoiceVerb | None]] = {
    "Say": _say, "Play": _play, "Pause": _pause, "Gather": _gather, "Record": _record,
    "Dial": _dial, "Hangup": _hangup, "Reject": _reject, "Redirect": _redirect, "Sms": _sms}


def parse_voice(data: bytes) -> Document:
    """Parse and validate a voice RCML document. Raises RcmlError if it cannot run."""
    root = _load(data)
    verbs: list[VoiceVerb] = []
    warnings: list[Warning] = []
    for el in root:
        tag = _local(el.tag)
        parse = _VOICE_VERBS.get(tag)
        if parse is not None:
            verb = parse(_Reader(el, warnings))
            if verb is not None:
                verbs.append(verb)
        elif tag in _NOUNS:
            raise RcmlError(f"<{tag}> is a noun: it belongs inside <Dial>", PARSE_FAILURE)
        elif tag in _UNSUPPORTED_VOICE:
            warnings.append(Warning(SCHEMA_WARNING, f"<{tag}> is not supported; skipped"))
            verbs.append(Unsupported(tag))
        else:
            warnings.append(Warning(SCHEMA_WARNING, f"<{tag}> is not an RCML verb; skipped"))
    return Document(tuple(verbs), tuple(warnings))


def parse_response(data: bytes, content_type: str, url: str) -> Document:
    """A fetched voice response, by Content-Type: RCML is parsed, a WAV file is played from
    `url`, plain text is spoken. Anything else is RcmlError 12300."""
    kind = content_type.partition(";")[0].strip().lower()
    if kind in _XML_TYPES:
        return parse_voice(data)
    if kind in _AUDIO_TYPES:
        return Document((Play(url),))
    if kind == "text/plain":
        if len(data) > MAX_DOCUMENT:
            raise RcmlError(f"document larger than {MAX_DOCUMENT} bytes", BUDGET_EXCEEDED)
        text = data.decode("utf-8", errors="replace").strip()
        return Document((Say(text),) if text else ())
    raise RcmlError(f"Content-Type {content_type!r} is not RCML, audio or text",
                    INVALID_CONTENT_TYPE)
