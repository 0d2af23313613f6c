"""Hypothesis fuzzing of parse_message: it returns a message or raises SipParseError, never
anything else; and whatever it accepts survives a serialise/parse round trip."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.sip.errors import SipParseError
from appliance.sip.message import Request, Response, parse_message

DATA = Path(__file__).parents[1] / "data" / "sip"
CORPUS = [p.read_bytes() for p in sorted(DATA.glob("*.msg"))]
# Bytes that matter to the grammar, so mutations hit interesting paths more often.
SPECIAL = [b"\r\n", b"\r\n ", b":", b";", b",", b'"', b"\\", b"<", b">", b"[", b"]", b" ",
           b"\x00", b"\xff", b"%", b"=", b"/", b"SIP/2.0", b"Content-Length: 99999", b"l: 1"]


def check(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as err:
        assert 400 <= err.status <= 599
        return
    assert isinstance(msg, Request | Response)
    again = parse_message(bytes(msg))
    assert fields(again) == fields(msg)  # Content-Length aside: it is always rewritten
    assert again.body == msg.body


def fields(msg: Request | Response) -> list[tuple[str, str]]:
    return [(h.name, h.value) for h in msg.headers if h.name != "content-length"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500))
def test_random_bytes(data: bytes) -> None:
    check(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if action == "insert":
            data[pos:pos] = draw(st.sampled_from(SPECIAL) | st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(min_value=1, max_value=10))]
        elif action == "replace" and pos < len(data):
            data[pos] = draw(st.integers(min_value=0, max_value=255))
        elif action == "truncate":
            del data[pos:]
    return bytes(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_corpus(data: bytes) -> None:
    check(data)
