"""The MediaEngine seam: what the call services program against (style.md §3.1).

Pure (L0). Implemented by ``media.pool.WorkerPool`` (real pjsua2 workers) and
``media.null.NullMediaEngine`` (no audio). The RCML runner cannot tell them apart.

Every method returns once the worker has *accepted* the command; what happens later
(the far end answers, the file runs out, a digit arrives) comes back as a MediaEvent to
the subscribers.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import NewType, Protocol

from appliance.media.protocol import MediaError

LegId = NewType("LegId", str)


class LegState(enum.StrEnum):
    INCOMING = "incoming"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


class HangupCause(enum.StrEnum):
    """Why a leg ended, derived from the final SIP code (and our own failures)."""

    NORMAL = "normal"  # answered, then someone hung up
    BUSY = "busy"  # 486/600
    NO_ANSWER = "no-answer"  # 408/480/487 before an answer
    REJECTED = "rejected"  # 403/603 and other 4xx-6xx before an answer
    FAILED = "failed"  # 5xx or a local error before an answer
    WORKER_DIED = "worker-died"  # the worker process holding the leg exited

    @classmethod
    def from_sip(cls, code: int, answered: bool) -> HangupCause:
        if answered or code in (0, 200):
            return cls.NORMAL
        if code in (486, 600):
            return cls.BUSY
        if code in (408, 480, 487):
            return cls.NO_ANSWER
        if 500 <= code <= 599:
            return cls.FAILED
        return cls.REJECTED


class NoCapacity(MediaError):
    """Every worker is at its call cap: answer the caller 503."""

    status = 503


class LegNotFound(MediaError):
    status = 404


class CommandFailed(MediaError):
    """A worker refused a command. ``code`` is its wire error (``no-such-leg``, …)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class WorkerGone(MediaError):
    """The worker connection closed while a command was in flight."""


class VoiceMissing(MediaError):
    """The text-to-speech engine has no voice of the kind a ``<Say voice>`` asks for (no
    female voice installed: `media.tts`). The runner speaks the text in the default voice
    instead, and a warning Notification says so."""

    status = 503


# --------------------------------------------------------------------------- events


@dataclasses.dataclass(frozen=True)
class LegChanged:
    leg: LegId
    state: LegState
    code: int = 0  # SIP status: 180/183 ringing, 200 answered, the final code when ended
    reason: str = ""
    cause: HangupCause | None = None  # set when state is ENDED
    from_uri: str = ""
    to_uri: str = ""
    call_id: str = ""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DtmfReceived:
    leg: LegId
    digit: str


@dataclasses.dataclass(frozen=True)
class PlayFinished:
    """``audio`` is False when nothing was really played (NullMediaEngine). ``tag`` is the
    one `MediaEngine.play` was given: the end of a playback stopped earlier may arrive
    after the next one has begun, and only the tag tells them apart."""

    leg: LegId
    file: str
    interrupted: bool = False
    audio: bool = True
    tag: int = 0


@dataclasses.dataclass(frozen=True)
class RecordFinished:
    """``audio`` is False when nothing was really recorded (NullMediaEngine)."""

    leg: LegId
    file: str
    duration: float
    reason: str = "stopped"  # stopped | max-seconds | silence | hangup
    audio: bool = True


MediaEvent = LegChanged | DtmfReceived | PlayFinished | RecordFinished
Handler = Callable[[MediaEvent], None]


@dataclasses.dataclass(frozen=True)
class IncomingSlot:
    """Where the front door sends an INVITE: to ``host:port`` with ``X-Leg-Id: leg``.

    The slot is held until the leg ends, or released if no INVITE shows up in time.
    """

    leg: LegId
    host: str
    port: int
    worker: str


class MediaEngine(Protocol):
    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Call ``handler`` (on the loop) for every MediaEvent; returns an unsubscribe."""
        ...

    async def reserve_incoming(self, leg: LegId | None = None) -> IncomingSlot:
        """Pick a worker with a free slot for an incoming call; NoCapacity if none."""
        ...

    async def answer(self, leg: LegId, *, code: int = 200) -> None: ...

    async def reject(self, leg: LegId, *, code: int = 486) -> None: ...

    async def hangup(self, leg: LegId) -> None: ...

    async def dial(self, uri: str, *, leg: LegId | None = None,
                   headers: Mapping[str, str] | None = None, username: str | None = None,
                   password: str | None = None, ring_seconds: float = 60.0,
                   near: LegId | None = None, proxy: str | None = None,
                   from_uri: str | None = None) -> LegId:
        """Place a leg; LegChanged events report ringing/answered/ended. NoCapacity if full.

        ``near``: put the new leg on the same worker as that leg, so the two can be bridged
        (a bridge lives inside one worker). NoCapacity if that worker is full.

        ``proxy``: send the INVITE to this outbound proxy (the front door) while its
        Request-URI stays ``uri`` (a leg to a gateway: the provider's digest covers it).

        ``from_uri``: the INVITE's From (the caller ID a provider sees, ``sip:user@domain``);
        None: the worker's own address.
        """
        ...

    async def play(self, leg: LegId, file: str, *, loop: int = 1, tag: int = 0) -> None:
        """Play FILE to LEG LOOP times (0: until stop_play); its PlayFinished carries TAG
        (0 to 2**53 - 1). A new play on the leg ends the one under way (interrupted)."""
        ...

    async def stop_play(self, leg: LegId) -> None: ...

    async def record(self, leg: LegId, file: str, *, max_seconds: float = 3600.0,
                     silence_seconds: float = 0.0) -> None:
        """Record what LEG hears from its far end into FILE (WAV) until stop_record,
        MAX_SECONDS, or SILENCE_SECONDS (> 0) without the far end's voice (RecordFinished
        reason ``silence``)."""
        ...

    async def stop_record(self, leg: LegId) -> None: ...

    async def send_dtmf(self, leg: LegId, digits: str) -> None: ...

    async def bridge(self, leg: LegId, other: LegId) -> None:
        """Audio both ways. Both legs must be on the same worker (CommandFailed otherwise)."""
        ...

    async def unbridge(self, leg: LegId, other: LegId) -> None: ...

    async def conference_join(self, leg: LegId, room: str) -> None:
        """Into ROOM (created on first use). Members on different workers hear each other
        through a link that holds a call slot on both: NoCapacity when none is free."""
        ...

    async def conference_leave(self, leg: LegId) -> None: ...

    async def conference_mute(self, leg: LegId, muted: bool) -> None:
        """Stop (MUTED) or resume sending LEG's audio into its room; it still hears the room."""
        ...

    async def pcm_attach(self, leg: LegId, device: str, *, dtmf: bool = True) -> None:
        """Connect LEG's audio to a modem's PCM tty DEVICE (both ways); with DTMF, digits
        found in the tty's audio come back as DtmfReceived for LEG."""
        ...

    async def pcm_detach(self, leg: LegId) -> None: ...

    async def close(self) -> None: ...
