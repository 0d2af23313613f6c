"""The seam between the SIP transport and the SIP services (registrar, proxy).

The transport turns datagrams and TCP streams into `Incoming` messages and hands them to a
`MessageHandler`; services answer and forward through a `Sender`. Neither side sees sockets
or the other's internals, so services are tested with a fake Sender and the transport with a
fake handler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from appliance.sip.message import Request, Response


@dataclasses.dataclass(frozen=True, slots=True)  # slots: lingering transactions keep one each
class Target:
    """Where to send: a transport, an address, and the TCP connection to reuse if any."""

    transport: str  # "udp" or "tcp"
    host: str
    port: int
    connection_id: str | None = None  # reuse this TCP connection (the phone's own) if open


@dataclasses.dataclass(frozen=True, slots=True)
class Incoming:
    """A parsed message and where it came from."""

    message: Request | Response
    transport: str  # "udp" or "tcp"
    source: tuple[str, int]  # the packet's source address (after NAT)
    local: tuple[str, int]  # our address it arrived on
    connection_id: str | None = None  # the TCP connection it arrived on


class Sender(Protocol):
    def send(self, message: Request | Response, target: Target,
             data: bytes | None = None, *,
             on_error: Callable[[], None] | None = None) -> bool | None:
        """Send MESSAGE, serialised unless DATA (its wire form, from a transaction that keeps
        it for retransmissions) is given; failures are logged by the transport, never raised.
        False when MESSAGE certainly did not go out (its transaction then reports a transport
        error to its TU, RFC 3261 §17.1.4); True or None otherwise (it went, or may yet).
        When "may yet" turns out not to (a TCP connect that fails, a name that does not
        resolve), ON_ERROR is called, once, later, from the event loop; never after False."""


class KeepAliveSender(Protocol):
    def ping(self, target: Target) -> bool:
        """Send a keep-alive (a CRLFCRLF datagram, ``framing.PING``) to TARGET from our SIP
        socket, so the NAT mapping our requests to TARGET use is refreshed. Logged, never
        raised; False when it certainly did not go out."""


class Flows(Protocol):
    def trust(self, connection_id: str) -> None:
        """A phone registered on the TCP connection CONNECTION_ID (the registrar), or a
        request from a provider's address or a media worker was accepted on it (the
        proxy): keep it open while it idles as long as a registered phone's flow may (until
        then it idles only briefly: any stranger can connect)."""

    def distrust(self, connection_id: str) -> None:
        """No binding refers to CONNECTION_ID any more (unregistered, expired, its Client
        deleted or disabled): it idles only briefly again, counted from now."""


class Activity(Protocol):
    def vouch(self, connection_id: str) -> None:
        """A request on the TCP connection CONNECTION_ID was let through its source's
        unauthenticated budget (the front door): on a connection nobody authenticated on,
        only such requests count as activity, which keeps it open and from being closed to
        make room. A request refused (over budget, from a banned source) or one that costs
        no budget (an ACK, a retransmission, a response) would otherwise let a stranger
        hold connections for free."""


class MessageHandler(Protocol):
    async def handle(self, incoming: Incoming) -> None:
        """Process one message that parsed and passed the transport's checks."""

    def connection_closed(self, connection_id: str) -> None:
        """A TCP connection went away (bindings tied to it are unreachable)."""


class Targets:
    """One Target object per peer, shared by whatever refers to that peer (a phone's
    lingering transactions and calls: tens of thousands at a few hundred calls/s) instead of
    one per request. Bounded: emptied when full."""

    def __init__(self, limit: int = 4096) -> None:
        # Keyed by a plain tuple of the fields: hashed and compared in C, where the
        # dataclass's own __hash__/__eq__ would run Python code on every lookup.
        self._known: dict[tuple[str, str, int, str | None], Target] = {}
        self._limit = limit

    def get(self, transport: str, host: str, port: int,
            connection_id: str | None = None) -> Target:
        """The shared Target with these fields (made on first use)."""
        key = (transport, host, port, connection_id)
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= self._limit:
                self._known = {}
            self._known[key] = known = Target(transport, host, port, connection_id)
        return known

    def share(self, target: Target) -> Target:
        """The shared Target equal to TARGET (TARGET itself when it is the first)."""
        key = (target.transport, target.host, target.port, target.connection_id)
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= self._limit:
                self._known = {}
            self._known[key] = known = target
        return known

    def clear(self) -> None:
        self._known = {}  # a new dict: one sized for a burst would stay that size


def reply_target(incoming: Incoming) -> Target:
    """Where responses to INCOMING go: the packet's source address (forced rport, RFC 3581)
    over the transport it came on, on the same TCP connection while it is open."""
    host, port = incoming.source
    return Target(incoming.transport, host, port, incoming.connection_id)
