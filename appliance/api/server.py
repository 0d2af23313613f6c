"""The API's HTTP server: aiohttp's runner and listening socket, with connection limits.

aiohttp itself accepts every connection and keeps each one open for an hour without a
request, so a host on the LAN opening thousands of silent (or one-byte-a-second) connections
used up the process's file descriptors: the admin API and new SIP-over-TCP phones stopped
working. Here, as the SIP transport does for its own connections (docs/sip.md, Limits):

- at most MAX_PER_ADDRESS connections from one source address and MAX_CONNECTIONS in all; a
  connection beyond either is answered 503 at once and closed (the newest is the one refused:
  those already open may be an administrator's);
- a connection must deliver its first request's headers within IDLE_TIMEOUT of connecting,
  and a kept-alive one its next request's within IDLE_TIMEOUT of the last response, or it is
  closed (aiohttp's keep-alive timer, which runs from the moment of connection).

The counting is ConnectionCount, without I/O; the handlers know nothing of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from appliance.addresses import unmapped
from appliance.api import http_log
from appliance.dualstack import dual_stack, dual_stack_listener

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 512  # in all: an office's browsers and scripts, far below the fd limit
MAX_PER_ADDRESS = 64  # one host: a browser opens ~6 per site, a busy script a few dozen
IDLE_TIMEOUT = 20.0  # seconds to the first request's headers, and between kept-alive requests
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
           b"Content-Length: 20\r\nRetry-After: 10\r\nConnection: close\r\n\r\n"
           b"Too many connections")


# At the cap in all, a newcomer from an address holding none takes the place of the oldest
# connection of the address holding the most, if it holds at least this many.
CROWDED = 4


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """The server's budgets; tests shrink them."""

    max_connections: int = MAX_CONNECTIONS
    max_per_address: int = MAX_PER_ADDRESS
    idle_timeout: float = IDLE_TIMEOUT


class ConnectionCount:
    """Open connections, in all and per source address, under LIMITS."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self._per_address: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        """Count a new connection from ADDRESS, or False (and count nothing) over a cap."""
        held = self._per_address.get(address, 0)
        if self.total >= self.limits.max_connections or held >= self.limits.max_per_address:
            return False
        self._per_address[address] = held + 1
        self.total += 1
        return True

    def held(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def release(self, address: str) -> None:
        held = self._per_address.get(address, 0)
        if held <= 1:
            self._per_address.pop(address, None)
        else:
            self._per_address[address] = held - 1
        self.total = max(0, self.total - 1)


class _GatedServer(web.Server):
    """aiohttp's connection manager for the app, with admission by ConnectionCount.

    The app's own Server (made by AppRunner) is taken over as it is: its request handler and
    factory stay the app's."""

    def __init__(self, inner: web.Server, count: ConnectionCount) -> None:
        self.__dict__.update(inner.__dict__)
        self._count = count
        self._admitted: dict[RequestHandler, str] = {}  # the oldest first
        self._refused = 0
        self._closed_for_room = 0

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        peer = transport.get_extra_info("peername")
        address = unmapped(str(peer[0])) if isinstance(peer, tuple) and peer else "?"
        if not self._count.admit(address) and not (self._make_room(address)
                                                   and self._count.admit(address)):
            self._refused += 1
            if self._refused == 1 or self._refused % 1000 == 0:
                logger.warning("x API connection from %s refused: %d open in all (caps %d, "
                               "%d per address); %d refused so far", address,
                               self._count.total, self._count.limits.max_connections,
                               self._count.limits.max_per_address, self._refused)
            transport.write(REFUSED)
            # Closed once the handler's start() has begun (it asserts it is still
            # connected): closed here, the loss would reach the handler first. The 503 is
            # flushed before the close.
            self._loop.call_soon(handler.force_close)
            return
        self._admitted[handler] = address

    def _make_room(self, address: str) -> bool:
        """At the cap in all, for a newcomer from ADDRESS holding no connection yet (the
        administrator, say): close the oldest connection of the address holding the most,
        when it holds at least ``CROWDED`` (hosts reconnecting from 8 addresses held all 512
        and kept everyone else out). False: nothing closed, the newcomer is refused."""
        if self._count.held(address) or self._count.total < self._count.limits.max_connections:
            return False
        crowded = max(set(self._admitted.values()), key=self._count.held, default=None)
        if crowded is None or self._count.held(crowded) < CROWDED:
            return False
        victim = next(h for h, a in self._admitted.items() if a == crowded)
        del self._admitted[victim]
        self._count.release(crowded)
        self._closed_for_room += 1
        if self._closed_for_room == 1 or self._closed_for_room % 1000 == 0:
            logger.warning("x API connection from %s closed to make room for %s: %d open in "
                           "all (%d closed so far)", crowded, address, self._count.total,
                           self._closed_for_room)
        victim.force_close()
        return True

    def connection_lost(self, handler: RequestHandler,
                        exc: BaseException | None = None) -> None:
        address = self._admitted.pop(handler, None)
        if address is not None:
            self._count.release(address)
        super().connection_lost(handler, exc)


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, count: ConnectionCount, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._count = count

    async def _make_server(self) -> web.Server:
        return _GatedServer(await super()._make_server(), self._count)


class _Site(web.SockSite):
    """aiohttp's SockSite, with the TLS handshake bounded by HANDSHAKE_TIMEOUT. Under TLS the
    server sees a connection only once its handshake is over, so neither the caps nor the
    deadline apply before: a client that connects and never sends its ClientHello would
    hold its socket for asyncio's default 60 s, and many of them the descriptors."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *,
                 ssl_context: ssl.SSLContext | None, handshake_timeout: float) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None  # noqa: S101 - set by the runner's setup()
        extra: dict[str, Any] = {}
        if self._ssl_context is not None:
            extra["ssl_handshake_timeout"] = self._handshake_timeout
        self._server = await asyncio.get_running_loop().create_server(
            server, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog, **extra)


class ApiServer:
    """The app served on one listening address until stop()."""

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.count = ConnectionCount(limits or ConnectionLimits())
        self._runner: _Runner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, app: web.Application, host: str, port: int,
                    ssl_context: ssl.SSLContext | None) -> None:
        self._runner = _Runner(app, self.count, access_log=None, handle_signals=False,
                               logger=http_log.server_logger(),
                               keepalive_timeout=self.count.limits.idle_timeout)
        await self._runner.setup()
        site: web.BaseSite
        deadline = self.count.limits.idle_timeout
        if dual_stack(host):  # TCPSite would make it IPv6-only
            site = _Site(self._runner, dual_stack_listener(port), ssl_context=ssl_context,
                         handshake_timeout=deadline)
        elif ssl_context is not None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            site = _Site(self._runner, socket.create_server((host, port), family=family),
                         ssl_context=ssl_context, handshake_timeout=deadline)
        else:
            site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        if self._runner.addresses:
            self.address = tuple(self._runner.addresses[0][:2])  # type: ignore[assignment]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

