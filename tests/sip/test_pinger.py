"""The registrar's keep-alive OPTIONS (sip.pinger), against a running appliance with
``[sip] ping_interval = 1``: desk phones on real UDP and TCP sockets that answer (200, or 405
like a phone without OPTIONS), or go silent as an unplugged one does; checked through the
Registrations API and a call to the phone. Then the pinger alone with a fake transport and
clock: spoofed answers, transport errors."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from appliance.sip.bindings import Binding
from appliance.sip.message import Request, Response, make_response, parse_message
from appliance.sip.pinger import Pinger
from appliance.sip.wire import Target
from tests.conftest import ADMIN_SID, Api, free_port
from tests.sip.test_attacker import (
    DOMAIN,
    PASSWORD,
    _call_id,
    _status,
    assert_anonymous,
    challenge_answer,
    running,
)

INTERVAL = 1  # [sip] ping_interval in these tests: gone within ~3-4 s of going silent


class Desk:
    """A desk phone on a UDP socket of its own that answers OPTIONS with ANSWER (None: it
    is unplugged, silent) and keeps every other message for the test."""

    def __init__(self, server: tuple[str, int], login: str, answer: int | None = 200) -> None:
        self.server = server
        self.login = login
        self.answer = answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.options: list[bytes] = []
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._read())

    def close(self) -> None:
        self._task.cancel()
        self.sock.close()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65535)
            if data.startswith(b"OPTIONS "):
                self.options.append(data)
                if self.answer is not None:
                    await loop.sock_sendto(self.sock, reply_to(data, self.answer), self.server)
            else:
                self.inbox.put_nowait(data)

    async def ask(self, data: bytes, wait: float = 2.0) -> bytes:
        """The final response to DATA (by Call-ID)."""
        await asyncio.get_running_loop().sock_sendto(self.sock, data, self.server)
        async with asyncio.timeout(wait):
            while True:
                reply = await self.inbox.get()
                if _call_id(reply) == _call_id(data) and _status(reply) >= 200:
                    return reply

    def request(self, method: str, to_user: str, *, call_id: str, cseq: int,
                extra: tuple[str, ...] = (), body: bytes = b"") -> bytes:
        uri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:{to_user}@{DOMAIN}"
        head = (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(8)}"
                ";rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:{self.login}@{DOMAIN}>;tag={secrets.token_hex(4)}\r\n"
                f"To: <sip:{to_user}@{DOMAIN}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:{self.login}@127.0.0.1:{self.port}>\r\n"
                + "".join(f"{line}\r\n" for line in extra)
                + f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def authenticated(self, method: str, to_user: str, *, extra: tuple[str, ...] = (),
                            body: bytes = b"") -> bytes:
        call_id = secrets.token_hex(8)
        first = await self.ask(self.request(method, to_user, call_id=call_id, cseq=1,
                                            extra=extra, body=body))
        assert _status(first) in (401, 407), first
        uri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:{to_user}@{DOMAIN}"
        name, value = challenge_answer(first, self.login, method, uri)
        return await self.ask(self.request(method, to_user, call_id=call_id, cseq=2,
                                           extra=(*extra, f"{name}: {value}"), body=body))

    async def register(self) -> None:
        reply = await self.authenticated("REGISTER", self.login, extra=("Expires: 3600",))
        assert _status(reply) == 200, reply


def reply_to(request: bytes, status: int) -> bytes:
    """A phone's answer to REQUEST: its Via, From, To, Call-ID and CSeq, a To tag."""
    parsed = parse_message(request)
    assert isinstance(parsed, Request)
    return bytes(make_response(parsed, status, to_tag=secrets.token_hex(4)))


async def registered(api: Api) -> list[str]:
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Registrations.json")
    assert status == 200, body
    return [r["login"] for r in json.loads(body)]


async def wait_unregistered(api: Api, login: str, within: float) -> float:
    """Seconds until LOGIN is no longer listed (fails past WITHIN)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while login in await registered(api):
        assert loop.time() - start < within, f"{login} still registered"
        await asyncio.sleep(0.1)
    return loop.time() - start


async def until(condition: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.fixture
async def office(tmp_path: Path) -> AsyncIterator[tuple[Appliance, Api]]:
    async with running(tmp_path, ping_interval=INTERVAL) as (app, api):
        status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                         {"Login": "bob", "Password": PASSWORD})
        assert status == 200, body
        yield app, api


def server_of(app: Appliance) -> tuple[str, int]:
    return "127.0.0.1", app.config.sip.listen.port


@pytest.mark.parametrize("answer", [200, 405])
async def test_a_phone_that_answers_stays_registered(office: Any, answer: int) -> None:
    app, api = office
    desk = Desk(server_of(app), "alice", answer)
    try:
        await desk.register()
        # Its first ping comes 1-2 intervals after; four answered take it past the three
        # intervals an unanswered phone lasts.
        await until(lambda: len(desk.options) >= 4, within=8 * INTERVAL)
        await asyncio.sleep(0.2)  # the last answer is in
        assert await registered(api) == ["alice"]
        seen: set[tuple[bytes, bytes]] = set()
        for options in desk.options:
            assert_anonymous(options.replace(b"OPTIONS ", b"SIP/2.0 200 ", 1))
            assert b"\r\nMax-Forwards: 70\r\n" in options
            assert options.startswith(f"OPTIONS sip:alice@127.0.0.1:{desk.port} ".encode())
            branch = re.search(rb"branch=([^;\r]+)", options)
            assert branch is not None
            seen.add((_call_id(options) or b"", branch.group(1)))
        assert len(seen) == len(desk.options)  # a fresh Call-ID and branch each
    finally:
        desk.close()


async def test_an_unplugged_phone_is_dropped_and_its_calls_get_480(
        office: Any, caplog: pytest.LogCaptureFixture) -> None:
    app, api = office
    caplog.set_level(logging.INFO, logger="appliance.sip.registrar")
    alice = Desk(server_of(app), "alice", answer=None)
    bob = Desk(server_of(app), "bob")
    try:
        await alice.register()
        await bob.register()
        assert await registered(api) == ["alice", "bob"]
        took = await wait_unregistered(api, "alice", within=8 * INTERVAL)
        assert took >= 3 * INTERVAL  # the first ping after 1-2 intervals, three missed
        assert len(alice.options) >= 3
        assert await registered(api) == ["bob"]  # bob answers: he stays
        assert app.location.lookup("alice", app.wall_clock()) == []
        contact = f"sip:alice@127.0.0.1:{alice.port}"
        assert [r.getMessage() for r in caplog.records if contact in r.getMessage()] == [
            f"- alice: contact {contact} dropped: no answer to its keep-alive OPTIONS"]
        sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        reply = await bob.authenticated("INVITE", "alice",
                                        extra=("Content-Type: application/sdp",), body=sdp)
        assert _status(reply) == 480, reply
    finally:
        alice.close()
        bob.close()


async def test_a_tcp_phone_is_pinged_on_its_connection_and_dropped_when_silent(
        office: Any) -> None:
    app, api = office
    reader, writer = await asyncio.open_connection(*server_of(app))
    local_port = writer.get_extra_info("sockname")[1]
    answering = True
    pings = 0

    def register(call_id: str, cseq: int, extra: str = "") -> bytes:
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP 127.0.0.1:{local_port};branch=z9hG4bK{secrets.token_hex(8)}"
                "\r\nMax-Forwards: 70\r\n"
                f"From: <sip:alice@{DOMAIN}>;tag=t1\r\nTo: <sip:alice@{DOMAIN}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:alice@127.0.0.1:{local_port};transport=tcp>\r\n"
                f"Expires: 3600\r\n{extra}Content-Length: 0\r\n\r\n").encode()

    async def read_message() -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        body = await reader.readexactly(int(length.group(1))) if length else b""
        return head + body

    responses: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve() -> None:
        nonlocal pings
        while True:
            message = await read_message()
            if message.startswith(b"OPTIONS "):
                pings += 1
                if answering:
                    writer.write(reply_to(message, 200))
            else:
                responses.put_nowait(message)

    task = asyncio.get_running_loop().create_task(serve())
    try:
        writer.write(register("tcp-reg", 1))
        challenge = await asyncio.wait_for(responses.get(), 2)
        name, value = challenge_answer(challenge, "alice", "REGISTER", f"sip:{DOMAIN}")
        writer.write(register("tcp-reg", 2, f"{name}: {value}\r\n"))
        assert _status(await asyncio.wait_for(responses.get(), 2)) == 200
        # Pinged over the connection it registered on (it has no other), and answering.
        await until(lambda: pings >= 4, within=8 * INTERVAL)
        await asyncio.sleep(0.2)
        assert await registered(api) == ["alice"]
        answering = False
        await wait_unregistered(api, "alice", within=8 * INTERVAL)
    finally:
        task.cancel()
        writer.close()


async def test_bindings_outlive_a_start_whose_sip_port_is_taken(tmp_path: Path) -> None:
    # Something holds the SIP port at a start (a second instance, a wrong listen address):
    # the API stays up to fix it, and the phones' restored bindings must not be dropped as
    # if the phones had gone silent, since no ping could leave.
    port = free_port()
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=replace(SipConfig(listen=Endpoint("127.0.0.1", port), domain=DOMAIN),
                                ping_interval=INTERVAL),
                    media=MediaConfig(workers=0))
    app = Appliance(config)
    await app.start()
    try:
        password = (config.data_dir / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                      password, config.data_dir)
            status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                             {"Login": "alice", "Password": PASSWORD})
            assert status == 200, body
        desk = Desk(server_of(app), "alice")
        await desk.register()
        desk.close()
    finally:
        await app.stop()
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", port))
    try:
        app = Appliance(config)
        await app.start()
        try:
            assert app.sip_error is not None
            assert len(app.location) == 1
            await asyncio.sleep(5.5 * INTERVAL)  # past the 3-4 intervals a silent phone lasts
            assert len(app.location) == 1
        finally:
            await app.stop()
    finally:
        squatter.close()
    app = Appliance(config)  # the port is free again: the database still has her
    await app.start()
    try:
        assert app.sip_error is None
        assert app.location.aors() == ["alice"]
    finally:
        await app.stop()


# --- the pinger alone ------------------------------------------------------------------------


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[Request | Response, Target]] = []
        self.result: bool | None = True

    def send(self, message: Request | Response, target: Target, data: bytes | None = None,
             *, on_error: Any = None) -> bool | None:
        self.messages.append((message, target))
        return self.result


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pinger_with(binding: Binding) -> tuple[Pinger, Sent, Clock, list[tuple[str, str]]]:
    sent, clock, dead = Sent(), Clock(), []
    pinger = Pinger(sent, interval=10, clock=clock, address=("10.0.0.1", 5060),
                    realm=lambda: DOMAIN,
                    binding=lambda aor, uri: binding if (aor, uri) == (binding.aor,
                                                                       binding.uri) else None,
                    on_dead=lambda aor, uri: dead.append((aor, uri)), spread=lambda: 0.0)
    pinger.track(binding.aor, [binding.uri])
    return pinger, sent, clock, dead


BEHIND_NAT = Binding(aor="alice", uri="sip:alice@192.168.1.10:5060", expires_at=1e12,
                     call_id="c", cseq=1, transport="tcp", source=("203.0.113.10", 40000),
                     connection_id="tcp-7")


def test_the_ping_goes_where_calls_go_and_a_spoofed_answer_is_not_taken() -> None:
    pinger, sent, clock, dead = pinger_with(BEHIND_NAT)
    for _ in range(3):
        clock.now += 10
        pinger.handle_timer(clock.now)
        [(options, target)] = sent.messages
        sent.messages.clear()
        assert target == Target("tcp", "203.0.113.10", 40000, "tcp-7")
        assert isinstance(options, Request) and options.uri == BEHIND_NAT.uri
        assert options.get("User-Agent") is None
        spoofed = make_response(options, 200, to_tag="x")
        spoofed.set("Call-ID", "guessed@" + DOMAIN)  # the branch alone is not enough
        assert not pinger.on_response(spoofed)
        # The next ping is due: this one is missed (unanswered within the interval).
    assert dead == []
    clock.now += 10
    pinger.handle_timer(clock.now)
    assert dead == [("alice", BEHIND_NAT.uri)]


def test_any_answer_keeps_the_contact() -> None:
    pinger, sent, clock, dead = pinger_with(BEHIND_NAT)
    for status in (200, 405, 501, 503, 603):
        clock.now += 10
        pinger.handle_timer(clock.now)
        [(options, _)] = sent.messages
        sent.messages.clear()
        assert isinstance(options, Request)
        assert pinger.on_response(make_response(options, status, to_tag="x"))
        assert not pinger.on_response(make_response(options, status, to_tag="x"))  # once
    assert dead == [] and pinger.schedule.misses(("alice", BEHIND_NAT.uri)) == 0


def test_a_ping_that_cannot_leave_from_here_counts_for_nothing() -> None:
    # Refused at once by our own transport (no socket: SIP could not start; no route: our
    # network is down): the phone was never asked, so an outage of ours unregisters nobody.
    pinger, sent, clock, dead = pinger_with(BEHIND_NAT)
    sent.result = False
    for _ in range(5):
        clock.now += 10
        pinger.handle_timer(clock.now)
    assert len(sent.messages) == 5
    assert dead == [] and pinger.schedule.misses(("alice", BEHIND_NAT.uri)) == 0
    assert pinger.schedule.in_flight == 0


def test_a_contact_the_transport_reports_unreachable_is_dead_after_three_pings() -> None:
    # The transport took the ping, then could not deliver it (a TCP connect to the phone
    # refused or timed out): the phone's failure, counted.
    pinger, sent, clock, dead = pinger_with(BEHIND_NAT)
    errors: list[Any] = []

    def send(message: Request | Response, target: Target, data: bytes | None = None,
             *, on_error: Any = None) -> bool:
        sent.messages.append((message, target))
        errors.append(on_error)
        return True

    sent.send = send  # type: ignore[method-assign]
    for _ in range(3):
        clock.now += 1
        pinger.handle_timer(clock.now)
        clock.now += 9
        pinger.handle_timer(clock.now)
        for on_error in errors:
            on_error()
        errors.clear()
    assert len(sent.messages) == 3
    assert dead == [("alice", BEHIND_NAT.uri)]
    assert pinger.schedule.in_flight == 0
