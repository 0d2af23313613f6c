"""The UDP socket's read loop: each datagram read, checked and answered or handed on.

Theory of operation. ``Transport`` owns the UDP socket and watches it with
``loop.add_reader``; each wake-up calls ``UdpIntake.drain``, which reads up to ``batch``
datagrams with ``recvfrom`` and takes each one, in arrival order, through the first checks
of the transport's path (its module docstring): a source the ``is_blocked`` hook names is
dropped, a CRLF ping ignored, an oversized datagram handed to ``oversize`` (513 or nothing),
and a datagram starting ``REGISTER `` offered to ``quick`` (``FrontDoor.quick``); its
reply goes out at once, anything it declines goes to ``general`` (parsed, stamped and
handled by the transport). This loop runs for every datagram, so it is compiled with the
registrar (``appliance.accel``): interpreted, it cost about a tenth of a REGISTER pair.

A reply from ``quick`` is sent with ``sendto`` here when nothing waits in the transport's
send queue (QUEUE, shared) and the socket needs no v4-mapped address; otherwise, or when
``sendto`` raises, it goes through ``send`` (``Transport._sendto``), which queues, maps and
logs as for any other datagram. An ICMP error reported by ``recvfrom`` (a phone that went
away, where the kernel reports it) is logged and reading goes on; any other error ends the
wake-up. The socket is ``sock``, which the transport replaces or clears (``None``: closed).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from appliance.addresses import unmapped

# The transport's logger: these lines are the transport's, wherever the loop runs.
logger = logging.getLogger("appliance.sip.transport")

BUFFER_SIZE: Final = 65536  # recvfrom size: any datagram, IPv4 or IPv6 (65527)

_CR_LF: Final = (13, 10)

Source = tuple[str, int]


def is_keepalive(datagram: bytes) -> bool:
    """A UDP datagram made only of CRLFs (a ping; we accept them on UDP too). Its first
    byte is looked at before any copy: this is asked of every datagram."""
    return (bool(datagram) and datagram[0] in _CR_LF
            and not datagram.strip(b"\r\n"))


class UdpIntake:
    """Reads and dispatches the datagrams of ``sock`` (see the module docstring)."""

    def __init__(self, sock: Any, *, mapped: bool, batch: int, max_message: int,
                 queue: deque[tuple[bytes, Source]],
                 is_blocked: Callable[[str, int], bool] | None,
                 quick: Callable[[bytes, Source], bytes | None] | None,
                 oversize: Callable[[bytes, Source], None],
                 general: Callable[[bytes, Source], None],
                 send: Callable[[bytes, Source], bool]) -> None:
        # Any: the transport's socket, or a test's stand-in for it.
        self.sock: Any = sock
        self.mapped = mapped  # a dual-stack socket: IPv4 peers come, and go, v4-mapped
        self.batch = batch
        self.max_message = max_message
        self.queue = queue
        self.is_blocked = is_blocked
        self.quick = quick
        self.oversize = oversize
        self.general = general
        self.send = send

    def drain(self) -> None:
        """The socket is readable: handle what it holds, at most ``batch`` datagrams."""
        sock = self.sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        mapped = self.mapped
        for _ in range(self.batch):
            try:
                data, address = recvfrom(BUFFER_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                # An ICMP error (port unreachable from a phone that went away, mostly, where
                # the kernel reports it) is reported once, by this call: log it and read on.
                # Anything else (the socket closed under us) ends this wake-up.
                logger.debug("x udp: %s", err)
                if isinstance(err, ConnectionError) and self.sock is sock:
                    continue
                return
            host: str = address[0]
            port: int = address[1]
            self.datagram(data, (unmapped(host) if mapped else host, port))

    def datagram(self, data: bytes, source: Source) -> None:
        if self.is_blocked is not None and self.is_blocked(source[0], source[1]):
            return
        if is_keepalive(data):
            return  # a CRLF ping on UDP: tolerated, not answered (RFC 5626 uses STUN there)
        if len(data) > self.max_message:
            self.oversize(data, source)
            return
        if self.quick is not None and data.startswith(b"REGISTER "):
            try:
                reply = self.quick(data, source)
            except Exception:
                logger.exception("x quick REGISTER from %s:%d failed; dropped", *source)
                return
            if reply is not None:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("< udp %s:%d REGISTER answered %s", *source,
                                 reply[8:reply.find(b"\r\n")].decode(errors="replace"))
                self._reply(reply, source)
                return
        self.general(data, source)

    def _reply(self, data: bytes, source: Source) -> None:
        sock = self.sock
        if sock is not None and not self.queue and not self.mapped:
            try:
                sock.sendto(data, source)
                return
            except (OSError, ValueError):
                pass  # the transport's send queues it (a full buffer), or logs why not
        self.send(data, source)
