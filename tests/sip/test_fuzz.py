"""Hypothesis fuzzing of parse_message: it returns a message or raises SipParseError, never
anything else; and whatever it accepts survives a serialise/parse round trip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.sip import headers, message
from appliance.sip.errors import SipParseError
from appliance.sip.headers import DigestCredentials
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


# --- the fast paths give what the general code gives ----------------------------------------
# The parser, the sanity checks, make_response and the list splitters each have a fast path
# for the common shape of a message; the general code they stand in for is kept as the
# reference, and both must agree on everything (sip.md: "without losing any behaviour").


def _outcome(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except SipParseError as err:
        return ("error", str(err), err.status)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fast_paths_agree_with_the_general_code(data: bytes) -> None:
    head = data.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0]
    block = head.partition(b"\n")[2]
    assert _outcome(lambda: message._read_block(block)) == \
        _outcome(lambda: message._read_headers(block.split(b"\n") if block else []))
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    for header in msg.headers:
        assert headers.split_list(header.value) == _split_list_reference(header.value)
    again = parse_message(data)  # a second, independent message (validation caches views)
    assert _outcome(lambda: message._validate(msg)) == \
        _outcome(lambda: message._validate_by_table(again))
    if isinstance(msg, Request):
        fast = _outcome(lambda: bytes(message.make_response(msg, 486, to_tag="t1")))
        general = _outcome(lambda: bytes(message._response_from(
            message._pairs(msg.headers), 486, None, "t1")))
        assert fast == general
        for value in msg.get_all("authorization"):
            assert _outcome(lambda v=value: DigestCredentials.parse(v)) == \
                _outcome(lambda v=value: _digest_reference(v))


def _split_list_reference(value: str) -> list[str]:
    """split_list's character walk, without its shortcuts."""
    items: list[str] = []
    start, quoted, escaped, angle = 0, False, False, 0
    for i, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == "," and not angle:
            items.append(value[start:i].strip())
            start = i + 1
    items.append(value[start:].strip())
    return [item for item in items if item]


def _digest_reference(value: str) -> DigestCredentials:
    if not headers.is_utf8(value):
        raise SipParseError("digest credentials hold bytes that are not UTF-8")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise SipParseError(f"unsupported auth scheme {scheme!r}")
    params: dict[str, str] = {}
    for item in _split_list_reference(rest):
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise SipParseError(f"bad digest parameter {item!r}")
        key = name.strip().lower()
        if key in params:
            raise SipParseError(f"repeated digest parameter {key!r}")
        params[key] = headers.unquote(raw.strip())
    return DigestCredentials(params)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=' ,;"<>\\=abDigest\t', max_size=60))
def test_list_and_digest_splitting_agree_with_the_reference(text: str) -> None:
    assert headers.split_list(text) == _split_list_reference(text)
    value = "Digest " + text
    assert _outcome(lambda: DigestCredentials.parse(value)) == \
        _outcome(lambda: _digest_reference(value))
