"""RCML verbs and nouns as frozen data, with Restcomm's defaults (api-behaviour.md §10.2).

Python names are snake_case; the camelCase RCML attribute names live only in `rcml/parse.py`.
A value here is always valid: `parse` has already replaced bad attributes by their defaults
(and recorded a `Warning`) or refused the document.

Conventions:
- `method` is always "GET" or "POST".
- `finish_on_key` is a set of keys written as a string ("#", "1234567890*#"); "" means none.
- URLs are kept as written in the document; whoever runs it (the voice interpreter, the SMS
  service) resolves relative ones against the URL the document came from (`absolute_url`).
"""

from __future__ import annotations

import dataclasses
import enum
from urllib.parse import urljoin


def absolute_url(document_url: str | None, url: str | None) -> str | None:
    """URL (as written in a document) resolved against DOCUMENT_URL, where the document was
    fetched from: `/sms2`, `next` and `../x` become http(s) URLs (RFC 3986 §5); an absolute
    URL, or any URL when the document's own is unknown, is kept as it is; so is one that
    cannot be resolved (`http://[bad`): fetching it then fails as any bad URL does (11200)."""
    if url is None or document_url is None:
        return url
    try:
        return urljoin(document_url, url)
    except ValueError:
        return url

# -- messaging verbs (also valid in voice documents) --------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sms:
    """`to` defaults to the caller and `from_` to the called number (filled in at run time)."""

    text: str
    to: str | None = None
    from_: str | None = None
    action: str | None = None
    method: str = "POST"
    status_callback: str | None = None


@dataclasses.dataclass(frozen=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclasses.dataclass(frozen=True)
class Unsupported:
    """A verb this context does not run (e.g. <Say> in an SMS reply, <Fax> in a call);
    reported, then skipped."""

    name: str


# -- voice verbs -------------------------------------------------------------------------------


class Voice(enum.StrEnum):
    MAN = "man"
    WOMAN = "woman"
    ALICE = "alice"  # Twilio's female voice: spoken as WOMAN


@dataclasses.dataclass(frozen=True)
class Say:
    """`loop` 0 means "until the call ends" (Twilio); the runner bounds it."""

    text: str
    voice: Voice = Voice.MAN
    language: str = "en"
    loop: int = 1


@dataclasses.dataclass(frozen=True)
class Play:
    url: str
    loop: int = 1


@dataclasses.dataclass(frozen=True)
class Pause:
    length: int = 1


Prompt = Say | Play | Pause


class GatherInput(enum.StrEnum):
    DTMF = "dtmf"
    SPEECH = "speech"
    DTMF_SPEECH = "dtmf speech"


@dataclasses.dataclass(frozen=True)
class Gather:
    """Without `action`, Restcomm continues with the next verb (Twilio would re-request the
    current document)."""

    action: str | None = None
    method: str = "POST"
    timeout: int = 5
    finish_on_key: str = "#"
    num_digits: int | None = None  # None: unlimited
    input: GatherInput = GatherInput.DTMF
    language: str = "en-US"
    hints: tuple[str, ...] = ()
    partial_result_callback: str | None = None
    partial_result_callback_method: str = "POST"
    nested: tuple[Prompt, ...] = ()


class RecordMedia(enum.StrEnum):
    AUDIO_ONLY = "audio_only"
    VIDEO_ONLY = "video_only"
    AUDIO_VIDEO = "audio_video"


@dataclasses.dataclass(frozen=True)
class Record:
    action: str | None = None
    method: str = "POST"
    timeout: int = 5
    finish_on_key: str = "1234567890*#"  # "-1" in the document disables: ""
    max_length: int = 3600
    play_beep: bool = True
    transcribe: bool = False
    transcribe_callback: str | None = None
    media: RecordMedia = RecordMedia.AUDIO_ONLY


# -- Dial and its nouns ------------------------------------------------------------------------

CALL_EVENTS = ("initiated", "ringing", "answered", "completed")


@dataclasses.dataclass(frozen=True)
class Number:
    number: str
    send_digits: str | None = None
    url: str | None = None  # screening document, run on the called party
    method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_event: tuple[str, ...] = ()  # a subset of CALL_EVENTS


@dataclasses.dataclass(frozen=True)
class Client:
    name: str  # without the "client:" prefix
    url: str | None = None
    method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_event: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sip:
    uri: str  # always with a sip: or sips: scheme
    username: str | None = None
    password: str | None = None
    url: str | None = None
    method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_event: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Conference:
    name: str
    muted: bool = False
    beep: bool = True
    start_conference_on_enter: bool = True
    end_conference_on_exit: bool = False
    wait_url: str | None = None
    wait_method: str = "POST"
    max_participants: int = 40


DialNoun = Number | Client | Sip | Conference


@dataclasses.dataclass(frozen=True)
class Dial:
    """A text body (`<Dial>+1555…</Dial>`) is turned into one noun by the parser: it contains
    "@" → Sip, starts with "client" → Client, else Number. `nouns` is never empty."""

    nouns: tuple[DialNoun, ...]
    action: str | None = None
    method: str = "POST"
    timeout: int = 30
    time_limit: int = 14400
    caller_id: str | None = None  # None: the runner applies from-address-to-proxied-calls
    record: bool = False


@dataclasses.dataclass(frozen=True)
class Hangup:
    pass


class RejectReason(enum.StrEnum):
    REJECTED = "rejected"
    BUSY = "busy"


@dataclasses.dataclass(frozen=True)
class Reject:
    reason: RejectReason = RejectReason.REJECTED

    @property
    def sip_status(self) -> int:
        """603 Decline for "rejected" (and anything unknown), 486 Busy Here for "busy"."""
        return 486 if self.reason is RejectReason.BUSY else 603


# -- documents ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Warning:  # shadows the builtin Warning only in modules that import it
    """A non-fatal problem found while parsing (Restcomm/Twilio notification code + text).
    The document still runs, with the default in place of the bad value."""

    code: int
    message: str


SmsVerb = Sms | Redirect | Unsupported
VoiceVerb = (Say | Play | Pause | Gather | Record | Dial | Hangup | Redirect | Reject | Sms
             | Unsupported)
Verb = SmsVerb | VoiceVerb


@dataclasses.dataclass(frozen=True)
class Document:
    """A parsed voice document: the verbs in order and the warnings met while parsing."""

    verbs: tuple[VoiceVerb, ...]
    warnings: tuple[Warning, ...] = ()
