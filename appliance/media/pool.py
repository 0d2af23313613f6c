"""WorkerPool: the MediaEngine over every media worker (style.md §3.1, L2).

Places each new leg on the up worker with the most free slots (or on the worker of a
``near`` leg, so the two can be bridged); when every worker is full it raises NoCapacity
and the caller answers 503. Worker events become MediaEvents for the subscribers; the legs
of a worker that died end with HangupCause.WORKER_DIED.

Conference rooms span workers. A room's *home* is the worker of its first member; a member
on another worker joins a *satellite* room of the same name there, and the two rooms are
linked by a SIP leg pair on loopback (the satellite worker dials the home worker's SIP port,
as the GSM loopback pair does): one leg sits in each room, so each side hears the other's
mix, and a muted member, which sends nothing into its own room, reaches neither. One link
per (room, satellite worker): made for the first member there, hung up after the last one
leaves. A link holds a call slot on both workers; with no free slot the join fails
(NoCapacity). Link legs are the pool's own: their events reach no subscriber.

Wiring (composition root)::

    pool = WorkerPool()
    supervisor = Supervisor(specs, on_event=pool.on_worker_event,
                            on_worker_down=pool.on_worker_down)
    pool.attach(supervisor)
    await supervisor.start()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

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
from appliance.media.protocol import MediaError

logger = logging.getLogger(__name__)

# An INVITE the front door was told to send should reach the worker well within SIP Timer B.
RESERVATION_S = 32.0
LINK_S = 5.0  # a conference link's INVITE reaches the home worker well within this


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


@dataclasses.dataclass(eq=False)
class _Link:
    """The leg pair joining ROOM on its HOME worker to its satellite on WORKER."""

    room: str
    home: str
    worker: str
    near: LegId  # dialled by WORKER, in the satellite room
    far: LegId  # the incoming leg on HOME, in the room
    arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    ended: bool = False


class WorkerPool:
    def __init__(self, workers: WorkerSet | None = None, *,
                 reservation_s: float = RESERVATION_S) -> None:
        self._workers = workers
        self._reservation_s = reservation_s
        self._where: dict[LegId, str] = {}
        self._reserved: dict[LegId, asyncio.TimerHandle] = {}
        self._answered: set[LegId] = set()
        self._rooms: dict[LegId, str] = {}  # members of a conference room -> the room
        self._homes: dict[str, str] = {}  # room -> the worker it lives on
        self._links: dict[tuple[str, str], _Link] = {}  # (room, satellite worker) -> link
        self._link_legs: dict[LegId, _Link] = {}
        self._linking = asyncio.Lock()  # link changes, one at a time
        self._tasks: set[asyncio.Task[None]] = set()
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

    async def play(self, leg: LegId, file: str, *, loop: int = 1, tag: int = 0) -> None:
        await self._send(leg, p.Play(leg=leg, file=file, loop=loop, tag=tag))

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
        """Into ROOM; on another worker than the room's home, through a link (see above)."""
        worker = self._worker_of(leg)
        async with self._linking:
            if self._rooms.get(leg) not in (None, room):
                await self._settle(self._rooms.pop(leg), worker)  # moves to another room
            home = self._homes.setdefault(room, worker)
            if home != worker and not self._set().workers[home].up:
                home = self._homes[room] = worker  # its links broke with it: start again here
            try:
                if home != worker and (room, worker) not in self._links:
                    await self._link(room, home, worker)
                await self._send(leg, p.ConfJoin(leg=leg, room=room))
            except BaseException:
                await self._settle(room, worker)
                raise
            self._rooms[leg] = room

    async def conference_leave(self, leg: LegId) -> None:
        room = self._rooms.pop(leg, None)
        worker = self._where.get(leg)
        try:
            await self._send(leg, p.ConfLeave(leg=leg))
        finally:
            if room is not None and worker is not None:
                async with self._linking:
                    await self._settle(room, worker)

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
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    def links(self) -> dict[tuple[str, str], tuple[LegId, LegId]]:
        """(room, satellite worker) -> (satellite leg, home leg) of every conference link."""
        return {key: (link.near, link.far) for key, link in self._links.items()}

    # ------------------------------------------------------------------ conference links

    async def _link(self, room: str, home: str, worker: str) -> None:
        """Dial a link from WORKER to ROOM's HOME worker and put its legs in both rooms.
        NoCapacity when either worker has no free slot; CommandFailed when it fails."""
        if self._free(home) <= 0 or self._free(worker) <= 0:
            raise NoCapacity(f"no free slot for a link of room {room} between media workers "
                             f"{worker} and {home}")
        link = _Link(room, home, worker, new_leg_id(), new_leg_id())
        self._where[link.near], self._where[link.far] = worker, home  # hold both slots
        self._link_legs[link.near] = self._link_legs[link.far] = link
        port = self._set().workers[home].spec.sip_port
        logger.info("> conference link %s: worker %s -> %s", room, worker, home)
        try:
            await self._set().request(worker, p.Dial(
                leg=link.near, uri=f"sip:link@127.0.0.1:{port}", headers={"X-Leg-Id": link.far},
                timeout=LINK_S))
            try:
                async with asyncio.timeout(LINK_S):
                    await link.arrived.wait()
            except TimeoutError:
                raise CommandFailed("link-failed", f"no INVITE from worker {worker} reached "
                                    f"worker {home}") from None
            if link.ended:
                raise CommandFailed("link-failed", f"worker {worker} could not reach {home}")
            await self._set().request(home, p.Answer(leg=link.far))
            await self._set().request(home, p.ConfJoin(leg=link.far, room=room))
            await self._set().request(worker, p.ConfJoin(leg=link.near, room=room))
        except BaseException:
            await self._unlink(link)
            raise
        self._links[(room, worker)] = link

    async def _unlink(self, link: _Link) -> None:
        """Hang both legs up; their slots are free once each leg has ended."""
        if self._links.get((link.room, link.worker)) is link:
            del self._links[(link.room, link.worker)]
            logger.info("< conference link %s: worker %s -> %s", link.room, link.worker,
                        link.home)
        link.ended = True
        for leg, worker in ((link.near, link.worker), (link.far, link.home)):
            if leg not in self._where:
                continue
            if leg == link.far and not link.arrived.is_set():
                self._forget_link_leg(leg)  # a slot held for an INVITE that never came
                continue
            try:
                await self._set().request(worker, p.Hangup(leg=leg))
            except CommandFailed as err:
                if err.code == "no-such-leg":
                    self._forget_link_leg(leg)
            except (MediaError, TimeoutError) as err:
                logger.warning("x conference link leg %s not hung up: %s", leg, err)

    async def _settle(self, room: str, worker: str) -> None:
        """After a member of ROOM left WORKER: unlink WORKER when it was the last member
        there; forget the room's home once it has no member and no link anywhere."""
        if any(r == room and self._where.get(leg) == worker for leg, r in self._rooms.items()):
            return
        link = self._links.get((room, worker))
        if link is not None:
            await self._unlink(link)
        if room not in self._rooms.values() and not any(k[0] == room for k in self._links):
            self._homes.pop(room, None)

    def _link_leg_event(self, worker: str, ev: p.LegEvent) -> None:
        leg = LegId(ev.leg)
        link = self._link_legs[leg]
        if ev.state == LegState.INCOMING:
            link.arrived.set()
        elif ev.state == LegState.ENDED:
            self._forget_link_leg(leg)
            broke, link.ended = not link.ended, True
            link.arrived.set()  # wakes a _link still waiting: it fails
            if broke:
                logger.warning("x conference link %s (worker %s -> %s) broke: %s %s",
                               link.room, link.worker, link.home, ev.code, ev.reason)
                self._spawn(self._unlink_locked(link))

    def _forget_link_leg(self, leg: LegId) -> None:
        self._where.pop(leg, None)
        self._link_legs.pop(leg, None)

    def _member_gone(self, leg: LegId, worker: str) -> None:
        """A member's leg ended without leaving its room: settle the room."""
        room = self._rooms.pop(leg, None)
        if room is not None:
            self._spawn(self._settle_locked(room, worker))

    async def _settle_locked(self, room: str, worker: str) -> None:
        async with self._linking:
            await self._settle(room, worker)

    async def _unlink_locked(self, link: _Link) -> None:
        async with self._linking:
            await self._unlink(link)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ worker events

    def on_worker_event(self, worker: str, ev: p.Event) -> None:
        out: MediaEvent | None = None
        if getattr(ev, "leg", None) in self._link_legs:
            if isinstance(ev, p.LegEvent):
                self._link_leg_event(worker, ev)
            return  # a conference link's leg: no subscriber's business
        if isinstance(ev, p.LegEvent):
            leg = LegId(ev.leg)
            state = LegState(ev.state)
            if state is LegState.ENDED:
                if leg not in self._where:
                    return  # already failed (worker down) or never ours
                answered = leg in self._answered
                cause = (HangupCause.WORKER_DIED if ev.reason == p.REASON_WORKER_DIED
                         else HangupCause.from_sip(ev.code, answered))
                self._member_gone(leg, self._where[leg])
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
            out = PlayFinished(LegId(ev.leg), ev.file, ev.interrupted, tag=ev.tag)
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
            if leg in self._link_legs:
                self._link_leg_event(worker, p.LegEvent(leg=leg, state="ended", code=500,
                                                        reason=p.REASON_WORKER_DIED))
                continue
            self._member_gone(leg, worker)
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
