"""The worker frame codec: round trips, malformed and oversize frames, and a bounded fuzz."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.media import protocol as p

SAMPLES: list[p.Frame] = [
    p.Dial(leg="CA1", uri="sip:bob@127.0.0.1:5060", headers={"X-Account": "AC1"},
           username="u", password="pw", timeout=30.0, id=1),
    p.Dial(leg="CA1", uri="sip:+15551234567@gw.example:5060", proxy="sip:127.0.0.1:5060;lr",
           from_uri="sip:+15557654321@gw.example", id=17),
    p.Answer(leg="CA1", id=2), p.Answer(leg="CA1", code=183, id=3),
    p.Reject(leg="CA1", code=503, id=4), p.Hangup(leg="CA1", id=5),
    p.Play(leg="CA1", file="/tmp/a.wav", loop=0, tag=2**53 - 1, id=6), p.Stop(leg="CA1", id=7),
    p.RecordStart(leg="CA1", file="/tmp/r.wav", max_seconds=12.5, silence_seconds=3.0, id=8),
    p.RecordStop(leg="CA1", id=9), p.SendDtmf(leg="CA1", digits="12*#A", id=10),
    p.Bridge(leg="CA1", other="CA2", id=11), p.Unbridge(leg="CA1", other="CA2", id=12),
    p.ConfJoin(leg="CA1", room="sales", id=13), p.ConfLeave(leg="CA1", id=14),
    p.ConfMute(leg="CA1", muted=False, id=21),
    p.Ping(id=15), p.Shutdown(id=16),
    p.PcmAttach(leg="CA1", device="/dev/ttyUSB1", id=18),
    p.PcmAttach(leg="CA1", device="/dev/pts/7", dtmf=False, id=19), p.PcmDetach(leg="CA1", id=20),
    p.Reply(re=1, ok=True), p.Reply(re=2, ok=False, error="no-slot", detail="4 of 4"),
    p.Reply(re=3, ok=True, heartbeat_age=0.01),
    p.Ready(pid=10, worker="0", sip_port=5070, rtp_ports=(10000, 10249), max_calls=4),
    p.LegEvent(leg="CA1", state="incoming", from_uri="<sip:a@b>", to_uri="<sip:c@d>",
               call_id="x@y", headers={"X-Leg-Id": "CA1"}),
    p.LegEvent(leg="CA1", state="ended", code=486, reason="Busy Here"),
    p.DtmfEvent(leg="CA1", digit="#"),
    p.PlayDone(leg="CA1", file="/a.wav", interrupted=True, tag=3),
    p.RecordDone(leg="CA1", file="/r.wav", duration=1.5, reason="max-seconds"),
    p.Heartbeat(age=0.01, calls=2), p.ErrorEvent(code="no-slot", detail="x", leg="CA9"),
]


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: p.Frame) -> None:
    data = p.encode(frame)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert p.decode(data) == frame


def test_every_op_and_event_is_covered() -> None:
    ops = {f.OP for f in SAMPLES if isinstance(f, p.Command)}
    events = {f.EVENT for f in SAMPLES if isinstance(f, p.Event)}
    assert ops == set(p.COMMANDS) and events == set(p.EVENTS)


def test_wire_shape() -> None:
    assert json.loads(p.encode(p.Play(leg="CA1", file="/a.wav", id=7))) == {
        "op": "play", "id": 7, "leg": "CA1", "file": "/a.wav", "loop": 1, "tag": 0}
    assert json.loads(p.encode(p.DtmfEvent(leg="L", digit="5")))["event"] == "dtmf"


@pytest.mark.parametrize("line, error, id_", [
    (b"not json", p.MalformedFrame, None),
    (b"[1,2]", p.MalformedFrame, None),
    (b'{"op":"play"}', p.MalformedFrame, None),  # no id
    (b'{"op":"play","id":"7"}', p.MalformedFrame, None),
    (b'{"op":"fly","id":7}', p.UnknownOp, 7),
    (b'{"op":7,"id":7}', p.UnknownOp, 7),
    (b'{"op":"play","id":7,"leg":"CA1"}', p.MalformedFrame, 7),  # missing file
    (b'{"op":"play","id":7,"leg":"CA1","file":"/a","loop":"2"}', p.MalformedFrame, 7),
    (b'{"op":"play","id":7,"leg":"CA1","file":"/a","loop":true}', p.MalformedFrame, 7),
    (b'{"op":"play","id":7,"leg":"CA1","file":"/a","volume":3}', p.MalformedFrame, 7),
    (b'{"op":"play","id":7,"leg":"../x y","file":"/a"}', p.MalformedFrame, 7),
    (b'{"op":"answer","id":7,"leg":"CA1","code":404}', p.MalformedFrame, 7),
    (b'{"op":"send_dtmf","id":7,"leg":"CA1","digits":"12x"}', p.MalformedFrame, 7),
    (b'{"op":"dial","id":7,"leg":"L","uri":"tel:1"}', p.MalformedFrame, 7),
    (b'{"op":"dial","id":7,"leg":"L","uri":"sip:a@b","headers":{"Via":"x"}}',
     p.MalformedFrame, 7),
    (b'{"op":"dial","id":7,"leg":"L","uri":"sip:a@b","headers":{"X-A":"a\\r\\nB: c"}}',
     p.MalformedFrame, 7),
    (b'{"op":"dial","id":7,"leg":"L","uri":"sip:a@b","from_uri":"<sip:a@b>;tag=x"}',
     p.MalformedFrame, 7),
    (b'{"op":"dial","id":7,"leg":"L","uri":"sip:a@b","from_uri":"sip:a@b\\r\\nX: y"}',
     p.MalformedFrame, 7),
    (b'{"op":"record_start","id":7,"leg":"L","file":"/a","max_seconds":NaN}',
     p.MalformedFrame, 7),
    (b'{"event":"boom"}', p.MalformedFrame, None),
    (b'{"event":"leg","leg":"L","state":"flying"}', p.MalformedFrame, None),
    (b'{"event":"ready","pid":1,"worker":"0","sip_port":1,"rtp_ports":[1],"max_calls":4}',
     p.MalformedFrame, None),
    (b'{"re":1}', p.MalformedFrame, None),
    (b'{"hello":1}', p.MalformedFrame, None),
    (b"\xff\xfe", p.MalformedFrame, None),
    (b"[" * 100_00, p.MalformedFrame, None),
])
def test_bad_frames(line: bytes, error: type[p.ProtocolError], id_: int | None) -> None:
    with pytest.raises(error) as info:
        p.decode(line)
    assert type(info.value) is error
    assert info.value.id == id_


def test_oversize() -> None:
    big = b'{"op":"ping","id":1,"x":"' + b"a" * p.MAX_FRAME + b'"}'
    with pytest.raises(p.FrameTooLarge):
        p.decode(big)
    with pytest.raises(ValueError):
        p.encode(p.ErrorEvent(code="x", detail="y" * p.MAX_FRAME))


def test_commands_validate_on_construction() -> None:
    with pytest.raises(ValueError):
        p.Bridge(leg="A", other="A")
    with pytest.raises(ValueError):
        p.Play(leg="A", file="")


def test_frame_buffer_splits_and_skips_oversize_lines() -> None:
    buf = p.FrameBuffer(max_frame=10)
    assert buf.feed(b"abc\nde") == [b"abc"]
    assert buf.feed(b"f\n\n") == [b"def"]  # blank lines are ignored
    out = buf.feed(b"x" * 25)
    assert len(out) == 1 and isinstance(out[0], p.FrameTooLarge)
    assert buf.feed(b"y" * 25) == []  # still the same oversize line: one error only
    assert buf.feed(b"zz\nok\n") == [b"ok"]
    out = buf.feed(b"0123456789AB\nok2\n")
    assert isinstance(out[0], p.FrameTooLarge) and out[1:] == [b"ok2"]


def _check(data: bytes) -> None:
    try:
        frame = p.decode(data)
    except p.ProtocolError:
        return
    assert p.decode(p.encode(frame)) == frame


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_bytes(data: bytes) -> None:
    _check(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12)
_keys = st.sampled_from(["op", "id", "leg", "file", "loop", "code", "other", "digits", "uri",
                         "headers", "event", "re", "ok", "state", "room", "max_seconds",
                         "rtp_ports", "timeout"])
_values = st.sampled_from(sorted(p.COMMANDS) + sorted(p.EVENTS) + ["CA1", "/a.wav", "sip:a@b"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values | _json, max_size=7))
def test_fuzz_structured(body: dict[str, object]) -> None:
    _check(json.dumps(body).encode())
