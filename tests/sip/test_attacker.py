"""SIPVicious and a toll-fraud caller against a running appliance (sip.md §3).

Every test here plays an attacker over UDP on loopback against the real front door (the
appliance of ``tests/conftest.py``, with its own config where a budget matters) and asserts
what the attacker sees: ``svmap`` learns no product, version or OS; ``svwar`` gets the same
bytes for a real extension, a disabled one and one that does not exist (apart from tags,
nonces and branches); ``svcrack`` is banned, on the registrar and on the proxy alike; a
stranger reaches nothing outside (407 before anything else); floods get 503 or silence;
broadcast and multicast Vias get nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import (
    ApiConfig,
    Config,
    Endpoint,
    InboundConfig,
    MediaConfig,
    SipConfig,
)
from tests.conftest import ADMIN_SID, Api, free_port

PASSWORD = "Pbx-edge-7"
WAIT = 1.0
DOMAIN = "pbx.example.com"


@asynccontextmanager
async def running(tmp_path: Path, inbound: InboundConfig | None = None,
                  **sip: object) -> AsyncIterator[tuple[Appliance, Api]]:
    """An appliance on loopback with SIP settings SIP, and Clients alice (enabled) and
    carol (disabled)."""
    base = SipConfig(listen=Endpoint("127.0.0.1", free_port()), domain=DOMAIN)
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=replace(base, **sip),  # type: ignore[arg-type]
                    media=MediaConfig(workers=0), inbound=inbound or InboundConfig())
    app = Appliance(config)
    await app.start()
    password = (config.data_dir / "admin-password").read_text().strip()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                      password, config.data_dir)
            for login in ("alice", "carol"):
                status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                                 {"Login": login, "Password": PASSWORD})
                assert status == 200, body
                if login == "carol":
                    sid = json.loads(body)["sid"]
                    status, body, _ = await api.post(
                        f"Accounts/{ADMIN_SID}/Clients/{sid}.json", {"Status": "0"})
                    assert status == 200, body
            yield app, api
    finally:
        await app.stop()


class Attacker:
    """A UDP socket on a loopback address of its own (127.0.0.x: one source IP each)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.server = port
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, ("127.0.0.1", self.server))

    async def recv(self, wait: float = WAIT) -> bytes | None:
        try:
            async with asyncio.timeout(wait):
                return await asyncio.get_running_loop().sock_recv(self.sock, 65535)
        except TimeoutError:
            return None

    async def ask(self, data: bytes, wait: float = WAIT) -> bytes | None:
        """The first final response to DATA (by Call-ID), or None when none comes."""
        await self.send(data)
        return await self.final(_call_id(data), wait)

    async def final(self, call_id: bytes | None, wait: float = WAIT) -> bytes | None:
        """The first final response with CALL_ID to arrive within WAIT, or None."""
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while (left := end - loop.time()) > 0:
            reply = await self.recv(left)
            if reply is None:
                return None
            if _call_id(reply) == call_id and _status(reply) >= 200:
                return reply
        return None

    def request(self, method: str, user: str | None, *, from_user: str = "alice",
                to_user: str | None = None, ruri: str | None = None,
                extra: tuple[str, ...] = (), body: bytes = b"", via_host: str | None = None,
                call_id: str | None = None, cseq: int = 1) -> bytes:
        uri = ruri or (f"sip:{user}@{DOMAIN}" if user else f"sip:{DOMAIN}")
        to = to_user if to_user is not None else (user or from_user)
        head = (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {via_host or self.host}:{self.port}"
                f";branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                "Max-Forwards: 70\r\n"
                f'From: "sipvicious" <sip:{from_user}@{DOMAIN}>;tag={secrets.token_hex(4)}\r\n'
                f"To: <sip:{to}@{DOMAIN}>\r\n"
                f"Call-ID: {call_id or secrets.token_hex(8)}\r\n"
                f"CSeq: {cseq} {method}\r\n"
                f"Contact: <sip:{from_user}@{self.host}:{self.port}>\r\n"
                "User-Agent: friendly-scanner\r\n"
                + "".join(f"{line}\r\n" for line in extra)
                + f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body


def _call_id(data: bytes) -> bytes | None:
    match = re.search(rb"\r\n(?:Call-ID|i) *: *([^\r]*)\r\n", data, re.IGNORECASE)
    return match.group(1) if match else None


def _status(data: bytes) -> int:
    first = data.split(b"\r\n", 1)[0].split(b" ")
    return int(first[1]) if first[0] == b"SIP/2.0" else 0


def normalized(data: bytes | None) -> bytes:
    """DATA without what differs by chance: tags, nonces, branches, Call-ID, ports, users."""
    assert data is not None, "no reply"
    text = re.sub(rb"tag=[^;>\r\s,]+", b"tag=T", data)
    text = re.sub(rb'nonce="[^"]*"', b'nonce="N"', text)
    text = re.sub(rb"branch=[^;\r\s,]+", b"branch=B", text)
    text = re.sub(rb"rport=\d+", b"rport=P", text)
    text = re.sub(rb"127\.0\.0\.1:\d+", b"127.0.0.1:P", text)
    text = re.sub(rb"(?m)^(Call-ID|i) *:.*$", b"Call-ID: C", text, flags=re.IGNORECASE)
    # The user asked for appears where the request had it (To, Request-URI): not a leak.
    return re.sub(rb"sip:(alice|carol|zed)@", b"sip:USER@", text)


def challenge_answer(reply: bytes, login: str, method: str, uri: str,
                     password: str = PASSWORD) -> tuple[str, str]:
    """(header name, value) answering the digest challenge in REPLY (MD5, qop=auth)."""
    name = "Authorization" if _status(reply) == 401 else "Proxy-Authorization"
    realm = re.search(rb'realm="([^"]*)"', reply)
    nonce = re.search(rb'nonce="([^"]*)"', reply)
    assert realm and nonce
    r, n = realm.group(1).decode(), nonce.group(1).decode()

    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - SIP digest is MD5

    cnonce, nc = "0a4f113b", "00000001"
    response = h(f"{h(f'{login}:{r}:{password}')}:{n}:{nc}:{cnonce}:auth:{h(f'{method}:{uri}')}")
    return name, (f'Digest username="{login}", realm="{r}", nonce="{n}", uri="{uri}", '
                  f'response="{response}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc={nc}')


# --- svmap: nothing to fingerprint -------------------------------------------------------------

FINGERPRINTS = re.compile(rb"appliance|python|asyncio|pjsua|pjsip|linux|debian|raspb|"
                          rb"restcomm|kamailio|(?<![\d.])\d+\.\d+\.\d+(?![\d.])", re.IGNORECASE)


NONCE = re.compile(rb'nonce="[^"]*"')


def assert_anonymous(reply: bytes | None) -> None:
    assert reply is not None
    head, _, body = reply.partition(b"\r\n\r\n")
    names = {line.split(b":")[0].strip().lower() for line in head.split(b"\r\n")[1:]}
    assert not names & {b"server", b"user-agent", b"warning", b"organization"}, head
    assert body == b"", body
    status_line = head.split(b"\r\n")[0]
    assert not FINGERPRINTS.search(status_line), status_line
    # No header we wrote names a product or version (only what the probe sent is echoed).
    # A nonce is random hex joined by dots: "…33.076924013445.944…" would read as a version.
    ours = [NONCE.sub(b'nonce=""', line) for line in head.split(b"\r\n")[1:]
            if not line.lower().startswith(
                (b"via", b"from", b"to", b"call-id", b"cseq", b"contact"))]
    assert not any(FINGERPRINTS.search(line) for line in ours), ours


async def test_svmap_learns_no_product_version_or_os(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, _):
        a = Attacker(app.config.sip.listen.port)
        try:
            probes = {
                "OPTIONS": a.request("OPTIONS", None),
                "REGISTER": a.request("REGISTER", "alice", to_user="alice"),
                "INVITE": a.request("INVITE", "alice"),
                "MESSAGE": a.request("MESSAGE", "+15551234", body=b"hi",
                                     extra=("Content-Type: text/plain",)),
                "SUBSCRIBE": a.request("SUBSCRIBE", "alice", extra=("Event: presence",)),
                "420": a.request("OPTIONS", None, extra=("Require: sec-agree",)),
                "483": a.request("INVITE", "alice").replace(b"Max-Forwards: 70",
                                                             b"Max-Forwards: 0"),
                "400": a.request("OPTIONS", None).replace(b"CSeq: 1 OPTIONS", b"CSeq: x"),
                "416": a.request("OPTIONS", None).replace(b"OPTIONS sip:", b"OPTIONS foo:", 1),
                "505": a.request("OPTIONS", None).replace(b" SIP/2.0\r\n", b" SIP/7.0\r\n", 1),
            }
            for name, probe in probes.items():
                reply = await a.ask(probe)
                assert reply is not None, name
                if name.isdigit():
                    assert _status(reply) == int(name), (name, reply)
                assert_anonymous(reply)
            # 513 needs more than a datagram holds: over TCP.
            reader, writer = await asyncio.open_connection("127.0.0.1", a.server)
            try:
                writer.write(a.request("OPTIONS", None, body=b"x" * 70_000).replace(
                    b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
                assert _status(head) == 513
                assert_anonymous(head)
            finally:
                writer.close()
        finally:
            a.close()


def test_the_trunk_registers_upstream_without_naming_what_we_run() -> None:
    from appliance.sip.upstream import LocalAddress, UpstreamAccount, UpstreamRegistration

    machine = UpstreamRegistration(
        UpstreamAccount(user="office", password="Trunk-pass-1", domain="sip.provider.example",
                        expires=600),
        LocalAddress("192.0.2.1", 5060), call_id="c1", from_tag="f1", token=lambda: "t1")
    data = bytes(machine.start(0.0))
    assert_anonymous(b"SIP/2.0 200 OK\r\n" + data.split(b"\r\n", 1)[1])


# --- svwar: the same bytes for every extension ------------------------------------------------


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS", "MESSAGE", "SUBSCRIBE"])
async def test_svwar_gets_the_same_reply_for_known_disabled_and_unknown_extensions(
        tmp_path: Path, method: str) -> None:
    async with running(tmp_path) as (app, _):
        a = Attacker(app.config.sip.listen.port)
        try:
            replies = []
            for user in ("alice", "carol", "zed"):
                # svwar writes the extension into To and From alike (and the Request-URI).
                extra = ("Event: presence",) if method == "SUBSCRIBE" else ()
                probe = a.request(method, user, from_user=user, to_user=user, extra=extra)
                reply = await a.ask(probe)
                assert_anonymous(reply)
                replies.append(normalized(reply))
            assert replies[0] == replies[1] == replies[2], replies
            if method in ("INVITE", "MESSAGE", "OPTIONS"):
                assert _status(replies[0]) == 407
            elif method == "REGISTER":
                assert _status(replies[0]) == 401
        finally:
            a.close()


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "MESSAGE"])
async def test_a_wrong_password_and_an_unknown_user_are_the_same_403(
        tmp_path: Path, method: str) -> None:
    async with running(tmp_path) as (app, _):
        a = Attacker(app.config.sip.listen.port)
        try:
            replies = []
            for user in ("alice", "carol", "zed"):
                target = None if method == "REGISTER" else "bob"
                uri = f"sip:{DOMAIN}" if target is None else f"sip:{target}@{DOMAIN}"
                call_id = secrets.token_hex(8)
                first = await a.ask(a.request(method, target, from_user=user,
                                              to_user=user if target is None else target,
                                              call_id=call_id))
                assert first is not None
                name, value = challenge_answer(first, user, method, uri, password="guess")
                reply = await a.ask(a.request(method, target, from_user=user,
                                              to_user=user if target is None else target,
                                              call_id=call_id, cseq=2,
                                              extra=(f"{name}: {value}",)))
                assert reply is not None and _status(reply) == 403, reply
                assert_anonymous(reply)
                replies.append(normalized(reply))
            assert replies[0] == replies[1] == replies[2], replies
        finally:
            a.close()


async def test_an_unknown_extension_costs_no_more_store_lookups_than_a_known_one(
        tmp_path: Path) -> None:
    """svwar's timing class: every login, known or not, is answered from the directory
    without the store once the directory is loaded (no query on one path only)."""
    async with running(tmp_path) as (app, _):
        store = app.store
        calls: list[str] = []
        real = store.get_client_by_login

        async def counting(login: str) -> object:
            calls.append(login)
            return await real(login)

        store.get_client_by_login = counting  # type: ignore[method-assign]
        loads = 0
        real_all = store.all_clients

        async def counting_all() -> object:
            nonlocal loads
            loads += 1
            return await real_all()

        store.all_clients = counting_all  # type: ignore[method-assign]
        a = Attacker(app.config.sip.listen.port)
        try:
            for user in ("alice", "zed", "yves", "carol", "xavier"):
                assert await a.ask(a.request("REGISTER", user, from_user=user)) is not None
                assert await a.ask(a.request("INVITE", "bob", from_user=user)) is not None
            assert calls == []  # not one per-login query, for any of them
            assert loads == 1  # the directory read every Client once
        finally:
            a.close()


# --- svcrack: banned after N failures, on every method, for a while ---------------------------


async def crack(a: Attacker, method: str, guesses: int,
                login: str = "alice") -> list[int | None]:
    """GUESSES wrong passwords for LOGIN by METHOD (REGISTER: the registrar; INVITE: the
    proxy's 407 path); the status of each answer (None: dropped)."""
    target = None if method == "REGISTER" else "bob"
    uri = f"sip:{DOMAIN}" if target is None else f"sip:{target}@{DOMAIN}"
    statuses: list[int | None] = []
    for guess in range(guesses):
        call_id = secrets.token_hex(8)
        first = await a.ask(a.request(method, target, call_id=call_id, from_user=login,
                                      to_user=login if target is None else target))
        if first is None:
            statuses.append(None)
            continue
        name, value = challenge_answer(first, login, method, uri, password=f"guess{guess}")
        reply = await a.ask(a.request(method, target, call_id=call_id, cseq=2,
                                      from_user=login,
                                      to_user=login if target is None else target,
                                      extra=(f"{name}: {value}",)))
        statuses.append(None if reply is None else _status(reply))
    return statuses


def held_clock(app: Appliance) -> list[float]:
    """Give APP's front door, registrar and proxy one wall clock (bans, nonces, bindings)
    that the test moves: the list's one item is now."""
    now = [app.wall_clock()]
    app.wall_clock = lambda: now[0]  # type: ignore[method-assign]
    for part in (app.guard, app.registrar, app.frontdoor):
        if hasattr(part, "clock"):
            part.clock = app.wall_clock
    app.proxy._clock = app.wall_clock  # noqa: SLF001 - the same clock everywhere
    return now


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
async def test_svcrack_is_banned_on_every_method_logged_once_and_freed_on_time(
        tmp_path: Path, method: str, caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path, max_auth_failures=3, ban_seconds=600) as (app, _):
        now = held_clock(app)
        a = Attacker(app.config.sip.listen.port, "127.0.0.5")
        office = Attacker(app.config.sip.listen.port, "127.0.0.6")
        try:
            with caplog.at_level(logging.INFO):
                assert await crack(a, method, 3) == [403, 403, 403]
                # Banned: nothing at all comes back, whatever the method.
                assert await crack(a, method, 2) == [None, None]
                for probe in (a.request("OPTIONS", None), a.request("REGISTER", "alice"),
                              a.request("INVITE", "alice"), a.request("MESSAGE", "alice"),
                              a.request("SUBSCRIBE", "alice")):
                    assert await a.ask(probe, wait=0.3) is None
            bans = [r for r in caplog.records if "banned" in r.getMessage()]
            assert len(bans) == 1, [r.getMessage() for r in bans]
            # Another address (the office's phones) is served meanwhile.
            assert _status(await office.ask(office.request("OPTIONS", None)) or b"") == 200
            now[0] += 599
            assert await a.ask(a.request("OPTIONS", None), wait=0.3) is None
            now[0] += 2
            assert _status(await a.ask(a.request("OPTIONS", None)) or b"") == 200
        finally:
            a.close()
            office.close()


async def test_a_ban_silences_a_tcp_connection_opened_before_it(tmp_path: Path) -> None:
    """svcrack over TCP keeps its connection: once banned, nothing on it is answered, not
    even the 400 of a broken request."""
    async with running(tmp_path) as (app, _):
        a = Attacker(app.config.sip.listen.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", a.server)
        try:
            def broken() -> bytes:
                return a.request("OPTIONS", None).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP") \
                    .replace(b"CSeq: 1 OPTIONS", b"CSeq: x")

            writer.write(broken())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert _status(head) == 400
            for n in range(app.guard.max_failures):
                app.guard.record_failure("127.0.0.1", app.wall_clock(), f"guess{n}")
            writer.write(broken())
            writer.write(a.request("OPTIONS", None).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
        finally:
            writer.close()
            a.close()


def test_many_crackers_are_held_in_bounded_memory() -> None:
    from appliance.sip.guard import Guard

    guard = Guard(max_failures=2, ban_time=600, max_sources=1000)
    for n in range(50_000):
        guard.record_failure(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 0.0, "alice")
        guard.allow_unauthenticated(f"172.16.{n >> 8 & 255}.{n & 255}", 0.0)
    assert len(guard) <= 1000


# --- toll fraud: a stranger reaches nothing ------------------------------------------------


async def test_a_stranger_gets_407_for_every_way_out(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, api):
        a = Attacker(app.config.sip.listen.port)
        try:
            probes = [
                a.request("INVITE", "+15551234567"),  # PSTN through the modem or a trunk
                a.request("INVITE", "0015551234567"),
                a.request("INVITE", None, ruri="tel:+15551234567", to_user="+15551234567"),
                a.request("INVITE", None, ruri="sip:+15551234567@sip.provider.example",
                          to_user="+15551234567"),  # a trunk's domain
                a.request("INVITE", None, ruri="sip:bob@evil.example.com"),  # open relay
                a.request("INVITE", None, ruri="sip:alice@203.0.113.9:5060"),  # another host
                a.request("INVITE", "alice",
                          extra=("Route: <sip:evil.example.com;lr>",)),  # a foreign Route
                a.request("INVITE", "alice", extra=(
                    f"Route: <sip:127.0.0.1:{a.server};lr>",
                    "Route: <sip:gw.evil.example.com;lr>")),
                a.request("MESSAGE", "+15551234567", body=b"spam",
                          extra=("Content-Type: text/plain",)),  # SMS out through the modem
                a.request("OPTIONS", "+15551234567"),
            ]
            for probe in probes:
                reply = await a.ask(probe)
                assert reply is not None and _status(reply) == 407, (probe, reply)
        finally:
            a.close()
        for listing, key in (("SMS/Messages", "messages"), ("Calls", "calls")):
            status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/{listing}.json")
            assert status == 200 and json.loads(body)[key] == [], body  # nothing went out


async def authenticated(a: Attacker, method: str, user: str | None, *, ruri: str | None = None,
                        extra: tuple[str, ...] = (), body: bytes = b"",
                        login: str = "alice", password: str = PASSWORD) -> bytes | None:
    """METHOD from LOGIN (alice, right password), answering the challenge it gets first."""
    call_id = secrets.token_hex(8)
    uri = ruri or (f"sip:{user}@{DOMAIN}" if user else f"sip:{DOMAIN}")
    to = login if method == "REGISTER" else None
    first = await a.ask(a.request(method, user, ruri=ruri, call_id=call_id, extra=extra,
                                  body=body, from_user=login, to_user=to))
    assert first is not None and _status(first) in (401, 407), first
    name, value = challenge_answer(first, login, method, uri, password)
    return await a.ask(a.request(method, user, ruri=ruri, call_id=call_id, cseq=2, body=body,
                                 from_user=login, to_user=to,
                                 extra=(*extra, f"{name}: {value}")))


async def test_a_registered_client_goes_out_only_where_routes_say(tmp_path: Path) -> None:
    """The office's own phone, with its right password: no [outbound] route is configured,
    so no number goes out, and no foreign domain or foreign proxy is relayed to."""
    async with running(tmp_path) as (app, _):
        phone = Attacker(app.config.sip.listen.port, "127.0.0.9")
        try:
            ok = await authenticated(phone, "REGISTER", None)
            assert ok is not None and _status(ok) == 200, ok
            for user, ruri, extra in (
                ("+15551234567", None, ()),
                (None, "sip:+15551234567@sip.provider.example", ()),
                (None, "tel:+15551234567", ()),
                (None, "sip:bob@evil.example.com", ()),
                ("alice", None, ("Route: <sip:evil.example.com;lr>",)),
            ):
                reply = await authenticated(phone, "INVITE", user, ruri=ruri, extra=extra)
                assert reply is not None and _status(reply) == 403, (user, ruri, reply)
        finally:
            phone.close()


async def call_only_gateway(api: Api) -> None:
    """The gateway "provider" (Register=false), whose addresses [inbound.sources] lists."""
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Management/Gateways.json", {
        "FriendlyName": "provider", "UserName": "office", "Password": "Trunk-pass-1",
        "Proxy": f"127.0.0.1:{free_port()}", "Register": "false", "TTL": "600"})
    assert status == 200, body


async def test_the_trunk_address_reaches_our_dids_only_even_spoofed(tmp_path: Path) -> None:
    """A request from a provider's listed address is taken unchallenged (providers do not
    authenticate to us), so whoever spoofs that address over UDP gets what the provider
    gets: calls to our DIDs, nothing out (no number, no Client, no SMS, no relay)."""
    sources = (("provider", (("127.0.0.2/32", None),)),)
    async with running(tmp_path, InboundConfig(sources=sources)) as (app, api):
        await call_only_gateway(api)
        spoofer = Attacker(app.config.sip.listen.port, "127.0.0.2")
        stranger = Attacker(app.config.sip.listen.port, "127.0.0.3")
        try:
            for who, probe, expected in (
                (spoofer, spoofer.request("INVITE", "+15551234567",
                                          from_user="+33612345678"), 404),
                (spoofer, spoofer.request("INVITE", None, ruri="sip:+15551234567@gw.example.net",
                                          from_user="+33612345678"), 404),
                (spoofer, spoofer.request("INVITE", "alice", from_user="+33612345678"), 404),
                (spoofer, spoofer.request("MESSAGE", "+15551234567", body=b"spam",
                                          extra=("Content-Type: text/plain",)), 403),
                (stranger, stranger.request("INVITE", "+15551234567"), 407),
            ):
                reply = await who.ask(probe)
                assert reply is not None and _status(reply) == expected, (probe, reply)
        finally:
            spoofer.close()
            stranger.close()
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json")
        assert status == 200 and json.loads(body)["messages"] == [], body


async def test_a_register_from_a_provider_address_is_refused_without_a_digest(
        tmp_path: Path) -> None:
    """Providers never register to us: a REGISTER from a provider's address (holding no
    live registration) is refused 403 at once, never challenged nor checked, so a host in
    the provider's network or a blind spoofer of its address gets neither guesses at a
    Client's password nor a challenge. Even the right password gets 403 there. Such a 403
    is no failure: the provider is not banned, and its calls still come in."""
    sources = (("provider", (("127.0.0.2/32", None),)),)
    async with running(tmp_path, InboundConfig(sources=sources),
                       max_auth_failures=3) as (app, api):
        await call_only_gateway(api)
        spoofed = Attacker(app.config.sip.listen.port, "127.0.0.2")
        elsewhere = Attacker(app.config.sip.listen.port, "127.0.0.3")
        try:
            reply = await spoofed.ask(spoofed.request("REGISTER", "alice"))
            assert reply is not None and _status(reply) == 403
            # A nonce fetched elsewhere (they are stateless), the right password and wrong
            # ones: all 403 from the provider's address.
            call_id = secrets.token_hex(8)
            challenge = await elsewhere.ask(elsewhere.request("REGISTER", "alice",
                                                              call_id=call_id))
            assert challenge is not None and _status(challenge) == 401
            for password in (PASSWORD, "guess1", "guess2", "guess3", "guess4"):
                name, value = challenge_answer(challenge, "alice", "REGISTER",
                                               f"sip:{DOMAIN}", password=password)
                reply = await spoofed.ask(spoofed.request(
                    "REGISTER", "alice", call_id=call_id, cseq=2,
                    extra=(f"{name}: {value}",)))
                assert reply is not None and _status(reply) == 403
            assert app.registrar.location.lookup("alice", app.wall_clock()) == []
            reply = await spoofed.ask(spoofed.request("INVITE", "+15551234567",
                                                      from_user="+33612345678"))
            assert reply is not None and _status(reply) == 404  # still the provider's answer
        finally:
            spoofed.close()
            elsewhere.close()


async def test_a_host_at_a_providers_address_but_not_its_port_is_banned_for_guessing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A provider's address is spared the unauthenticated budget, not the ban: a host at
    that address whose port is not the provider's (the sources entry names one; a range
    would do alike) is not taken as the provider, so its INVITE is challenged (407) and its
    failed digests count. After max_auth_failures the address is banned like any other,
    the provider's own port with it. (Its failures were once not counted: unlimited
    guesses, a right one told apart by "403 Caller Not Registered".)"""
    gateway = Attacker(0, "127.0.0.2")  # the provider's own port, listed below
    sources = (("provider", (("127.0.0.2/32", gateway.port),)),)
    try:
        async with running(tmp_path, InboundConfig(sources=sources),
                           max_auth_failures=3) as (app, api):
            gateway.server = app.config.sip.listen.port
            await call_only_gateway(api)
            assert app.guard.is_exempt("127.0.0.2")
            did = gateway.request("INVITE", "+15551234567", from_user="+33612345678")
            assert _status(await gateway.ask(did) or b"") == 404  # the provider's: no DID
            host = Attacker(app.config.sip.listen.port, "127.0.0.2")  # another port
            try:
                assert await crack(host, "INVITE", 4) == [403, 403, 403, None]
                assert app.guard.is_banned("127.0.0.2", app.wall_clock())
                # An error, saying whose calls are lost: the office's phones stop ringing.
                (ban,) = [r for r in caplog.records if "banned" in r.getMessage()]
                assert ban.levelname == "ERROR" and "provider's address" in ban.getMessage()
                assert await host.ask(host.request("OPTIONS", None), wait=0.3) is None
            finally:
                host.close()
            did = gateway.request("INVITE", "+15551234567", from_user="+33612345678")
            assert await gateway.ask(did, wait=0.3) is None  # the whole address is banned
    finally:
        gateway.close()


async def test_a_phone_sharing_a_providers_address_is_banned_for_guessing(
        tmp_path: Path) -> None:
    """A REGISTER from a provider's address that holds a live registration (a phone behind
    the same address) is a phone's REGISTER, challenged and checked, not the provider's 403:
    its failed digests count like anyone's, and after max_auth_failures the address is
    banned. (They were once not counted there: unlimited guesses at any login.)"""
    sources = (("provider", (("127.0.0.2/32", None),)),)
    async with running(tmp_path, InboundConfig(sources=sources),
                       max_auth_failures=3) as (app, api):
        host = Attacker(app.config.sip.listen.port, "127.0.0.2")
        try:
            ok = await authenticated(host, "REGISTER", None)  # alice's phone, first
            assert ok is not None and _status(ok) == 200, ok
            await call_only_gateway(api)
            assert app.guard.is_exempt("127.0.0.2")
            assert app.registrar.is_known_source("127.0.0.2")
            assert await crack(host, "REGISTER", 4, login="zed") == [403, 403, 403, None]
            assert app.guard.is_banned("127.0.0.2", app.wall_clock())
        finally:
            host.close()


def answer_request(request: bytes, status: int, reason: str) -> bytes:
    """A phone's STATUS response to REQUEST: its Vias, From, To (tagged), Call-ID, CSeq."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    keep = [line for line in head if line.split(b":", 1)[0].strip().lower()
            in (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq")]
    to = next(line for line in head if line.split(b":", 1)[0].strip().lower() in (b"to", b"t"))
    return (f"SIP/2.0 {status} {reason}\r\n".encode()
            + b"".join(line + b"\r\n" for line in keep)
            + to + f";tag={secrets.token_hex(4)}\r\nContent-Length: 0\r\n\r\n".encode())


async def with_nonce_from(home: Attacker, sender: Attacker, method: str, login: str,
                          password: str) -> bytes | None:
    """METHOD for LOGIN (REGISTER: binding SENDER's Contact; INVITE: to bob) sent by SENDER
    with a digest for PASSWORD answering a challenge HOME fetched at its own address; the
    final reply SENDER gets (None: none)."""
    target = None if method == "REGISTER" else "bob"
    uri = f"sip:{DOMAIN}" if target is None else f"sip:{target}@{DOMAIN}"
    to = login if target is None else target
    call_id = secrets.token_hex(8)
    first = await home.ask(home.request(method, target, call_id=call_id, from_user=login,
                                        to_user=to))
    assert first is not None and _status(first) in (401, 407), first
    name, value = challenge_answer(first, login, method, uri, password)
    return await sender.ask(sender.request(method, target, call_id=call_id, cseq=2,
                                           from_user=login, to_user=to,
                                           extra=(f"{name}: {value}",)))


async def test_a_blind_spoofer_of_a_phones_address_is_only_ever_challenged_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Over UDP a host on the LAN can send with alice's desk phone's address as source, but
    it does not see the replies sent there, so the nonces it can answer are those it fetches
    at its own address. A nonce is good only from the address it was issued to: from the
    phone's address each of those requests gets a fresh challenge (never 403: no failure is
    counted and the address is never banned; never 200 nor a forwarded INVITE for the right
    password: no oracle). alice's phone goes on refreshing and calling. (The test's spoofer
    is a second socket on the phone's address, so the test can read the replies it could
    not.)"""
    async with running(tmp_path, max_auth_failures=3) as (app, api):
        status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                         {"Login": "bob", "Password": "Pbx-edge-8"})
        assert status == 200, body
        port = app.config.sip.listen.port
        phone = Attacker(port, "127.0.0.11")  # alice's desk phone
        spoofer = Attacker(port, "127.0.0.11")  # the phone's address, another port
        home = Attacker(port, "127.0.0.12")  # the spoofer's own address
        bobs = Attacker(port, "127.0.0.13")
        try:
            assert _status(await authenticated(phone, "REGISTER", None) or b"") == 200
            assert _status(await authenticated(bobs, "REGISTER", None, login="bob",
                                               password="Pbx-edge-8") or b"") == 200
            passwords = {"alice": PASSWORD, "bob": "Pbx-edge-8", "zed": PASSWORD}
            expected: list[int] = []
            got: list[int] = []
            with caplog.at_level(logging.INFO):
                for _ in range(2):
                    for method in ("REGISTER", "INVITE"):
                        for login, right in passwords.items():
                            for password in (right, "guess"):  # right, and wrong
                                reply = await with_nonce_from(home, spoofer, method, login,
                                                              password)
                                assert reply is not None, (method, login, password)
                                assert b"stale=true" not in reply, reply
                                got.append(_status(reply))
                                expected.append(401 if method == "REGISTER" else 407)
            assert len(got) == 24 and got == expected, got
            assert not app.guard.is_banned("127.0.0.11", app.wall_clock())
            failures = [r.getMessage() for r in caplog.records if "127.0.0.11" in
                        r.getMessage() and ("fail" in r.getMessage()
                                            or "bad credentials" in r.getMessage())]
            assert failures == []  # none counted, none even logged
            assert await bobs.recv(wait=0.3) is None  # no INVITE reached bob
            # The spoofer's Contact was never bound; alice's phone still is.
            bound = [b.uri for b in app.location.lookup("alice", app.wall_clock())]
            assert bound == [f"sip:alice@127.0.0.11:{phone.port}"], bound
            # alice's phone goes on: its refresh, its keep-alive, its calls.
            assert _status(await authenticated(phone, "REGISTER", None) or b"") == 200
            assert _status(await phone.ask(phone.request("OPTIONS", None)) or b"") == 200
            call_id = secrets.token_hex(8)
            first = await phone.ask(phone.request("INVITE", "bob", call_id=call_id))
            assert first is not None and _status(first) == 407, first
            name, value = challenge_answer(first, "alice", "INVITE", f"sip:bob@{DOMAIN}")
            await phone.send(phone.request("INVITE", "bob", call_id=call_id, cseq=2,
                                           extra=(f"{name}: {value}",)))
            forwarded = await bobs.recv()
            assert forwarded is not None and forwarded.startswith(b"INVITE sip:bob@"), forwarded
            await bobs.send(answer_request(forwarded, 486, "Busy Here"))
            busy = await phone.final(call_id.encode())
            assert busy is not None and _status(busy) == 486, busy
        finally:
            for sock in (phone, spoofer, home, bobs):
                sock.close()


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
async def test_a_host_sharing_a_phones_address_is_banned_like_any_guesser(
        tmp_path: Path, method: str) -> None:
    """A nonce is bound to an address, not to a host: another host at a phone's address
    (behind the same NAT, or one that sees the replies sent there) fetches its nonces there
    and guesses at the phone's own login like any stranger. Its failures count, and after
    max_auth_failures the address is banned, the phone there with it, until the ban ends."""
    async with running(tmp_path, max_auth_failures=3, ban_seconds=600) as (app, _):
        now = held_clock(app)
        phone = Attacker(app.config.sip.listen.port, "127.0.0.14")
        neighbour = Attacker(app.config.sip.listen.port, "127.0.0.14")
        try:
            assert _status(await authenticated(phone, "REGISTER", None) or b"") == 200
            assert await crack(neighbour, method, 4) == [403, 403, 403, None]
            assert app.guard.is_banned("127.0.0.14", now[0])
            assert await phone.ask(phone.request("REGISTER", None), wait=0.3) is None
            now[0] += 601
            assert _status(await authenticated(phone, "REGISTER", None) or b"") == 200
        finally:
            phone.close()
            neighbour.close()


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
async def test_a_phone_reusing_its_nc_is_challenged_stale_and_never_banned(
        tmp_path: Path, method: str) -> None:
    """Firmware that reuses its cached credentials (the same nonce and nc) in new requests,
    or a LAN sniffer replaying what the phone sent: the right password with a used nc gets
    a fresh challenge with stale=true, is no failure, and binds or forwards nothing, so the
    phone's own address is not banned however often it happens. A wrong password with a
    used nc is a counted 403 like any other."""
    async with running(tmp_path, max_auth_failures=3) as (app, _):
        phone = Attacker(app.config.sip.listen.port, "127.0.0.15")
        try:
            assert _status(await authenticated(phone, "REGISTER", None) or b"") == 200
            target = None if method == "REGISTER" else "bob"
            uri = f"sip:{DOMAIN}" if target is None else f"sip:{target}@{DOMAIN}"
            to = "alice" if target is None else target
            call_id = secrets.token_hex(8)
            first = await phone.ask(phone.request(method, target, call_id=call_id, to_user=to))
            assert first is not None and _status(first) in (401, 407), first
            cached = challenge_answer(first, "alice", method, uri)
            used = await phone.ask(phone.request(method, target, call_id=call_id, cseq=2,
                                                 to_user=to, extra=(": ".join(cached),)))
            assert used is not None and _status(used) in (200, 404, 480), used
            for n in range(5):  # new requests (new branch and Call-ID), the same nc
                reply = await phone.ask(phone.request(method, target, to_user=to,
                                                      cseq=3 + n, extra=(": ".join(cached),)))
                assert reply is not None and _status(reply) == _status(first), reply
                assert b"stale=true" in reply, reply
            assert not app.guard.is_banned("127.0.0.15", app.wall_clock())
            assert _status(await authenticated(phone, "REGISTER", None) or b"") == 200
            wrong = challenge_answer(first, "alice", method, uri, password="guess")
            statuses = []
            for n in range(4):
                reply = await phone.ask(phone.request(method, target, to_user=to,
                                                      cseq=10 + n, extra=(": ".join(wrong),)),
                                        wait=0.3)
                statuses.append(None if reply is None else _status(reply))
            assert statuses == [403, 403, 403, None], statuses
        finally:
            phone.close()


# --- floods: the unauthenticated budget --------------------------------------------------------


@pytest.mark.parametrize("kind", ["OPTIONS", "REGISTER", "INVITE", "malformed"])
async def test_a_flood_from_one_source_is_cut_to_its_budget(tmp_path: Path, kind: str) -> None:
    async with running(tmp_path, unauthenticated_per_minute=5) as (app, _):
        a = Attacker(app.config.sip.listen.port, "127.0.0.7")
        other = Attacker(app.config.sip.listen.port, "127.0.0.8")
        make: dict[str, Callable[[], bytes]] = {
            "OPTIONS": lambda: a.request("OPTIONS", None),
            "REGISTER": lambda: a.request("REGISTER", "alice"),
            "INVITE": lambda: a.request("INVITE", "alice"),
            "malformed": lambda: a.request("OPTIONS", None).replace(b"CSeq: 1 OPTIONS",
                                                                     b"CSeq: x"),
        }
        try:
            statuses = [_status(r) if (r := await a.ask(make[kind](), wait=0.3)) else None
                        for _ in range(8)]
            answered = [s for s in statuses if s is not None and s != 503]
            assert len(answered) <= 5, statuses
            assert statuses[-1] in (503, None), statuses
            # Another source still gets its answer.
            assert _status(await other.ask(other.request("OPTIONS", None)) or b"") == 200
        finally:
            a.close()
            other.close()


async def test_the_providers_address_goes_on_past_its_budget_but_not_with_registers(
        tmp_path: Path) -> None:
    """A provider sends every inbound call's INVITE, BYE and OPTIONS from one address without
    a digest: a busy office's calls must not be cut to the unauthenticated budget (503 past
    it), on any path (proxied, answered here, a broken request's 400). Its REGISTERs (never
    legitimate: 403) spend the budget like anyone's, quick path or not: a blind spoofer of
    its address gets no unlimited replies reflected to it. A stranger past its budget still
    gets 503."""
    sources = (("provider", (("127.0.0.2/32", None),)),)
    async with running(tmp_path, InboundConfig(sources=sources),
                       unauthenticated_per_minute=5) as (app, api):
        await call_only_gateway(api)
        provider = Attacker(app.config.sip.listen.port, "127.0.0.2")
        stranger = Attacker(app.config.sip.listen.port, "127.0.0.3")
        try:
            registers: list[int] = []
            for _ in range(8):  # each past the budget of 5
                for probe, expected in (
                    (provider.request("INVITE", "+15551234567", from_user="+33612345678"), 404),
                    (provider.request("OPTIONS", None), 200),
                    (provider.request("REGISTER", "alice"), None),
                    (provider.request("OPTIONS", None).replace(b"CSeq: 1 OPTIONS",
                                                               b"CSeq: x"), 400),
                ):
                    reply = await provider.ask(probe)
                    assert reply is not None, probe
                    if expected is None:
                        registers.append(_status(reply))
                    else:
                        assert _status(reply) == expected, (probe, reply)
            # The third request spent the third token; by the second round none is left.
            assert registers == [403] + [503] * 7, registers
            statuses = [_status(r) if (r := await stranger.ask(
                stranger.request("OPTIONS", None), wait=0.3)) else None for _ in range(7)]
            assert statuses == [200] * 5 + [503] * 2, statuses
        finally:
            provider.close()
            stranger.close()


# --- broadcast and multicast Vias ---------------------------------------------------------------


@pytest.mark.parametrize("via", ["255.255.255.255", "224.0.1.75", "239.1.2.3", "0.0.0.0"])
@pytest.mark.parametrize("kind", ["OPTIONS", "REGISTER", "INVITE", "malformed", "505"])
async def test_a_broadcast_or_multicast_via_is_never_answered(
        tmp_path: Path, via: str, kind: str) -> None:
    async with running(tmp_path) as (app, _):
        a = Attacker(app.config.sip.listen.port)
        try:
            probe = {
                "OPTIONS": a.request("OPTIONS", None, via_host=via),
                "REGISTER": a.request("REGISTER", "alice", via_host=via),
                "INVITE": a.request("INVITE", "alice", via_host=via),
                "malformed": a.request("OPTIONS", None, via_host=via).replace(
                    b"CSeq: 1 OPTIONS", b"CSeq: x"),
                "505": a.request("OPTIONS", None, via_host=via).replace(
                    b" SIP/2.0\r\n", b" SIP/7.0\r\n", 1),
            }[kind]
            assert await a.ask(probe, wait=0.3) is None
            if kind == "OPTIONS":  # and not when it is too big for us either
                reader, writer = await asyncio.open_connection("127.0.0.1", a.server)
                try:
                    writer.write(a.request("OPTIONS", None, via_host=via,
                                           body=b"x" * 70_000).replace(b"SIP/2.0/UDP",
                                                                       b"SIP/2.0/TCP"))
                    with pytest.raises((TimeoutError, asyncio.IncompleteReadError)):
                        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
                finally:
                    writer.close()
        finally:
            a.close()


async def test_a_request_uri_that_is_no_utf8_is_not_a_server_error(tmp_path: Path) -> None:
    """A byte that is no UTF-8 in an INVITE's Request-URI user (decoded with
    surrogateescape) reached the number lookup and failed there: 500. Now such a
    Request-URI is malformed (400, docs/sip.md "Bytes that are not UTF-8"), refused by the
    parser before any transaction or lookup, from an authenticated phone as from anyone."""
    async with running(tmp_path) as (app, _):
        phone = Attacker(app.config.sip.listen.port, "127.0.0.9")
        try:
            registered = await authenticated(phone, "REGISTER", None)
            assert registered is not None and _status(registered) == 200
            call_id = secrets.token_hex(8)
            first = await phone.ask(phone.request("INVITE", "zzbob", call_id=call_id))
            name, value = challenge_answer(first, "alice", "INVITE", f"sip:zzbob@{DOMAIN}")
            data = phone.request("INVITE", "zzbob", call_id=call_id, cseq=2,
                                 extra=(f"{name}: {value}",))
            reply = await phone.ask(data.replace(b"INVITE sip:zzbob@", b"INVITE sip:\xffzzbob@", 1))
            assert reply is not None and _status(reply) == 400
        finally:
            phone.close()
