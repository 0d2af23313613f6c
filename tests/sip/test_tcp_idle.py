"""TCP idle timeouts: a connection nobody authenticated on idles briefly, one a phone is
registered on as long as a registered phone's silent flow, and briefly again once that
registration is gone; at max_connections, untrusted connections make room for newcomers.
Real sockets on loopback, the real front door and registrar (fake directory and store),
timeouts shrunk through Limits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.sip.bindings import Location
from appliance.sip.digest import Algorithm
from appliance.sip.frontdoor import FrontDoor
from appliance.sip.guard import Guard
from appliance.sip.message import Request, Response, parse_message
from appliance.sip.proxy_ports import Caller
from appliance.sip.registrar import Registrar
from appliance.sip.transport import (
    TCP_EVICTABLE_AFTER,
    TCP_UNTRUSTED_IDLE_TIMEOUT,
    Limits,
    Transport,
)
from tests.sip import proxy_harness, test_registrar
from tests.sip.test_registrar import REALM, FakeDirectory, FakeStore, answer, register, user
from tests.sip.test_transport import WAIT, options, read_message, status_of, tcp

SHORT = 0.3  # the untrusted idle timeout in these tests
LONG = 30.0  # the trusted one: never reached here


@dataclasses.dataclass
class Served:
    transport: Transport
    registrar: Registrar
    directory: FakeDirectory

    @property
    def port(self) -> int:
        return self.transport.port


@contextlib.asynccontextmanager
async def serving(*, guard: Guard | None = None, **limits: Any) -> AsyncIterator[Served]:
    """The front door, its registrar (Clients alice and bob) and the transport, wired as
    app.py wires them; LIMITS override the shrunk timeouts below."""
    guard = Guard() if guard is None else guard
    directory = FakeDirectory(user("alice"), user("bob"))
    registrar = Registrar(directory=directory, location=Location(),
                          guard=guard, store=FakeStore(), clock=time.time, realm=lambda: REALM,
                          algorithms=(Algorithm.MD5,))
    front = FrontDoor(registrar=registrar, guard=guard, clock=time.time)
    transport = Transport(front, "127.0.0.1", 0, limits=Limits(**{
        "idle_timeout": LONG, "untrusted_idle_timeout": SHORT, "first_message_timeout": 5.0,
        "sweep_interval": 0.05, **limits}))
    front.sender = transport
    front.activity = transport
    registrar.flows = transport  # as app.py wires them
    await transport.start()
    try:
        yield Served(transport, registrar, directory)
    finally:
        await transport.stop()
        await registrar.stop()
        front.close()


@pytest.fixture
async def door() -> AsyncIterator[Transport]:
    async with serving() as served:
        yield served.transport


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            with contextlib.suppress(ConnectionError):
                await reader.read()  # to the end of the stream (CRLF answers to pings too)
    except TimeoutError:
        return False
    return True


def over_tcp(data: bytes) -> bytes:
    return data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")


async def register_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                        login: str = "alice", password: str = "Pbx-edge-7",
                        call_id: str = "tcp-reg", cseq: int = 1,
                        expires: int | None = None) -> int:
    """REGISTER LOGIN (CSeq CSEQ), answer the 401 with PASSWORD (CSeq CSEQ + 1); the final
    status."""
    writer.write(over_tcp(bytes(register(login, call_id=call_id, cseq=cseq,
                                         expires=expires))))
    challenge = parse_message(await read_message(reader))
    assert isinstance(challenge, Response) and challenge.status == 401
    auth = answer(challenge, login, password=password)
    writer.write(over_tcp(bytes(register(login, call_id=call_id, cseq=cseq + 1, auth=auth,
                                         expires=expires))))
    final = parse_message(await read_message(reader))
    assert isinstance(final, Response)
    return final.status


async def answers_options(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          branch: str) -> bool:
    writer.write(options(5060, transport="TCP", branch=branch))
    return status_of(await read_message(reader)) == 200


def test_the_short_idle_timeout_is_a_minute_and_overridable() -> None:
    assert TCP_UNTRUSTED_IDLE_TIMEOUT == 60.0 == Limits().untrusted_idle_timeout
    assert Limits().idle_timeout > Limits().untrusted_idle_timeout
    assert TCP_EVICTABLE_AFTER == 5.0 == Limits().evictable_after


async def test_an_unauthenticated_connection_with_one_options_closes_after_the_short_idle(
        door: Transport) -> None:
    async with tcp(door.port) as (reader, writer):
        opened = time.monotonic()
        writer.write(options(5060, transport="TCP"))
        assert status_of(await read_message(reader)) == 200
        assert await closed_by_server(reader, WAIT)
        assert time.monotonic() - opened >= SHORT
    assert door.connection_count == 0


async def test_pings_do_not_keep_an_unauthenticated_connection_open(door: Transport) -> None:
    async with tcp(door.port) as (reader, writer):
        writer.write(options(5060, transport="TCP"))
        assert status_of(await read_message(reader)) == 200

        async def ping() -> None:
            while True:
                writer.write(b"\r\n\r\n")
                await asyncio.sleep(SHORT / 4)

        pinger = asyncio.create_task(ping())
        try:
            # Answered (CRLF each) but closed all the same.
            assert await closed_by_server(reader, WAIT)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pinger


async def test_a_connection_a_phone_registered_on_stays_open_past_the_short_idle(
        door: Transport) -> None:
    async with contextlib.AsyncExitStack() as stack:
        phone_reader, phone_writer = await stack.enter_async_context(tcp(door.port))
        assert await register_over(phone_reader, phone_writer) == 200
        # Beside it, at the same time: a stranger with a wrong password, and one with a
        # challenge it never answered.
        bad_reader, bad_writer = await stack.enter_async_context(tcp(door.port))
        assert await register_over(bad_reader, bad_writer, password="Wrong-pass-1") == 403
        idle_reader, idle_writer = await stack.enter_async_context(tcp(door.port))
        idle_writer.write(over_tcp(bytes(register("alice", call_id="other", cseq=1))))
        assert status_of(await read_message(idle_reader)) == 401

        assert await closed_by_server(bad_reader, WAIT)
        assert await closed_by_server(idle_reader, WAIT)
        await asyncio.sleep(4 * SHORT)  # well past the short idle timeout, silent
        assert not await closed_by_server(phone_reader, 0.05)
        assert door.connection_count == 1
        # And it still carries the phone's requests.
        phone_writer.write(options(5060, transport="TCP", branch="z9hG4bKlater"))
        assert status_of(await read_message(phone_reader)) == 200


class RecordingFlows:
    def __init__(self) -> None:
        self.trusted: list[str] = []
        self.distrusted: list[str] = []

    def trust(self, connection_id: str) -> None:
        self.trusted.append(connection_id)

    def distrust(self, connection_id: str) -> None:
        self.distrusted.append(connection_id)


async def test_the_proxy_trusts_only_a_providers_connection_once_its_request_is_accepted(
        ) -> None:
    """The proxy no longer trusts the connection of a Client's accepted request (this test
    once asserted that it did): one valid password would have trusted, for good, every
    connection it sent an OPTIONS, MESSAGE or INVITE on. A phone's flow is trusted through
    its binding, by the registrar. What the proxy trusts is a connection from a provider's
    address (or a media worker: neither can be spoofed over TCP, neither registers), and
    only once its request is accepted: not when refused 403 for a foreign Route or 503 for
    overload."""
    h = proxy_harness.Harness()
    flows = RecordingFlows()
    h.proxy.flows = flows
    h.phone("bob", "192.168.1.20", ("203.0.113.20", 5060))
    alice = h.phone("alice", "192.168.1.10", ("203.0.113.10", 40000), transport="tcp",
                    connection_id="tcp-7")
    stranger = h.phone("carol", "192.168.1.30", ("203.0.113.30", 40000), transport="tcp",
                       connection_id="tcp-8", register=False)
    # Challenged; authenticated but not registered; authenticated and accepted: a Client's
    # requests trust no connection.
    await h.send(alice, alice.request("MESSAGE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                                      call_id="m1", from_tag="t1"))
    assert h.sender.responses(407) and flows.trusted == []
    await h.authenticated(stranger, "MESSAGE", "bob")
    assert h.sender.responses(403) and flows.trusted == []
    await h.authenticated(alice, "INVITE", "bob", body=proxy_harness.SDP)
    assert h.sender.requests("INVITE") and flows.trusted == []

    provider = h.phone("+15550100", "198.51.100.7", ("198.51.100.7", 5060), transport="tcp",
                       connection_id="tcp-9", register=False)
    h.proxy.gateway_caller = lambda source, _request: (
        Caller(login="+15550100", account_sid="AC1", gateway="GW1")
        if source == provider.source else None)

    def inbound(call_id: str, headers: list[tuple[str, str]] | None = None) -> Request:
        return provider.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                                call_id=call_id, from_tag="p1", body=proxy_harness.SDP,
                                headers=headers)

    h.sender.take()
    await h.send(provider, inbound("p1", [("Route", "<sip:203.0.113.99;lr>")]))
    assert h.sender.responses(403) and flows.trusted == []
    h.proxy.max_calls = len(h.proxy._live_calls)
    await h.send(provider, inbound("p2"))
    assert h.sender.responses(503) and flows.trusted == []
    h.proxy.max_calls += 10
    await h.send(provider, inbound("p3"))
    assert flows.trusted == ["tcp-9"]


# --- at max_connections: strangers make room for phones ----------------------------------------


async def test_at_the_limit_a_phone_takes_the_place_of_the_stranger_idle_the_longest() -> None:
    async with serving(max_connections=3, untrusted_idle_timeout=LONG,
                       evictable_after=0) as served, \
            contextlib.AsyncExitStack() as stack:
        strangers = [await stack.enter_async_context(tcp(served.port)) for _ in range(3)]
        for n, (reader, writer) in enumerate(strangers):
            assert await answers_options(reader, writer, f"z9hG4bKs{n}")
        # The first is active again: the second is now idle the longest. A ping does not
        # count (it costs nothing), so the second's does not save it.
        assert await answers_options(*strangers[0], "z9hG4bKagain")
        strangers[1][1].write(b"\r\n\r\n")
        async with asyncio.timeout(WAIT):
            assert await strangers[1][0].readexactly(2) == b"\r\n"
        assert served.transport.connection_count == 3

        phone = await stack.enter_async_context(tcp(served.port))
        assert await closed_by_server(strangers[1][0], WAIT)
        assert await register_over(*phone) == 200
        assert served.transport.connection_count == 3
        for n in (0, 2):
            assert await answers_options(*strangers[n], f"z9hG4bKstill{n}")


async def test_at_the_limit_a_phone_from_a_new_address_displaces_a_crowded_source() -> None:
    # Connects churned from a few addresses (16 each, renewed within evictable_after) keep
    # every slot fresh: none is idle enough to close for a newcomer. A phone from an address
    # holding no connection yet takes the place of one of a source holding 4 or more; a
    # newcomer from a crowded source (or from one holding any connection) is still refused.
    async with serving(max_connections=8, untrusted_idle_timeout=LONG,
                       evictable_after=LONG) as served, \
            contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(tcp(served.port, "127.0.0.2"))
                for _ in range(5)]
        held += [await stack.enter_async_context(tcp(served.port, "127.0.0.3"))
                 for _ in range(3)]
        async with asyncio.timeout(WAIT):
            while served.transport.connection_count < 8:
                await asyncio.sleep(0.01)
        more = await stack.enter_async_context(tcp(served.port, "127.0.0.2"))
        assert await closed_by_server(more[0], WAIT)  # crowded itself: refused
        phone = await stack.enter_async_context(tcp(served.port, "127.0.0.9"))
        assert await register_over(*phone) == 200
        assert served.transport.connection_count == 8
        assert await closed_by_server(held[0][0], WAIT)  # 127.0.0.2's oldest made room
        second = await stack.enter_async_context(tcp(served.port, "127.0.0.9"))
        assert await closed_by_server(second[0], WAIT)  # the phone's source holds one now


async def test_at_the_limit_with_every_connection_trusted_a_newcomer_is_refused() -> None:
    async with serving(max_connections=2, untrusted_idle_timeout=LONG) as served, \
            contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(tcp(served.port))
        assert await register_over(*alice, login="alice") == 200
        bob = await stack.enter_async_context(tcp(served.port))
        assert await register_over(*bob, login="bob", call_id="bob-reg") == 200

        reader, writer = await stack.enter_async_context(tcp(served.port))
        writer.write(options(5060, transport="TCP"))
        assert await closed_by_server(reader, WAIT)  # refused at once, unanswered
        assert served.transport.connection_count == 2
        assert await answers_options(*alice, "z9hG4bKalice")
        assert await answers_options(*bob, "z9hG4bKbob")


async def test_connections_closed_to_make_room_are_logged_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each newcomer closes the one before it: a warning a stranger causes at will, logged
    once with a count, not a line per connection."""
    async with serving(max_connections=1, untrusted_idle_timeout=LONG,
                       evictable_after=0) as served, \
            contextlib.AsyncExitStack() as stack:
        with caplog.at_level("WARNING", logger="appliance.sip.transport"):
            previous = None
            for n in range(5):
                reader, writer = await stack.enter_async_context(tcp(served.port))
                assert await answers_options(reader, writer, f"z9hG4bKn{n}")
                if previous is not None:
                    assert await closed_by_server(previous, WAIT)
                previous = reader
        assert served.transport.connection_count == 1
        assert caplog.text.count(" to make room for ") == 1
        assert "(1 closed so far)" in caplog.text


async def test_a_connect_flood_does_not_close_a_phone_mid_handshake() -> None:
    """Strangers connecting in a loop (no message, no budget spent) at the limit: each
    would take the place of the connection idle the longest, and the phone between our
    401 and its authenticated REGISTER is that one. Only a connection idle evictable_after
    is closed for a newcomer; the flood is refused meanwhile."""
    async with serving(max_connections=3, untrusted_idle_timeout=LONG,
                       evictable_after=1.0) as served, contextlib.AsyncExitStack() as stack:
        reader, writer = await stack.enter_async_context(tcp(served.port))
        writer.write(over_tcp(bytes(register("alice", call_id="flood", cseq=1))))
        challenge = parse_message(await read_message(reader))
        assert isinstance(challenge, Response) and challenge.status == 401
        flood = [await stack.enter_async_context(tcp(served.port)) for _ in range(8)]
        for n, (stranger, _) in enumerate(flood):
            assert await closed_by_server(stranger, 0.3 if n < 2 else WAIT) == (n >= 2)  # no room
        writer.write(over_tcp(bytes(register("alice", call_id="flood", cseq=2,
                                             auth=answer(challenge, "alice")))))
        assert status_of(await read_message(reader)) == 200
        assert served.transport.connection_count == 3
        # Once idle that long, a stranger is closed for a newcomer; the phone never is.
        await asyncio.sleep(1.2)
        late_reader, late_writer = await stack.enter_async_context(tcp(served.port))
        assert await answers_options(late_reader, late_writer, "z9hG4bKlate")
        assert await closed_by_server(flood[0][0], WAIT)
        assert await answers_options(reader, writer, "z9hG4bKphone")


async def test_requests_refused_over_budget_do_not_keep_a_strangers_connections() -> None:
    """A stranger holding every connection sends an OPTIONS on each all the time, past its
    unauthenticated budget: each is answered 503, and none counts as activity. Its
    connections are thus idle to the replacement rule, and a phone connecting takes the
    place of one and registers."""
    async with serving(guard=Guard(unauthenticated_per_minute=2), max_connections=4,
                       untrusted_idle_timeout=LONG, evictable_after=0.5) as served, \
            contextlib.AsyncExitStack() as stack:
        strangers = [await stack.enter_async_context(tcp(served.port, "127.1.0.1"))
                     for _ in range(4)]
        seen: list[int] = []
        stop = asyncio.Event()

        async def pump() -> None:
            for n in itertools.count():
                for k, (reader, writer) in enumerate(strangers):
                    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                        writer.write(options(5060, transport="TCP", branch=f"z9hG4bK{n}s{k}"))
                        seen.append(status_of(await read_message(reader)))
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)

        pumping = asyncio.create_task(pump())
        try:
            await asyncio.sleep(1.0)  # twice evictable_after: only 503s since the first two
            assert seen[:2] == [200, 200] and set(seen[2:]) == {503}
            assert served.transport.connection_count == 4
            phone = await stack.enter_async_context(tcp(served.port))
            assert await register_over(*phone) == 200
            assert served.transport.connection_count == 4
        finally:
            stop.set()
            await pumping


# --- trust follows the bindings ----------------------------------------------------------------


async def registered_on(h: test_registrar.Harness, login: str, connection_id: str, *,
                        call_id: str, cseq: int = 1, expires: int | None = None,
                        contacts: tuple[str, ...] = ("<sip:{login}@192.0.2.10:5060>",)) -> int:
    """LOGIN's REGISTER (challenge and answer) over the TCP connection CONNECTION_ID."""
    challenge = await h.send(register(login, call_id=call_id, cseq=cseq, expires=expires,
                                      contacts=contacts),
                             transport="tcp", connection_id=connection_id)
    assert challenge is not None and challenge.status == 401
    final = await h.send(register(login, call_id=call_id, cseq=cseq + 1, expires=expires,
                                  contacts=contacts, auth=answer(challenge, login)),
                         transport="tcp", connection_id=connection_id)
    assert final is not None
    return final.status


async def test_the_registrar_trusts_a_connection_while_a_binding_refers_to_it() -> None:
    h = test_registrar.Harness(user("alice"), user("bob"))
    flows = RecordingFlows()
    h.registrar.flows = flows
    assert await registered_on(h, "alice", "tcp-1", call_id="a1") == 200
    assert (flows.trusted, flows.distrusted) == (["tcp-1"], [])
    # A refresh, and a second line of the same phone on it: nothing new.
    assert await registered_on(h, "alice", "tcp-1", call_id="a1", cseq=3) == 200
    assert await registered_on(h, "bob", "tcp-1", call_id="b1") == 200
    assert (flows.trusted, flows.distrusted) == (["tcp-1"], [])
    # One line unregisters: the other still holds the connection...
    assert await registered_on(h, "alice", "tcp-1", call_id="a1", cseq=5, expires=0) == 200
    assert (flows.trusted, flows.distrusted) == (["tcp-1"], [])
    # ...until its binding expires.
    h.clock.now += 3601
    assert [b.aor for b in h.registrar.expire()] == ["bob"]
    assert flows.distrusted == ["tcp-1"]
    # A phone that reconnects and registers its contact again on the new connection: the
    # old one goes back to the short idle timeout.
    assert await registered_on(h, "alice", "tcp-2", call_id="a2") == 200
    assert await registered_on(h, "alice", "tcp-3", call_id="a3") == 200
    assert (flows.trusted, flows.distrusted) == (["tcp-1", "tcp-2", "tcp-3"],
                                                 ["tcp-1", "tcp-2"])
    # Its Client deleted: revoked with its bindings.
    del h.directory.users["alice"]
    assert [b.aor for b in await h.registrar.revoke()] == ["alice"]
    assert flows.distrusted == ["tcp-1", "tcp-2", "tcp-3"]
    # A query (no Contact) and an unregistration bind nothing on a connection: not trusted,
    # though answered 200.
    assert await registered_on(h, "bob", "tcp-4", call_id="b4", contacts=()) == 200
    assert await registered_on(h, "bob", "tcp-5", call_id="b5", contacts=("*",),
                               expires=0) == 200
    assert flows.trusted == ["tcp-1", "tcp-2", "tcp-3"]


async def test_a_query_after_a_binding_expired_unswept_lets_its_connection_go() -> None:
    """A REGISTER query (no Contact) that lands after a binding expired but before the
    timer swept it: the location table drops the binding then, so the timer will never see
    it go. The registrar publishes the change there: the connection is distrusted and the
    source no longer known (it would else skip the budget, and be served through a ban)."""
    h = test_registrar.Harness(user("alice"))
    flows = RecordingFlows()
    h.registrar.flows = flows
    assert await registered_on(h, "alice", "tcp-1", call_id="a1", expires=60) == 200
    assert flows.trusted == ["tcp-1"] and h.registrar.is_known_source(test_registrar.PHONE[0])
    h.clock.now += 61  # expired; not swept yet
    assert await registered_on(h, "alice", "tcp-2", call_id="q1", contacts=()) == 200
    assert (flows.trusted, flows.distrusted) == (["tcp-1"], ["tcp-1"])
    assert not h.registrar.is_known_source(test_registrar.PHONE[0])
    assert h.registrar.expire() == []
    assert h.directory.published["alice"] == []


async def test_a_phone_that_unregisters_keeps_its_connection_only_the_short_idle() -> None:
    async with serving() as served, contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(tcp(served.port))
        assert await register_over(*alice, login="alice") == 200
        bob = await stack.enter_async_context(tcp(served.port))
        assert await register_over(*bob, login="bob", call_id="bob-reg") == 200
        await asyncio.sleep(2 * SHORT)  # trusted: both past the short idle timeout
        assert served.transport.connection_count == 2

        assert await register_over(*alice, login="alice", cseq=3, expires=0) == 200
        unregistered = time.monotonic()
        assert await closed_by_server(alice[0], WAIT)
        assert time.monotonic() - unregistered >= SHORT  # counted from the unregistration
        assert not await closed_by_server(bob[0], 2 * SHORT)
        assert await answers_options(*bob, "z9hG4bKbob")


async def test_a_deleted_clients_phone_keeps_its_connection_only_the_short_idle() -> None:
    async with serving() as served, contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(tcp(served.port))
        assert await register_over(*alice, login="alice") == 200
        bob = await stack.enter_async_context(tcp(served.port))
        assert await register_over(*bob, login="bob", call_id="bob-reg") == 200
        await asyncio.sleep(2 * SHORT)

        del served.directory.users["alice"]
        served.registrar.request_revoke()  # what the provisioning service's change does
        revoked = time.monotonic()
        assert await closed_by_server(alice[0], WAIT)
        assert time.monotonic() - revoked >= SHORT
        assert not await closed_by_server(bob[0], 2 * SHORT)
        assert await answers_options(*bob, "z9hG4bKbob")


class RecordingLiveness:
    def __init__(self) -> None:
        self.tracked: dict[str, list[str]] = {}
        self.refreshed: list[tuple[str, list[str]]] = []

    def track(self, aor: str, uris: Any) -> None:
        self.tracked[aor] = list(uris)

    def heard(self, aor: str, uris: Any) -> None:
        self.refreshed.append((aor, list(uris)))


async def test_a_contact_that_stopped_answering_goes_as_an_expired_one() -> None:
    """``Registrar.unreachable`` (the keep-alive gave up on a contact): the binding leaves
    the table, the API, the database and its connection's trust, and the keep-alive is told."""
    h = test_registrar.Harness(user("alice"))
    flows = RecordingFlows()
    h.registrar.flows = flows
    liveness = RecordingLiveness()
    h.registrar.keepalive = liveness
    assert await registered_on(h, "alice", "tcp-1", call_id="a1") == 200
    contact = "sip:alice@192.0.2.10:5060"
    assert liveness.tracked == {"alice": [contact]}
    assert liveness.refreshed == [("alice", [contact])]  # the REGISTER is proof of life
    assert h.directory.published["alice"] != []
    h.registrar.unreachable("alice", contact)
    await h.registrar.flush()
    assert h.location.lookup("alice", h.clock()) == []
    assert h.directory.published["alice"] == [] and h.store.saved["alice"] == []
    assert flows.distrusted == ["tcp-1"]
    assert liveness.tracked == {"alice": []}
    h.registrar.unreachable("alice", contact)  # twice: nothing more
    assert flows.distrusted == ["tcp-1"]
