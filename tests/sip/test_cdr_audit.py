"""The records the proxy leaves, as an office admin reads them through the Calls and SMS
APIs: each outcome of a Client → Client call and of a SIP MESSAGE, and what a restart leaves."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance import app as app_module
from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from appliance.models import AccountSid, CallRecord, CallSid, CallStatus
from appliance.services.message_log import MessageLog
from appliance.services.telephony import CallLog
from appliance.sip.bindings import Origin
from appliance.sip.headers import NameAddr
from appliance.sip.message import Request, Response, make_response, parse_message
from appliance.sip.proxy import Proxy
from tests.conftest import ADMIN_SID, Api, free_port
from tests.sip.proxy_harness import REALM, SDP, Harness, Phone, authorization, make_user
from tests.sip.test_attacker import PASSWORD, Attacker, _status, authenticated, challenge_answer
from tests.sip.test_proxy_calls import attach_proxy, create_client, sipp, sipp_args, udp_port
from tests.sip.test_registrar import answer, register
from tests.sip.test_transport import read_message

T0 = datetime(2026, 3, 3, 9, 0, 0, tzinfo=UTC)
CALLS = f"Accounts/{ADMIN_SID}/Calls"


class WallClock:
    """The appliance's two clocks: the wall clock (``now``) and, as ``monotonic``, the timer
    clock. Moving ``now`` is time passing and moves both; ``step`` is NTP stepping the wall
    clock alone."""

    def __init__(self) -> None:
        self.now = T0
        self._stepped = timedelta()

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return 1_000.0 + (self.now - T0 - self._stepped).total_seconds()

    def step(self, by: timedelta) -> None:
        self.now += by
        self._stepped += by


def config(tmp_path: Path) -> Config:
    return Config(data_dir=tmp_path / "var",
                  api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                  sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                domain="pbx.example.com"),
                  media=MediaConfig(workers=0))


async def calls_listed(app: Appliance, params: dict[str, str] | None = None
                       ) -> dict[str, dict[str, object]]:
    password = (app.config.data_dir / "admin-password").read_text().strip()
    listen = app.config.api.listen
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
                  app.config.data_dir)
        status, body, _ = await api.get(f"{CALLS}.json", params=params or {})
    assert status == 200, body
    return {c["to"]: c for c in json.loads(body)["calls"]}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Appliance, WallClock]]:
    clock = WallClock()
    app = Appliance(config(tmp_path), clock=clock)
    await app.start()
    try:
        yield app, clock
    finally:
        await app.stop()


def leftover(sid: int, status: CallStatus, to: str) -> CallRecord:
    """A CDR as a crashed run left it (another instance id, no end time); an answered one
    as checkpointed 6 s after its answer."""
    return CallRecord(
        sid=CallSid(f"ID{'f' * 32}-CA{sid:032x}"), instance_id="ID" + "f" * 32,
        account_sid=AccountSid(ADMIN_SID), parent_call_sid=None, to=to, from_="alice",
        phone_number_sid=None, status=str(status), start_time=T0, end_time=None,
        duration=6 if status == CallStatus.IN_PROGRESS else 0,
        price=None, price_unit="USD", direction="inbound", answered_by=None,
        api_version="2012-04-24", forwarded_from=None, caller_name=None, conference_sid=None,
        ring_duration=4 if status == CallStatus.IN_PROGRESS else None, date_created=T0,
        date_updated=T0 + timedelta(seconds=10))


# --- a restart mid-call -------------------------------------------------------------------


async def test_a_crash_leaves_no_call_open_for_ever(tmp_path: Path) -> None:
    clock = WallClock()
    first = Appliance(config(tmp_path), clock=clock)
    await first.start()
    await first.store.insert_calls([leftover(1, CallStatus.IN_PROGRESS, "bob"),
                                    leftover(2, CallStatus.RINGING, "carol"),
                                    leftover(3, CallStatus.QUEUED, "dave"),
                                    leftover(4, CallStatus.BUSY, "erin")])  # a legacy row
    await first.stop()
    clock.now = T0 + timedelta(minutes=5)
    second = Appliance(first.config, clock=clock)
    await second.start()
    try:
        listed = await calls_listed(second)
        assert {to: c["status"] for to, c in listed.items()} == {
            "bob": "completed", "carol": "failed", "dave": "failed", "erin": "busy"}
        assert "end_time" not in listed["erin"]  # a closed call is left as it is
        # Ended at their last update (T0 + 10 s), not when the appliance came back: the
        # five minutes down were no call. The answered one keeps the Duration it was
        # checkpointed with.
        assert listed["bob"]["end_time"] == "2026-03-03T09:00:10.000Z"
        assert listed["bob"]["duration"] == 6
        assert listed["carol"]["end_time"] == "2026-03-03T09:00:10.000Z"
        assert listed["carol"]["duration"] == 0
        assert await calls_listed(second, {"Status": "in-progress"}) == {}
    finally:
        await second.stop()


async def test_after_a_power_cut_a_call_ends_at_its_last_checkpoint(tmp_path: Path) -> None:
    clock = WallClock()
    first = Appliance(config(tmp_path), clock=clock, timer_clock=clock.monotonic)
    await first.start()
    # The run the power cut ends: a CallLog of its own on the same database, dropped without
    # close_all (first.stop below closes only the calls of its own CallLog: none).
    crashed = CallLog(first.store, clock, clock.monotonic)
    talking = await crashed.opened(account_sid=ADMIN_SID, from_="alice", to="bob",
                                   direction="inbound")
    ringing = await crashed.opened(account_sid=ADMIN_SID, from_="alice", to="carol",
                                   direction="inbound")
    await crashed.ringing(ringing.sid)
    clock.now = T0 + timedelta(seconds=3)
    await crashed.answered(talking.sid)
    clock.now = T0 + timedelta(seconds=63)
    assert await crashed.checkpoint() == 1  # only the answered call is written
    clock.now = T0 + timedelta(seconds=123)
    assert await crashed.checkpoint() == 1
    clock.now = T0 + timedelta(seconds=150)  # the power goes: these 27 s are not known
    del crashed
    await first.stop()
    clock.now = T0 + timedelta(hours=5)  # back hours later
    second = Appliance(first.config, clock=clock, timer_clock=clock.monotonic)
    await second.start()
    try:
        listed = await calls_listed(second)
        # Ended at its last checkpoint with the talk time counted then, not the downtime.
        assert (listed["bob"]["status"], listed["bob"]["duration"]) == ("completed", 120)
        assert listed["bob"]["end_time"] == "2026-03-03T09:02:03.000Z"
        assert listed["bob"]["start_time"] == "2026-03-03T09:00:00.000Z"
        # Never answered: failed, ended at its last update (when it began ringing).
        assert (listed["carol"]["status"], listed["carol"]["duration"]) == ("failed", 0)
        assert listed["carol"]["end_time"] == "2026-03-03T09:00:00.000Z"
    finally:
        await second.stop()


def checkpoint_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "cdr checkpoints"]


async def test_the_checkpoint_task_lives_as_long_as_the_appliance(tmp_path: Path) -> None:
    app = Appliance(config(tmp_path), clock=WallClock())
    await app.start()
    try:
        [task] = checkpoint_tasks()
        assert not task.done()
    finally:
        await app.stop()
    assert task.cancelled() and checkpoint_tasks() == []


async def test_a_clean_stop_closes_the_calls_in_progress_at_the_stop(tmp_path: Path) -> None:
    clock = WallClock()
    first = Appliance(config(tmp_path), clock=clock, timer_clock=clock.monotonic)
    await first.start()
    log = first.call_log
    talking = await log.opened(account_sid=ADMIN_SID, from_="alice", to="bob",
                               direction="inbound")
    ringing = await log.opened(account_sid=ADMIN_SID, from_="alice", to="carol",
                               direction="inbound")
    await log.ringing(ringing.sid)
    clock.now = T0 + timedelta(seconds=3)
    await log.answered(talking.sid)
    clock.now = T0 + timedelta(seconds=63)
    await first.stop()
    clock.now = T0 + timedelta(hours=2)  # a long upgrade: not counted in the call
    second = Appliance(first.config, clock=clock)
    await second.start()
    try:
        listed = await calls_listed(second)
        assert (listed["bob"]["status"], listed["bob"]["duration"]) == ("completed", 60)
        assert listed["bob"]["end_time"] == "2026-03-03T09:01:03.000Z"
        assert (listed["carol"]["status"], listed["carol"]["duration"]) == ("failed", 0)
    finally:
        await second.stop()


@pytest.mark.parametrize("failing", ["messaging", "transport"])
async def test_a_stop_step_that_raises_still_closes_the_calls_and_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """A component that raises in its stop (before the SIP front door, or in it) does not
    keep the rest from stopping: the front door is closed, the checkpoint task is
    cancelled, the call in progress is closed at the stop, the store is closed and its lock
    released, then the error is raised."""
    clock = WallClock()
    first = Appliance(config(tmp_path), clock=clock, timer_clock=clock.monotonic)
    await first.start()
    talking = await first.call_log.opened(account_sid=ADMIN_SID, from_="alice", to="bob",
                                          direction="inbound")
    clock.now = T0 + timedelta(seconds=3)
    await first.call_log.answered(talking.sid)
    clock.now = T0 + timedelta(seconds=63)
    component = getattr(first, failing)
    stop = component.stop

    async def broken_stop() -> None:
        await stop()
        raise RuntimeError(f"{failing} failed to stop")

    monkeypatch.setattr(component, "stop", broken_stop)
    closed: list[bool] = []

    class SpiedDoor:  # the front door may be compiled (appliance/accel.py): no patching it
        def __init__(self, door: object) -> None:
            self.door = door

        def close(self) -> None:
            closed.append(True)
            self.door.close()  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.door, name)

    monkeypatch.setattr(first, "frontdoor", SpiedDoor(first.frontdoor))
    [task] = checkpoint_tasks()
    with pytest.raises(RuntimeError, match=f"{failing} failed to stop"):
        await first.stop()
    assert task.cancelled() and checkpoint_tasks() == []
    assert closed == [True]  # after the transport, even if its stop failed
    with pytest.raises(RuntimeError):
        await first.store.ping()  # closed
    clock.now = T0 + timedelta(hours=2)
    second = Appliance(first.config, clock=clock)  # the lock was released
    await second.start()
    try:
        listed = await calls_listed(second)
        # Closed by the stop (60 s of talk), not by the next start at its answer.
        assert (listed["bob"]["status"], listed["bob"]["duration"]) == ("completed", 60)
        assert listed["bob"]["end_time"] == "2026-03-03T09:01:03.000Z"
    finally:
        await second.stop()


async def test_a_stop_cancelled_while_a_task_winds_down_is_cancelled_itself() -> None:
    """A background task whose cancellation takes a moment (a write to finish) while the
    stop waiting for it is cancelled: the stop ends cancelled, not as if it had finished."""
    async def winding_down() -> None:
        try:
            await asyncio.sleep(100)
        finally:
            await asyncio.sleep(0.05)

    task = asyncio.create_task(winding_down())
    await asyncio.sleep(0)
    stop = asyncio.create_task(app_module._cancel(task))
    await asyncio.sleep(0.01)
    stop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stop
    await asyncio.wait([task])
    assert task.cancelled()


@pytest.mark.parametrize("messaging_fails", [False, True])
async def test_a_failing_trunk_close_still_stops_the_sip_tasks_and_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        messaging_fails: bool) -> None:
    """Each SIP step of the stop is tried on its own: a trunk whose close raises leaves
    neither the proxy's nor the trunk's task running, and the store is closed. Every error
    is logged; the first one is raised (the messaging one, when it failed before)."""
    first = Appliance(config(tmp_path), clock=WallClock())
    await first.start()
    proxy_task, trunk_task = first._proxy_task, first._trunk_task
    assert proxy_task is not None and trunk_task is not None

    async def broken_close() -> None:
        raise RuntimeError("trunk failed to close")

    async def broken_stop() -> None:
        raise RuntimeError("messaging failed to stop")

    monkeypatch.setattr(first.trunk, "close", broken_close)
    if messaging_fails:
        monkeypatch.setattr(first.messaging, "stop", broken_stop)
    expected = "messaging failed to stop" if messaging_fails else "trunk failed to close"
    try:
        with pytest.raises(RuntimeError, match=expected):
            await first.stop()
        assert proxy_task.done() and trunk_task.done()
        with pytest.raises(RuntimeError):
            await first.store.ping()  # closed
        failures = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert "x stopping the trunk failed" in failures
        assert ("x stopping messaging failed" in failures) == messaging_fails
    finally:
        for task in (proxy_task, trunk_task):
            task.cancel()
    second = Appliance(first.config, clock=WallClock())  # the lock was released
    await second.start()
    await second.stop()


async def registered_over_tcp_then_restarted(tmp_path: Path, contact: str,
                                             **sip: Any) -> Appliance:
    """A started appliance (SIP settings SIP) whose Clients alice and bob exist and on
    which bob registered CONTACT over TCP before a restart: his binding is restored, his
    connection is not."""
    cfg = config(tmp_path)
    cfg = dataclasses.replace(cfg, sip=dataclasses.replace(cfg.sip, **sip))
    first = Appliance(cfg)
    await first.start()
    sip_listen = first.config.sip.listen
    bob_phone: asyncio.StreamWriter | None = None
    try:
        password = (first.config.data_dir / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{first.config.api.listen.port}", ADMIN_SID,
                      password, first.config.data_dir)
            for login in ("alice", "bob"):
                status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                                 {"Login": login, "Password": PASSWORD})
                assert status == 200, body
        reader, bob_phone = await asyncio.open_connection(sip_listen.host, sip_listen.port)
        reply: Response | None = None
        for cseq in (1, 2):
            auth = answer(reply, "bob", password=PASSWORD) if reply is not None else None
            request = register("bob", call_id="bob-tcp", cseq=cseq, auth=auth,
                               contacts=(contact,))
            bob_phone.write(bytes(request).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
            message = parse_message(await read_message(reader))
            assert isinstance(message, Response)
            reply = message
        assert reply is not None and reply.status == 200
    finally:
        await first.stop()  # with bob's connection still open: his binding is kept
        if bob_phone is not None:
            bob_phone.close()
    second = Appliance(first.config)
    await second.start()
    return second


async def alice_calls_bob(app: Appliance, alice: Attacker, call_id: str) -> float:
    """alice registers (UDP) and sends her authenticated INVITE to bob; when it went."""
    registered = await authenticated(alice, "REGISTER", None)
    assert registered is not None and _status(registered) == 200
    challenge = await alice.ask(alice.request("INVITE", "bob", call_id=call_id))
    assert challenge is not None and _status(challenge) == 407
    name, value = challenge_answer(challenge, "alice", "INVITE", "sip:bob@pbx.example.com")
    started = asyncio.get_running_loop().time()
    await alice.send(alice.request("INVITE", "bob", call_id=call_id, cseq=2,
                                   extra=(f"{name}: {value}",)))
    return started


async def final_of(alice: Attacker, cseq: bytes, within: float) -> bytes | None:
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while (left := until - loop.time()) > 0:
        got = await alice.recv(left)
        if got is not None and cseq in got and _status(got) >= 200:
            return got
    return None


async def test_a_call_to_a_tcp_phone_gone_since_a_restart_fails_at_once(
        tmp_path: Path) -> None:
    """bob registered over TCP before a restart; after it a request to him needs a new
    connect, to the host he registered from at his Contact's port, where nothing listens.
    alice's call fails at once (RFC 3261 §18.4, §17.1.4: the transport error reaches the
    proxy; the branch's 503 is the caller's 500, §16.7), not on Timer B 32 s later, and its
    CDR is failed."""
    second = await registered_over_tcp_then_restarted(
        tmp_path, f"<sip:bob@127.0.0.1:{free_port()};transport=tcp>")
    alice = Attacker(second.config.sip.listen.port)
    try:
        started = await alice_calls_bob(second, alice, "to-bob-over-tcp")
        final = await final_of(alice, b"CSeq: 2 INVITE", 5)
        assert final is not None and _status(final) == 500, final
        assert asyncio.get_running_loop().time() - started < 2.0
        for _ in range(100):  # the CDR is committed right after the signalling
            listed = await calls_listed(second)
            if listed.get("bob", {}).get("status") == "failed":
                break
            await asyncio.sleep(0.02)
        assert listed["bob"]["status"] == "failed" and listed["bob"]["from"] == "alice"
    finally:
        alice.close()
        await second.stop()


class TcpPhone:
    """bob's desk phone listening for SIP over TCP: what it is sent, on connections the
    appliance opens to it; it answers INVITEs BUSY and OPTIONS 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: asyncio.Queue[Request] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> TcpPhone:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                request = parse_message(await read_message(reader))
                if not isinstance(request, Request):
                    continue
                await self.received.put(request)
                if request.method in ("INVITE", "OPTIONS"):
                    status = 486 if request.method == "INVITE" else 200
                    writer.write(bytes(make_response(request, status, to_tag="bobtag")))

    async def next(self, method: str, within: float = 5.0) -> Request:
        async with asyncio.timeout(within):
            while True:
                request = await self.received.get()
                if request.method == method:
                    return request


async def test_a_call_to_a_tcp_phone_registered_before_a_restart_reaches_it(
        tmp_path: Path) -> None:
    """After a restart the phone's connection is gone: the INVITE goes down a new connection
    to the Contact's port, where the phone listens (not to the outgoing port its REGISTER
    came from), and alice hears bob's answer (486 here)."""
    async with TcpPhone() as bob:
        second = await registered_over_tcp_then_restarted(
            tmp_path, f"<sip:bob@127.0.0.1:{bob.port};transport=tcp>")
        alice = Attacker(second.config.sip.listen.port)
        try:
            await alice_calls_bob(second, alice, "to-bob-restored")
            invite = await bob.next("INVITE")
            assert invite.uri == f"sip:bob@127.0.0.1:{bob.port};transport=tcp"
            final = await final_of(alice, b"CSeq: 2 INVITE", 5)
            assert final is not None and _status(final) == 486, final
        finally:
            alice.close()
            await second.stop()


async def test_keep_alive_options_reach_a_tcp_phone_registered_before_a_restart(
        tmp_path: Path) -> None:
    """The keep-alive OPTIONS go where a call would: to the Contact's port once the
    phone's connection is gone. (Sent to its old outgoing port, they would fail and drop
    a live phone's registration after three pings.)"""
    async with TcpPhone() as bob:
        second = await registered_over_tcp_then_restarted(
            tmp_path, f"<sip:bob@127.0.0.1:{bob.port};transport=tcp>", ping_interval=1)
        try:
            ping = await bob.next("OPTIONS", within=10)
            assert ping.uri == f"sip:bob@127.0.0.1:{bob.port};transport=tcp"
        finally:
            await second.stop()


# --- calls through the proxy, read back through the Calls API -----------------------------

ALICE_SRC = ("203.0.113.10", 40000)
BOB_SRC = ("203.0.113.20", 41000)


def on_store(app: Appliance) -> tuple[Harness, Phone, Phone]:
    """The in-process harness, its CDRs and SMS rows written to APP's database."""
    h = Harness()
    h.call_log = CallLog(app.store, h.clock.datetime, h.clock.monotonic)
    h.proxy = Proxy(h.sender, h.directory, h.router, h.call_log,
                    MessageLog(app.store, h.clock.datetime),
                    clock=h.clock, timer_clock=h.clock.monotonic, realm=lambda: REALM,
                    local_hosts={REALM})
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC,
                    user=make_user("alice", account_sid=ADMIN_SID))
    bob = h.phone("bob", "192.168.1.20", BOB_SRC, user=make_user("bob", account_sid=ADMIN_SID))
    return h, alice, bob


async def call(h: Harness, alice: Phone, bob: Phone, *finals: int, talk: float = 0,
               callee: str = "bob") -> Request:
    """Alice calls CALLEE; bob rings for 5 s then answers FINALS[0] (a 200 is talked TALK
    seconds and hung up by alice)."""
    sent = await h.authenticated(alice, "INVITE", callee, body=SDP)
    forwarded = h.sender.requests("INVITE")
    h.sender.take()
    if not forwarded:
        return sent
    [(to_bob, _)] = forwarded
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    h.clock.now += 5
    for status in finals:
        await h.send(bob, bob.answer(to_bob, status, to_tag="b"))
    if finals == (200,):
        h.clock.now += talk
        bye = alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=b",
                            call_id=sent.call_id or "", from_tag="caller-tag",
                            headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
        await h.send(alice, bye)
    h.clock.now += 60
    return sent


async def test_the_calls_api_lists_what_the_proxy_recorded(api: Api,
                                                          appliance: Appliance) -> None:
    h, alice, bob = on_store(appliance)
    await call(h, alice, bob, 200, talk=42)
    await call(h, alice, bob, 486)
    await call(h, alice, bob, 480)
    await call(h, alice, bob, 403)
    await call(h, alice, bob, 503)
    await call(h, alice, bob, callee="nobody")
    h.clock.now += 2 * 86400  # two days later, the phones registered again
    for phone in (alice, bob):
        h.location.register(phone.login, [NameAddr.parse(f"<{phone.contact}>")],
                            expires_header=3600, call_id=f"reg-{phone.login}", cseq=2,
                            now=h.clock.now, origin=Origin("udp", phone.source))
    await call(h, alice, bob, 200, talk=7)
    status, body, _ = await api.get(f"{CALLS}.json")
    assert status == 200, body
    got = json.loads(body)
    rows = [(c["from"], c["to"], c["status"], c["duration"], c["direction"])
            for c in got["calls"]]
    assert rows == [  # newest first
        ("alice", "bob", "completed", 7, "inbound"),
        ("alice", "nobody", "failed", 0, "inbound"),
        ("alice", "bob", "failed", 0, "inbound"),
        ("alice", "bob", "failed", 0, "inbound"),
        ("alice", "bob", "no-answer", 0, "inbound"),
        ("alice", "bob", "busy", 0, "inbound"),
        ("alice", "bob", "completed", 42, "inbound"),
    ]
    first = got["calls"][-1]
    assert first["account_sid"] == ADMIN_SID and "parent_call_sid" not in first
    # StartTime is the INVITE, EndTime the BYE: ring time is in between, not in Duration.
    assert first["start_time"] == "2023-11-14T22:13:20.000Z"
    assert first["end_time"] == "2023-11-14T22:14:07.000Z"
    assert first["ring_duration"] == 5

    async def listed(params: dict[str, str]) -> list[str]:
        status, body, _ = await api.get(f"{CALLS}.json", params=params)
        assert status == 200, (params, body)
        return [c["status"] for c in json.loads(body)["calls"]]

    assert await listed({"To": "nobody"}) == ["failed"]
    assert await listed({"From": "alice", "Status": "completed"}) == ["completed"] * 2
    assert await listed({"Status": "busy"}) == ["busy"]
    assert len(await listed({"StartTime": "2023-11-14"})) == 7
    assert await listed({"StartTime": "2023-11-16"}) == ["completed"]
    assert len(await listed({"EndTime": "2023-11-14"})) == 6
    # Twilio's inequality forms, which Restcomm's docs show: StartTime>= and StartTime<=.
    status, body, _ = await api.get(f"{CALLS}.json?StartTime>=2023-11-16")
    assert [c["duration"] for c in json.loads(body)["calls"]] == [7]
    status, body, _ = await api.get(f"{CALLS}.json?StartTime<=2023-11-14")
    assert len(json.loads(body)["calls"]) == 6
    status, _, _ = await api.get(f"{CALLS}.json?StartTime<=yesterday")
    assert status == 400
    # Paging: three pages of 3, the next page named by the last sid of this one.
    status, body, _ = await api.get(f"{CALLS}.json", params={"PageSize": "3"})
    page = json.loads(body)
    assert (page["total"], page["num_pages"], page["end"]) == (7, 2, "2")
    assert page["next_page_uri"].endswith(
        f"?Page=1&PageSize=3&AfterSid={page['calls'][-1]['sid']}")
    status, body, _ = await api.get(f"{CALLS}.json", params={"PageSize": "3", "Page": "2"})
    last = json.loads(body)
    assert len(last["calls"]) == 1 and last["next_page_uri"] is None


# --- each outcome of a Client → Client call, as its CDR shows it --------------------------


def harness() -> tuple[Harness, Phone, Phone]:
    h = Harness()
    return (h, h.phone("alice", "192.168.1.10", ALICE_SRC),
            h.phone("bob", "192.168.1.20", BOB_SRC))


def only_cdr(h: Harness) -> CallRecord:
    [record] = h.store.calls.values()
    return record


def second_phone(h: Harness) -> Phone:
    bob2 = Phone("bob", "192.168.1.21", ("203.0.113.21", 42000))
    h.location.register("bob", [NameAddr.parse(f"<{bob2.contact}>")], expires_header=3600,
                        call_id="reg-bob-2", cseq=1, now=h.clock.now,
                        origin=Origin("udp", bob2.source))
    return bob2


def sent_to(h: Harness, phone: Phone, method: str = "INVITE") -> Request:
    [request] = [m for m, t in h.sender.requests(method) if (t.host, t.port) == phone.source]
    return request


async def test_forked_call_answered_by_one_phone_is_one_cdr() -> None:
    h, alice, bob = harness()
    bob2 = second_phone(h)
    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    to_bob, to_bob2 = sent_to(h, bob), sent_to(h, bob2)
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    await h.send(bob2, bob2.answer(to_bob2, 180, to_tag="b2"))
    h.clock.now += 4
    await h.send(bob2, bob2.answer(to_bob2, 200, to_tag="b2"))
    cancel = sent_to(h, bob, "CANCEL")
    await h.send(bob, bob.answer(cancel, 200))
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b1"))  # the other phone stops ringing
    assert (only_cdr(h).status, only_cdr(h).to) == ("in-progress", "bob")
    h.clock.now += 30
    bye = bob2.request("BYE", alice.contact, to=f"<sip:alice@{REALM}>;tag=caller-tag",
                       call_id=sent.call_id or "", from_tag="b2",
                       headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
    await h.send(bob2, bye)
    cdr = only_cdr(h)
    assert (cdr.status, cdr.duration, cdr.ring_duration) == ("completed", 30, 4)


@pytest.mark.parametrize(("status", "expected"), [(403, "failed"), (503, "failed"),
                                                  (488, "failed"), (604, "failed")])
async def test_other_refusals_by_the_phone_are_failed(status: int, expected: str) -> None:
    h, alice, bob = harness()
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    to_bob = sent_to(h, bob)
    await h.send(bob, bob.answer(to_bob, status, to_tag="b"))
    assert (only_cdr(h).status, only_cdr(h).duration) == (expected, 0)
    assert only_cdr(h).end_time is not None


async def test_forked_call_one_phone_busy_the_other_answers() -> None:
    h, alice, bob = harness()
    bob2 = second_phone(h)
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    to_bob, to_bob2 = sent_to(h, bob), sent_to(h, bob2)
    await h.send(bob, bob.answer(to_bob, 486, to_tag="b1"))
    await h.send(bob2, bob2.answer(to_bob2, 200, to_tag="b2"))
    assert only_cdr(h).status == "in-progress"


async def test_canceled_before_the_phone_rang() -> None:
    h, alice, bob = harness()
    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    to_bob = sent_to(h, bob)
    await h.send(alice, alice.cancel(sent))
    assert only_cdr(h).status in ("queued", "canceled")
    await h.send(bob, bob.answer(to_bob, 100))
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b"))
    assert (only_cdr(h).status, only_cdr(h).duration) == ("canceled", 0)
    assert [r.status for r, _ in h.sender.responses() if r.status >= 200][-1] == 487


async def test_a_cancel_crossing_the_answer_leaves_the_call_answered() -> None:
    h, alice, bob = harness()
    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    to_bob = sent_to(h, bob)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b"))
    await h.send(alice, alice.cancel(sent))
    assert only_cdr(h).status == "in-progress"


async def test_a_phone_that_never_answers_is_no_answer() -> None:
    h, alice, bob = harness()
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    for _ in range(40):  # Timer B (64·T1): not even a 100 Trying from the phone
        await h.tick(1)
    # (retransmitted to alice, who does not ACK it here)
    assert {r.status for r, _ in h.sender.responses() if r.status >= 200} == {408}
    assert only_cdr(h).status == "no-answer"


async def test_no_cdr_for_a_caller_who_never_authenticates_or_is_not_registered() -> None:
    # A challenge (407) the phone gives up on, a wrong password, an unregistered or a
    # disabled Client: refused before routing, so no call is listed (as Twilio lists none
    # for a SIP request its domain refuses): strangers cannot fill the Calls list.
    h, alice, _ = harness()
    invite = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                           call_id="gives-up", from_tag="t", body=SDP)
    await h.send(alice, invite)
    assert [r.status for r, _ in h.sender.responses()] == [407]
    ghost = h.phone("ghost", "192.168.1.30", ("203.0.113.30", 5060), register=False)
    await h.authenticated(ghost, "INVITE", "bob", body=SDP)
    off = h.phone("off", "192.168.1.31", ("203.0.113.31", 5060),
                  user=make_user("off", enabled=False))
    await h.authenticated(off, "INVITE", "bob", body=SDP)
    await h.tick(60)
    assert h.store.calls == {}


# --- SIP MESSAGE between Clients, as its SMS row shows it ---------------------------------


async def message(h: Harness, phone: Phone, callee: str, body: bytes,
                  content_type: str | None = "text/plain") -> Request:
    """PHONE sends a MESSAGE to CALLEE with BODY and CONTENT_TYPE (None: no Content-Type),
    answering the 407 first. Returns the authenticated MESSAGE as sent."""
    uri = f"sip:{callee}@{REALM}"

    def build(headers: list[tuple[str, str]]) -> Request:
        request = phone.request("MESSAGE", uri, to=f"<{uri}>", call_id=call_id,
                                from_tag="m-tag", body=body, headers=headers)
        if content_type is None:
            request.remove("Content-Type")
        else:
            request.set("Content-Type", content_type)
        return request

    call_id = f"msg-{len(h.store.sms)}-{h.clock.now}"
    first = build([])
    await h.send(phone, first)
    [(challenge, _)] = h.sender.responses(407)
    h.sender.take()
    second = build([("Proxy-Authorization", authorization(first, challenge, phone))])
    await h.send(phone, second)
    return second


async def test_a_retransmitted_message_is_relayed_and_recorded_once() -> None:
    h, alice, bob = harness()
    sent = await message(h, alice, "bob", b"hello")
    await h.send(alice, sent)  # retransmitted before bob answers
    [(relayed, _)] = h.sender.requests("MESSAGE")
    await h.send(bob, bob.answer(relayed, 200, to_tag="m"))
    await h.send(alice, sent)  # and after: the 200 is sent again, nothing else
    await h.tick(0.5)
    await h.send(alice, sent)
    assert len(h.sender.requests("MESSAGE")) == 1
    assert {r.status for r, _ in h.sender.responses()} == {200}
    assert [(r.body, r.status) for r in h.store.sms] == [("hello", "sent")]


async def test_a_message_nobody_answers_is_failed_408() -> None:
    h, alice, _ = harness()
    await message(h, alice, "bob", b"anyone?")
    for _ in range(40):  # Timer F (64·T1)
        await h.tick(1)
    # RFC 4320 §4.2: the caller gets no 408 (its own transaction times out at the same
    # moment); the row still says why the text failed.
    assert [r.status for r, _ in h.sender.responses() if r.status >= 200] == []
    [row] = h.store.sms
    assert (row.status, row.error_code, row.date_sent) == ("failed", 408, None)


async def test_an_empty_message_is_relayed_and_recorded_with_an_empty_body() -> None:
    h, alice, bob = harness()
    await message(h, alice, "bob", b"", content_type=None)
    [(relayed, _)] = h.sender.requests("MESSAGE")
    assert relayed.body == b""
    await h.send(bob, bob.answer(relayed, 200, to_tag="m"))
    assert [(r.body, r.status) for r in h.store.sms] == [("", "sent")]


async def test_a_long_utf8_message_is_relayed_and_recorded_whole() -> None:
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC, transport="tcp", connection_id="c-a")
    bob = h.phone("bob", "192.168.1.20", BOB_SRC, transport="tcp", connection_id="c-b")
    text = "Grüße aus Zürich — 東京 ☕ " * 200  # ~7 KB, more than an SMS, far less than 64 KB
    await message(h, alice, "bob", text.encode(), "text/plain;charset=UTF-8")
    [(relayed, _)] = h.sender.requests("MESSAGE")
    assert relayed.body == text.encode()
    await h.send(bob, bob.answer(relayed, 200, to_tag="m"))
    assert [r.body for r in h.store.sms] == [text]


async def test_a_message_in_another_charset_is_recorded_as_its_text() -> None:
    h, alice, bob = harness()
    await message(h, alice, "bob", "Café à 13h ?".encode("latin-1"),
                  "text/plain; charset=ISO-8859-1")
    [(relayed, _)] = h.sender.requests("MESSAGE")
    assert relayed.body == "Café à 13h ?".encode("latin-1")  # relayed untouched
    await h.send(bob, bob.answer(relayed, 200, to_tag="m"))
    assert [r.body for r in h.store.sms] == ["Café à 13h ?"]


async def test_a_message_that_is_not_text_is_relayed_but_not_listed_as_sms() -> None:
    # Phones send "is typing" notifications (RFC 3994) and delivery notices (RFC 5438) as
    # MESSAGEs too: they go to the other phone, which may understand them, but they are no
    # text anyone sent, so the SMS list does not show them.
    h, alice, bob = harness()
    composing = (b'<?xml version="1.0" encoding="UTF-8"?>\n<isComposing xmlns="urn:ietf:'
                 b'params:xml:ns:im-iscomposing"><state>active</state></isComposing>')
    await message(h, alice, "bob", composing, "application/im-iscomposing+xml")
    [(relayed, _)] = h.sender.requests("MESSAGE")
    assert relayed.body == composing
    await h.send(bob, bob.answer(relayed, 200, to_tag="m"))
    await message(h, alice, "nobody", composing, "application/im-iscomposing+xml")
    assert h.store.sms == []


async def test_the_sms_api_lists_what_the_proxy_recorded(api: Api,
                                                        appliance: Appliance) -> None:
    h, alice, bob = on_store(appliance)
    await message(h, alice, "bob", "Lunch at 1? ☕".encode())
    [(relayed, _)] = h.sender.requests("MESSAGE")
    h.sender.take()
    await h.send(bob, bob.answer(relayed, 200, to_tag="m"))
    h.clock.now += 60
    await message(h, alice, "nobody", b"hello?")
    h.clock.now += 60
    await message(h, alice, "bob", b"ping")
    [(relayed, _)] = h.sender.requests("MESSAGE")
    await h.send(bob, bob.answer(relayed, 486, to_tag="m"))
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json")
    assert status == 200, body
    rows = json.loads(body)["messages"]
    assert [(m["from"], m["to"], m["body"], m["status"], m["direction"], m.get("error_code"))
            for m in rows] == [
        ("alice", "bob", "ping", "failed", "outbound-call", 486),
        ("alice", "nobody", "hello?", "failed", "outbound-call", 404),
        ("alice", "bob", "Lunch at 1? ☕", "sent", "outbound-call", None)]
    assert rows[2]["date_sent"] == "2023-11-14T22:13:20.000Z"
    assert rows[2]["account_sid"] == ADMIN_SID
    assert "date_sent" not in rows[0]  # never sent: no DateSent (nulls are omitted)
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json",
                                    params={"To": "bob", "Status": "sent"})
    assert [m["body"] for m in json.loads(body)["messages"]] == ["Lunch at 1? ☕"]


# --- real peers (SIPp) through the running appliance ---------------------------------------


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) is not installed")
async def test_sipp_busy_canceled_call_and_retransmitted_message_as_the_apis_list_them(
        appliance: Any, api: Api) -> None:
    proxy, task = attach_proxy(appliance)
    try:
        server = appliance.transport.address
        for login in ("alice", "bob"):
            await create_client(api, login)
        alice_port, bob_port = udp_port(), udp_port()
        for login, port in (("alice", alice_port), ("bob", bob_port)):
            code, out = await sipp(*sipp_args("register.xml", server, port, login))
            assert code == 0, out

        async def through(uac: str, uas: str) -> None:
            answering = asyncio.create_task(sipp(*sipp_args(uas, server, bob_port, "bob"),
                                                 limit=40))
            await asyncio.sleep(0.5)
            code, out = await sipp(*sipp_args(uac, server, alice_port, "alice", "bob"),
                                   limit=40)
            uas_code, uas_out = await answering
            assert uas_code == 0, uas_out
            assert code == 0, out

        await through("proxy-uac-busy.xml", "proxy-uas-busy.xml")
        await through("proxy-uac-cancel.xml", "proxy-uas-cancel.xml")
        await through("message-uac.xml", "message-uas.xml")
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
        assert status == 200, body
        assert [(c["from"], c["to"], c["status"], c["duration"]) for c in
                json.loads(body)["calls"]] == [("alice", "bob", "canceled", 0),
                                               ("alice", "bob", "busy", 0)]
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json")
        assert status == 200, body
        assert [(m["from"], m["to"], m["body"], m["status"], m["direction"]) for m in
                json.loads(body)["messages"]] == [
            # the body as sent, with the line end sipp puts after it
            ("alice", "bob", "Grüße, café à 13h? ☕\r\n", "sent", "outbound-call")]
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_the_calls_api_follows_a_call_as_it_goes(api: Api, appliance: Appliance) -> None:
    h, alice, bob = on_store(appliance)

    async def seen() -> tuple[str, ...]:
        status, body, _ = await api.get(f"{CALLS}.json")
        assert status == 200, body
        [row] = json.loads(body)["calls"]
        status, body, _ = await api.get(f"{CALLS}/{row['sid']}.json")
        assert status == 200, body
        one = json.loads(body)
        assert one["status"] == row["status"]
        return one["status"], one["duration"], "end_time" in one

    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    assert await seen() == ("queued", 0, False)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    assert await seen() == ("ringing", 0, False)
    h.clock.now += 3
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b"))
    assert await seen() == ("in-progress", 0, False)
    h.clock.now += 20
    bye = bob.request("BYE", alice.contact, to=f"<sip:alice@{REALM}>;tag=caller-tag",
                      call_id=sent.call_id or "", from_tag="b",
                      headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
    await h.send(bob, bye)
    assert await seen() == ("completed", 20, True)


async def test_a_retransmitted_invite_is_one_call() -> None:
    h, alice, bob = harness()
    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    await h.send(alice, sent)  # UDP: the phone did not hear our 100 Trying in time
    to_bob = sent_to(h, bob)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    await h.send(alice, sent)
    await h.send(bob, bob.answer(to_bob, 486, to_tag="b"))
    assert [(r.status, r.to) for r in h.store.calls.values()] == [("busy", "bob")]


async def test_two_phones_answering_at_once_is_still_one_call() -> None:
    # Both 200s go to alice (RFC 3261 §16.7: 2xx end to end); her phone keeps the first and
    # hangs the second up at once. The call is the first dialog: its BYE ends the CDR.
    h, alice, bob = harness()
    bob2 = second_phone(h)
    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    to_bob, to_bob2 = sent_to(h, bob), sent_to(h, bob2)
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b1"))
    await h.send(bob2, bob2.answer(to_bob2, 200, to_tag="b2"))
    route = [("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")]
    await h.send(alice, alice.request("BYE", bob2.contact, to=f"<sip:bob@{REALM}>;tag=b2",
                                      call_id=sent.call_id or "", from_tag="caller-tag",
                                      headers=route))
    assert only_cdr(h).status == "in-progress"
    h.clock.now += 15
    await h.send(alice, alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=b1",
                                      call_id=sent.call_id or "", from_tag="caller-tag",
                                      headers=route))
    assert (only_cdr(h).status, only_cdr(h).duration) == ("completed", 15)
