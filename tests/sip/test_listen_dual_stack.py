"""``[sip] listen = "[::]:PORT"`` serves IPv4 and IPv6 phones over UDP and TCP alike: a
running appliance on ``::``, desk phones on 127.0.0.1 and ::1 registering with a digest, and
the address each is known by (the Via's received/rport, the Registrations API's source) is
the one the phone has — 127.0.0.1, not its v4-mapped form ``::ffff:127.0.0.1``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.config import Endpoint
from appliance.sip.message import parse_message
from appliance.sip.transport import Transport
from appliance.sip.wire import Target
from tests.conftest import ADMIN_SID, Api, claim_port
from tests.sip.test_attacker import DOMAIN, _status, challenge_answer, running
from tests.sip.test_transport import Echo, options

WAIT = 2.0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def dual_stack_port() -> int:
    """A port free on [::] for TCP and UDP, IPv4 included, and not handed out before."""
    while True:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp, \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            for sock in (tcp, udp):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            tcp.bind(("::", 0))
            port = int(tcp.getsockname()[1])
            udp.bind(("::", port))
        if claim_port(port):
            return port


@pytest.fixture
def needs_ipv6() -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")


class Phone:
    """A desk phone on HOST (127.0.0.1 or ::1) talking TRANSPORT (udp or tcp) to PORT."""

    def __init__(self, transport: str, host: str, port: int) -> None:
        self.transport = transport
        self.host = host
        self.server = (host, port)
        self.sock: socket.socket | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.port = 0

    async def open(self) -> None:
        if self.transport == "tcp":
            self.reader, self.writer = await asyncio.open_connection(*self.server)
            self.port = int(self.writer.get_extra_info("sockname")[1])
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((self.host, 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.sock is not None:
            self.sock.close()

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def register(self, cseq: int, extra: tuple[str, ...] = ()) -> bytes:
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/{self.transport.upper()} {self.hostport}"
                f";branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:alice@{DOMAIN}>;tag=t1\r\nTo: <sip:alice@{DOMAIN}>\r\n"
                f"Call-ID: dual-{self.transport}-{self.host}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:alice@{self.hostport};transport={self.transport}>\r\n"
                "Expires: 3600\r\n"
                + "".join(f"{line}\r\n" for line in extra)
                + "Content-Length: 0\r\n\r\n").encode()

    async def ask(self, data: bytes) -> bytes:
        async with asyncio.timeout(WAIT):
            if self.writer is not None and self.reader is not None:
                self.writer.write(data)
                return await self.reader.readuntil(b"\r\n\r\n")  # Content-Length: 0
            assert self.sock is not None
            loop = asyncio.get_running_loop()
            await loop.sock_sendto(self.sock, data, self.server)
            return await loop.sock_recv(self.sock, 65535)


@contextlib.asynccontextmanager
async def phone(transport: str, host: str, port: int) -> AsyncIterator[Phone]:
    desk = Phone(transport, host, port)
    try:
        await desk.open()
        yield desk
    finally:
        desk.close()


async def sources(api: Api) -> list[tuple[str, str]]:
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Registrations.json")
    assert status == 200, body
    return [(r["transport"], r["source"]) for r in json.loads(body)]


@pytest.mark.usefixtures("needs_ipv6")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_a_phone_registers_over_either_family_and_transport_on_the_ipv6_wildcard(
        tmp_path: Path, transport: str, host: str) -> None:
    port = dual_stack_port()
    async with running(tmp_path, listen=Endpoint("::", port)) as (app, api), \
            phone(transport, host, port) as desk:
        assert app.sip_error is None
        challenge = await desk.ask(desk.register(1))
        assert _status(challenge) == 401, challenge
        # Stamped with the address the phone has, not its v4-mapped form.
        via = re.search(rb"\r\nVia: [^\r]*;rport=(\d+);received=([^;\r]+)", challenge)
        assert via is not None, challenge
        assert (int(via.group(1)), via.group(2).decode().strip("[]")) == (desk.port, host)
        name, value = challenge_answer(challenge, "alice", "REGISTER", f"sip:{DOMAIN}")
        ok = await desk.ask(desk.register(2, (f"{name}: {value}",)))
        assert _status(ok) == 200, ok
        assert await sources(api) == [(transport, desk.hostport)]


@pytest.mark.usefixtures("needs_ipv6")
async def test_the_ipv6_wildcard_takes_ipv4_whatever_the_system_default() -> None:
    # net.ipv6.bindv6only=1 would make a socket on :: IPv6-only unless told otherwise.
    handler = Echo()
    transport = Transport(handler, "::", 0)
    handler.transport = transport
    await transport.start()
    try:
        assert transport._udp is not None and transport._server is not None
        sockets = [transport._udp, *transport._server.sockets]
        assert [s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) for s in sockets] \
            == [0] * len(sockets)
        reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
        try:
            writer.write(options(5060, transport="TCP"))
            async with asyncio.timeout(WAIT):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"SIP/2.0 200 ")
            # The connection's both ends as an IPv4 phone knows them.
            seen = handler.seen[-1]
            assert (seen.source[0], seen.local[0]) == ("127.0.0.1", "127.0.0.1")
        finally:
            writer.close()
    finally:
        await transport.stop()


@pytest.mark.usefixtures("needs_ipv6")
async def test_a_specific_ipv6_address_stays_ipv6_only() -> None:
    handler = Echo()
    transport = Transport(handler, "::1", 0)
    handler.transport = transport
    await transport.start()
    try:
        assert transport._server is not None
        assert [s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                for s in transport._server.sockets] == [1]
    finally:
        await transport.stop()


async def test_the_ipv6_wildcard_never_sends_to_a_mapped_unspecified_or_multicast_address(
        ) -> None:
    # On "::" IPv4 destinations go out v4-mapped: "::ffff:0.0.0.0" (a Contact of "0", say)
    # reached this very socket, and "::ffff:224.0.0.1" a multicast group.
    handler = Echo()
    transport = Transport(handler, "::", 0)
    handler.transport = transport
    await transport.start()
    try:
        request = parse_message(options(transport.port, branch="z9hG4bKmapped"))
        for host in ("::ffff:0.0.0.0", "[::ffff:0.0.0.0]", "[::ffff:224.0.0.1]",
                     "::ffff:255.255.255.255"):
            assert transport.send(request, Target("udp", host, transport.port)) is False, host
        transport.send(request, Target("udp", "0", transport.port))  # resolved: ::ffff:0.0.0.0
        await asyncio.sleep(0.3)
        assert handler.seen == []
    finally:
        await transport.stop()
