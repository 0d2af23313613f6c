"""UDP and TCP on one address and port (RFC 3261 §18), on the asyncio loop: bytes ⇄ the
sans-I/O core.

Theory of operation. This is the only module of the front door that owns sockets. TCP goes
through asyncio's server and ``Protocol`` machinery. UDP does not: the transport owns a plain
non-blocking socket watched with ``loop.add_reader``; each wake-up reads datagrams with
``recvfrom`` until the socket is empty or ``UDP_READ_BATCH`` are read, and answers go out
with ``sendto`` on the spot (that loop, through step 1 below, is ``udp_intake.UdpIntake``,
compiled with the registrar). asyncio's ``DatagramTransport`` reads one datagram per trip round
the loop and wraps each call in its own checks: a trivial UDP responder on it measured over
three times the CPU per message of one built this way. On ``::`` both sockets are
dual-stack (IPV6_V6ONLY off, whatever the system default): IPv4 peers are served too, and
their v4-mapped addresses (``::ffff:a.b.c.d``) are unmapped before anything sees them.
Every datagram, and every message ``framing.StreamFramer`` cuts from a TCP stream, goes
through the same path:

1. a source the ``is_blocked`` hook names (a banned address, asked with its port) is dropped
   before parsing;
   a UDP datagram that starts ``REGISTER`` is first offered to the ``quick`` hook
   (``FrontDoor.quick``), which answers the common shape straight from its bytes and
   declines (None) everything else, which then goes on below;
2. ``parse_message``; a message that fails gets ``error_response`` (400/416/505/...) when one can
   be built — a request with a readable Via that is not broadcast or multicast — and the
   ``may_answer`` hook lets its source have one (its unauthenticated budget), and is dropped
   otherwise (responses, ACKs, messages without a way back, floods);
3. a request gets ``received``/``rport`` stamped in its top Via (rport forced: phones behind NAT
   need it even when they do not ask), and is dropped when its top Via names a broadcast or
   multicast address (we never answer those, sip.md §3);
4. a response is dropped unless its top Via is ours (``via_is_ours``: our port and one of
   ``local_hosts``) — only responses to requests the proxy sent can be for us;
5. the message goes to the ``MessageHandler`` as an ``Incoming``; the handler runs at once up
   to its first suspension, and only one that suspends goes on in a task this transport
   owns (at most ``max_pending`` at once; more are dropped and logged).

Oversized messages (over ``Limits.max_message``, or over TCP a header section over
``framing.MAX_HEADER_BLOCK``): when the header lines within that block can still be read (a
Via to answer along), a request is answered **513 Message Too Large** (RFC 3261 §21.5.14)
and otherwise dropped; on TCP the connection is closed afterwards, since framing is lost (as
it is without a readable Content-Length: 400, then closed). Error replies, like any other,
never go to a request whose Via is broadcast or multicast. CRLFCRLF keep-alives are answered
with CRLF on TCP (RFC 5626 §3.5.1) and ignored on UDP. A TCP peer must complete its first
message within ``first_message_timeout`` of connecting, and each later one within it of its
first byte; between messages a connection may idle for ``untrusted_idle_timeout`` (60 s)
until the SIP layer calls ``trust`` on it. Activity there is, on a connection we opened, any
whole message but a ping; on one a peer opened, only a request the handler ``vouch``es for
(the front door: one within its source's unauthenticated budget) — a refused request, an ACK
or a response costs a stranger nothing, and would let it hold connections for free. Once
trusted (a phone registered on it, or a provider's or media worker's request was accepted on
it), any message or ping is activity and the connection idles ``idle_timeout``, long enough
for a registered phone's silent flow, until ``distrust`` (the last phone registered on it is
gone): ``untrusted_idle_timeout`` again, from then.
The transport never reads SIP to decide this. Connections we open are not trusted either:
peers choose where many of them go (a response's Via, the top Route of an in-dialog request
a caller wrote), and trusted ones would let a caller fill the table with connections to
hosts of its own that are never closed to make room. At ``max_connections``, a newcomer
(accepted or opened by us) takes the place of the untrusted connection idle the longest,
closed for it (logged like a refusal: once a minute with a count), provided that one has
been idle ``evictable_after`` (5 s); otherwise (every connection trusted, or all busy or
new) the newcomer is refused.
``max_per_source`` refuses without closing anything: a source competes only with itself
there.

``send(message, target)`` (the ``Sender`` seam): UDP goes from our listening socket, so the
phone sees our well-known port; when the kernel's send buffer is full the datagram waits, in
order, in a queue of at most ``UDP_SEND_QUEUE`` that ``loop.add_writer`` flushes (beyond
that, datagrams are dropped and logged). TCP reuses the connection named in the target, else
any open connection to that address, else opens one (``connect_timeout``; connects under way
count with connections against ``max_per_source``). A response whose request's connection
has closed goes to its Via instead (received, sent-by port: RFC 3261 §18.2.2), down a
connection open to there or a new one. Sending never raises: failures are logged with ``x``.
``send`` returns False when the message certainly did not go out; when that is learnt only
later (the connect it waits for fails or times out, the new connection closes before it was
written, a name does not resolve), the sender's ``on_error`` is called instead, once, from the
loop: RFC 3261 §18.4 has transport errors reported to the transaction (§17.1.4), so that a
proxy's branch to a TCP phone that went away fails now rather than on Timer B. What the sender
makes of it is its business: this module knows no SIP transactions. ``ping(target)`` (the
``KeepAliveSender`` seam) sends a CRLFCRLF datagram from the UDP socket: the trunk's NAT keep-alive
towards its provider, from the port its REGISTERs use.
Log lines: ``<`` in, ``>`` out, ``-`` state, ``x`` failure, at debug level, showing only start
lines — never header values, so never Authorization.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import ipaddress
import itertools
import logging
import secrets
import socket
from collections.abc import Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.addresses import unmapped
from appliance.dualstack import dual_stack, dual_stack_listener
from appliance.sip.errors import SipParseError
from appliance.sip.framing import (
    MAX_HEADER_BLOCK,
    PING,
    PONG,
    FramingLost,
    KeepAlive,
    StreamFramer,
)
from appliance.sip.headers import Via, unreachable
from appliance.sip.message import (
    MAX_MESSAGE,
    Request,
    Response,
    error_response,
    make_response,
    parse_message,
    stamp_received,
)
from appliance.sip.udp_intake import UdpIntake
from appliance.sip.wire import Incoming, MessageHandler, Target

logger = logging.getLogger(__name__)

# --- budgets (sip.md §2.3, style.md habit 6) ---------------------------------------------
# Kamailio's tcp_max_connections default is 2048 for a whole server; an office appliance
# serves a few hundred phones with one connection each.
MAX_TCP_CONNECTIONS = 1024
# At the limit, the untrusted connection idle the longest is closed for a newcomer
# (Transport._make_room): a stranger's OPTIONS every 59 s from 64 addresses would otherwise
# hold all of it, within its unauthenticated budget, and no phone could connect. What it
# sends past that budget (503s), or free of it, is no activity there (``Transport.vouch``).
# ...but only one idle at least this long: a connect flood (no message, no budget spent)
# would otherwise churn the table, each newcomer closing the connection before it, and a
# phone between its connect, our 401 and its authenticated REGISTER (milliseconds on a LAN,
# a second or two over a slow uplink or a softphone's first start) would lose its connection
# mid-handshake. When none is that idle, the newcomer is refused: a flood then has to hold
# every slot for this long with fresh connects to keep a phone out. A connection we have
# just opened is protected the same way until its first write (its last_activity is the
# moment it connected).
TCP_EVICTABLE_AFTER = 5.0
# ...except for a newcomer from a source holding no connection yet: it may take the place of
# any untrusted connection of a source holding at least this many. Connects churned from 100
# addresses, 16 each, renewed within those 5 s, held every slot and kept most phones out.
CROWDED_SOURCE = 4
# A phone needs one connection; a NAT with a handful of phones behind it a few more. Kamailio
# has no per-source cap by default; fail2ban-style setups cap at 10-20.
MAX_TCP_PER_SOURCE = 16
# A registered phone may stay silent until it re-registers (at most [sip] max_expires, 3600 s
# by default; idle_timeout_for follows a larger one):
# its flow must outlive that, or calls to it fail. Kamailio keeps registered flows open the
# same way (tcp_connection_lifetime extended by the registrar).
TCP_IDLE_TIMEOUT = 3900.0
# max_expires plus this: a connection trusted for a registration stays trusted until the
# registration ends (``Transport.distrust``), then idles TCP_UNTRUSTED_IDLE_TIMEOUT from
# that moment, which is what gives a late re-REGISTER its time. The margin only keeps the
# long timeout above the longest registration, for a phone silent all through it.
IDLE_MARGIN = 300.0
# ...but only for a connection the SIP layer trusts (``Transport.trust``: a phone is
# registered on it, or a provider's or media worker's request was accepted on it;
# ``Transport.distrust`` once the last registration on it is gone). Any other peer (a scanner's
# one OPTIONS) could otherwise hold max_per_source connections per address, and all of
# max_connections, for TCP_IDLE_TIMEOUT each, and phones registering over TCP would find
# no room. A phone registers within seconds of connecting; a minute also covers a user
# typing a password into a softphone between the 401 and the REGISTER that answers it.
# CRLF pings do not count as activity here: they cost the peer nothing (no budget), and
# RFC 5626 keep-alives are a registered flow's business.
TCP_UNTRUSTED_IDLE_TIMEOUT = 60.0
# A connection that has not completed one message in this time is a slow-loris or a scan
# (aiosmtpd's idle timeout is 300 s for a whole session; a SIP phone sends at once). The same
# time bounds every later message from its first byte to its last: a phone writes a message
# in one go, and only whole messages (and pings) count as activity for TCP_IDLE_TIMEOUT —
# else a byte every few seconds would hold a connection open for ever.
TCP_FIRST_MESSAGE_TIMEOUT = 30.0
# pjsip gives up a TCP connect after ~5-10 s; a LAN phone answers in milliseconds.
TCP_CONNECT_TIMEOUT = 5.0
# A peer that does not read its responses: close it rather than buffer without bound.
MAX_WRITE_BUFFER = 1024 * 1024
# Messages being handled at once. At the measured ~3 k digest REGISTER/s a message is done in
# well under a millisecond, so 1000 in flight means the process is far behind: shed load.
MAX_PENDING_HANDLERS = 1000
SWEEP_INTERVAL = 5.0  # how often idle TCP connections are looked for
# The UDP socket's receive buffer. Linux's default (rmem_default, 208 KiB) holds ~300
# messages: a 100 ms stall of the loop (a full GC, a burst) at a few thousand messages a
# second overflows it, and every drop costs a retransmission 500 ms later. Kamailio raises
# its UDP buffers the same way (udp_rcvbuf / probing up to rmem_max). The kernel caps this
# at net.core.rmem_max without an error.
UDP_RECEIVE_BUFFER = 2 * 1024 * 1024
MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4
# Datagrams read per wake-up of the UDP socket. Reading several amortises the trip round the
# loop (the socket is watched level-triggered: what is left is read on the next trip); a cap
# keeps one flooding source from holding the loop while TCP connections and timers wait —
# 32 messages are a few ms of handling (a digest REGISTER pair costs ~0.16 ms).
UDP_READ_BATCH = 32
# Datagrams waiting while the socket's send buffer is full (it holds a few hundred messages
# itself). Beyond this the peer, or the host, is not keeping up: drop, as the kernel would —
# SIP over UDP retransmits.
UDP_SEND_QUEUE = 1024
# A warning a peer can cause at will (a refused connection) is logged at most this often,
# with a count: a connect loop must not write a line per attempt to the SD card.
WARNING_INTERVAL = 60.0

_WILDCARDS = ("0.0.0.0", "::", "")

# What a sender hands ``send`` to hear of a failure found only after it returned (or None).
OnError = Callable[[], None] | None


def idle_timeout_for(max_expires: float) -> float:
    """The TCP idle timeout when registrations last up to MAX_EXPIRES seconds (``[sip]
    max_expires`` may exceed the default 3600): a silent registered phone keeps its flow."""
    return max(TCP_IDLE_TIMEOUT, max_expires + IDLE_MARGIN)


@dataclass(frozen=True)
class Limits:
    """The transport's budgets; tests shrink them."""

    max_message: int = MAX_MESSAGE
    max_connections: int = MAX_TCP_CONNECTIONS
    max_per_source: int = MAX_TCP_PER_SOURCE
    idle_timeout: float = TCP_IDLE_TIMEOUT
    untrusted_idle_timeout: float = TCP_UNTRUSTED_IDLE_TIMEOUT
    evictable_after: float = TCP_EVICTABLE_AFTER
    first_message_timeout: float = TCP_FIRST_MESSAGE_TIMEOUT
    connect_timeout: float = TCP_CONNECT_TIMEOUT
    max_pending: int = MAX_PENDING_HANDLERS
    sweep_interval: float = SWEEP_INTERVAL
    udp_receive_buffer: int = UDP_RECEIVE_BUFFER


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Resume:
    """Awaitable going on with CORO, a coroutine started by hand (``coro.send(None)``) and
    suspended on WAITING: the Task awaiting this waits on whatever CORO waits on, and a
    cancellation or error thrown into the Task is thrown into CORO, as if the Task had run
    CORO from its start."""

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:  # noqa: BLE001 - handed on to CORO, which decides
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting = coro.send(None)
            except StopIteration:
                return


async def _resumed(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    await _Resume(coro, waiting)


def _summary(message: Request | Response) -> str:
    """What a log line shows of a message: its start line and CSeq, nothing else."""
    return f"{message.start_line()} ({message.get('cseq') or '?'})"


def _tag() -> str:
    return secrets.token_hex(5)


def _response_address(response: Response) -> tuple[str, int] | None:
    """Where RESPONSE goes over TCP once the connection its request came on has closed
    (RFC 3261 §18.2.2): the top Via's ``received`` address (else its sent-by host) at the
    sent-by port, 5060 when none is given. Not ``rport``: RFC 3581 §4 applies it to
    unreliable transports only — over TCP it is the closed connection's ephemeral port,
    where nothing listens. None when there is no Via to go by."""
    try:
        top = response.top_via
    except SipParseError:
        return None
    if top is None:
        return None
    host = (top.received or top.host).strip("[]")
    return None if unreachable(host) else (host, top.port or 5060)


def _report(callbacks: Iterable[OnError]) -> None:
    """Tell the senders of messages that did not go out (their ``on_error``), each on its
    own: one that raises must not keep the others from hearing."""
    for on_error in callbacks:
        if on_error is None:
            continue
        try:
            on_error()
        except Exception:
            logger.exception("x reporting a send failure failed")


def _readable_head(data: bytes) -> bytes:
    """The header lines of DATA, a message's start, that an error reply may be built from:
    those before its blank line, or, in a header section over MAX_HEADER_BLOCK, the whole
    lines within that limit (the Via, Call-ID and CSeq a reply needs come first in what
    phones send); empty when there are none."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEADER_BLOCK)
    if end < 0:
        end = data.rfind(b"\r\n", 0, MAX_HEADER_BLOCK)
    return data[:end] if end > 0 else b""


def head_reply(head: bytes, status: int) -> Response | None:
    """A reply to a request of which only the header block is usable (oversized or badly
    framed): STATUS when the head parses, else whatever ``error_response`` can build."""
    lines = [
        line
        for line in head.split(b"\r\n")
        if line.partition(b":")[0].strip().lower() not in (b"content-length", b"l")
    ]
    probe = b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n"
    try:
        message = parse_message(probe)
    except SipParseError as err:
        return error_response(err, to_tag=_tag())
    if isinstance(message, Response) or message.method == "ACK":
        return None
    try:
        top = message.top_via
    except SipParseError:
        return None  # no Via to answer along
    if top is None or unreachable(top.host):
        return None  # a broadcast or multicast Via: never answered (sip.md §3)
    return make_response(message, status, to_tag=_tag())


@dataclass
class _Throttle:
    """How often one peer-caused warning happened, and whether it is due to be logged."""

    count: int = 0
    logged_at: float = -1e9

    def due(self, now: float) -> bool:
        self.count += 1
        if now - self.logged_at < WARNING_INTERVAL:
            return False
        self.logged_at = now
        return True


@dataclass(eq=False)
class Connection:
    """One TCP connection, accepted or opened by us."""

    owner: Transport
    outgoing: bool
    id: str = ""
    peer: tuple[str, int] = ("", 0)
    local: tuple[str, int] = ("", 0)
    framer: StreamFramer = field(default_factory=StreamFramer)
    transport: asyncio.Transport | None = None
    opened_at: float = 0.0
    # The last whole message or ping (not any byte); for an untrusted connection, pings
    # do not count, nor on one a peer opened anything but what the handler vouched for
    # (Transport.vouch), and the moment it lost its trust (Transport.distrust) does.
    last_activity: float = 0.0
    message_started: float | None = None  # when the framer's partial message began
    messages: int = 0
    admitted: bool = False
    # Idles up to idle_timeout, not untrusted_idle_timeout (Transport.trust).
    trusted: bool = False

    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            logger.warning("x tcp %s %s:%d does not read; closing", self.id, *self.peer)
            transport.abort()
            return False
        transport.write(data)
        return True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Stream(asyncio.Protocol):
    def __init__(self, owner: Transport, *, outgoing: bool) -> None:
        self.conn = Connection(owner, outgoing,
                               framer=StreamFramer(max_message=owner.limits.max_message))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - asyncio's contract
        self.conn.transport = transport
        self.conn.owner._admit(self.conn)

    def data_received(self, data: bytes) -> None:
        self.conn.owner._stream_data(self.conn, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.owner._forget(self.conn)


class Transport:
    """UDP and TCP on HOST:PORT (PORT 0: any free port, the same for both)."""

    def __init__(
        self,
        handler: MessageHandler,
        host: str,
        port: int,
        *,
        limits: Limits | None = None,
        advertised: str | None = None,
        is_blocked: Callable[[str, int], bool] | None = None,
        quick: Callable[[bytes, tuple[str, int]], bytes | None] | None = None,
        may_answer: Callable[[str], bool] | None = None,
    ) -> None:
        self.handler = handler
        # Whether a source may have the error reply (400, 513...) to a message that never
        # reached the handler; False drops it (``FrontDoor.may_answer``: the unauthenticated
        # budget, which a flood of broken requests must spend like any other).
        self.may_answer = may_answer
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        # The address we put in Incoming.local (and so in our Vias and Record-Routes) for UDP
        # on a wildcard address, where the socket cannot tell which address a datagram hit.
        self.advertised = advertised or (host if host not in _WILDCARDS else "127.0.0.1")
        self.is_blocked = is_blocked
        # Hosts that make a response's top Via "ours" (with our port); add names such as
        # the SIP domain if the proxy writes them in its Vias.
        self.local_hosts: set[str] = {self.advertised.lower()}
        if host not in _WILDCARDS:
            self.local_hosts.add(host.lower())
        self._loop: asyncio.AbstractEventLoop | None = None
        # Datagrams waiting for room in the UDP socket's send buffer, oldest first.
        self._udp_queue: collections.deque[tuple[bytes, tuple[str, int]]] = collections.deque()
        # The UDP socket's read loop (compiled with the registrar), its socket set by start.
        # QUICK gives a UDP datagram's reply without parsing it into a message, or None to
        # parse it (``FrontDoor.quick``: the common REGISTER).
        self._intake = UdpIntake(
            None, mapped=False, batch=UDP_READ_BATCH, max_message=self.limits.max_message,
            queue=self._udp_queue, is_blocked=is_blocked, quick=quick,
            oversize=self._udp_oversize, general=self._udp_general, send=self._sendto)
        self._udp_dropped = 0
        self._udp_drop_logged_at = -1e9
        self._server: asyncio.Server | None = None
        self._connections: dict[str, Connection] = {}
        self._by_peer: dict[tuple[str, int], Connection] = {}
        self._per_source: dict[str, int] = {}
        # Connects under way: the messages (and their senders' on_error) waiting for each.
        self._connecting: dict[tuple[str, int], list[tuple[bytes, OnError]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._shed_logged_at = -1e9
        self._refusals = _Throttle()  # connections refused at the limits
        self._evictions = _Throttle()  # untrusted connections closed to make room
        # The admitted connections not trusted (Transport.trust), least recently active
        # first: each one's last_activity moves it to the end. At max_connections the first
        # one is closed to make room for a newcomer (``_admit``), without a scan.
        self._untrusted: collections.OrderedDict[str, Connection] = collections.OrderedDict()
        self._connect_drops = _Throttle()  # messages dropped at the per-host connect cap

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        attempts = 5 if self.port == 0 else 1
        for attempt in range(attempts):
            udp = await self._bind_udp(loop)
            port = int(udp.getsockname()[1])
            try:
                if dual_stack(self.host):
                    self._server = await loop.create_server(
                        lambda: _Stream(self, outgoing=False), sock=dual_stack_listener(port))
                else:
                    self._server = await loop.create_server(
                        lambda: _Stream(self, outgoing=False), self.host, port,
                        reuse_address=True)
            except OSError:
                udp.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp = udp
            self.port = port
            break
        assert self._udp is not None  # noqa: S101 - the loop above binds or raises
        self._loop = loop
        self._udp_queue.clear()
        self._intake.mapped = self._udp.family == socket.AF_INET6
        self._intake.max_message = self.limits.max_message
        loop.add_reader(self._udp.fileno(), self._intake.drain)
        self._stopping = False
        self._sweeper = loop.create_task(self._sweep())
        logger.info("- sip listening on %s:%d (udp, tcp)",
                    f"[{self.host}]" if ":" in self.host else self.host, self.port)

    async def stop(self) -> None:
        """Close everything. Handlers are not told about the TCP connections closed here:
        bindings on them stay stored, the phone reconnects after a restart."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            if conn.transport is not None:
                conn.transport.abort()
        self._connections.clear()
        self._by_peer.clear()
        self._per_source.clear()
        self._untrusted.clear()
        self._close_udp()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None

    async def _bind_udp(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """A non-blocking UDP socket bound to HOST:PORT: the first address HOST resolves to
        that binds, as ``loop.create_datagram_endpoint`` would pick it."""
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM,
                                       proto=socket.IPPROTO_UDP)
        if not infos:
            raise OSError(f"getaddrinfo({self.host!r}) returned nothing")
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                    self.limits.udp_receive_buffer)
                if family == socket.AF_INET6 and dual_stack(self.host):
                    # IPv4 too, whatever the system default (net.ipv6.bindv6only).
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(address)
            except OSError as err:
                sock.close()
                error = err
                continue
            return sock
        assert error is not None  # noqa: S101 - infos was not empty
        raise error

    def _close_udp(self) -> None:
        sock, loop = self._udp, self._loop
        self._udp = None
        self._udp_queue.clear()
        if sock is None:
            return
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock.fileno())
            loop.remove_writer(sock.fileno())
        sock.close()

    @property
    def _udp(self) -> socket.socket | None:
        """The UDP socket (None: not started, or closed); the intake reads the one set."""
        sock: socket.socket | None = self._intake.sock
        return sock

    @_udp.setter
    def _udp(self, sock: socket.socket | None) -> None:
        self._intake.sock = sock

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def connection(self, connection_id: str) -> Connection | None:
        return self._connections.get(connection_id)

    def via_is_ours(self, via: Via | None) -> bool:
        if via is None:
            return False
        port = via.port or (5061 if via.transport in ("TLS", "WSS") else 5060)
        return port == self.port and via.host.strip("[]").lower() in self.local_hosts

    # --- receiving ------------------------------------------------------------------------

    def _udp_oversize(self, data: bytes, source: tuple[str, int]) -> None:
        self._oversize(data, "udp", source, None)

    def _udp_general(self, data: bytes, source: tuple[str, int]) -> None:
        """A datagram the intake did not answer: parsed and handled like any message."""
        self._receive(data, "udp", source, (self.advertised, self.port), None)

    def _oversize(self, data: bytes, transport: str, source: tuple[str, int],
                  conn_id: str | None) -> None:
        head = _readable_head(data)
        reply = self._error_reply(head_reply(head, 513) if head else None, source)
        logger.debug("x %s %s:%d: message of %d bytes over %d%s", transport, *source, len(data),
                     self.limits.max_message, "" if reply else ", dropped")
        if reply is not None:
            self.send(reply, Target(transport, source[0], source[1], conn_id))

    def _error_reply(self, reply: Response | None, source: tuple[str, int]
                     ) -> Response | None:
        """REPLY, the error reply to a message that never reached the handler (400, 513...;
        ``error_response`` and ``head_reply`` build none for a broadcast or multicast Via),
        when SOURCE may have it, else None: not when it is banned (``is_blocked``; over TCP a
        connection opened before the ban still reads), nor past its budget (``may_answer``)."""
        if reply is None or (self.is_blocked is not None and self.is_blocked(*source)) or (
                self.may_answer is not None and not self.may_answer(source[0])):
            return None
        return reply

    def _receive(self, data: bytes, transport: str, source: tuple[str, int],
                 local: tuple[str, int], conn_id: str | None) -> None:
        try:
            message = parse_message(data)
        except SipParseError as err:
            reply = self._error_reply(error_response(err, to_tag=_tag()), source)
            logger.debug("x %s %s:%d: %s (%s)", transport, *source, err,
                         f"answered {err.status}" if reply else "dropped")
            if reply is not None:
                self.send(reply, Target(transport, source[0], source[1], conn_id))
            return
        if isinstance(message, Request):
            top = message.top_via
            if top is None or unreachable(top.host):
                logger.debug("x %s %s:%d: Via towards %s; dropped", transport, *source,
                             top.host if top else "nowhere")
                return
            try:
                stamp_received(message, source[0], source[1], force_rport=True)
            except SipParseError:
                return
        elif not self.via_is_ours(message.top_via):
            logger.debug("x %s %s:%d: %s for a Via not ours; dropped", transport, *source,
                         _summary(message))
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("< %s %s:%d %s", transport, *source, _summary(message))
        if len(self._tasks) >= self.limits.max_pending:
            now = asyncio.get_running_loop().time()
            if now - self._shed_logged_at > 60:
                self._shed_logged_at = now
                logger.warning("x sip overloaded: %d messages in progress; dropping",
                               len(self._tasks))
            return
        incoming = Incoming(message, transport, source, local, conn_id)
        # Eager start (what asyncio.eager_task_factory does from Python 3.12 on): run the
        # handler here up to its first suspension. Most messages (a REGISTER from a Client
        # already cached, a proxied response) finish without suspending and then cost no
        # Task and no trip round the loop; one that suspends goes on in a Task, as before.
        coro = self._dispatch(incoming)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        task = asyncio.get_running_loop().create_task(_resumed(coro, waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, incoming: Incoming) -> None:
        try:
            await self.handler.handle(incoming)
        except Exception:
            logger.exception("x handling %s from %s:%d failed",
                             _summary(incoming.message), *incoming.source)

    # --- TCP connections ------------------------------------------------------------------

    def _admit(self, conn: Connection) -> None:
        transport = conn.transport
        assert transport is not None  # noqa: S101 - set by connection_made
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        conn.peer = (unmapped(str(peer[0])), int(peer[1])) if peer else ("", 0)
        conn.local = (unmapped(str(local[0])), int(local[1])) if local else ("", 0)
        # Active now: not closed to make room before evictable_after (TCP_EVICTABLE_AFTER),
        # which also covers one we opened until _connect writes to it.
        conn.opened_at = conn.last_activity = asyncio.get_running_loop().time()
        ip = conn.peer[0]
        blocked = not conn.outgoing and self.is_blocked is not None and self.is_blocked(
            *conn.peer)
        full = len(self._connections) >= self.limits.max_connections
        if (blocked or self._stopping
                or self._per_source.get(ip, 0) >= self.limits.max_per_source
                or (full and not self._make_room(conn))):
            if not blocked and self._refusals.due(conn.opened_at):
                logger.warning("x tcp %s:%d refused: %d connections, %d from this source "
                               "(%d refused so far)", *conn.peer, len(self._connections),
                               self._per_source.get(ip, 0), self._refusals.count)
            transport.abort()
            return
        conn.admitted = True
        conn.id = f"tcp-{next(self._ids)}"
        self._connections[conn.id] = conn
        if not conn.trusted:
            self._untrusted[conn.id] = conn  # the most recently active: last
        self._by_peer[conn.peer] = conn
        self._per_source[ip] = self._per_source.get(ip, 0) + 1
        if conn.local[0] and conn.local[0] not in _WILDCARDS:
            self.local_hosts.add(conn.local[0].lower())
        logger.debug("- tcp %s %s %s:%d", conn.id, "opened to" if conn.outgoing else "from",
                     *conn.peer)

    def _make_room(self, newcomer: Connection) -> bool:
        """At max_connections: close the untrusted connection idle the longest (the first of
        ``_untrusted``) to admit NEWCOMER; False when every connection is trusted, or none
        has been idle ``evictable_after`` (a phone mid-handshake, one we just opened). A
        stranger's connections (its OPTIONS every 59 s keep them under the short idle
        timeout) thus cannot keep a phone from connecting and registering; phones'
        connections are never closed for a newcomer."""
        victim = next(iter(self._untrusted.values()), None)
        if victim is None:
            return False
        if newcomer.opened_at - victim.last_activity < self.limits.evictable_after:
            # None idle that long (the first is idle the longest): a connect churn from a
            # hundred addresses keeps every slot fresh. A newcomer from a source holding
            # none yet (a phone) then takes the place of one held by a crowded source.
            victim = self._crowded_victim(newcomer)
            if victim is None:
                return False
        if self._evictions.due(newcomer.opened_at):
            logger.warning("x tcp %s %s:%d closed after %.0f s idle, nobody authenticated on "
                           "it, to make room for %s:%d: %d connections (%d closed so far)",
                           victim.id, *victim.peer, newcomer.opened_at - victim.last_activity,
                           *newcomer.peer, len(self._connections), self._evictions.count)
        else:
            logger.debug("- tcp %s %s:%d closed to make room", victim.id, *victim.peer)
        self._forget(victim)  # at once: its slot is the newcomer's
        if victim.transport is not None:
            victim.transport.abort()
        return True

    def _crowded_victim(self, newcomer: Connection) -> Connection | None:
        """The untrusted connection idle the longest of a source holding at least
        ``CROWDED_SOURCE`` connections, when NEWCOMER's source holds none; else None."""
        if self._per_source.get(newcomer.peer[0], 0):
            return None
        for conn in self._untrusted.values():
            if self._per_source.get(conn.peer[0], 0) >= CROWDED_SOURCE:
                return conn
        return None

    def _forget(self, conn: Connection) -> None:
        if not conn.admitted:
            return
        conn.admitted = False
        self._connections.pop(conn.id, None)
        self._untrusted.pop(conn.id, None)
        if self._by_peer.get(conn.peer) is conn:
            del self._by_peer[conn.peer]
        ip = conn.peer[0]
        left = self._per_source.get(ip, 1) - 1
        if left > 0:
            self._per_source[ip] = left
        else:
            self._per_source.pop(ip, None)
        logger.debug("- tcp %s %s:%d closed", conn.id, *conn.peer)
        if not self._stopping:
            try:
                self.handler.connection_closed(conn.id)
            except Exception:
                logger.exception("x connection_closed(%s) failed", conn.id)

    def _stream_data(self, conn: Connection, data: bytes) -> None:
        if not conn.admitted:
            return
        try:
            items = conn.framer.feed(data)
        except FramingLost as err:
            # Framing is lost: nothing after this point can be trusted. The messages before
            # it are handled; the one it is in is answered if its head can be (513 when the
            # head says the message is too big), and the connection closes.
            self._stream_items(conn, err.framed)
            head = _readable_head(err.rest)
            reply = self._error_reply(
                head_reply(head, err.status) if head else None, conn.peer)
            logger.debug("x tcp %s %s:%d: %s; closing", conn.id, *conn.peer, err)
            if reply is not None:
                conn.write(bytes(reply))
            conn.close()
            return
        now = asyncio.get_running_loop().time()
        # On a connection a peer opened and nobody authenticated on, only what the handler
        # vouches for counts (``vouch``): its requests cost a stranger budget, and the rest
        # (refused requests, ACKs, responses) costs nothing.
        if items and (conn.trusted or (
                conn.outgoing and not all(isinstance(i, KeepAlive) for i in items))):
            self._active(conn, now)
        if not conn.framer.mid_message:
            conn.message_started = None
        elif items or conn.message_started is None:  # a new message began in this read
            conn.message_started = now
        self._stream_items(conn, items)

    def _stream_items(self, conn: Connection, items: list[bytes | KeepAlive]) -> None:
        for item in items:
            if conn.transport is None or conn.transport.is_closing():
                # Closed while handling an earlier message of this read (it would not read
                # our answers): the rest is not handled, or its answers would each open a
                # connection to the Via (RFC 3261 §18.2.2) of a peer we gave up on.
                return
            if isinstance(item, KeepAlive):
                conn.write(PONG)
                continue
            conn.messages += 1
            self._receive(item, "tcp", conn.peer, conn.local, conn.id)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limits.sweep_interval)
            now = loop.time()
            slow = self.limits.first_message_timeout
            for conn in list(self._connections.values()):
                # A peer's first message is due within `slow` of its connecting, any later
                # one within `slow` of its first byte; idleness counts only between messages.
                fresh = conn.messages == 0 and not conn.outgoing
                since = conn.opened_at if fresh else conn.message_started
                if since is not None:
                    if now - since <= slow:
                        continue
                    why = f"no whole message in {now - since:.0f} s"
                elif now - conn.last_activity > self._idle_timeout(conn):
                    why = f"idle for {now - conn.last_activity:.0f} s" + (
                        "" if conn.trusted else ", nobody authenticated on it")
                else:
                    continue
                logger.debug("- tcp %s %s:%d %s; closing", conn.id, *conn.peer, why)
                conn.close()

    def _active(self, conn: Connection, now: float) -> None:
        conn.last_activity = now
        if not conn.trusted:
            self._untrusted.move_to_end(conn.id)

    def vouch(self, connection_id: str) -> None:
        """A request on CONNECTION_ID was let through its source's unauthenticated budget
        (the ``wire.Activity`` seam, called by the front door): on an untrusted connection
        a peer opened, the only messages that count as activity (see ``_stream_data``). A
        connection closed meanwhile is ignored."""
        conn = self._connections.get(connection_id)
        if conn is not None:
            self._active(conn, asyncio.get_running_loop().time())

    def _idle_timeout(self, conn: Connection) -> float:
        if conn.trusted:
            return self.limits.idle_timeout
        return min(self.limits.untrusted_idle_timeout, self.limits.idle_timeout)

    def trust(self, connection_id: str) -> None:
        """A phone registered on CONNECTION_ID, or a provider's or media worker's request
        was accepted on it (the ``wire.Flows`` seam, called by the SIP layer): it may idle for
        ``idle_timeout`` from now on. A connection closed meanwhile is ignored."""
        conn = self._connections.get(connection_id)
        if conn is not None and not conn.trusted:
            conn.trusted = True
            self._untrusted.pop(conn.id, None)
            logger.debug("- tcp %s %s:%d trusted", conn.id, *conn.peer)

    def distrust(self, connection_id: str) -> None:
        """No phone is registered on CONNECTION_ID any more (the ``wire.Flows`` seam, called
        by the registrar): it idles ``untrusted_idle_timeout`` again, counted from now (a
        silent phone is not cut at once, and may register on it again), and may be closed
        to make room. A connection closed meanwhile, or not trusted, is ignored."""
        conn = self._connections.get(connection_id)
        if conn is not None and conn.trusted:
            conn.trusted = False
            conn.last_activity = asyncio.get_running_loop().time()
            self._untrusted[conn.id] = conn  # the most recently active: last
            logger.debug("- tcp %s %s:%d no longer trusted", conn.id, *conn.peer)

    # --- sending (the Sender seam) --------------------------------------------------------

    def send(self, message: Request | Response, target: Target, data: bytes | None = None, *,
             on_error: OnError = None) -> bool:
        """Send MESSAGE (see ``wire.Sender``). False when it certainly did not go out (RFC
        3261 §18: its transaction reports a transport error to its TU); True when it went,
        or may yet go (a name to resolve, a connect under way). ON_ERROR is called later
        when one of those turns out to fail (never when this returns False)."""
        host = target.host.strip("[]")
        if unreachable(host) or not 0 < target.port < 65536:
            logger.debug("x not sending %s to %s:%d", _summary(message), host, target.port)
            return False
        if data is None:
            data = bytes(message)
        kind = target.transport.lower()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("> %s %s:%d %s", kind, host, target.port, _summary(message))
        if kind == "udp":
            if len(data) > MAX_DATAGRAM:
                logger.warning("x %s too large for UDP (%d bytes)", _summary(message), len(data))
                return False
            if _is_ip(host):
                return self._sendto(data, (host, target.port))
            self._spawn(self._resolve_and_send(data, host, target.port, on_error))
            return True
        elif kind == "tcp":
            conn = self._connections.get(target.connection_id or "")
            if conn is None:
                conn = self._by_peer.get((host, target.port))
            if conn is not None and conn.write(data):
                return True
            port = target.port
            if isinstance(message, Response):
                if conn is not None:  # closing, by us (it does not read) or by the peer
                    logger.debug("x tcp %s closing; %s dropped", conn.id, _summary(message))
                    return False
                # Its request's connection has closed and is forgotten.
                address = _response_address(message)
                if address is None:
                    logger.debug("x no Via to send %s to", _summary(message))
                    return False
                host, port = address
                conn = self._by_peer.get(address)
                if conn is not None and conn.write(data):
                    return True
            return self._open_and_send(data, host, port, on_error)
        logger.warning("x no %s transport for %s", target.transport, _summary(message))
        return False

    def ping(self, target: Target) -> bool:
        """Send a NAT keep-alive, ``PING`` (CRLFCRLF), to TARGET from the UDP socket (see
        ``wire.KeepAliveSender``): the trunk's, towards the provider it registers to. UDP to an IP
        address only, which is all the trunk sends (it resolves its provider itself); False
        otherwise. SIP stacks ignore such a datagram on UDP (we do: ``_datagram``)."""
        host = target.host.strip("[]")
        if (target.transport.lower() != "udp" or not _is_ip(host) or unreachable(host)
                or not 0 < target.port < 65536):
            logger.debug("x not sending a keep-alive to %s %s:%d", target.transport, host,
                         target.port)
            return False
        logger.debug("> udp %s:%d keep-alive", host, target.port)
        return self._sendto(PING, (host, target.port))

    def _sendto(self, data: bytes, address: tuple[str, int]) -> bool:
        """False when the datagram cannot go to ADDRESS (no socket, an error from the
        kernel). One queued, or dropped from a full queue, counts as sent: congestion is
        loss, which retransmissions recover, not a transport error that would end its
        transaction."""
        sock = self._udp
        if sock is None:
            return False
        if sock.family == socket.AF_INET6 and ":" not in address[0]:
            # Listening on `::` (dual stack): an IPv4 destination, such as the provider the
            # trunk resolved for itself, is reached v4-mapped; as a bare IPv4 string the
            # kernel refuses it ("Address family for hostname not supported").
            address = ("::ffff:" + address[0], address[1])
        if self._udp_queue:  # older datagrams wait for room: go behind them
            self._queue_datagram(data, address)
            return True
        try:
            sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            self._queue_datagram(data, address)
            assert self._loop is not None  # noqa: S101 - set by start() with self._udp
            self._loop.add_writer(sock.fileno(), self._udp_writable)
        except (OSError, ValueError) as err:
            logger.debug("x udp %s:%d: %s", *address, err)
            return err.errno == errno.ENOBUFS if isinstance(err, OSError) else False
        return True

    def _queue_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        if len(self._udp_queue) < UDP_SEND_QUEUE:
            self._udp_queue.append((data, address))
            return
        self._udp_dropped += 1
        assert self._loop is not None  # noqa: S101 - set by start() with self._udp
        now = self._loop.time()
        if now - self._udp_drop_logged_at > 60:
            self._udp_drop_logged_at = now
            logger.warning("x udp send buffer full and %d datagrams queued; %d dropped so far",
                           len(self._udp_queue), self._udp_dropped)

    def _udp_writable(self) -> None:
        """Room in the UDP socket's send buffer: send what waits, oldest first."""
        sock, queue = self._udp, self._udp_queue
        if sock is None:
            return
        while queue:
            data, address = queue[0]
            try:
                sock.sendto(data, address)
            except (BlockingIOError, InterruptedError):
                return  # full again: the writer stays registered
            except (OSError, ValueError) as err:
                logger.debug("x udp %s:%d: %s", *address, err)
            queue.popleft()
        assert self._loop is not None  # noqa: S101 - set by start() with self._udp
        self._loop.remove_writer(sock.fileno())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve_and_send(self, data: bytes, host: str, port: int,
                                on_error: OnError) -> None:
        loop = asyncio.get_running_loop()
        # Only addresses our one UDP socket can send to: a provider's name that resolves to
        # IPv6 first must still reach its IPv4 address from an IPv4 socket (and an IPv6
        # socket gets IPv4 addresses v4-mapped).
        family = self._udp.family if self._udp is not None else socket.AF_UNSPEC
        flags = socket.AI_V4MAPPED if family == socket.AF_INET6 else 0
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                infos = await loop.getaddrinfo(host, port, family=family,
                                               type=socket.SOCK_DGRAM, flags=flags)
        except (OSError, TimeoutError, ValueError) as err:
            # ValueError: UnicodeError from the IDNA codec, for a name the URI grammar
            # takes but DNS cannot ("a..b", a label over 63 characters).
            logger.warning("x cannot resolve %s: %s", host, str(err) or type(err).__name__)
            _report((on_error,))
            return
        for info in infos:
            address = str(info[4][0])
            if not unreachable(address):
                if not self._sendto(data, (address, port)):
                    _report((on_error,))
                return
        _report((on_error,))

    def _open_and_send(self, data: bytes, host: str, port: int, on_error: OnError) -> bool:
        """Connect to HOST:PORT and send DATA there: False when no connect is allowed;
        ON_ERROR is called if the connect then fails. The connection is not trusted (see
        ``trust``), whatever DATA is: peers choose where many of our connects go (a
        response's Via, an in-dialog request's top Route)."""
        key = (host, port)
        pending = self._connecting.get(key)
        if pending is not None:  # a connect is under way: queue behind it
            pending.append((data, on_error))
            return True
        # Peers choose where some of our connects go (a response's Via sent-by port once
        # their connection has closed): per host, connects under way and connections open
        # share max_per_source, so one host cannot hold many connects (up to
        # connect_timeout each) and, through them, the handler slots (max_pending).
        busy = self._per_source.get(host, 0) + sum(h == host for h, _ in self._connecting)
        if busy >= self.limits.max_per_source:
            if self._connect_drops.due(asyncio.get_running_loop().time()):
                logger.warning("x tcp to %s:%d: %d connections there already; dropped "
                               "(%d so far)", *key, busy, self._connect_drops.count)
            return False
        self._connecting[key] = [(data, on_error)]
        self._spawn(self._connect(key))
        return True

    async def _connect(self, key: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(self.limits.connect_timeout):
                    _, protocol = await loop.create_connection(
                        lambda: _Stream(self, outgoing=True), key[0], key[1])
            finally:  # connected, failed or cancelled (stop): the connect is over
                pending = self._connecting.pop(key, [])
        except (OSError, TimeoutError, ValueError) as err:  # ValueError: see _resolve_and_send
            logger.warning("x tcp connect to %s:%d failed (%s); %d message(s) dropped",
                           *key, str(err) or type(err).__name__, len(pending))
            _report(on_error for _, on_error in pending)
            return
        conn = protocol.conn
        for sent, (data, _) in enumerate(pending):
            if not conn.write(data):
                # Refused at our limits (_admit), or closed at once: none of the rest went.
                logger.warning("x tcp %s:%d closed before sending; %d message(s) dropped",
                               *key, len(pending) - sent)
                _report(on_error for _, on_error in pending[sent:])
                return
