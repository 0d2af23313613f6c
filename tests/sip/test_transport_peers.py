"""The transport as a phone, a NAT and an attacker see it: real sockets on 127.0.0.1, each test
asserting what the peer receives (or that it receives nothing). The helpers and the ``echo``
transport (answers every request 200, small limits) come from test_transport.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.sip import transport as transport_module
from appliance.sip.message import Request, make_response, parse_message
from appliance.sip.transport import Limits, Transport
from appliance.sip.wire import Incoming, Target, reply_target
from tests.conftest import free_port
from tests.sip import test_transport
from tests.sip.test_transport import (
    WAIT,
    Echo,
    Slow,
    UdpPeer,
    options,
    read_message,
    status_of,
    tcp,
)

# The fixtures of test_transport.py, shared by name.
echo = test_transport.echo
udp = test_transport.udp


def top_via_of(data: bytes | None) -> str:
    """The raw top Via line of a message (a response echoes the stamped request's)."""
    assert data is not None
    return next(line for line in data.split(b"\r\n")
                if line.lower().startswith(b"via:")).decode()


async def closed_by_server(reader: asyncio.StreamReader, wait: float = WAIT) -> bool:
    """Whether the server closes the connection (EOF or reset) within WAIT, reading and
    discarding whatever comes first."""
    try:
        async with asyncio.timeout(wait):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def until(condition: object, wait: float = WAIT) -> None:
    """Wait until CONDITION() is true (polled), failing after WAIT."""
    assert callable(condition)
    async with asyncio.timeout(wait):
        while not condition():
            await asyncio.sleep(0.01)


# --- one port, two transports ----------------------------------------------------------------


async def test_udp_and_tcp_are_answered_on_the_same_port(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    await udp.send(options(udp.port), transport.port)
    assert status_of(await udp.recv()) == 200
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, transport="TCP", branch="z9hG4bKsame"))
        assert status_of(await read_message(reader)) == 200
    assert [i.transport for i in handler.seen] == ["udp", "tcp"]
    assert {i.local[1] for i in handler.seen} == {transport.port}


# --- TCP framing as the peer sees it -----------------------------------------------------------


async def test_tcp_without_content_length_gets_400_then_the_connection_closes(
        echo: tuple[Transport, Echo]) -> None:
    transport, handler = echo
    bare = options(5060, transport="TCP").replace(b"Content-Length: 0\r\n", b"")
    async with tcp(transport.port) as (reader, writer):
        writer.write(bare)
        reply = await read_message(reader)
        assert status_of(reply) == 400 and b"Call-ID: t-z9hG4bKopt1" in reply
        assert await closed_by_server(reader)
    assert handler.seen == []
    await until(lambda: transport.connection_count == 0)


async def test_tcp_content_length_over_the_limit_gets_513_without_waiting_for_the_body(
        echo: tuple[Transport, Echo]) -> None:
    transport, handler = echo
    huge = options(5060, transport="TCP").replace(b"Content-Length: 0",
                                                  b"Content-Length: 900000000")
    async with tcp(transport.port) as (reader, writer):
        writer.write(huge)  # the head only: the body never comes
        assert status_of(await read_message(reader)) == 513
        assert await closed_by_server(reader)
    assert handler.seen == []


async def test_tcp_head_that_never_ends_is_cut_off_and_closed(
        echo: tuple[Transport, Echo]) -> None:
    """Header lines without the blank line: the server stops buffering at the message limit
    (4000 bytes here) and closes, without waiting for the first-message timeout."""
    transport, handler = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n" + b"X-Pad: aaaaaaaaaa\r\n" * 300)
        assert await closed_by_server(reader, 0.25)  # before first_message_timeout (0.3 s)
    assert handler.seen == []


async def test_tcp_stream_split_across_segments_is_framed(
        echo: tuple[Transport, Echo]) -> None:
    """Two requests (one with a body) and a ping cut at many points into separate segments
    (Nagle off, a pause between writes): both are answered, the ping with CRLF."""
    transport, handler = echo
    body = b"v=0\r\n"
    stream = (options(5060, transport="TCP", branch="z9hG4bKs1") + b"\r\n\r\n"
              + options(5060, transport="TCP", branch="z9hG4bKs2", body=body,
                        extra="Content-Type: application/sdp\r\n"))
    async with tcp(transport.port) as (reader, writer):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(stream), 37):
            writer.write(stream[start : start + 37])
            await writer.drain()
            await asyncio.sleep(0.002)
        first = await read_message(reader)
        async with asyncio.timeout(WAIT):
            assert await reader.readexactly(2) == b"\r\n"
        second = await read_message(reader)
    assert (status_of(first), status_of(second)) == (200, 200)
    assert [i.message.body for i in handler.seen] == [b"", body]


async def test_tcp_several_messages_and_pings_in_one_segment(
        echo: tuple[Transport, Echo]) -> None:
    transport, handler = echo
    one = options(5060, transport="TCP", branch="z9hG4bKm1")
    two = options(5060, transport="TCP", branch="z9hG4bKm2", body=b"hello",
                  extra="Content-Type: text/plain\r\n")
    async with tcp(transport.port) as (reader, writer):
        writer.write(b"\r\n\r\n" + one + b"\r\n\r\n" + two + one.replace(b"m1", b"m3"))
        async with asyncio.timeout(WAIT):
            assert await reader.readexactly(2) == b"\r\n"
        first = await read_message(reader)
        async with asyncio.timeout(WAIT):
            assert await reader.readexactly(2) == b"\r\n"
        rest = [await read_message(reader), await read_message(reader)]
    assert [status_of(m) for m in [first, *rest]] == [200, 200, 200]
    assert [i.message.call_id for i in handler.seen] == ["t-z9hG4bKm1", "t-z9hG4bKm2",
                                                          "t-z9hG4bKm3"]
    assert handler.seen[1].message.body == b"hello"


async def test_tcp_ping_is_answered_with_exactly_one_crlf(
        echo: tuple[Transport, Echo]) -> None:
    transport, _ = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, transport="TCP"))
        assert status_of(await read_message(reader)) == 200
        writer.write(b"\r\n\r\n")
        async with asyncio.timeout(WAIT):
            assert await reader.read(100) == b"\r\n"
        with contextlib.suppress(TimeoutError):  # and nothing after it
            async with asyncio.timeout(0.2):
                assert await reader.read(100) == b""
        writer.write(b"\r\n")  # half a ping (or a pong sent back): no answer yet...
        await asyncio.sleep(0.05)
        writer.write(b"\r\n")  # ...the other half: one answer
        async with asyncio.timeout(WAIT):
            assert await reader.read(100) == b"\r\n"


# --- UDP framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [b"6", b"50", b"999999999999", b"-1"])
async def test_udp_body_shorter_than_content_length_gets_400(
        echo: tuple[Transport, Echo], udp: UdpPeer, length: bytes) -> None:
    """RFC 3261 §18.3: on a datagram, a body shorter than Content-Length (however large it
    claims to be) is a 400, as is a Content-Length that is no number."""
    transport, handler = echo
    short = options(udp.port, body=b"12345", extra="Content-Type: text/plain\r\n")
    await udp.send(short.replace(b"Content-Length: 5", b"Content-Length: " + length),
                   transport.port)
    assert status_of(await udp.recv()) == 400
    assert handler.seen == []


async def test_udp_bytes_beyond_content_length_are_ignored(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    message = options(udp.port, body=b"12345", extra="Content-Type: text/plain\r\n")
    await udp.send(message + b"trailing junk\r\n", transport.port)
    assert status_of(await udp.recv()) == 200
    assert handler.seen[0].message.body == b"12345"


async def test_udp_lone_crlf_is_tolerated(echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    for ping in (b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n\r\n"):
        await udp.send(ping, transport.port)
    assert await udp.recv(0.2) is None
    await udp.send(options(udp.port), transport.port)
    assert status_of(await udp.recv()) == 200
    assert len(handler.seen) == 1


# --- Via: received, rport, who gets answered ---------------------------------------------------


async def test_rport_asked_for_is_filled_and_received_added(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    """RFC 3581 §4: rport in the request is filled with the source port in the response, and
    received is added even though sent-by is the source address."""
    transport, _ = echo
    request = options(udp.port).replace(b";branch=z9hG4bKopt1", b";rport;branch=z9hG4bKopt1")
    await udp.send(request, transport.port)
    via = top_via_of(await udp.recv())
    assert f";rport={udp.port}" in via and ";received=127.0.0.1" in via


async def test_rport_is_forced_when_not_asked_for(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    """Deliberately beyond RFC 3581 (sip.md "Via, received, rport"): phones behind NAT need
    rport without asking, so it is always filled, and with it received."""
    transport, _ = echo
    await udp.send(options(udp.port), transport.port)
    via = top_via_of(await udp.recv())
    assert f";rport={udp.port}" in via and ";received=127.0.0.1" in via


async def test_received_is_added_when_sent_by_is_a_name(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, _ = echo
    await udp.send(options(udp.port, via_host="phone.example.com"), transport.port)
    via = top_via_of(await udp.recv())
    assert via.startswith(f"Via: SIP/2.0/UDP phone.example.com:{udp.port};")
    assert ";received=127.0.0.1" in via


async def test_ipv6_literal_in_via_on_an_ipv4_socket_is_answered_to_the_source(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    for host in ("[2001:db8::10]", "[::1]"):
        await udp.send(options(5060, via_host=host, branch=f"z9hG4bK6{len(host)}"),
                       transport.port)
        reply = await udp.recv()
        assert status_of(reply) == 200
        via = top_via_of(reply)
        assert f"{host}:5060" in via and ";received=127.0.0.1" in via
        assert f";rport={udp.port}" in via
    assert len(handler.seen) == 2


async def test_sending_to_an_ipv6_address_from_the_ipv4_socket_is_refused_quietly(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    """A binding or Via with an IPv6 literal, on an appliance listening on IPv4: the
    datagram cannot go, which is logged, never raised; the socket keeps serving."""
    transport, _ = echo
    request = parse_message(options(transport.port, branch="z9hG4bKv6out"))
    for host in ("::1", "[2001:db8::10]"):
        transport.send(request, Target("udp", host, 5060))
    await udp.send(options(udp.port), transport.port)
    assert status_of(await udp.recv()) == 200


@pytest.mark.parametrize("host", ["255.255.255.255", "224.0.1.75", "[ff02::1]", "0.0.0.0"])
async def test_a_broken_request_with_a_broadcast_or_multicast_via_is_not_answered(
        echo: tuple[Transport, Echo], udp: UdpPeer, host: str) -> None:
    """sip.md §3: a Via towards a broadcast or multicast address is never answered — an
    error reply (400 for a bad CSeq, 513 for an oversized message) included."""
    transport, handler = echo
    broken = options(5060, via_host=host).replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    await udp.send(broken, transport.port)
    await udp.send(options(5060, via_host=host, body=b"x" * 5000,
                           extra="Content-Type: text/plain\r\n"), transport.port)
    assert await udp.recv(0.3) is None
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, via_host=host, transport="TCP").replace(
            b"Content-Length: 0", b"Content-Length: zero"))
        assert await closed_by_server(reader)  # and no 400 before the close
        assert reader.at_eof()
    assert handler.seen == []


async def test_a_multicast_via_over_tcp_is_not_answered(echo: tuple[Transport, Echo]) -> None:
    transport, handler = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, via_host="239.1.2.3", transport="TCP"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                assert await reader.read(100) == b""
    assert handler.seen == []


async def test_a_response_over_tcp_for_a_via_not_ours_is_dropped(
        echo: tuple[Transport, Echo]) -> None:
    transport, handler = echo
    response = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP {{host}}:{transport.port};branch=z9hG4bKt"
                "\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    async with tcp(transport.port) as (_, writer):
        writer.write(response.format(host="192.0.2.7").encode())
        writer.write(response.format(host="127.0.0.1").encode())
        await until(lambda: len(handler.seen) == 1)
        await asyncio.sleep(0.1)
    assert len(handler.seen) == 1 and handler.seen[0].message.top_via is not None
    assert handler.seen[0].message.top_via.host == "127.0.0.1"


# --- oversized datagrams -----------------------------------------------------------------------


async def test_oversized_udp_without_a_readable_head_is_dropped(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    endless = b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n" + b"X-Pad: a\r\n" * 2000  # no blank line
    await udp.send(endless, transport.port)
    await udp.send(b"\x00\xff" * 3000, transport.port)
    assert await udp.recv(0.3) is None
    assert handler.seen == []


async def test_oversized_udp_response_is_dropped(echo: tuple[Transport, Echo],
                                                  udp: UdpPeer) -> None:
    transport, handler = echo
    response = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{transport.port};branch=z9hG4bKo"
                "\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: o\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 6000\r\n\r\n").encode() + b"x" * 6000
    await udp.send(response, transport.port)
    assert await udp.recv(0.3) is None
    assert handler.seen == []


# --- limits a peer controls --------------------------------------------------------------------


async def test_total_tcp_connections_are_capped() -> None:
    """At the cap with every connection trusted, a newcomer is refused (an untrusted one
    would be closed to make room: tests/sip/test_tcp_idle.py)."""
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0, limits=Limits(max_connections=2))
    handler.transport = transport
    await transport.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            for n in range(2):
                reader, writer = await stack.enter_async_context(tcp(transport.port))
                writer.write(options(5060, transport="TCP", branch=f"z9hG4bK{n}"))
                assert status_of(await read_message(reader)) == 200
                transport.trust(handler.seen[-1].connection_id or "")
            assert transport.connection_count == 2
            reader, writer = await stack.enter_async_context(tcp(transport.port))
            writer.write(options(5060, transport="TCP"))
            assert await closed_by_server(reader)  # refused at once, unanswered
            assert transport.connection_count == 2
        await until(lambda: transport.connection_count == 0)
        async with tcp(transport.port) as (reader, writer):  # room again
            writer.write(options(5060, transport="TCP"))
            assert status_of(await read_message(reader)) == 200
    finally:
        await transport.stop()


async def test_a_connect_loop_at_the_limit_is_logged_once(
        echo: tuple[Transport, Echo], caplog: pytest.LogCaptureFixture) -> None:
    """Connections refused at the per-source cap (3 here) are each a warning a peer can
    cause at will: logged once a minute with a count, not a line per attempt."""
    transport, _ = echo
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            await stack.enter_async_context(tcp(transport.port))
        await until(lambda: transport.connection_count == 3)
        with caplog.at_level("WARNING", logger="appliance.sip.transport"):
            for _ in range(10):
                reader, _writer = await stack.enter_async_context(tcp(transport.port))
                assert await closed_by_server(reader)
        assert caplog.text.count(" refused: ") == 1
        assert "(1 refused so far)" in caplog.text


async def test_slowloris_dripping_a_head_is_closed_by_the_first_message_timeout(
        echo: tuple[Transport, Echo]) -> None:
    """A byte every 50 ms keeps the connection busy but never completes a message: it is
    closed once first_message_timeout (0.3 s) has passed since it opened, not since its
    last byte."""
    transport, handler = echo
    head = options(5060, transport="TCP")
    async with tcp(transport.port) as (reader, writer):
        opened = asyncio.get_running_loop().time()
        closed = False
        for byte in head[:40]:
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            if await closed_by_server(reader, 0.05):
                closed = True
                break
        assert closed
        assert asyncio.get_running_loop().time() - opened < 1.0
    assert handler.seen == []


async def test_slowloris_after_a_first_message_is_closed_too(
        echo: tuple[Transport, Echo]) -> None:
    """A connection that sent one good request and then drips the next is timed from that
    next message's first byte: the long idle timeout does not cover a message in progress."""
    transport, handler = echo
    head = options(5060, transport="TCP", branch="z9hG4bKdrip")
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, transport="TCP"))
        assert status_of(await read_message(reader)) == 200
        started = asyncio.get_running_loop().time()
        closed = False
        for byte in head[:40]:
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            if await closed_by_server(reader, 0.05):
                closed = True
                break
        assert closed
        assert asyncio.get_running_loop().time() - started < 1.0
    assert len(handler.seen) == 1


async def test_a_phone_pinging_between_messages_is_not_a_slowloris(
        echo: tuple[Transport, Echo]) -> None:
    """Keep-alives and complete messages spread over longer than first_message_timeout keep a
    connection open: only a message left incomplete for that long closes it."""
    transport, _ = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, transport="TCP"))
        assert status_of(await read_message(reader)) == 200
        for _ in range(5):  # 0.6 s in all
            await asyncio.sleep(0.12)
            writer.write(b"\r\n\r\n")
            async with asyncio.timeout(WAIT):
                assert await reader.readexactly(2) == b"\r\n"
        writer.write(options(5060, transport="TCP", branch="z9hG4bKlater"))
        assert status_of(await read_message(reader)) == 200


async def test_a_connection_idle_after_a_message_is_closed_by_the_idle_timeout() -> None:
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0, limits=Limits(
        idle_timeout=0.3, first_message_timeout=5.0, sweep_interval=0.05))
    handler.transport = transport
    await transport.start()
    try:
        async with tcp(transport.port) as (reader, writer):
            writer.write(options(5060, transport="TCP"))
            assert status_of(await read_message(reader)) == 200
            opened = asyncio.get_running_loop().time()
            assert await closed_by_server(reader)
            assert asyncio.get_running_loop().time() - opened >= 0.25  # not at once
        await until(lambda: handler.closed != [])
    finally:
        await transport.stop()


async def test_a_message_in_progress_is_not_cut_by_the_idle_timeout() -> None:
    """Idleness is counted between messages only: a message that starts near the end of the
    idle time has first_message_timeout to complete, even past the idle timeout."""
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0, limits=Limits(
        idle_timeout=0.3, first_message_timeout=1.0, sweep_interval=0.05))
    handler.transport = transport
    await transport.start()
    try:
        async with tcp(transport.port) as (reader, writer):
            writer.write(options(5060, transport="TCP"))
            assert status_of(await read_message(reader)) == 200
            await asyncio.sleep(0.2)
            second = options(5060, transport="TCP", branch="z9hG4bKslow")
            writer.write(second[:30])
            await asyncio.sleep(0.4)  # 0.6 s since the last whole message
            writer.write(second[30:])
            assert status_of(await read_message(reader)) == 200
    finally:
        await transport.stop()


async def test_a_peer_that_does_not_read_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Responses pile up for a peer that never reads: past MAX_WRITE_BUFFER queued in the
    process the connection is aborted instead of buffering without bound."""
    monkeypatch.setattr(transport_module, "MAX_WRITE_BUFFER", 64 * 1024)
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0)
    handler.transport = transport
    await transport.start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", transport.port))
        try:
            writer_request = options(5060, transport="TCP")
            await asyncio.get_running_loop().sock_sendall(sock, writer_request)
            await until(lambda: len(handler.seen) == 1)
            conn_id = handler.seen[0].connection_id
            big = parse_message(options(5060, transport="TCP", body=b"x" * 60000,
                                        extra="Content-Type: text/plain\r\n"))
            for _ in range(400):  # 24 MB: more than any kernel buffer on loopback
                if transport.connection_count == 0:
                    break
                transport.send(big, Target("tcp", "127.0.0.1", 1, conn_id))
                await asyncio.sleep(0)
            await until(lambda: handler.closed == [conn_id])
        finally:
            sock.close()
    finally:
        await transport.stop()


async def test_a_connection_reset_mid_message_is_forgotten(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", transport.port))
    await loop.sock_sendall(sock, options(5060, transport="TCP")[:60])
    await until(lambda: transport.connection_count == 1)
    # SO_LINGER 0: close() sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    await until(lambda: transport.connection_count == 0)
    assert len(handler.closed) == 1 and handler.seen == []
    await udp.send(options(udp.port), transport.port)  # and the server still serves
    assert status_of(await udp.recv()) == 200


# --- sending to a phone over TCP -------------------------------------------------------------


class Listener:
    """A TCP server on 127.0.0.1 standing for a phone's listening port: what it receives,
    on how many connections."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Listener:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            while True:
                await self.received.put(await read_message(reader))

    async def get(self) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.received.get()


async def test_a_request_for_a_closed_connection_opens_one_to_the_target_address(
        echo: tuple[Transport, Echo]) -> None:
    """The connection a Target names is gone: the request goes on a new connection to the
    Target's address (what the proxy relies on; the registrar has dropped the bindings on
    that connection, so new calls to the phone get 480 instead)."""
    transport, handler = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, transport="TCP"))
        assert status_of(await read_message(reader)) == 200
    await until(lambda: handler.closed != [])
    gone = handler.closed[0]
    assert transport.connection(gone) is None
    async with Listener() as phone:
        request = parse_message(options(transport.port, transport="TCP", branch="z9hG4bKnew"))
        transport.send(request, Target("tcp", "127.0.0.1", phone.port, gone))
        assert (await phone.get()).startswith(b"OPTIONS ")
        assert phone.accepted == 1


async def test_a_connect_that_fails_is_reported_to_each_sender_waiting_for_it(
        echo: tuple[Transport, Echo]) -> None:
    """send() returns True while its connect is under way; when the connect is refused,
    every message queued behind it is reported through its own on_error (RFC 3261 §18.4:
    the transaction hears of the transport error), once, and a sent one is not."""
    transport, _ = echo
    reported: list[str] = []
    nobody = free_port()  # nothing listens there (a phone's old source port)
    for branch in ("z9hG4bKa", "z9hG4bKb"):
        request = parse_message(options(transport.port, transport="TCP", branch=branch))
        assert transport.send(request, Target("tcp", "127.0.0.1", nobody, "tcp-gone"),
                              on_error=functools.partial(reported.append, branch)) is True
    transport.send(parse_message(options(transport.port, transport="TCP")),
                   Target("tcp", "127.0.0.1", nobody))  # no on_error: only logged
    async with Listener() as phone:
        request = parse_message(options(transport.port, transport="TCP", branch="z9hG4bKc"))
        transport.send(request, Target("tcp", "127.0.0.1", phone.port),
                       on_error=functools.partial(reported.append, "z9hG4bKc"))
        await phone.get()
    await until(lambda: len(reported) == 2)
    await until(lambda: not transport._tasks)
    assert sorted(reported) == ["z9hG4bKa", "z9hG4bKb"]


async def test_connections_we_open_are_not_trusted_and_make_room_for_a_phone() -> None:
    """Where many of our connects go is the peer's choice (the top Route of an in-dialog
    ACK or INFO a caller wrote): a connection we open to send a request idles the short
    timeout and is closed to make room like any untrusted one. Were it trusted, a caller's
    Routes could fill the table with connections to hosts of its own (silent listeners),
    never closed, and every phone would be refused."""
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0, limits=Limits(
        max_connections=2, untrusted_idle_timeout=30.0, evictable_after=0.3,
        sweep_interval=0.05))
    handler.transport = transport
    await transport.start()
    try:
        async with Listener() as one, Listener() as two:
            for branch, host in (("z9hG4bKr1", one), ("z9hG4bKr2", two)):
                request = parse_message(options(transport.port, transport="TCP",
                                                 branch=branch))
                assert transport.send(request, Target("tcp", "127.0.0.1", host.port))
                await host.get()
            assert transport.connection_count == 2
            assert not any(c.trusted for c in transport._connections.values())
            # Just opened (and written to): not closed for a newcomer yet, which is refused.
            async with tcp(transport.port) as (reader, writer):
                writer.write(options(5060, transport="TCP", branch="z9hG4bKearly"))
                assert await closed_by_server(reader)
            assert transport.connection_count == 2
            await asyncio.sleep(0.4)  # idle long enough to be closed for a newcomer
            async with tcp(transport.port) as (reader, writer):
                writer.write(options(5060, transport="TCP", branch="z9hG4bKphone"))
                assert status_of(await read_message(reader)) == 200
            assert one.accepted == two.accepted == 1
    finally:
        await transport.stop()


@pytest.mark.parametrize("kind", ["tcp", "udp"])
@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".example"])
async def test_a_name_the_idna_codec_rejects_is_reported(
        echo: tuple[Transport, Echo], kind: str, name: str) -> None:
    """The URI grammar takes "a..b" and labels over 63 characters; getaddrinfo raises
    UnicodeError (a ValueError, not an OSError) for them. Reported like a name that does
    not resolve, and no task ends with an exception nobody retrieves."""
    transport, _ = echo
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    reported: list[str] = []
    try:
        request = parse_message(options(transport.port, transport=kind.upper()))
        assert transport.send(request, Target(kind, name, 5060),
                              on_error=functools.partial(reported.append, kind)) is True
        await until(lambda: reported == [kind])
        await until(lambda: not transport._tasks)
    finally:
        loop.set_exception_handler(previous)
    assert unretrieved == [] and transport._connecting == {}


async def test_a_connect_that_times_out_or_is_refused_at_our_limits_is_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A phone behind a NAT that drops the SYN: reported after connect_timeout. A connect
    that succeeds but finds every connection slot taken is aborted unsent: reported too."""
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0,
                          limits=Limits(connect_timeout=0.2, max_connections=1))
    handler.transport = transport
    await transport.start()
    loop = asyncio.get_running_loop()
    real = loop.create_connection
    reported: list[str] = []

    async def hanging(factory: Any, host: str, port: int, **kw: Any) -> Any:
        if port == 20000:
            await asyncio.Event().wait()
        return await real(factory, host, port, **kw)

    monkeypatch.setattr(loop, "create_connection", hanging)
    try:
        request = parse_message(options(transport.port, transport="TCP"))
        started = loop.time()
        transport.send(request, Target("tcp", "127.0.0.1", 20000),
                       on_error=functools.partial(reported.append, "timeout"))
        await until(lambda: reported == ["timeout"])
        assert 0.15 < loop.time() - started < 1.0
        async with Listener() as phone, tcp(transport.port) as (reader, writer):
            writer.write(options(5060, transport="TCP"))  # the one connection slot
            assert status_of(await read_message(reader)) == 200
            transport.trust(handler.seen[-1].connection_id or "")  # not to be closed for room
            transport.send(request, Target("tcp", "127.0.0.1", phone.port),
                           on_error=functools.partial(reported.append, "full"))
            await until(lambda: reported == ["timeout", "full"])
    finally:
        await transport.stop()


class Late(Echo):
    """Answers each request only once told to: the peer can go away in between."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Incoming] = []

    async def handle(self, incoming: Incoming) -> None:
        self.seen.append(incoming)
        self.pending.append(incoming)

    def answer_all(self) -> None:
        assert self.transport is not None
        for incoming in self.pending:
            message = incoming.message
            assert isinstance(message, Request)
            self.transport.send(make_response(message, 200, to_tag="t"), reply_target(incoming))
        self.pending.clear()


@pytest.fixture
async def late() -> AsyncIterator[tuple[Transport, Late]]:
    handler = Late()
    transport = Transport(handler, "127.0.0.1", 0, limits=Limits(connect_timeout=1.0))
    handler.transport = transport
    await transport.start()
    try:
        yield transport, handler
    finally:
        await transport.stop()


async def test_a_response_goes_back_on_the_connection_the_request_came_on(
        late: tuple[Transport, Late]) -> None:
    transport, handler = late
    async with Listener() as phone, tcp(transport.port) as (reader, writer):
        writer.write(options(phone.port, transport="TCP"))
        await until(lambda: len(handler.pending) == 1)
        handler.answer_all()
        assert status_of(await read_message(reader)) == 200
        assert phone.accepted == 0


async def test_a_response_whose_connection_closed_goes_to_received_and_the_sent_by_port(
        late: tuple[Transport, Late]) -> None:
    """RFC 3261 §18.2.2: the request's connection closed before the answer: a new connection
    to the Via's received address and sent-by port (where the phone listens), not to the
    closed connection's source port (rport: RFC 3581 applies it to UDP only)."""
    transport, handler = late
    async with Listener() as phone:
        async with tcp(transport.port) as (_, writer):
            writer.write(options(phone.port, via_host="phone.example.com", transport="TCP"))
            await until(lambda: len(handler.pending) == 1)
        await until(lambda: transport.connection_count == 0)
        handler.answer_all()
        reply = await phone.get()
        assert status_of(reply) == 200 and b"Call-ID: t-z9hG4bKopt1" in reply
        assert phone.accepted == 1


async def test_a_closed_connection_is_answered_on_another_connection_to_the_via(
        late: tuple[Transport, Late]) -> None:
    """When a connection to the Via's address is already open (the phone reconnected from
    its listening port), the response goes down it."""
    transport, handler = late
    async with Listener() as phone:
        async with tcp(transport.port) as (_, writer):
            writer.write(options(phone.port, transport="TCP"))
            await until(lambda: len(handler.pending) == 1)
        await until(lambda: transport.connection_count == 0)
        request = parse_message(options(transport.port, transport="TCP", branch="z9hG4bKup"))
        transport.send(request, Target("tcp", "127.0.0.1", phone.port))  # opens one
        assert (await phone.get()).startswith(b"OPTIONS ")
        handler.answer_all()
        assert status_of(await phone.get()) == 200
        assert phone.accepted == 1


async def test_a_response_over_udp_goes_to_the_source_not_the_via(
        late: tuple[Transport, Late], udp: UdpPeer) -> None:
    transport, handler = late
    await udp.send(options(9, via_host="192.0.2.1"), transport.port)
    await until(lambda: len(handler.pending) == 1)
    handler.answer_all()
    assert status_of(await udp.recv()) == 200


async def test_an_answer_after_the_peer_left_with_nobody_at_its_via_is_dropped(
        udp: UdpPeer) -> None:
    """The handler answers after the peer's connection has gone and nothing listens at the
    Via's address: the connect fails, which is logged, never raised, and the transport
    serves on."""
    handler = Slow()
    transport = Transport(handler, "127.0.0.1", 0, limits=Limits(connect_timeout=0.5))
    handler.transport = transport
    await transport.start()
    try:
        async with tcp(transport.port) as (_, writer):
            writer.write(options(9, transport="TCP"))
            await until(lambda: bool(transport._tasks))
        handler.release.set()
        await until(lambda: not transport._tasks)
        await udp.send(options(udp.port), transport.port)
        assert status_of(await udp.recv()) == 200
    finally:
        await transport.stop()


async def test_connects_to_one_host_are_capped_like_its_connections(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A peer whose connection closed chooses, through its Vias' sent-by ports, where our
    responses' connects go. Connects to one host under way (each up to connect_timeout
    against a host that drops SYNs) count with its connections against max_per_source;
    beyond it messages are dropped and logged. Loopback answers every connect at once, so
    the loop's create_connection is replaced by one that hangs until released."""
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0, limits=Limits(max_per_source=3))
    handler.transport = transport
    await transport.start()
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    tried: list[int] = []

    async def hanging(factory: Any, host: str, port: int, **_: Any) -> Any:
        tried.append(port)
        await release.wait()
        raise ConnectionRefusedError(111, "refused")

    try:
        monkeypatch.setattr(loop, "create_connection", hanging)
        with caplog.at_level("WARNING", logger="appliance.sip.transport"):
            for port in range(20000, 20010):
                response = parse_message(
                    f"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:{port};branch=z9hG4bKc"
                    f"{port}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: c\r\n"
                    "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode())
                transport.send(response, Target("tcp", "127.0.0.1", 1, "tcp-gone"))
            await asyncio.sleep(0.05)
        assert tried == [20000, 20001, 20002]
        assert caplog.text.count("3 connections there already; dropped") == 1  # not 7
        release.set()
        await until(lambda: not transport._tasks)
        monkeypatch.undo()  # the real create_connection: room again
        async with Listener() as phone:
            request = parse_message(options(transport.port, transport="TCP"))
            transport.send(request, Target("tcp", "127.0.0.1", phone.port))
            assert (await phone.get()).startswith(b"OPTIONS ")
    finally:
        await transport.stop()


async def test_stop_leaves_no_connect_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect under way when the transport stops is cancelled and forgotten: after a
    restart, a message to that address starts a new connect instead of queueing behind
    the dead one."""
    transport = Transport(Echo(), "127.0.0.1", 0)
    await transport.start()
    loop = asyncio.get_running_loop()
    tried: list[int] = []

    async def hanging(factory: Any, host: str, port: int, **_: Any) -> Any:
        tried.append(port)
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "create_connection", hanging)
    request = parse_message(options(transport.port, transport="TCP"))
    transport.send(request, Target("tcp", "127.0.0.1", 20000))
    await asyncio.sleep(0.01)
    await transport.stop()
    await transport.start()
    try:
        transport.send(request, Target("tcp", "127.0.0.1", 20000))
        await asyncio.sleep(0.01)
        assert tried == [20000, 20000]
    finally:
        await transport.stop()


async def test_messages_after_the_connection_was_given_up_are_not_handled(
        echo: tuple[Transport, Echo], monkeypatch: pytest.MonkeyPatch) -> None:
    """Five requests in one segment from a peer whose first answer finds its write buffer
    over the limit (here: any answer at all): the connection is aborted, and the other four
    are neither handled nor answered on new connections."""
    transport, handler = echo
    monkeypatch.setattr(transport_module, "MAX_WRITE_BUFFER", -1)
    async with Listener() as phone:
        burst = b"".join(options(phone.port, transport="TCP", branch=f"z9hG4bKgu{i}")
                         for i in range(5))
        async with tcp(transport.port) as (reader, writer):
            writer.write(burst)
            assert await closed_by_server(reader)
        await asyncio.sleep(0.1)
        assert len(handler.seen) == 1
        assert phone.accepted == 0
