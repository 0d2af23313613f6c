"""WorkerPool over a fake worker set: placement, capacity, events, a worker's death."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import pytest

from appliance.media import protocol as p
from appliance.media.engine import (
    CommandFailed,
    DtmfReceived,
    HangupCause,
    LegChanged,
    LegId,
    LegNotFound,
    LegState,
    MediaEvent,
    NoCapacity,
    PlayFinished,
    RecordFinished,
)
from appliance.media.pool import WorkerPool


@dataclasses.dataclass(frozen=True)
class Spec:
    sip_port: int
    max_calls: int = 2


@dataclasses.dataclass
class Handle:
    spec: Spec
    up: bool = True


class FakeSet:
    def __init__(self, **workers: Handle) -> None:
        self.handles = workers
        self.sent: list[tuple[str, p.Command]] = []
        self.refuse: str | None = None

    @property
    def workers(self) -> Mapping[str, Handle]:
        return self.handles

    async def request(self, worker: str, cmd: p.Command, *, seconds: float = 5.0) -> p.Reply:
        self.sent.append((worker, cmd))
        if self.refuse:
            raise CommandFailed(self.refuse, "refused")
        return p.Reply(re=cmd.id, ok=True)


def make() -> tuple[WorkerPool, FakeSet, list[MediaEvent]]:
    ws = FakeSet(a=Handle(Spec(5071)), b=Handle(Spec(5072)))
    pool = WorkerPool(ws)
    events: list[MediaEvent] = []
    pool.subscribe(events.append)
    return pool, ws, events


async def test_placement_spreads_and_fills_then_no_capacity() -> None:
    pool, ws, _ = make()
    slots = [await pool.reserve_incoming() for _ in range(4)]
    assert [s.worker for s in slots] == ["a", "b", "a", "b"]
    assert {s.port for s in slots} == {5071, 5072}
    with pytest.raises(NoCapacity):
        await pool.reserve_incoming()
    with pytest.raises(NoCapacity):
        await pool.dial("sip:x@y")
    assert NoCapacity("x").status == 503
    await pool.close()


async def test_down_worker_gets_nothing() -> None:
    pool, ws, _ = make()
    ws.handles["a"].up = False
    assert (await pool.reserve_incoming()).worker == "b"
    assert (await pool.reserve_incoming()).worker == "b"
    with pytest.raises(NoCapacity):
        await pool.reserve_incoming()
    await pool.close()


async def test_dial_near_puts_the_leg_on_the_same_worker() -> None:
    pool, ws, _ = make()
    await pool.reserve_incoming(LegId("A"))  # on a
    await pool.reserve_incoming(LegId("X"))  # on b
    leg = await pool.dial("sip:bob@127.0.0.1", near=LegId("X"), headers={"X-T": "1"})
    assert ws.sent[-1][0] == "b"
    assert ws.sent[-1][1] == p.Dial(leg=leg, uri="sip:bob@127.0.0.1", headers={"X-T": "1"},
                                    id=0)
    with pytest.raises(NoCapacity):
        await pool.dial("sip:c@d", near=LegId("X"))  # b is full now
    with pytest.raises(CommandFailed):
        await pool.bridge(LegId("A"), leg)  # different workers
    await pool.bridge(LegId("X"), leg)
    await pool.close()


async def test_worker_refusing_a_dial_is_no_capacity() -> None:
    pool, ws, _ = make()
    ws.refuse = "no-slot"
    with pytest.raises(NoCapacity):
        await pool.dial("sip:a@b", leg=LegId("D"))
    assert pool.load() == {"a": 0, "b": 0}
    ws.refuse = "dial-failed"
    with pytest.raises(CommandFailed):
        await pool.dial("sip:a@b", leg=LegId("D"))
    await pool.close()


async def test_commands_route_to_the_leg_worker() -> None:
    pool, ws, _ = make()
    await pool.reserve_incoming(LegId("A"))
    await pool.reserve_incoming(LegId("B"))
    await pool.answer(LegId("B"))
    await pool.play(LegId("B"), "/x.wav", loop=2)
    await pool.record(LegId("A"), "/r.wav", max_seconds=5)
    await pool.send_dtmf(LegId("A"), "1#")
    await pool.conference_join(LegId("A"), "room")
    assert [(w, type(c).__name__) for w, c in ws.sent] == [
        ("b", "Answer"), ("b", "Play"), ("a", "RecordStart"), ("a", "SendDtmf"),
        ("a", "ConfJoin")]
    with pytest.raises(LegNotFound):
        await pool.hangup(LegId("nope"))
    await pool.close()


async def test_events_become_media_events() -> None:
    pool, ws, events = make()
    slot = await pool.reserve_incoming(LegId("A"))
    w = slot.worker
    pool.on_worker_event(w, p.LegEvent(leg="A", state="incoming", from_uri="<sip:a@b>",
                                       headers={"X-Leg-Id": "A"}))
    pool.on_worker_event(w, p.LegEvent(leg="A", state="answered", code=200))
    pool.on_worker_event(w, p.DtmfEvent(leg="A", digit="5"))
    pool.on_worker_event(w, p.PlayDone(leg="A", file="/x.wav"))
    pool.on_worker_event(w, p.RecordDone(leg="A", file="/r.wav", duration=2.0))
    pool.on_worker_event(w, p.ErrorEvent(code="no-slot"))
    pool.on_worker_event(w, p.LegEvent(leg="A", state="ended", code=200, reason="bye"))
    pool.on_worker_event(w, p.LegEvent(leg="A", state="ended", code=200))  # duplicate: dropped
    assert events == [
        LegChanged(LegId("A"), LegState.INCOMING, from_uri="<sip:a@b>",
                   headers={"X-Leg-Id": "A"}),
        LegChanged(LegId("A"), LegState.ANSWERED, 200),
        DtmfReceived(LegId("A"), "5"),
        PlayFinished(LegId("A"), "/x.wav"),
        RecordFinished(LegId("A"), "/r.wav", 2.0),
        LegChanged(LegId("A"), LegState.ENDED, 200, "bye", HangupCause.NORMAL),
    ]
    assert pool.load()[w] == 0
    await pool.close()


async def test_unanswered_end_causes() -> None:
    pool, _, events = make()
    for leg, code in (("B", 486), ("N", 487), ("R", 403), ("F", 503)):
        pool.on_worker_event("a", p.LegEvent(leg=leg, state="ringing", code=180))
        pool.on_worker_event("a", p.LegEvent(leg=leg, state="ended", code=code))
    causes = [e.cause for e in events if isinstance(e, LegChanged) and e.cause]
    assert causes == [HangupCause.BUSY, HangupCause.NO_ANSWER, HangupCause.REJECTED,
                      HangupCause.FAILED]
    await pool.close()


async def test_worker_death_fails_its_legs() -> None:
    pool, ws, events = make()
    await pool.reserve_incoming(LegId("A"))  # a
    await pool.reserve_incoming(LegId("B"))  # b
    leg = await pool.dial("sip:x@y", near=LegId("A"))  # a, no event yet
    # The supervisor reports the legs it knew, then says the worker is down.
    pool.on_worker_event("a", p.LegEvent(leg="A", state="ended", code=500,
                                         reason=p.REASON_WORKER_DIED))
    pool.on_worker_down("a")
    ended = {e.leg: e.cause for e in events if isinstance(e, LegChanged)}
    assert ended == {"A": HangupCause.WORKER_DIED, leg: HangupCause.WORKER_DIED}
    assert pool.load() == {"a": 0, "b": 1}
    await pool.close()


async def test_reservation_expires() -> None:
    pool, _, _ = make()
    pool._reservation_s = 0.05
    await pool.reserve_incoming(LegId("A"))
    assert pool.load()["a"] == 1
    await asyncio.sleep(0.1)
    assert pool.load()["a"] == 0
    await pool.close()


async def test_unsubscribe_and_failing_handler() -> None:
    pool, _, events = make()

    def boom(ev: MediaEvent) -> None:
        raise RuntimeError("handler bug")

    pool.subscribe(boom)
    unsubscribe = pool.subscribe(events.append)
    pool.on_worker_event("a", p.DtmfEvent(leg="A", digit="1"))
    unsubscribe()
    pool.on_worker_event("a", p.DtmfEvent(leg="A", digit="2"))
    assert [e.digit for e in events if isinstance(e, DtmfReceived)] == ["1", "1", "2"]


class LinkingSet(FakeSet):
    """Acts out the workers' side of a conference link: a Dial with X-Leg-Id to a worker's
    port arrives there as an incoming leg; a Hangup ends both legs (the BYE)."""

    def __init__(self, pool: WorkerPool, **workers: Handle) -> None:
        super().__init__(**workers)
        self.pool = pool
        self.arrive = True
        self.peer: dict[str, tuple[str, str]] = {}  # leg -> (its worker, the other leg)

    async def request(self, worker: str, cmd: p.Command, *, seconds: float = 5.0) -> p.Reply:
        reply = await super().request(worker, cmd, seconds=seconds)
        loop = asyncio.get_running_loop()
        if isinstance(cmd, p.Dial) and "X-Leg-Id" in cmd.headers:
            far = cmd.headers["X-Leg-Id"]
            port = int(cmd.uri.rsplit(":", 1)[1])
            home = next(w for w, h in self.handles.items() if h.spec.sip_port == port)
            self.peer[cmd.leg], self.peer[far] = (worker, far), (home, cmd.leg)
            if self.arrive:
                loop.call_soon(self.pool.on_worker_event, home,
                               p.LegEvent(leg=far, state="incoming"))
        elif isinstance(cmd, p.Hangup) and cmd.leg in self.peer:
            other_worker, other = self.peer.pop(cmd.leg)
            self.peer.pop(other, None)
            for w, leg in ((worker, cmd.leg), (other_worker, other)):
                loop.call_soon(self.pool.on_worker_event, w,
                               p.LegEvent(leg=leg, state="ended", code=200))
        return reply


def make_linking(max_calls: int = 4) -> tuple[WorkerPool, LinkingSet, list[MediaEvent]]:
    pool = WorkerPool()
    ws = LinkingSet(pool, a=Handle(Spec(5071, max_calls)), b=Handle(Spec(5072, max_calls)))
    pool.attach(ws)
    events: list[MediaEvent] = []
    pool.subscribe(events.append)
    return pool, ws, events


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_conference_room_links_another_worker() -> None:
    pool, ws, events = make_linking()
    a1, b1, a2, b2 = [await pool.reserve_incoming() for _ in range(4)]
    assert [s.worker for s in (a1, b1, a2, b2)] == ["a", "b", "a", "b"]
    await pool.conference_join(a1.leg, "CFroom")
    await pool.conference_join(a2.leg, "CFroom")
    assert pool.links() == {}
    ws.sent.clear()
    await pool.conference_join(b1.leg, "CFroom")  # the room lives on a: b gets a link
    assert list(pool.links()) == [("CFroom", "b")]
    [(near, far)] = pool.links().values()
    assert [(w, c) for w, c in ws.sent] == [
        ("b", p.Dial(leg=near, uri="sip:link@127.0.0.1:5071", headers={"X-Leg-Id": far},
                     timeout=5.0)),
        ("a", p.Answer(leg=far)),
        ("a", p.ConfJoin(leg=far, room="CFroom")),
        ("b", p.ConfJoin(leg=near, room="CFroom")),
        ("b", p.ConfJoin(leg=b1.leg, room="CFroom"))]
    assert pool.load() == {"a": 3, "b": 3}  # the link holds a slot on each side
    ws.sent.clear()
    await pool.conference_join(b2.leg, "CFroom")  # the same link serves it
    await pool.conference_mute(b2.leg, True)
    assert ws.sent == [("b", p.ConfJoin(leg=b2.leg, room="CFroom")),
                       ("b", p.ConfMute(leg=b2.leg, muted=True))]
    await pool.conference_leave(b1.leg)
    assert pool.links() != {}
    # The last member on b hangs up: the link goes, both its slots come back.
    pool.on_worker_event("b", p.LegEvent(leg=b2.leg, state="ended", code=200))
    await settle()
    assert pool.links() == {}
    assert ("b", p.Hangup(leg=near)) in ws.sent
    assert pool.load() == {"a": 2, "b": 1}
    # Link legs never reach the subscribers (no call, no CDR).
    assert {e.leg for e in events} <= {a1.leg, a2.leg, b1.leg, b2.leg}
    await pool.close()


async def test_a_link_needs_a_free_slot_on_both_workers() -> None:
    pool, ws, _ = make_linking(max_calls=2)
    a1, b1, a2 = [await pool.reserve_incoming() for _ in range(3)]
    await pool.conference_join(a1.leg, "CFroom")
    with pytest.raises(NoCapacity):
        await pool.conference_join(b1.leg, "CFroom")  # a is full: no room for a link
    assert pool.links() == {} and pool.load() == {"a": 2, "b": 1}
    await pool.conference_join(b1.leg, "CFother")  # a room of its own on b
    await pool.conference_leave(a1.leg)
    await pool.conference_join(b1.leg, "CFroom")  # empty now: it lives on b
    assert pool.links() == {}
    await pool.close()


async def test_a_link_that_never_arrives_fails_and_frees_its_slots(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.media.pool.LINK_S", 0.05)
    pool, ws, _ = make_linking()
    a1, b1 = [await pool.reserve_incoming() for _ in range(2)]
    await pool.conference_join(a1.leg, "CFroom")
    ws.arrive = False
    with pytest.raises(CommandFailed) as err:
        await pool.conference_join(b1.leg, "CFroom")
    assert err.value.code == "link-failed"
    await settle()
    assert pool.links() == {} and pool.load() == {"a": 1, "b": 1}
    await pool.close()


async def test_a_dead_home_worker_breaks_the_link() -> None:
    pool, ws, events = make_linking()
    a1, b1 = [await pool.reserve_incoming() for _ in range(2)]
    await pool.conference_join(a1.leg, "CFroom")
    await pool.conference_join(b1.leg, "CFroom")
    [(near, far)] = pool.links().values()
    ws.handles["a"].up = False
    pool.on_worker_down("a")
    await settle()
    assert pool.links() == {}
    assert ("b", p.Hangup(leg=near)) in ws.sent
    assert [e.leg for e in events if isinstance(e, LegChanged)] == [a1.leg]
    assert pool.load() == {"a": 0, "b": 1}
    b2 = await pool.reserve_incoming()
    await pool.conference_join(b2.leg, "CFroom")  # the room lives on b now
    assert pool.links() == {}
    await pool.close()
