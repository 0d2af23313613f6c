"""Hypothesis fuzzing of the RCML parsers: whatever the bytes, parse_voice, parse_document and
parse_response return a value or raise RcmlError, never anything else. A document the parser
accepts also runs through the interpreter without an exception."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.rcml.interpreter import (
    CollectDigits,
    DialAction,
    DialDone,
    DialStatus,
    DigitsCollected,
    DocumentFetched,
    Done,
    FetchDocument,
    Finished,
    GatherEnd,
    Interpreter,
    RecordAction,
    RecordingDone,
    SendSms,
    SmsQueued,
)
from appliance.rcml.parse import RcmlError, parse_document, parse_response, parse_voice
from appliance.rcml.verbs import Document

DATA = Path(__file__).parents[1] / "data" / "rcml"
CORPUS = [p.read_bytes() for p in sorted(DATA.glob("*.xml"))]
SPECIAL = [b"<", b">", b"</", b"/>", b"&", b"&amp;", b"&#x0;", b";", b'"', b"'", b"=",
           b"<Gather>", b"<Dial>", b"<Say>", b"<Number>", b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
           b"<![CDATA[", b"]]>", b"<!--", b"-->", b" finishOnKey=\"", b" timeout=\"",
           b"\x00", b"\xff", b"\xef\xbb\xbf", b"xmlns:a=\"u\" "]
TAGS = ["Response", "Say", "Play", "Pause", "Gather", "Record", "Dial", "Number", "Client",
        "Sip", "Conference", "Hangup", "Redirect", "Reject", "Sms", "Fax", "say", "Uri"]
ATTRS = ["action", "method", "timeout", "finishOnKey", "numDigits", "loop", "length", "voice",
         "maxLength", "playBeep", "record", "timeLimit", "reason", "hints", "input", "to",
         "statusCallbackEvent", "beep", "maxParticipants", "url"]
VALUES = ["", "GET", "post", "-1", "0", "5", "99999999999", "#", "*#12", "abc", "true",
          "false", "busy", "dtmf speech", "initiated,bogus", "a," * 60, "/x", "http://h/y"]

MAX_STEPS = 200


def check(data: bytes) -> None:
    try:
        parse_document(data)
    except RcmlError as err:
        assert err.code in (12100, 12300)
    try:
        doc = parse_voice(data)
    except RcmlError as err:
        assert err.code in (12100, 12300)
        return
    run(doc, data)


def run(doc: Document, data: bytes) -> None:
    """Drive the interpreter with plausible results; it must finish within the budget."""
    interp = Interpreter(doc, call_sid="CA1", base_params={"From": "a", "To": "b"},
                         document_url="http://h/app", max_redirects=3, max_verbs=50)
    action = interp.start(0.0)
    for step in range(MAX_STEPS):
        if isinstance(action, Finished):
            return
        result: object = Done()
        if isinstance(action, CollectDigits):
            result = DigitsCollected("1#", GatherEnd.FINISH_KEY)
        elif isinstance(action, RecordAction):
            result = RecordingDone("file:///r.wav", 1.0, "#")
        elif isinstance(action, DialAction):
            result = DialDone(DialStatus.COMPLETED, "CA2", 3)
        elif isinstance(action, SendSms):
            result = SmsQueued("SM1")
        elif isinstance(action, FetchDocument):
            result = DocumentFetched(data)
        action = interp.resume(result, float(step))  # type: ignore[arg-type]
    raise AssertionError("the interpreter did not finish within its budgets")


def element(draw: st.DrawFn, depth: int) -> bytes:
    tag = draw(st.sampled_from(TAGS))
    attrs = b"".join(
        f' {name}="{value}"'.encode()
        for name, value in draw(st.dictionaries(st.sampled_from(ATTRS), st.sampled_from(VALUES),
                                                max_size=3)).items())
    inner = draw(st.sampled_from([b"", b"+15551234567", b"client:alice", b"bob@h", b"/next"]))
    if depth < 2:
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            inner += element(draw, depth + 1)
    return b"<" + tag.encode() + attrs + b">" + inner + b"</" + tag.encode() + b">"


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """Well-formed documents built from RCML's own vocabulary: reaches the validators."""
    body = b"".join(element(draw, 1) for _ in range(draw(st.integers(0, 5))))
    return b"<Response>" + body + b"</Response>"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_documents(data: bytes) -> None:
    check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_corpus(data: bytes) -> None:
    check(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=500), st.sampled_from(["text/xml", "text/plain", "audio/wav",
                                                  "application/json", "", ";;"]))
def test_parse_response(data: bytes, content_type: str) -> None:
    try:
        parse_response(data, content_type, "http://h/x")
    except RcmlError as err:
        assert err.code in (12100, 12300)
