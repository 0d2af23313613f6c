"""The main ⇄ media-worker control protocol: newline-delimited JSON frames (style.md §2.1).

Pure (L0): both processes import it, so tests need no socket. Three kinds of frame:

- a command (main → worker) carries ``"op"`` and an ``"id"``;
- a reply (worker → main) carries ``"re"`` (the command's id) and ``"ok"``;
- an event (worker → main) carries ``"event"``.

``decode`` checks every field's type and the frame size, so a bad frame is a typed
``ProtocolError`` (the server answers it with an error reply) and never an exception from
deep inside the worker.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from typing import Any, ClassVar, Union

from appliance.errors import ApplianceError

# One frame may carry a dial with headers, never audio: 64 KiB is generous and still bounds
# what a confused peer can make the other side buffer (habit 6: budget what the peer controls).
MAX_FRAME = 64 * 1024
MAX_LEG_ID = 128
MAX_HEADERS = 16
MAX_TAG = 2**53 - 1  # a play's tag stays an exact JSON number on both ends
VERSION = 1
# The reason on the ``ended`` leg events the supervisor makes up for a dead worker's legs.
REASON_WORKER_DIED = "worker-died"

_LEG_RE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")  # MAX_LEG_ID
_DTMF_RE = re.compile(r"^[0-9A-Da-d*#]{1,64}$")
_HEADER_NAME_RE = re.compile(r"^X-[A-Za-z0-9\-]{1,64}$")
_ROOM_RE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


class MediaError(ApplianceError):
    """Base of every error raised by ``appliance.media``."""

    status = 503


class ProtocolError(MediaError):
    """A frame could not be accepted. ``code`` is the wire error name; ``id`` is the
    command's id when it could be read, so the reply can be correlated."""

    code = "bad-frame"

    def __init__(self, message: str, *, id: int | None = None) -> None:
        super().__init__(message)
        self.id = id


class FrameTooLarge(ProtocolError):
    code = "frame-too-large"


class MalformedFrame(ProtocolError):
    code = "malformed"


class UnknownOp(ProtocolError):
    code = "unknown-op"


# --------------------------------------------------------------------------- validators


def valid_leg(leg: str) -> bool:
    """Leg ids travel in SIP headers and file names: a short token, nothing else."""
    return bool(_LEG_RE.match(leg))


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _leg(leg: str) -> None:
    _need(valid_leg(leg), f"bad leg id {leg!r}")


# --------------------------------------------------------------------------- commands


@dataclasses.dataclass(frozen=True)
class Command:
    OP: ClassVar[str] = ""
    id: int = dataclasses.field(default=0, kw_only=True)


@dataclasses.dataclass(frozen=True)
class Dial(Command):
    """Place an outgoing leg to ``uri``; X- ``headers`` are added to the INVITE."""

    OP: ClassVar[str] = "dial"
    leg: str
    uri: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    timeout: float = 60.0  # seconds of ringing before the worker gives up (408)
    # Outbound proxy (``sip:host:port;lr``): the INVITE keeps ``uri`` as its Request-URI
    # (what a provider's digest covers) but is sent there, i.e. to the front door.
    proxy: str | None = None
    # The From of the INVITE (``sip:user@host``; the caller ID a provider sees). None: the
    # worker's own account address.
    from_uri: str | None = None

    def __post_init__(self) -> None:
        _leg(self.leg)
        _need(self.uri.startswith(("sip:", "sips:")) and len(self.uri) <= 1024, "bad uri")
        _need(self.from_uri is None or (self.from_uri.startswith("sip:")
                                        and len(self.from_uri) <= 256
                                        and not any(c in self.from_uri for c in "\r\n<>\" ")),
              "bad from_uri")
        _need(self.proxy is None or (self.proxy.startswith("sip:") and len(self.proxy) <= 256
                                     and "\r" not in self.proxy and "\n" not in self.proxy),
              "bad proxy")
        _need(len(self.headers) <= MAX_HEADERS, "too many headers")
        for name, value in self.headers.items():
            _need(bool(_HEADER_NAME_RE.match(name)), f"bad header name {name!r}")
            _need("\r" not in value and "\n" not in value and len(value) <= 1024,
                  "bad header value")
        _need(0 < self.timeout <= 600, "bad timeout")


@dataclasses.dataclass(frozen=True)
class Answer(Command):
    """Answer an incoming leg: 200 (default) or a provisional 180/183."""

    OP: ClassVar[str] = "answer"
    leg: str
    code: int = 200

    def __post_init__(self) -> None:
        _leg(self.leg)
        _need(self.code in (180, 183, 200), "answer code must be 180, 183 or 200")


@dataclasses.dataclass(frozen=True)
class Reject(Command):
    OP: ClassVar[str] = "reject"
    leg: str
    code: int = 486

    def __post_init__(self) -> None:
        _leg(self.leg)
        _need(300 <= self.code <= 699, "reject code must be 300-699")


@dataclasses.dataclass(frozen=True)
class Hangup(Command):
    OP: ClassVar[str] = "hangup"
    leg: str

    def __post_init__(self) -> None:
        _leg(self.leg)


@dataclasses.dataclass(frozen=True)
class Play(Command):
    """Play a WAV file to the leg ``loop`` times (0 = until ``stop``).

    ``tag``: the sender's number for this playback, echoed by its ``play_done``. A playback
    stopped or replaced reports its end a moment later, when the next one may have begun:
    the tag tells that late ``play_done`` from the end of the playback waited for."""

    OP: ClassVar[str] = "play"
    leg: str
    file: str
    loop: int = 1
    tag: int = 0

    def __post_init__(self) -> None:
        _leg(self.leg)
        _need(0 < len(self.file) <= 4096 and "\x00" not in self.file, "bad file")
        _need(0 <= self.loop <= 1000, "bad loop")
        _need(0 <= self.tag <= MAX_TAG, "bad tag")


@dataclasses.dataclass(frozen=True)
class Stop(Command):
    OP: ClassVar[str] = "stop"
    leg: str

    def __post_init__(self) -> None:
        _leg(self.leg)


@dataclasses.dataclass(frozen=True)
class RecordStart(Command):
    OP: ClassVar[str] = "record_start"
    leg: str
    file: str
    max_seconds: float = 3600.0
    # <Record timeout>: this many seconds without the far end's voice end the recording
    # (record_done reason "silence"); 0 = no silence watch.
    silence_seconds: float = 0.0

    def __post_init__(self) -> None:
        _leg(self.leg)
        _need(0 < len(self.file) <= 4096 and "\x00" not in self.file, "bad file")
        _need(0 < self.max_seconds <= 4 * 3600, "bad max_seconds")
        _need(0 <= self.silence_seconds <= 4 * 3600, "bad silence_seconds")


@dataclasses.dataclass(frozen=True)
class RecordStop(Command):
    OP: ClassVar[str] = "record_stop"
    leg: str

    def __post_init__(self) -> None:
        _leg(self.leg)


@dataclasses.dataclass(frozen=True)
class SendDtmf(Command):
    """Send digits as RFC 2833 events."""

    OP: ClassVar[str] = "send_dtmf"
    leg: str
    digits: str

    def __post_init__(self) -> None:
        _leg(self.leg)
        _need(bool(_DTMF_RE.match(self.digits)), "bad digits")


@dataclasses.dataclass(frozen=True)
class Bridge(Command):
    OP: ClassVar[str] = "bridge"
    leg: str
    other: str

    def __post_init__(self) -> None:
        _leg(self.leg)
        _leg(self.other)
        _need(self.leg != self.other, "cannot bridge a leg to itself")


@dataclasses.dataclass(frozen=True)
class Unbridge(Command):
    OP: ClassVar[str] = "unbridge"
    leg: str
    other: str

    def __post_init__(self) -> None:
        _leg(self.leg)
        _leg(self.other)


@dataclasses.dataclass(frozen=True)
class ConfJoin(Command):
    OP: ClassVar[str] = "conf_join"
    leg: str
    room: str

    def __post_init__(self) -> None:
        _leg(self.leg)
        _need(bool(_ROOM_RE.match(self.room)), "bad room")


@dataclasses.dataclass(frozen=True)
class ConfLeave(Command):
    OP: ClassVar[str] = "conf_leave"
    leg: str

    def __post_init__(self) -> None:
        _leg(self.leg)


@dataclasses.dataclass(frozen=True)
class ConfMute(Command):
    """Stop (``muted``) or resume sending the leg's audio into its conference room; the leg
    still hears the room. Kept across a later ``conf_join`` of the same leg."""

    OP: ClassVar[str] = "conf_mute"
    leg: str
    muted: bool = True

    def __post_init__(self) -> None:
        _leg(self.leg)


@dataclasses.dataclass(frozen=True)
class PcmAttach(Command):
    """Connect a leg's audio to a modem's PCM tty (modem.md §2.9: 8 kHz S16LE mono, 320-byte
    frames every 20 ms): the tty's audio goes into the call, the call's audio to the tty
    (paced one frame per 20 ms, silence on underrun). With ``dtmf``, digits found in the tty's
    audio come back as ``dtmf`` events with method ``inband``. A lost device is an ``error``
    event ``pcm-lost`` for the leg. Replaces an earlier attachment of the same leg."""

    OP: ClassVar[str] = "pcm_attach"
    leg: str
    device: str
    dtmf: bool = True

    def __post_init__(self) -> None:
        _leg(self.leg)
        _need(self.device.startswith("/") and len(self.device) <= 4096
              and "\x00" not in self.device, "bad device")


@dataclasses.dataclass(frozen=True)
class PcmDetach(Command):
    OP: ClassVar[str] = "pcm_detach"
    leg: str

    def __post_init__(self) -> None:
        _leg(self.leg)


@dataclasses.dataclass(frozen=True)
class Ping(Command):
    OP: ClassVar[str] = "ping"


@dataclasses.dataclass(frozen=True)
class Shutdown(Command):
    OP: ClassVar[str] = "shutdown"


# --------------------------------------------------------------------------- reply


@dataclasses.dataclass(frozen=True)
class Reply:
    """``error`` is a short wire code (``no-such-leg``, ``no-slot``, ``unknown-op`` …)."""

    re: int
    ok: bool
    error: str | None = None
    detail: str | None = None
    heartbeat_age: float | None = None  # ping only: seconds since the pj thread last looped


# --------------------------------------------------------------------------- events


@dataclasses.dataclass(frozen=True)
class Event:
    EVENT: ClassVar[str] = ""


@dataclasses.dataclass(frozen=True)
class Ready(Event):
    EVENT: ClassVar[str] = "ready"
    pid: int
    worker: str
    sip_port: int
    rtp_ports: tuple[int, int]
    max_calls: int
    version: int = VERSION


@dataclasses.dataclass(frozen=True)
class LegEvent(Event):
    """A leg's state: ``incoming`` (with from/to/call-id/X- headers), ``ringing``,
    ``answered`` or ``ended`` (with the final SIP ``code`` and ``reason``)."""

    EVENT: ClassVar[str] = "leg"
    leg: str
    state: str
    code: int = 0
    reason: str = ""
    from_uri: str = ""
    to_uri: str = ""
    call_id: str = ""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _need(self.state in LEG_STATES, f"bad leg state {self.state!r}")


LEG_STATES = ("incoming", "ringing", "answered", "ended")


@dataclasses.dataclass(frozen=True)
class DtmfEvent(Event):
    EVENT: ClassVar[str] = "dtmf"
    leg: str
    digit: str
    method: str = "rfc2833"  # rfc2833 | sip-info | inband (found in a PCM tty's audio)


@dataclasses.dataclass(frozen=True)
class PlayDone(Event):
    """Playback ended: the file ran out (``interrupted`` False), ``stop``, a new ``play``
    or the leg ending (True). ``tag``: the ``play`` command's."""

    EVENT: ClassVar[str] = "play_done"
    leg: str
    file: str
    interrupted: bool = False
    tag: int = 0


@dataclasses.dataclass(frozen=True)
class RecordDone(Event):
    EVENT: ClassVar[str] = "record_done"
    leg: str
    file: str
    duration: float  # seconds of audio in the file
    reason: str = "stopped"  # stopped | max-seconds | silence | hangup


@dataclasses.dataclass(frozen=True)
class Heartbeat(Event):
    EVENT: ClassVar[str] = "heartbeat"
    age: float  # seconds since the pj thread last went round its loop
    calls: int


@dataclasses.dataclass(frozen=True)
class ErrorEvent(Event):
    """Something went wrong outside any command: a refused call, a bad frame, a pj error."""

    EVENT: ClassVar[str] = "error"
    code: str
    detail: str = ""
    leg: str | None = None


COMMANDS: dict[str, type[Command]] = {
    c.OP: c for c in (Dial, Answer, Reject, Hangup, Play, Stop, RecordStart, RecordStop,
                      SendDtmf, Bridge, Unbridge, ConfJoin, ConfLeave, ConfMute, PcmAttach,
                      PcmDetach, Ping,
                      Shutdown)
}
EVENTS: dict[str, type[Event]] = {
    e.EVENT: e for e in (Ready, LegEvent, DtmfEvent, PlayDone, RecordDone, Heartbeat,
                         ErrorEvent)
}

Frame = Command | Reply | Event


# --------------------------------------------------------------------------- codec


def encode(obj: Frame) -> bytes:
    """One frame: compact JSON plus ``\\n``. Raises ValueError if it would exceed MAX_FRAME."""
    body: dict[str, Any] = {}
    if isinstance(obj, Command):
        body["op"] = obj.OP
    elif isinstance(obj, Event):
        body["event"] = obj.EVENT
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        body[f.name] = list(value) if isinstance(value, tuple) else value
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    if len(data) > MAX_FRAME:
        raise ValueError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return data


def decode(line: bytes) -> Frame:
    """Parse one frame (with or without its trailing newline).

    Raises FrameTooLarge, MalformedFrame or UnknownOp; any of them carries the command id
    when one was readable.
    """
    if len(line) > MAX_FRAME:
        raise FrameTooLarge(f"frame of {len(line)} bytes exceeds {MAX_FRAME}")
    try:
        body = json.loads(line)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise MalformedFrame(f"not JSON: {err}") from None
    if not isinstance(body, dict):
        raise MalformedFrame("a frame is a JSON object")
    if "op" in body:
        id_ = body.get("id")
        if type(id_) is not int:
            raise MalformedFrame("command without an integer id")
        op = body.pop("op")
        cls_c = COMMANDS.get(op) if isinstance(op, str) else None
        if cls_c is None:
            raise UnknownOp(f"unknown op {op!r}", id=id_)
        return _build(cls_c, body, id_)
    if "event" in body:
        name = body.pop("event")
        cls_e = EVENTS.get(name) if isinstance(name, str) else None
        if cls_e is None:
            raise MalformedFrame(f"unknown event {name!r}")
        return _build(cls_e, body, None)
    if "re" in body:
        return _build(Reply, body, None)
    raise MalformedFrame("frame has none of op, event, re")


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


_T = typing.TypeVar("_T")


def _build(cls: type[_T], body: dict[str, Any], id_: int | None) -> _T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in body.items():
        if name not in fields:
            raise MalformedFrame(f"unknown field {name!r}", id=id_)
        try:
            kwargs[name] = _coerce(value, hints[name])
        except TypeError as err:
            raise MalformedFrame(f"field {name!r}: {err}", id=id_) from None
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise MalformedFrame(f"missing field(s) {', '.join(missing)}", id=id_)
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise MalformedFrame(str(err), id=id_) from None


def _coerce(value: Any, tp: Any) -> Any:
    """Check ``value`` (parsed JSON) against a field annotation; lists become tuples."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm)
            except TypeError:
                continue
        raise TypeError(f"expected {tp}, got {type(value).__name__}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if type(value) is int:
            return value
    elif tp is float:
        # JSON writes 5.0 as 5.0 but a peer may send 5; NaN/inf never make sense here.
        if type(value) in (int, float) and value == value and abs(value) != float("inf"):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is dict:
        if isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, list) and len(value) == len(args):
            return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
    raise TypeError(f"expected {getattr(tp, '__name__', tp)}, got {type(value).__name__}")


class FrameBuffer:
    """Splits a byte stream into lines, discarding any line longer than MAX_FRAME.

    ``feed`` returns complete lines and, for each oversize line, a FrameTooLarge in its
    place, so the reader can answer an error without ever holding more than MAX_FRAME.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max = max_frame
        self._buf = bytearray()
        self._skipping = False  # inside an oversize line: drop bytes until its newline

    def feed(self, data: bytes) -> list[bytes | FrameTooLarge]:
        out: list[bytes | FrameTooLarge] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self._max:
                    if not self._skipping:
                        out.append(FrameTooLarge(f"frame exceeds {self._max} bytes"))
                    self._skipping = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:nl])
            del self._buf[:nl + 1]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > self._max:
                out.append(FrameTooLarge(f"frame of {len(line)} bytes exceeds {self._max}"))
            elif line.strip():
                out.append(line)
