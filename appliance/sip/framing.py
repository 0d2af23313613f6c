"""Cutting a TCP byte stream into SIP messages (RFC 3261 §18.3), bounded.

``StreamFramer.feed(data)`` returns the complete messages (as bytes, for ``parse_message``)
and keep-alive pings found so far; the rest waits in the buffer. On a stream the header
block ends at the first blank line and Content-Length is mandatory; a header block or body
over the limit (status 513), or a missing/garbled Content-Length (400), raises
``FramingLost`` (a ``FramingError``) and the transport must close the connection: once
framing is lost, nothing
after it can be trusted. What came before it can: the exception carries the messages framed
earlier in the same read (to be handled first) and the start of the bytes that could not be
framed (whose head the transport answers 400 or 513), not the start of the read.

Keep-alives (RFC 5626 §3.5.1): a client pings with CRLFCRLF between messages and the server
answers with a single CRLF. A lone CRLF (a pong, or the stray CRLFs RFC 3261 §7.5 tells us
to ignore) is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.sip.errors import FramingError
from appliance.sip.message import MAX_MESSAGE

# A header block needs far less than a whole message; Kamailio's default is 64 kB for the
# whole message, pjsip 4000 bytes. 16 KiB leaves room for long Route sets and
# Authorization headers while cutting a slow-loris header stream short.
MAX_HEADER_BLOCK = 16 * 1024
PONG = b"\r\n"
# RFC 5626 §4.4.1's ping, which we also send on UDP as a NAT keep-alive (sip.keepalive).
PING = b"\r\n\r\n"


@dataclass(frozen=True)
class KeepAlive:
    """A CRLFCRLF ping: answer it with ``PONG``."""


class FramingLost(FramingError):
    """Framing lost partway through a read: FRAMED came complete before the fault, REST is
    the start of what could not be framed (at most a header block's worth)."""

    def __init__(self, cause: FramingError, framed: list[bytes | KeepAlive], rest: bytes
                 ) -> None:
        super().__init__(str(cause), cause.status)
        self.framed = framed
        self.rest = rest


def _content_length(head: bytes) -> int:
    lengths: set[int] = set()
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            if not text.isdigit() or len(text) > 10:
                raise FramingError(f"bad Content-Length {text[:20]!r}")
            lengths.add(int(text))
    if not lengths:
        raise FramingError("no Content-Length on a stream")
    if len(lengths) > 1:
        raise FramingError("conflicting Content-Length headers")
    return lengths.pop()


class StreamFramer:
    """One per TCP connection."""

    def __init__(self, *, max_header: int = MAX_HEADER_BLOCK, max_message: int = MAX_MESSAGE):
        self._buffer = bytearray()
        self._max_header = max_header
        self._max_message = max_message
        # What is known of the message at the head of the buffer, so that a peer sending it
        # a few bytes at a time does not make every read search and parse it again (a 12 kB
        # head re-read per body byte cost ~0.2 ms, a slow-loris's CPU amplifier): how far
        # the search for the blank line has got, and the whole length once the head is read.
        self._scanned = 0
        self._total: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def mid_message(self) -> bool:
        """Whether the buffer holds the start of a message (not just what may become a
        ping): the transport times how long a message takes to complete from here."""
        buf = self._buffer
        return bool(buf) and not (len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)))

    def feed(self, data: bytes) -> list[bytes | KeepAlive]:
        self._buffer += data
        out: list[bytes | KeepAlive] = []
        while True:
            try:
                item = self._next()
            except FramingError as err:
                rest = bytes(self._buffer[: self._max_header + 4])
                raise FramingLost(err, out, rest) from err
            if item is None:
                return out
            out.append(item)

    def _next(self) -> bytes | KeepAlive | None:
        buf = self._buffer
        if self._total is None:
            head = self._head()
            if head is None or isinstance(head, KeepAlive):
                return head
        total = self._total
        assert total is not None  # noqa: S101 - _head sets it when it returns a length
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        self._total = None
        self._scanned = 0
        return message

    def _head(self) -> int | KeepAlive | None:
        """The whole length of the message starting the buffer once its head is in (a ping
        instead, or None while the head is incomplete)."""
        buf = self._buffer
        # Between messages: CRLFCRLF is a ping, a lone CRLF is skipped. b"\r\n" alone may be
        # the first half of a ping, so it waits for the next read.
        while buf[:2] == b"\r\n":
            self._scanned = 0
            if buf[:4] == b"\r\n\r\n":
                del buf[:4]
                return KeepAlive()
            if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                return None  # may still become a ping
            del buf[:2]
        # The blank line may straddle the end of what was searched before.
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            self._scanned = len(buf)
            # A head longer than the message limit belongs to no acceptable message: when
            # max_message is the smaller, it, not max_header, bounds a connection's buffer.
            # Either way the message is too large for us: 513 (answered when the lines
            # within the limit hold a Via to answer along).
            limit = min(self._max_header, self._max_message)
            if len(buf) > limit:
                raise FramingError(f"no end of headers within {limit} bytes", 513)
            return None
        if end > self._max_header:
            raise FramingError(f"header block of {end} bytes exceeds {self._max_header}",
                               513)
        length = _content_length(bytes(buf[:end]))
        total = end + 4 + length
        if total > self._max_message:
            raise FramingError(f"message of {total} bytes exceeds {self._max_message}",
                               513)
        self._total = total
        return total
