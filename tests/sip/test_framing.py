"""TCP stream framing: keep-alives, Content-Length, limits, arbitrary chunking."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sip import framing
from appliance.sip.errors import FramingError
from appliance.sip.framing import FramingLost, KeepAlive, StreamFramer
from appliance.sip.message import parse_message
from appliance.sip.udp_intake import is_keepalive

DATA = Path(__file__).parents[1] / "data" / "sip"
STREAMABLE = ["register.msg", "invite_sdp.msg", "unknown_headers.msg", "compact.msg"]
MESSAGES = [(DATA / n).read_bytes() for n in STREAMABLE]


def test_messages_and_pings_in_one_read() -> None:
    framer = StreamFramer()
    stream = b"\r\n\r\n" + MESSAGES[0] + b"\r\n\r\n" + MESSAGES[1] + b"\r\n"
    out = framer.feed(stream)
    assert out == [KeepAlive(), MESSAGES[0], KeepAlive(), MESSAGES[1]]
    assert framer.buffered == 2  # a lone CRLF waits: it may be half a ping
    assert framer.feed(b"\r\n") == [KeepAlive()]


def test_lone_crlf_before_a_message_is_skipped() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(MESSAGES[2]) == [MESSAGES[2]]
    assert framer.buffered == 0


def test_split_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r") == []
    assert framer.feed(b"\n") == [KeepAlive()]


def test_compact_content_length_frames() -> None:
    assert StreamFramer().feed(MESSAGES[3] + MESSAGES[3]) == [MESSAGES[3], MESSAGES[3]]


@settings(max_examples=100)
@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40))
def test_any_chunking_gives_the_same_messages(sizes: list[int]) -> None:
    stream = b"".join(m + b"\r\n\r\n" for m in MESSAGES)
    framer = StreamFramer()
    out: list[bytes | KeepAlive] = []
    pos = 0
    for size in sizes * (len(stream) // sum(sizes) + 1):
        out += framer.feed(stream[pos : pos + size])
        pos += size
        if pos >= len(stream):
            break
    expected: list[bytes | KeepAlive] = []
    for m in MESSAGES:
        expected += [m, KeepAlive()]
    assert out == expected
    assert all(isinstance(parse_message(m), object) for m in out if isinstance(m, bytes))


@pytest.mark.parametrize(
    "stream",
    [
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n",  # no Content-Length
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: x\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab",
    ],
)
def test_bad_framing(stream: bytes) -> None:
    with pytest.raises(FramingError):
        StreamFramer().feed(stream)


def test_framing_lost_keeps_what_came_before_it() -> None:
    broken = b"OPTIONS sip:y SIP/2.0\r\nCall-ID: bad\r\nContent-Length: x\r\n\r\n"
    framer = StreamFramer()
    with pytest.raises(FramingLost) as caught:
        framer.feed(MESSAGES[0] + b"\r\n\r\n" + broken + MESSAGES[1])
    assert caught.value.framed == [MESSAGES[0], KeepAlive()]
    assert caught.value.rest.startswith(broken)
    assert isinstance(caught.value, FramingError)


def test_limits() -> None:
    with pytest.raises(FramingError):
        StreamFramer(max_header=100).feed(b"OPTIONS sip:x SIP/2.0\r\nX: " + b"a" * 200)
    with pytest.raises(FramingError):
        StreamFramer(max_header=100).feed(
            b"OPTIONS sip:x SIP/2.0\r\nX: " + b"a" * 200 + b"\r\n\r\n"
        )
    with pytest.raises(FramingError):
        StreamFramer(max_message=500).feed(b"MESSAGE sip:x SIP/2.0\r\nContent-Length: 1000\r\n\r\n")
    # Below the limit a partial message just waits.
    assert StreamFramer().feed(b"OPTIONS sip:x SIP/2.0\r\nX: y") == []


def test_udp_keepalive() -> None:
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n")
    assert not is_keepalive(b"") and not is_keepalive(MESSAGES[0])
    assert is_keepalive(b"\n\r") and not is_keepalive(b"\r\nX") and not is_keepalive(b"X\r\n")


# --- what a peer's byte stream can do (the transport audit) ----------------------------------

STREAM = b"\r\n\r\n".join([MESSAGES[0], MESSAGES[1], MESSAGES[3]]) + b"\r\n\r\n"
FRAMED: list[bytes | KeepAlive] = [MESSAGES[0], KeepAlive(), MESSAGES[1], KeepAlive(),
                                   MESSAGES[3], KeepAlive()]


def test_a_stream_split_at_every_point_gives_the_same_messages() -> None:
    """Every place one read can end and the next begin: inside a start line, a header name,
    the blank line, the body, a ping, between two messages."""
    for cut in range(1, len(STREAM)):
        framer = StreamFramer()
        out = framer.feed(STREAM[:cut]) + framer.feed(STREAM[cut:])
        assert out == FRAMED, cut
        assert framer.buffered == 0


def test_a_stream_fed_one_byte_at_a_time() -> None:
    framer = StreamFramer()
    out: list[bytes | KeepAlive] = []
    for i in range(len(STREAM)):
        out += framer.feed(STREAM[i : i + 1])
    assert out == FRAMED and framer.buffered == 0


def test_several_messages_and_pings_in_one_read() -> None:
    assert StreamFramer().feed(STREAM) == FRAMED


def test_missing_content_length_on_a_stream_loses_framing_at_that_message() -> None:
    """RFC 3261 §20.14: Content-Length is mandatory on a stream; without it the end of the
    body cannot be known. The transport answers REST's head 400 and closes."""
    bare = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKnocl\r\n\r\n"
    with pytest.raises(FramingLost) as caught:
        StreamFramer().feed(MESSAGES[0] + bare + MESSAGES[1])
    assert caught.value.framed == [MESSAGES[0]]
    assert caught.value.rest.startswith(bare)
    assert "no Content-Length" in str(caught.value)


def test_a_content_length_over_the_limit_fails_before_the_body_arrives() -> None:
    head = b"MESSAGE sip:x SIP/2.0\r\nContent-Length: 999999999\r\n\r\n"
    with pytest.raises(FramingLost, match="exceeds"):
        StreamFramer(max_message=4000).feed(head)


def test_a_head_that_never_ends_is_bounded_by_the_smaller_limit() -> None:
    """Fed a byte at a time, a header block without its blank line is given up as soon as it
    passes the header limit, or the message limit when that is smaller: the framer never
    buffers more than that for one connection."""
    for max_header, max_message in ((100, 4000), (4000, 300)):
        framer = StreamFramer(max_header=max_header, max_message=max_message)
        limit = min(max_header, max_message)
        endless = b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * 2000
        with pytest.raises(FramingLost, match="no end of headers"):
            for i in range(len(endless)):
                framer.feed(endless[i : i + 1])
                assert framer.buffered <= limit
        assert framer.buffered == limit + 1


def test_mid_message_tells_a_started_message_from_a_ping_in_the_making() -> None:
    framer = StreamFramer()
    assert not framer.mid_message
    for part in (b"\r", b"\n", b"\r"):  # the start of a ping: not a message yet
        framer.feed(part)
        assert not framer.mid_message
    framer.feed(b"\n")
    assert not framer.mid_message and framer.buffered == 0
    framer.feed(MESSAGES[0][:10])
    assert framer.mid_message
    assert framer.feed(MESSAGES[0][10:]) == [MESSAGES[0]]
    assert not framer.mid_message


def test_a_message_trickling_in_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head and body sent a byte at a time: the head's Content-Length is parsed once, not
    once per read (a slow-loris would otherwise buy a header parse per byte it sends)."""
    parsed: list[bytes] = []
    real = framing._content_length

    def counting(head: bytes) -> int:
        parsed.append(head)
        return real(head)

    monkeypatch.setattr(framing, "_content_length", counting)
    message = MESSAGES[1]  # INVITE with an SDP body
    framer = StreamFramer()
    out: list[bytes | KeepAlive] = []
    for stream in (message, b"\r\n\r\n" + message):
        for i in range(len(stream)):
            out += framer.feed(stream[i : i + 1])
    assert out == [message, KeepAlive(), message]
    assert len(parsed) == 2
