"""The UDP+TCP transport over real loopback sockets, with a fake handler (and, for a full send
buffer and an ICMP error, which loopback does not produce, a stand-in for its UDP socket); and
the broken-message corpus sent over UDP to a running appliance's front door."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.app import Appliance
from appliance.sip import transport as transport_module
from appliance.sip.errors import SipParseError
from appliance.sip.message import Request, Response, error_response, make_response, parse_message
from appliance.sip.transport import UDP_READ_BATCH, Limits, Transport
from appliance.sip.wire import Incoming, Target, reply_target

DATA = Path(__file__).parents[1] / "data" / "sip"
WAIT = 2.0


class Echo:
    """Answers every request 200 through the transport; records what it saw."""

    def __init__(self) -> None:
        self.transport: Transport | None = None
        self.seen: list[Incoming] = []
        self.closed: list[str] = []

    async def handle(self, incoming: Incoming) -> None:
        self.seen.append(incoming)
        message = incoming.message
        if isinstance(message, Request) and message.method != "ACK":
            assert self.transport is not None
            self.transport.send(make_response(message, 200, to_tag="t"), reply_target(incoming))

    def connection_closed(self, connection_id: str) -> None:
        self.closed.append(connection_id)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Transport, Echo]]:
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0, limits=Limits(
        max_message=4000, max_per_source=3, first_message_timeout=0.3, sweep_interval=0.05))
    handler.transport = transport
    await transport.start()
    try:
        yield transport, handler
    finally:
        await transport.stop()


def options(port: int, *, via_host: str = "127.0.0.1", branch: str = "z9hG4bKopt1",
            transport: str = "UDP", body: bytes = b"", extra: str = "") -> bytes:
    head = (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {via_host}:{port};branch={branch}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
            f"Call-ID: t-{branch}\r\nCSeq: 1 OPTIONS\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class UdpPeer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    async def send(self, data: bytes, port: int) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, ("127.0.0.1", port))

    async def recv(self, wait: float = WAIT) -> bytes | None:
        try:
            async with asyncio.timeout(wait):
                return await asyncio.get_running_loop().sock_recv(self.sock, 65535)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def udp() -> AsyncIterator[UdpPeer]:
    peer = UdpPeer()
    yield peer
    peer.close()


def status_of(data: bytes | None) -> int | None:
    """The status of a response (read from the status line: an error response echoes the
    peer's broken headers, so it need not parse)."""
    if data is None:
        return None
    version, code, _ = data.split(b"\r\n", 1)[0].split(b" ", 2)
    assert version == b"SIP/2.0"
    return int(code)


async def read_message(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


# --- UDP ---------------------------------------------------------------------------------------


async def test_udp_request_is_stamped_and_answered_to_its_source(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    # sent-by says a port nobody listens on: the answer must still reach the real source.
    await udp.send(options(9, via_host="192.0.2.1"), transport.port)
    reply = await udp.recv()
    assert status_of(reply) == 200
    incoming = handler.seen[0]
    assert incoming.transport == "udp" and incoming.source == ("127.0.0.1", udp.port)
    assert incoming.local == ("127.0.0.1", transport.port) and incoming.connection_id is None
    via = incoming.message.top_via
    assert via is not None and via.received == "127.0.0.1" and via.rport == udp.port


async def test_udp_crlf_ping_is_tolerated(echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    await udp.send(b"\r\n\r\n", transport.port)
    assert await udp.recv(0.2) is None
    await udp.send(options(udp.port), transport.port)
    assert status_of(await udp.recv()) == 200


async def test_broken_message_gets_400_and_the_server_still_answers(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    broken = options(udp.port).replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    await udp.send(broken, transport.port)
    assert status_of(await udp.recv()) == 400
    assert handler.seen == []
    await udp.send(b"\x00\xffgarbage\r\n\r\n", transport.port)  # no way back: dropped
    assert await udp.recv(0.2) is None
    await udp.send(options(udp.port, branch="z9hG4bKafter"), transport.port)
    assert status_of(await udp.recv()) == 200


@pytest.mark.parametrize(("name", "status"), [("bad-505-version.msg", 505),
                                              ("bad-416-scheme.msg", 416)])
async def test_version_and_scheme_errors(echo: tuple[Transport, Echo], udp: UdpPeer,
                                         name: str, status: int) -> None:
    transport, _ = echo
    await udp.send((DATA / name).read_bytes(), transport.port)
    reply = await udp.recv()
    assert status_of(reply) == status
    assert b"SIP/3.0" not in (reply or b"")[:20]


async def test_oversized_udp_request_gets_513(echo: tuple[Transport, Echo],
                                              udp: UdpPeer) -> None:
    transport, handler = echo
    await udp.send(options(udp.port, body=b"x" * 5000, extra="Content-Type: text/plain\r\n"),
                   transport.port)
    assert status_of(await udp.recv()) == 513
    assert handler.seen == []


async def test_response_for_a_via_not_ours_is_dropped(echo: tuple[Transport, Echo],
                                                      udp: UdpPeer) -> None:
    transport, handler = echo
    response = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {{host}}:{transport.port};branch=z9hG4bKr\r\n"
                "From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    await udp.send(response.format(host="192.0.2.99").encode(), transport.port)
    await udp.send(response.replace(str(transport.port), "5999")
                   .format(host="127.0.0.1").encode(), transport.port)
    await asyncio.sleep(0.2)
    assert handler.seen == []
    await udp.send(response.format(host="127.0.0.1").encode(), transport.port)
    await asyncio.sleep(0.2)
    assert len(handler.seen) == 1 and isinstance(handler.seen[0].message, Response)


async def test_broadcast_and_multicast_vias_are_never_answered(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    for host in ("255.255.255.255", "224.0.1.75"):
        await udp.send(options(5060, via_host=host), transport.port)
    assert await udp.recv(0.3) is None
    assert handler.seen == []


async def test_blocked_sources_are_ignored(udp: UdpPeer) -> None:
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0, is_blocked=lambda ip, _port: ip == "127.0.0.1")
    handler.transport = transport
    await transport.start()
    try:
        await udp.send(options(udp.port), transport.port)
        assert await udp.recv(0.3) is None
    finally:
        await transport.stop()


async def test_udp_register_taken_by_the_quick_hook_skips_the_handler(udp: UdpPeer) -> None:
    """A REGISTER the quick hook answers is sent its bytes and never reaches the handler;
    one it declines (None), and any other method, is parsed and handled as usual."""
    handler = Echo()
    asked: list[tuple[bytes, tuple[str, int]]] = []

    def quick(data: bytes, source: tuple[str, int]) -> bytes | None:
        asked.append((data, source))
        return b"SIP/2.0 299 Quick\r\n\r\n" if b"quick-me" in data else None

    transport = Transport(handler, "127.0.0.1", 0, quick=quick)
    handler.transport = transport
    await transport.start()
    try:
        register = options(udp.port).replace(b"OPTIONS", b"REGISTER")
        await udp.send(register.replace(b"Call-ID: t-", b"Call-ID: quick-me-"), transport.port)
        assert await udp.recv() == b"SIP/2.0 299 Quick\r\n\r\n"
        assert handler.seen == [] and asked[0][1] == ("127.0.0.1", udp.port)
        await udp.send(register, transport.port)
        assert status_of(await udp.recv()) == 200
        await udp.send(options(udp.port), transport.port)
        assert status_of(await udp.recv()) == 200
        assert [m.message.start_line().split()[0] for m in handler.seen] == ["REGISTER",
                                                                          "OPTIONS"]
        assert len(asked) == 2  # OPTIONS is never offered to the hook
    finally:
        await transport.stop()


async def test_udp_send_to_a_target(echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, _ = echo
    request = parse_message(options(transport.port))
    assert transport.send(request, Target("udp", "127.0.0.1", udp.port)) is True
    data = await udp.recv()
    assert data is not None and data.startswith(b"OPTIONS sip:127.0.0.1 SIP/2.0")
    # Refused, no raise: False, so that its transaction reports a transport error.
    assert transport.send(request, Target("udp", "255.255.255.255", udp.port)) is False
    assert transport.send(request, Target("udp", "127.0.0.1", 0)) is False
    assert transport.send(request, Target("sctp", "127.0.0.1", udp.port)) is False
    big = parse_message(options(transport.port))
    big.body = b"x" * 70_000
    assert transport.send(big, Target("udp", "127.0.0.1", udp.port)) is False
    # A name: resolved first, so not known to fail yet.
    assert transport.send(request, Target("udp", "localhost", udp.port)) is True
    assert await udp.recv() is not None


async def test_a_keep_alive_ping_goes_from_the_sip_port(echo: tuple[Transport, Echo],
                                                        udp: UdpPeer) -> None:
    transport, _ = echo
    assert transport.ping(Target("udp", "127.0.0.1", udp.port)) is True
    async with asyncio.timeout(WAIT):
        data, source = await asyncio.get_running_loop().sock_recvfrom(udp.sock, 65535)
    assert (data, source) == (b"\r\n\r\n", ("127.0.0.1", transport.port))
    # Only UDP to an address (the trunk's resolved provider), never raised.
    assert transport.ping(Target("tcp", "127.0.0.1", udp.port)) is False
    assert transport.ping(Target("udp", "localhost", udp.port)) is False
    assert transport.ping(Target("udp", "255.255.255.255", udp.port)) is False
    assert transport.ping(Target("udp", "127.0.0.1", 0)) is False
    assert await udp.recv(0.1) is None


async def test_udp_send_to_a_name_that_resolves_to_ipv6_first(
        echo: tuple[Transport, Echo], udp: UdpPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider whose name has an AAAA record listed first is still reached from the IPv4
    socket. This machine's resolver has no such name, so the loop's getaddrinfo is replaced by
    one answering like a dual-stack DNS entry (and honouring the family asked for)."""
    transport, _ = echo
    loop = asyncio.get_running_loop()
    asked: list[int] = []

    async def dual_stack(host: str, port: int, *, family: int = 0, type: int = 0,
                         proto: int = 0, flags: int = 0) -> list[Any]:
        asked.append(family)
        v6 = (socket.AF_INET6, type, 17, "", ("::1", port, 0, 0))
        v4 = (socket.AF_INET, type, 17, "", ("127.0.0.1", port))
        return [info for info in (v6, v4) if family in (0, info[0])]

    monkeypatch.setattr(loop, "getaddrinfo", dual_stack)
    request = parse_message(options(transport.port))
    transport.send(request, Target("udp", "sip.provider.example", udp.port))
    data = await udp.recv()
    assert data is not None and data.startswith(b"OPTIONS sip:127.0.0.1 SIP/2.0")
    assert asked == [socket.AF_INET]


# --- UDP under load: bursts, a full send buffer, ICMP errors -----------------------------------


def branch_of(data: bytes | None) -> str | None:
    """The branch of a message's top Via (responses echo the request's)."""
    if data is None:
        return None
    via = parse_message(data).top_via
    return via.branch if via is not None else None


async def test_a_burst_of_udp_requests_is_all_answered(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    count = 200  # several wake-ups' worth of the transport's read batch
    assert count > 4 * UDP_READ_BATCH
    udp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sent = [f"z9hG4bKburst{i}" for i in range(count)]
    for branch in sent:  # all queued in the kernel before the transport reads any
        udp.sock.sendto(options(udp.port, branch=branch), ("127.0.0.1", transport.port))
    answered = []
    for _ in range(count):
        reply = await udp.recv()
        assert status_of(reply) == 200
        answered.append(branch_of(reply))
    assert sorted(answered) == sorted(sent)
    assert len(handler.seen) == count


async def test_a_udp_flood_does_not_hold_up_a_tcp_phone(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    udp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    async with tcp(transport.port) as (reader, writer):
        local_port = writer.get_extra_info("sockname")[1]
        writer.write(options(local_port, transport="TCP", branch="z9hG4bKtcp1"))
        assert status_of(await read_message(reader)) == 200  # connected and admitted
        flood = 200
        for i in range(flood):  # queued in the kernel before the transport reads any...
            udp.sock.sendto(options(udp.port, branch=f"z9hG4bKflood{i}"),
                            ("127.0.0.1", transport.port))
        writer.write(options(local_port, transport="TCP", branch="z9hG4bKtcp2"))  # ...so is this
        assert status_of(await read_message(reader)) == 200
        branches = [incoming.message.top_via.branch for incoming in handler.seen
                    if incoming.message.top_via is not None]
        # Handled after at most one read batch of the flood, not after all of it.
        assert branches.index("z9hG4bKtcp2") <= 1 + UDP_READ_BATCH
        for _ in range(flood):
            assert status_of(await udp.recv()) == 200


class FullSendBuffer:
    """Stands in for the transport's UDP socket with a send buffer full for the next FULL
    calls of ``sendto`` (BlockingIOError, nothing sent); the rest goes to the real socket.
    Faked because loopback never fills a UDP send buffer: the kernel hands each datagram to
    the receiving socket (or drops it) within ``sendto``."""

    def __init__(self, sock: socket.socket, full: int) -> None:
        self.sock = sock
        self.full = full
        self.calls = 0

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.calls += 1
        if self.full > 0:
            self.full -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return self.sock.sendto(data, address)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


async def receive_branches(udp: UdpPeer, count: int) -> list[str | None]:
    return [branch_of(await udp.recv()) for _ in range(count)]


async def test_udp_sends_wait_for_a_full_send_buffer_in_order(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, _ = echo
    real = transport._udp
    assert real is not None
    sock = FullSendBuffer(real, full=1)
    transport._udp = sock  # type: ignore[assignment]
    target = Target("udp", "127.0.0.1", udp.port)

    def send(branch: str) -> None:
        transport.send(parse_message(options(transport.port, branch=branch)), target)

    # The first finds the buffer full; the others queue behind it, though there is room again.
    for i in range(1, 6):
        send(f"z9hG4bKq{i}")
    assert await receive_branches(udp, 5) == [f"z9hG4bKq{i}" for i in range(1, 6)]
    # Still full at the first tries to flush: the queue waits on.
    sock.full = 3
    for i in range(6, 9):
        send(f"z9hG4bKq{i}")
    assert await receive_branches(udp, 3) == [f"z9hG4bKq{i}" for i in range(6, 9)]
    # All sent: the transport no longer waits for the socket to be writable (no busy loop)...
    assert not asyncio.get_running_loop().remove_writer(real.fileno())
    # ...and sends straight away again.
    calls = sock.calls
    send("z9hG4bKq9")
    assert sock.calls == calls + 1
    assert await receive_branches(udp, 1) == ["z9hG4bKq9"]


async def test_a_dual_stack_socket_sends_to_ipv4_addresses(udp: UdpPeer) -> None:
    # [sip] listen on `::`: phones' IPv4 sources are unmapped on arrival and answered as
    # bare IPv4 addresses, as the trunk's provider (resolved by itself) is: they must get there.
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 here")
    handler = Echo()
    transport = Transport(handler, "::", 0)
    handler.transport = transport
    await transport.start()
    try:
        assert transport.send(parse_message(options(transport.port, branch="z9hG4bKv4")),
                              Target("udp", "127.0.0.1", udp.port)) is True
        assert await receive_branches(udp, 1) == ["z9hG4bKv4"]
        assert transport.ping(Target("udp", "127.0.0.1", udp.port)) is True
        assert await udp.recv() == b"\r\n\r\n"
    finally:
        await transport.stop()


async def test_udp_send_queue_is_bounded_and_dropped_on_stop(
        udp: UdpPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "UDP_SEND_QUEUE", 3)
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0)
    handler.transport = transport
    await transport.start()
    try:
        assert transport._udp is not None
        transport._udp = FullSendBuffer(transport._udp, full=1)  # type: ignore[assignment]
        for i in range(1, 6):
            transport.send(parse_message(options(transport.port, branch=f"z9hG4bKb{i}")),
                           Target("udp", "127.0.0.1", udp.port))
        assert await receive_branches(udp, 3) == ["z9hG4bKb1", "z9hG4bKb2", "z9hG4bKb3"]
        assert await udp.recv(0.2) is None  # the 4th and 5th found the queue full
        # Stopped with datagrams waiting: they are dropped, and nothing goes out after.
        transport._udp.full = 1000  # type: ignore[attr-defined]
        transport.send(parse_message(options(transport.port, branch="z9hG4bKb6")),
                       Target("udp", "127.0.0.1", udp.port))
    finally:
        await transport.stop()
    transport.send(parse_message(options(transport.port, branch="z9hG4bKb7")),
                   Target("udp", "127.0.0.1", udp.port))
    assert await udp.recv(0.2) is None


class Refusing:
    """Stands in for the transport's UDP socket, whose next REFUSALS ``recvfrom`` calls raise
    what Linux raises for an ICMP port unreachable where it reports one (a connected socket,
    or IP_RECVERR); the rest go to the real socket."""

    def __init__(self, sock: socket.socket, refusals: int) -> None:
        self.sock = sock
        self.refusals = refusals

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        if self.refusals > 0:
            self.refusals -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        return self.sock.recvfrom(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


async def test_icmp_port_unreachable_does_not_stop_udp(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, _ = echo
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        # A phone that went away: a request to a closed port draws ICMP port unreachable.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            closed = int(gone.getsockname()[1])
        transport.send(parse_message(options(transport.port, branch="z9hG4bKgone")),
                       Target("udp", "127.0.0.1", closed))
        await asyncio.sleep(0.05)
        await udp.send(options(udp.port, branch="z9hG4bKi1"), transport.port)
        assert branch_of(await udp.recv()) == "z9hG4bKi1"
        # Linux does not report that error on an unconnected socket such as ours: make
        # recvfrom raise it, as other kernels (and IP_RECVERR) do.
        assert transport._udp is not None
        refusing = Refusing(transport._udp, refusals=2)
        transport._udp = refusing  # type: ignore[assignment]
        await udp.send(options(udp.port, branch="z9hG4bKi2"), transport.port)
        assert branch_of(await udp.recv()) == "z9hG4bKi2"
        assert refusing.refusals == 0
        await udp.send(options(udp.port, branch="z9hG4bKi3"), transport.port)
        assert branch_of(await udp.recv()) == "z9hG4bKi3"
        assert errors == []  # nothing escaped into the loop
    finally:
        loop.set_exception_handler(None)


# --- TCP ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tcp(port: int, source: str | None = None
              ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to PORT on 127.0.0.1, from the address SOURCE (127.0.0.1 when None)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0) if source else None)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_tcp_request_answered_on_the_same_connection(
        echo: tuple[Transport, Echo]) -> None:
    transport, handler = echo
    async with tcp(transport.port) as (reader, writer):
        local_port = writer.get_extra_info("sockname")[1]
        writer.write(options(local_port, transport="TCP") + options(
            local_port, transport="TCP", branch="z9hG4bKsecond"))  # two in one segment
        assert status_of(await read_message(reader)) == 200
        assert status_of(await read_message(reader)) == 200
        incoming = handler.seen[0]
        assert incoming.transport == "tcp" and incoming.connection_id is not None
        assert transport.connection_count == 1
        # A request *to* the phone reuses its connection.
        transport.send(parse_message(options(1, transport="TCP", branch="z9hG4bKout")),
                       Target("tcp", "127.0.0.1", local_port, incoming.connection_id))
        data = await read_message(reader)
        assert data.startswith(b"OPTIONS ")
    for _ in range(50):
        if handler.closed:
            break
        await asyncio.sleep(0.02)
    assert handler.closed == [incoming.connection_id]
    assert transport.connection_count == 0


async def test_tcp_keepalive_is_answered_with_crlf(echo: tuple[Transport, Echo]) -> None:
    transport, _ = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(b"\r\n\r\n")
        async with asyncio.timeout(WAIT):
            assert await reader.readexactly(2) == b"\r\n"
        writer.write(options(5060, transport="TCP"))
        assert status_of(await read_message(reader)) == 200


async def test_tcp_broken_message_gets_400_and_connection_lives(
        echo: tuple[Transport, Echo]) -> None:
    transport, _ = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, transport="TCP").replace(b"Max-Forwards: 70\r\n", b""))
        assert status_of(await read_message(reader)) == 400
        writer.write(options(5060, transport="TCP", branch="z9hG4bKok"))
        assert status_of(await read_message(reader)) == 200


async def test_tcp_oversized_message_gets_513_and_the_connection_closes(
        echo: tuple[Transport, Echo]) -> None:
    transport, handler = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, transport="TCP", body=b"x" * 5000))
        assert status_of(await read_message(reader)) == 513
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""  # closed by the server
    assert handler.seen == []


@pytest.mark.parametrize("in_pieces", [False, True])
async def test_tcp_header_section_over_16_kib_gets_513_and_the_connection_closes(
        udp: UdpPeer, in_pieces: bool) -> None:
    """A header section over MAX_HEADER_BLOCK is refused over TCP (UDP reads headers up to
    the message limit, and answers the same request): answered 513 from the header lines
    within the limit (its Via, Call-ID, CSeq... come first), then closed, whether the blank
    line came in the same read or never within the limit."""
    handler = Echo()
    transport = Transport(handler, "127.0.0.1", 0)
    handler.transport = transport
    await transport.start()
    try:
        pad = f"X-Pad: {'a' * 20000}\r\n"
        await udp.send(options(udp.port, extra=pad), transport.port)
        assert status_of(await udp.recv()) == 200
        request = options(5060, transport="TCP", branch="z9hG4bKbig", extra=pad)
        async with tcp(transport.port) as (reader, writer):
            if in_pieces:
                writer.write(request[:17000])
                await asyncio.sleep(0.1)
                writer.write(request[17000:])
            else:
                writer.write(request)
            reply = await read_message(reader)
            assert status_of(reply) == 513 and b"z9hG4bKbig" in reply
            async with asyncio.timeout(WAIT):
                assert await reader.read() == b""  # closed by the server
        assert len(handler.seen) == 1  # the UDP one
    finally:
        await transport.stop()


async def test_tcp_garbled_framing_closes_the_connection(echo: tuple[Transport, Echo]) -> None:
    transport, _ = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(options(5060, transport="TCP").replace(b"Content-Length: 0",
                                                            b"Content-Length: zero"))
        assert status_of(await read_message(reader)) == 400
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""


async def test_tcp_framing_lost_after_a_good_message_answers_both(
        echo: tuple[Transport, Echo]) -> None:
    # One read holds a good OPTIONS and then one whose Content-Length is garbled: the good
    # one is handled and answered, the 400 answers the broken one (its own Call-ID), and
    # the connection closes.
    transport, handler = echo
    good = options(5060, transport="TCP", branch="z9hG4bKgood")
    broken = options(5060, transport="TCP", branch="z9hG4bKbad").replace(
        b"Content-Length: 0", b"Content-Length: zero")
    async with tcp(transport.port) as (reader, writer):
        writer.write(good + broken)
        first, second = await read_message(reader), await read_message(reader)
        assert (status_of(first), status_of(second)) == (200, 400)
        assert b"Call-ID: t-z9hG4bKgood" in first and b"Call-ID: t-z9hG4bKbad" in second
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""
    assert [i.message.call_id for i in handler.seen] == ["t-z9hG4bKgood"]


async def test_tcp_connections_per_source_are_capped(echo: tuple[Transport, Echo]) -> None:
    transport, _ = echo
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            await stack.enter_async_context(tcp(transport.port))
        await asyncio.sleep(0.05)
        assert transport.connection_count == 3
        reader, writer = await stack.enter_async_context(tcp(transport.port))
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""  # refused at once
        assert transport.connection_count == 3


async def test_silent_tcp_connection_times_out(echo: tuple[Transport, Echo]) -> None:
    transport, _ = echo
    async with tcp(transport.port) as (reader, writer):
        writer.write(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n")  # and then nothing
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""
    assert transport.connection_count == 0


async def test_tcp_send_opens_a_connection_and_reuses_it(echo: tuple[Transport, Echo]) -> None:
    transport, _ = echo
    received: asyncio.Queue[bytes] = asyncio.Queue()
    accepted = 0

    async def phone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await received.put(await read_message(reader))

    server = await asyncio.start_server(phone, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        request = parse_message(options(transport.port, transport="TCP"))
        transport.send(request, Target("tcp", "127.0.0.1", port))
        transport.send(request, Target("tcp", "127.0.0.1", port))  # queued behind the connect
        async with asyncio.timeout(WAIT):
            assert (await received.get()).startswith(b"OPTIONS")
            assert (await received.get()).startswith(b"OPTIONS")
        transport.send(request, Target("tcp", "127.0.0.1", port))
        async with asyncio.timeout(WAIT):
            await received.get()
        assert accepted == 1
    finally:
        server.close()
    transport.send(request, Target("tcp", "127.0.0.1", 9))  # refused: logged, never raised


async def test_a_tcp_connect_that_times_out_says_so(caplog: pytest.LogCaptureFixture) -> None:
    transport = Transport(Echo(), "127.0.0.1", 0, limits=Limits(connect_timeout=0.0))
    await transport.start()
    try:
        request = parse_message(options(transport.port, transport="TCP"))
        with caplog.at_level("WARNING", logger="appliance.sip.transport"):
            transport.send(request, Target("tcp", "127.0.0.1", 9))
            for _ in range(50):
                if "connect" in caplog.text:
                    break
                await asyncio.sleep(0.01)
        assert "tcp connect to 127.0.0.1:9 failed (TimeoutError); 1 message(s) dropped" \
            in caplog.text
    finally:
        await transport.stop()


async def test_same_port_for_udp_and_tcp(echo: tuple[Transport, Echo]) -> None:
    transport, _ = echo
    with socket.socket() as s:
        s.settimeout(1)
        s.connect(("127.0.0.1", transport.port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", transport.port))


# --- the broken-message corpus against a running appliance -------------------------------------


def expected_reply(data: bytes) -> int | None:
    """The status the file name promises, or None when no reply can be built (no Via, ...)."""
    try:
        parse_message(data)
    except SipParseError as err:
        reply = error_response(err)
        return reply.status if reply is not None else None
    raise AssertionError("a bad-* message parsed")


async def test_bad_corpus_over_udp_to_the_front_door(appliance: Appliance) -> None:
    port = appliance.config.sip.listen.port
    names = sorted(p.name for p in DATA.glob("bad-*.msg"))
    assert len(names) >= 20
    peer = UdpPeer()
    try:
        for name in names:
            data = (DATA / name).read_bytes()
            promised = int(name.split("-")[1])
            expected = expected_reply(data)
            assert expected in (promised, None), name
            await peer.send(data, port)
            reply = await peer.recv(WAIT if expected is not None else 0.2)
            assert status_of(reply) == expected, name
        # ...and the front door still serves.
        await peer.send(options(peer.port, branch="z9hG4bKalive"), port)
        assert status_of(await peer.recv()) == 200
    finally:
        peer.close()


# --- eager dispatch ------------------------------------------------------------------------------


class Slow(Echo):
    """Answers after awaiting: the transport has to go on with the handler in a Task."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.cancelled = 0

    async def handle(self, incoming: Incoming) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        await asyncio.sleep(0)
        await super().handle(incoming)


async def test_a_handler_that_suspends_is_resumed_in_a_task(udp: UdpPeer) -> None:
    handler = Slow()
    transport = Transport(handler, "127.0.0.1", 0)
    handler.transport = transport
    await transport.start()
    try:
        await udp.send(options(udp.port), transport.port)
        await udp.send(options(udp.port, branch="z9hG4bKopt2"), transport.port)
        assert await udp.recv(0.2) is None  # both wait on the event
        assert len(transport._tasks) == 2
        handler.release.set()
        assert status_of(await udp.recv()) == 200
        assert status_of(await udp.recv()) == 200
        assert len(handler.seen) == 2
    finally:
        await transport.stop()


async def test_stopping_cancels_a_suspended_handler(udp: UdpPeer) -> None:
    handler = Slow()
    transport = Transport(handler, "127.0.0.1", 0)
    handler.transport = transport
    await transport.start()
    await udp.send(options(udp.port), transport.port)
    for _ in range(100):
        if transport._tasks:
            break
        await asyncio.sleep(0.01)
    await transport.stop()
    assert handler.cancelled == 1 and not transport._tasks


async def test_a_handler_that_never_suspends_needs_no_task(
        echo: tuple[Transport, Echo], udp: UdpPeer) -> None:
    transport, handler = echo
    await udp.send(options(udp.port), transport.port)
    assert status_of(await udp.recv()) == 200
    assert not transport._tasks


@pytest.mark.parametrize("max_expires", [3600, 7200, 86400])
def test_idle_registered_tcp_flows_outlive_the_longest_registration(
        tmp_path: Path, max_expires: int) -> None:
    # A phone registered over TCP may stay silent until it re-registers; if its idle
    # connection were closed first, its bindings would go with it (registrar
    # connection_closed) and it could not be called for the rest of its registration.
    from appliance.app import Appliance
    from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig

    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", 0)),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", 0), max_expires=max_expires),
                    media=MediaConfig(workers=0))
    limits = Appliance(config).transport.limits
    assert limits.idle_timeout > max_expires + 60
