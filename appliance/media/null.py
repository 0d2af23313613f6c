"""NullMediaEngine: the MediaEngine without audio, for tests and laptops without pjsua2.

Legs go through their states (a dialled leg rings and answers at once), but nothing is
played or recorded and it says so: every PlayFinished / RecordFinished carries
``audio=False`` and no recording file is written. Events are delivered on the next loop
iteration, after the command's await returns, as with real workers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping

from appliance.media.engine import (
    CommandFailed,
    DtmfReceived,
    Handler,
    HangupCause,
    IncomingSlot,
    LegChanged,
    LegId,
    LegNotFound,
    LegState,
    MediaEvent,
    NoCapacity,
    PlayFinished,
    RecordFinished,
)

logger = logging.getLogger(__name__)


class NullMediaEngine:
    def __init__(self, *, max_legs: int = 1000) -> None:
        self.max_legs = max_legs
        self.legs: dict[LegId, LegState] = {}
        self.rooms: dict[LegId, str] = {}
        self.muted: set[LegId] = set()  # legs muted in their conference
        self.pcm: dict[LegId, str] = {}  # legs attached to a modem's PCM tty -> the device
        self.sent_dtmf: list[tuple[LegId, str]] = []  # what send_dtmf was asked to send
        self._handlers: list[Handler] = []

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler) if handler in self._handlers else None

    # ------------------------------------------------------------------ test hooks

    def simulate_incoming(self, leg: LegId, *, from_uri: str = "", to_uri: str = "",
                          headers: Mapping[str, str] | None = None) -> None:
        """An INVITE arrived for a reserved (or any) leg."""
        self.legs[leg] = LegState.INCOMING
        self._later(LegChanged(leg, LegState.INCOMING, 0, "", None, from_uri, to_uri, "",
                               dict(headers or {})))

    def simulate_dtmf(self, leg: LegId, digits: str) -> None:
        self._state(leg)
        for d in digits:
            self._later(DtmfReceived(leg, d))

    def simulate_hangup(self, leg: LegId) -> None:
        """The far end hung up."""
        self._end(leg, 200, "Normal call clearing")

    # ------------------------------------------------------------------ MediaEngine

    async def reserve_incoming(self, leg: LegId | None = None) -> IncomingSlot:
        self._capacity()
        return IncomingSlot(leg=leg or _new_leg(), host="127.0.0.1", port=0, worker="null")

    async def answer(self, leg: LegId, *, code: int = 200) -> None:
        self._need(leg, LegState.INCOMING, LegState.RINGING)
        if code == 200:
            self.legs[leg] = LegState.ANSWERED
            self._later(LegChanged(leg, LegState.ANSWERED, 200))

    async def reject(self, leg: LegId, *, code: int = 486) -> None:
        self._need(leg, LegState.INCOMING, LegState.RINGING)
        self._end(leg, code, "rejected")

    async def hangup(self, leg: LegId) -> None:
        state = self._state(leg)
        self._end(leg, 200 if state is LegState.ANSWERED else 487, "hangup")

    async def dial(self, uri: str, *, leg: LegId | None = None,
                   headers: Mapping[str, str] | None = None, username: str | None = None,
                   password: str | None = None, ring_seconds: float = 60.0,
                   near: LegId | None = None, proxy: str | None = None,
                   from_uri: str | None = None) -> LegId:
        self._capacity()
        if near is not None:
            self._state(near)
        leg = leg or _new_leg()
        self.legs[leg] = LegState.ANSWERED
        self._later(LegChanged(leg, LegState.RINGING, 180, to_uri=uri))
        self._later(LegChanged(leg, LegState.ANSWERED, 200, to_uri=uri))
        return leg

    async def play(self, leg: LegId, file: str, *, loop: int = 1, tag: int = 0) -> None:
        self._state(leg)
        self._later(PlayFinished(leg, file, interrupted=False, audio=False, tag=tag))

    async def stop_play(self, leg: LegId) -> None:
        self._state(leg)

    async def record(self, leg: LegId, file: str, *, max_seconds: float = 3600.0,
                     silence_seconds: float = 0.0) -> None:
        self._state(leg)
        self._later(RecordFinished(leg, file, 0.0, "stopped", audio=False))

    async def stop_record(self, leg: LegId) -> None:
        self._state(leg)

    async def send_dtmf(self, leg: LegId, digits: str) -> None:
        self._need(leg, LegState.ANSWERED)
        self.sent_dtmf.append((leg, digits))

    async def bridge(self, leg: LegId, other: LegId) -> None:
        self._state(leg)
        self._state(other)

    async def unbridge(self, leg: LegId, other: LegId) -> None:
        self._state(leg)
        self._state(other)

    async def conference_join(self, leg: LegId, room: str) -> None:
        self._state(leg)
        self.rooms[leg] = room

    async def conference_leave(self, leg: LegId) -> None:
        self._state(leg)
        self.rooms.pop(leg, None)

    async def conference_mute(self, leg: LegId, muted: bool) -> None:
        self._state(leg)
        if muted:
            self.muted.add(leg)
        else:
            self.muted.discard(leg)

    async def pcm_attach(self, leg: LegId, device: str, *, dtmf: bool = True) -> None:
        self._state(leg)
        self.pcm[leg] = device

    async def pcm_detach(self, leg: LegId) -> None:
        self._state(leg)
        self.pcm.pop(leg, None)

    async def close(self) -> None:
        self.legs.clear()
        self.pcm.clear()

    # ------------------------------------------------------------------ internals

    def _capacity(self) -> None:
        if len(self.legs) >= self.max_legs:
            raise NoCapacity("null engine at max_legs")

    def _state(self, leg: LegId) -> LegState:
        state = self.legs.get(leg)
        if state is None:
            raise LegNotFound(f"no such leg {leg}")
        return state

    def _need(self, leg: LegId, *states: LegState) -> None:
        if self._state(leg) not in states:
            raise CommandFailed("bad-state", f"{leg} is {self.legs[leg]}")

    def _end(self, leg: LegId, code: int, reason: str) -> None:
        answered = self._state(leg) is LegState.ANSWERED
        del self.legs[leg]
        self.rooms.pop(leg, None)
        self.muted.discard(leg)
        self._later(LegChanged(leg, LegState.ENDED, code, reason,
                               HangupCause.from_sip(code, answered)))

    def _later(self, ev: MediaEvent) -> None:
        asyncio.get_running_loop().call_soon(self._emit, ev)

    def _emit(self, ev: MediaEvent) -> None:
        for handler in list(self._handlers):
            try:
                handler(ev)
            except Exception:
                logger.exception("x media event handler failed")


def _new_leg() -> LegId:
    return LegId("LG" + uuid.uuid4().hex)
