"""services.conferences on the NullMediaEngine and a real store (no pjsua2): waiting for the
moderator, joining the room, mute, removal, endConferenceOnExit, hang-up, maxParticipants,
and the Dial action's parameters through the interpreter. Then the same service over a
WorkerPool of two fake workers: a conference linked across workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import NotFound
from appliance.media import protocol as p
from appliance.media.engine import LegId, MediaEngine, MediaEvent
from appliance.media.null import NullMediaEngine
from appliance.media.pool import WorkerPool
from appliance.models import Account, AccountSid, AccountStatus, ConferenceStatus
from appliance.rcml.interpreter import (
    DialAction,
    DialDone,
    DialStatus,
    FetchDocument,
    Interpreter,
)
from appliance.rcml.parse import parse_voice
from appliance.rcml.runner import App, CallInfo, Fetcher, Hungup, LegEvents, Runner
from appliance.rcml.verbs import Conference
from appliance.services.conferences import ConferenceFilters, ConferencesService
from appliance.services.telephony import CallLog
from appliance.store.conferences import ConferenceStore
from appliance.store.db import Store
from appliance.webhooks import WebhookResponse
from tests.media.audio import write_tone
from tests.media.test_pool import Handle, LinkingSet, Spec

ACCOUNT = AccountSid("AC" + "1" * 32)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ADMIN = Account(sid=ACCOUNT, parent_sid=None, friendly_name="admin", email_address="a@b.c",
                type="Full", status=AccountStatus.ACTIVE, role="Administrator",
                auth_token="x", date_created=NOW, date_updated=NOW)


class World:
    def __init__(self, tmp: Path, store: Store) -> None:
        self.tmp = tmp
        self.engine = NullMediaEngine()
        self.notes: list[int] = []
        self.audio: dict[str, bytes] = {}
        self.events: dict[LegId, LegEvents] = {}
        self.engine.subscribe(self._event)
        self.service = ConferencesService(ConferenceStore(store), CallLog(store, lambda: NOW),
                                          lambda: NOW, engine=self.engine)

    def _event(self, ev: MediaEvent) -> None:
        if ev.leg in self.events:
            self.events[ev.leg].put(ev)

    async def request(self, url: str, method: str, params: Any, *,
                      max_size: int | None = None) -> WebhookResponse:
        return WebhookResponse(200, "audio/wav", self.audio[url], {})

    async def notify(self, account_sid: str, code: int, message: str, **kw: Any) -> None:
        self.notes.append(code)

    async def runner(self, name: str) -> Runner:
        leg = LegId(f"LG{name}")
        self.events[leg] = LegEvents()
        self.engine.simulate_incoming(leg)
        await self.engine.answer(leg)
        return self._runner(name, leg, self.engine)

    def _runner(self, name: str, leg: LegId, engine: MediaEngine) -> Runner:
        async def no(*args: Any) -> Any:
            raise AssertionError("not expected")

        out = Fetcher(request=self.request, notify=self.notify, say=no, save_recording=no,
                      send_sms=no, dial=None, cache_dir=self.tmp / "cache",
                      recordings_dir=self.tmp / "rec")
        info = CallInfo(sid=f"CA{name}", account_sid=ACCOUNT, from_=name, to="+1555",
                        direction="inbound", leg=leg, app=App("http://app/"), answered=True)
        return Runner(info, engine, self.events[leg], out)

    def dial(self, runner: Runner, noun: Conference) -> asyncio.Task[DialDone]:
        return asyncio.ensure_future(self.service.dial(runner, DialAction((noun,))))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = Store(tmp_path / "a.db")
    await store.open()
    try:
        yield World(tmp_path, store)
    finally:
        await store.close()


async def until(check: Any, seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.01)


async def test_wait_join_mute_and_end_on_exit(world: World) -> None:
    svc, engine = world.service, world.engine
    world.audio["http://app/hold.wav"] = write_tone(world.tmp / "hold.wav", 300, 0.2).read_bytes()
    alice, bob = await world.runner("alice"), await world.runner("bob")
    waiting = world.dial(alice, Conference("room", start_conference_on_enter=False,
                                           wait_url="http://app/hold.wav"))
    await until(lambda: svc.live_count() == 1)
    [conf] = (await svc.page(ADMIN, ADMIN, ConferenceFilters(), 0, 50)).items
    assert conf.status is ConferenceStatus.RUNNING_MODERATOR_ABSENT
    await asyncio.sleep(0.05)
    assert alice.call.leg not in engine.rooms  # waits for a moderator, not in the room
    moderator = world.dial(bob, Conference("room", end_conference_on_exit=True))
    await until(lambda: len(engine.rooms) == 2)
    assert engine.rooms[alice.call.leg] == engine.rooms[bob.call.leg] == conf.sid
    conf = await svc.get(ADMIN, ADMIN, conf.sid)
    assert conf.status is ConferenceStatus.RUNNING_MODERATOR_PRESENT
    page = await svc.page_participants(ADMIN, ADMIN, conf.sid, 0, 50)
    assert [p.call_sid for p in page.items] == ["CAalice", "CAbob"]
    assert page.items[1].end_conference_on_exit and not page.items[0].start_conference_on_enter
    muted = await svc.set_muted(ADMIN, ADMIN, conf.sid, "CAalice", True)
    assert muted.muted and alice.call.leg in engine.muted
    assert (await svc.get_participant(ADMIN, ADMIN, conf.sid, "CAalice")).muted
    assert await svc.mute_call("CAalice", False) and alice.call.leg not in engine.muted
    assert not await svc.mute_call("CAnobody", True)
    await svc.remove(ADMIN, ADMIN, conf.sid, "CAbob")  # the moderator leaves: all out
    done_bob, done_alice = await asyncio.wait_for(asyncio.gather(moderator, waiting), 3)
    assert done_bob.status is DialStatus.COMPLETED and done_bob.conference_sid == conf.sid
    assert done_alice.status is DialStatus.COMPLETED
    assert not engine.rooms and svc.live_count() == 0
    conf = await svc.get(ADMIN, ADMIN, conf.sid)
    assert conf.status is ConferenceStatus.COMPLETED
    assert (await svc.page_participants(ADMIN, ADMIN, conf.sid, 0, 50)).total == 0
    with pytest.raises(NotFound):
        await svc.get_participant(ADMIN, ADMIN, conf.sid, "CAalice")
    found = await svc.page(ADMIN, ADMIN, ConferenceFilters(status="COMPLETED",
                                                           friendly_name="room"), 0, 50)
    assert found.total == 1
    # The same name again is a new conference.
    again = world.dial(alice, Conference("room"))
    await until(lambda: len(engine.rooms) == 1)
    assert engine.rooms[alice.call.leg] != conf.sid
    engine.simulate_hangup(alice.call.leg)
    with pytest.raises(Hungup):
        await asyncio.wait_for(again, 3)
    assert svc.live_count() == 0
    assert not world.notes


async def test_max_participants_and_last_one_out(world: World) -> None:
    svc, engine = world.service, world.engine
    alice, bob = await world.runner("alice"), await world.runner("bob")
    first = world.dial(alice, Conference("small", max_participants=1, beep=False))
    await until(lambda: len(engine.rooms) == 1)
    refused = await asyncio.wait_for(world.dial(bob, Conference("small", max_participants=1)),
                                     3)
    assert refused.status is DialStatus.FAILED and world.notes == [13240]
    [conf] = (await svc.page(ADMIN, ADMIN, ConferenceFilters(), 0, 50)).items
    await svc.remove(ADMIN, ADMIN, conf.sid, "CAalice")
    assert (await asyncio.wait_for(first, 3)).status is DialStatus.COMPLETED
    assert (await svc.get(ADMIN, ADMIN, conf.sid)).status is ConferenceStatus.COMPLETED
    with pytest.raises(NotFound):
        await svc.remove(ADMIN, ADMIN, conf.sid, "CAalice")


def test_the_dial_action_gets_the_conference() -> None:
    doc = parse_voice(b'<Response><Dial action="/left"><Conference muted="true" '
                      b'waitUrl="hold.wav">room</Conference></Dial></Response>')
    interp = Interpreter(doc, call_sid="CAx", base_params={}, document_url="http://app/a.xml")
    action = interp.start(0.0)
    assert isinstance(action, DialAction)
    [noun] = action.nouns
    assert isinstance(noun, Conference) and noun.muted
    assert noun.wait_url == "http://app/hold.wav"  # resolved against the document
    fetch = interp.resume(DialDone(DialStatus.COMPLETED, duration=7, conference_sid="CFx"), 1.0)
    assert isinstance(fetch, FetchDocument) and fetch.url == "http://app/left"
    assert fetch.params["DialCallStatus"] == "completed"
    assert fetch.params["DialCallSid"] == "null"
    assert (fetch.params["DialCallDuration"], fetch.params["ConferenceSid"]) == ("7", "CFx")


class PoolWorld(World):
    """The service over a WorkerPool of two fake workers (a, b) that act out links."""

    def __init__(self, tmp: Path, store: Store, max_calls: int) -> None:
        super().__init__(tmp, store)
        self.pool = WorkerPool()
        self.workers = LinkingSet(self.pool, a=Handle(Spec(5071, max_calls)),
                                  b=Handle(Spec(5072, max_calls)))
        self.pool.attach(self.workers)
        self.pool.subscribe(self._event)
        self.service = ConferencesService(ConferenceStore(store), CallLog(store, lambda: NOW),
                                          lambda: NOW, engine=self.pool)

    async def on(self, name: str, worker: str) -> Runner:
        slot = await self.pool.reserve_incoming(LegId(f"LG{name}"))
        assert slot.worker == worker
        self.events[slot.leg] = LegEvents()
        self.pool.on_worker_event(worker, p.LegEvent(leg=slot.leg, state="incoming"))
        return self._runner(name, slot.leg, self.pool)


async def test_a_conference_linked_across_workers(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    await store.open()
    world = PoolWorld(tmp_path, store, max_calls=2)
    svc, pool = world.service, world.pool
    try:
        alice, bob, carol = [await world.on(n, w) for n, w in
                             (("alice", "a"), ("bob", "b"), ("carol", "a"))]
        first = world.dial(alice, Conference("room"))
        second = world.dial(carol, Conference("room"))
        await until(lambda: len(world.workers.sent) >= 2)
        # Worker a is full: no slot for a link, so bob (on b) cannot join.
        refused = await asyncio.wait_for(world.dial(bob, Conference("room")), 3)
        assert refused.status is DialStatus.FAILED and world.notes == [13241]
        assert pool.links() == {}
        [conf] = (await svc.page(ADMIN, ADMIN, ConferenceFilters(), 0, 50)).items
        await svc.remove(ADMIN, ADMIN, conf.sid, "CAcarol")
        assert (await asyncio.wait_for(second, 3)).status is DialStatus.COMPLETED
        pool.on_worker_event("a", p.LegEvent(leg=carol.call.leg, state="ended", code=200))
        # A slot is free on a now: bob joins through a link, which is no participant.
        third = world.dial(bob, Conference("room"))
        await until(lambda: bool(pool.links()))
        assert list(pool.links()) == [(conf.sid, "b")]
        assert pool.load() == {"a": 2, "b": 2}  # alice, link | bob, link
        await until(lambda: ("b", p.ConfJoin(leg=bob.call.leg, room=conf.sid))
                    in world.workers.sent)
        page = await svc.page_participants(ADMIN, ADMIN, conf.sid, 0, 50)
        assert [x.call_sid for x in page.items] == ["CAalice", "CAbob"]
        await svc.set_muted(ADMIN, ADMIN, conf.sid, "CAbob", True)
        assert ("b", p.ConfMute(leg=bob.call.leg, muted=True)) in world.workers.sent
        # Bob hangs up: the last one on b, so the link goes and its slots come back.
        pool.on_worker_event("b", p.LegEvent(leg=bob.call.leg, state="ended", code=200))
        with pytest.raises(Hungup):
            await asyncio.wait_for(third, 3)
        await until(lambda: not pool.links() and pool.load() == {"a": 1, "b": 0})
        assert (await svc.get(ADMIN, ADMIN, conf.sid)).status is \
            ConferenceStatus.RUNNING_MODERATOR_PRESENT
        await svc.remove(ADMIN, ADMIN, conf.sid, "CAalice")
        assert (await asyncio.wait_for(first, 3)).status is DialStatus.COMPLETED
        assert (await svc.get(ADMIN, ADMIN, conf.sid)).status is ConferenceStatus.COMPLETED
    finally:
        await pool.close()
        await store.close()
