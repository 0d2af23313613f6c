"""WorkerPool: the MediaEngine over every media worker (style.md §3.1, L2).

Places each new leg on the up worker with the most free slots (or on the worker of a
``near`` leg, so the two can be bridged); when every worker is full it raises NoCapacity
and the caller answers 503. Worker events become MediaEvents for the subscribers; the legs
of a worker that died end with HangupCause.WORKER_DIED.

Wiring (composition root)::

    pool = WorkerPool()
    supervisor = Supervisor(specs, on_event=pool.on_worker_event,
                            on_worker_down=pool.on_worker_down)
    pool.attach(supervisor)
    await supervisor.start()
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Protocol

from appliance.media import protocol as p
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

# An INVITE the front door was told to send should reach the worker well within SIP Timer B.
RESERVATION_S = 32.0


class WorkerSpecView(Protocol):
    @property
    def sip_port(self) -> int: ...

    @property
    def max_calls(self) -> int: ...


class WorkerView(Protocol):
    @property
    def up(self) -> bool: ...

    @property
    def spec(self) -> WorkerSpecView: ...


class WorkerSet(Protocol):
    """What the pool needs from the supervisor."""

    @property
    def workers(self) -> Mapping[str, WorkerView]: ...

    async def request(self, worker: str, cmd: p.Command, *,
                      seconds: float = 5.0) -> p.Reply: ...


def new_leg_id() -> LegId:
    return LegId("LG" + uuid.uuid4().hex)


class WorkerPool:
    def __init__(self, workers: WorkerSet | None = None, *,
                 reservation_s: float = RESERVATION_S) -> None:
        self._workers = workers
        self._reservation_s = reservation_s
        self._where: dict[LegId, str] = {}
        self._reserved: dict[LegId, asyncio.TimerHandle] = {}
        self._answered: set[LegId] = set()
        self._rooms: dict[LegId, str] = {}  # legs in a conference room -> the room
        self._handlers: list[Handler] = []

    def attach(self, workers: WorkerSet) -> None:
        self._workers = workers

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler) if handler in self._handlers else None

    def load(self) -> dict[str, int]:
        """Legs (and reservations) per worker."""
        out = {w: 0 for w in self._set().workers}
        for w in self._where.values():
            out[w] = out.get(w, 0) + 1
        return out

    # ------------------------------------------------------------------ MediaEngine

    async def reserve_incoming(self, leg: LegId | None = None) -> IncomingSlot:
        worker = self._pick()
        leg = leg or new_leg_id()
        self._where[leg] = worker
        loop = asyncio.get_running_loop()
        self._reserved[leg] = loop.call_later(self._reservation_s, self._expire, leg)
        return IncomingSlot(leg=leg, host="127.0.0.1",
                            port=self._set().workers[worker].spec.sip_port, worker=worker)

    async def answer(self, leg: LegId, *, code: int = 200) -> None:
        await self._send(leg, p.Answer(leg=leg, code=code))

    async def reject(self, leg: LegId, *, code: int = 486) -> None:
        await self._send(leg, p.Reject(leg=leg, code=code))

    async def hangup(self, leg: LegId) -> None:
        await self._send(leg, p.Hangup(leg=leg))

    async def dial(self, uri: str, *, leg: LegId | None = None,
                   headers: Mapping[str, str] | None = None, username: str | None = None,
                   password: str | None = None, ring_seconds: float = 60.0,
                   near: LegId | None = None, proxy: str | None = None,
                   from_uri: str | None = None) -> LegId:
        if near is not None:
            worker = self._worker_of(near)
            if self._free(worker) <= 0:
                raise NoCapacity(f"media worker {worker} is full")
        else:
            worker = self._pick()
        leg = leg or new_leg_id()
        cmd = p.Dial(leg=leg, uri=uri, headers=dict(headers or {}), username=username,
                     password=password, timeout=ring_seconds, proxy=proxy,
                     from_uri=from_uri)
        self._where[leg] = worker
        try:
            await self._set().request(worker, cmd)
        except CommandFailed as err:
            self._where.pop(leg, None)
            if err.code == "no-slot":
                raise NoCapacity(err.detail) from err
            raise
        except BaseException:
            self._where.pop(leg, None)
            raise
        return leg

    async def play(self, leg: LegId, file: str, *, loop: int = 1) -> None:
        await self._send(leg, p.Play(leg=leg, file=file, loop=loop))

    async def stop_play(self, leg: LegId) -> None:
        await self._send(leg, p.Stop(leg=leg))

    async def record(self, leg: LegId, file: str, *, max_seconds: float = 3600.0,
                     silence_seconds: float = 0.0) -> None:
        await self._send(leg, p.RecordStart(leg=leg, file=file, max_seconds=max_seconds,
                                            silence_seconds=silence_seconds))

    async def stop_record(self, leg: LegId) -> None:
        await self._send(leg, p.RecordStop(leg=leg))

    async def send_dtmf(self, leg: LegId, digits: str) -> None:
        await self._send(leg, p.SendDtmf(leg=leg, digits=digits))

    async def bridge(self, leg: LegId, other: LegId) -> None:
        if self._worker_of(leg) != self._worker_of(other):
            raise CommandFailed("not-same-worker", f"{leg} and {other} are on different "
                                "workers; dial with near=")
        await self._send(leg, p.Bridge(leg=leg, other=other))

    async def unbridge(self, leg: LegId, other: LegId) -> None:
        await self._send(leg, p.Unbridge(leg=leg, other=other))

    async def conference_join(self, leg: LegId, room: str) -> None:
        # A room lives inside one worker: a leg on another worker would silently get a room
        # of its own there, so it is refused instead.
        worker = self._worker_of(leg)
        for other, other_room in list(self._rooms.items()):
            if other not in self._where:
                del self._rooms[other]  # ended
            elif other_room == room and other != leg and self._where[other] != worker:
                raise CommandFailed("not-same-worker", f"room {room} is on worker "
                                    f"{self._where[other]}, {leg} on {worker}")
        await self._send(leg, p.ConfJoin(leg=leg, room=room))
        self._rooms[leg] = room

    async def conference_leave(self, leg: LegId) -> None:
        self._rooms.pop(leg, None)
        await self._send(leg, p.ConfLeave(leg=leg))

    async def conference_mute(self, leg: LegId, muted: bool) -> None:
        await self._send(leg, p.ConfMute(leg=leg, muted=muted))

    async def pcm_attach(self, leg: LegId, device: str, *, dtmf: bool = True) -> None:
        await self._send(leg, p.PcmAttach(leg=leg, device=device, dtmf=dtmf))

    async def pcm_detach(self, leg: LegId) -> None:
        await self._send(leg, p.PcmDetach(leg=leg))

    async def close(self) -> None:
        for handle in self._reserved.values():
            handle.cancel()
        self._reserved.clear()

    # ------------------------------------------------------------------ worker events

    def on_worker_event(self, worker: str, ev: p.Event) -> None:
        out: MediaEvent | None = None
        if isinstance(ev, p.LegEvent):
            leg = LegId(ev.leg)
            state = LegState(ev.state)
            if state is LegState.ENDED:
                if leg not in self._where:
                    return  # already failed (worker down) or never ours
                answered = leg in self._answered
                cause = (HangupCause.WORKER_DIED if ev.reason == p.REASON_WORKER_DIED
                         else HangupCause.from_sip(ev.code, answered))
                self._forget(leg)
                out = LegChanged(leg, state, ev.code, ev.reason, cause)
            else:
                self._where[leg] = worker
                timer = self._reserved.pop(leg, None)
                if timer is not None:
                    timer.cancel()
                if state is LegState.ANSWERED:
                    self._answered.add(leg)
                out = LegChanged(leg, state, ev.code, ev.reason, None, ev.from_uri,
                                 ev.to_uri, ev.call_id, dict(ev.headers))
        elif isinstance(ev, p.DtmfEvent):
            out = DtmfReceived(LegId(ev.leg), ev.digit)
        elif isinstance(ev, p.PlayDone):
            out = PlayFinished(LegId(ev.leg), ev.file, ev.interrupted)
        elif isinstance(ev, p.RecordDone):
            out = RecordFinished(LegId(ev.leg), ev.file, ev.duration, ev.reason)
        elif isinstance(ev, p.ErrorEvent):
            logger.warning("x media worker %s: %s %s (leg %s)", worker, ev.code, ev.detail,
                           ev.leg)
        if out is not None:
            self._emit(out)

    def on_worker_down(self, worker: str) -> None:
        """Fail whatever is still placed on a dead worker (reservations, legs with no event
        yet); the supervisor already reported the legs it knew about."""
        for leg in [leg for leg, w in self._where.items() if w == worker]:
            self._forget(leg)
            self._emit(LegChanged(leg, LegState.ENDED, 500, p.REASON_WORKER_DIED,
                                  HangupCause.WORKER_DIED))

    # ------------------------------------------------------------------ internals

    def _set(self) -> WorkerSet:
        if self._workers is None:
            raise NoCapacity("no media workers attached")
        return self._workers

    def _free(self, worker: str) -> int:
        view = self._set().workers[worker]
        if not view.up:
            return 0
        used = sum(1 for w in self._where.values() if w == worker)
        return view.spec.max_calls - used

    def _pick(self) -> str:
        best, best_free = None, 0
        for worker in sorted(self._set().workers):
            free = self._free(worker)
            if free > best_free:
                best, best_free = worker, free
        if best is None:
            raise NoCapacity("every media worker is at its call cap")
        return best

    def _worker_of(self, leg: LegId) -> str:
        worker = self._where.get(leg)
        if worker is None:
            raise LegNotFound(f"no such leg {leg}")
        return worker

    async def _send(self, leg: LegId, cmd: p.Command) -> None:
        await self._set().request(self._worker_of(leg), cmd)

    def _forget(self, leg: LegId) -> None:
        self._where.pop(leg, None)
        self._answered.discard(leg)
        timer = self._reserved.pop(leg, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, leg: LegId) -> None:
        if self._reserved.pop(leg, None) is not None:
            logger.warning("x no INVITE reached a worker for reserved leg %s", leg)
            self._where.pop(leg, None)

    def _emit(self, ev: MediaEvent) -> None:
        for handler in list(self._handlers):
            try:
                handler(ev)
            except Exception:
                logger.exception("x media event handler failed")
