"""NullMediaEngine: the MediaEngine without audio, and honest about it."""

from __future__ import annotations

import asyncio

import pytest

from appliance.media.engine import (
    CommandFailed,
    DtmfReceived,
    HangupCause,
    LegChanged,
    LegId,
    LegNotFound,
    LegState,
    MediaEngine,
    MediaEvent,
    NoCapacity,
    PlayFinished,
    RecordFinished,
)
from appliance.media.null import NullMediaEngine
from appliance.media.pool import WorkerPool


def test_both_engines_satisfy_the_protocol() -> None:
    engines: list[MediaEngine] = [NullMediaEngine(), WorkerPool()]  # checked by mypy too
    assert len(engines) == 2


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_incoming_call_play_record_hangup(tmp_path) -> None:
    engine = NullMediaEngine()
    events: list[MediaEvent] = []
    engine.subscribe(events.append)
    slot = await engine.reserve_incoming()
    engine.simulate_incoming(slot.leg, from_uri="sip:a@b")
    await engine.answer(slot.leg)
    await engine.play(slot.leg, "/x.wav")
    await engine.record(slot.leg, str(tmp_path / "r.wav"), max_seconds=5)
    engine.simulate_dtmf(slot.leg, "12")
    await engine.hangup(slot.leg)
    await settle()
    leg = slot.leg
    assert events == [
        LegChanged(leg, LegState.INCOMING, from_uri="sip:a@b"),
        LegChanged(leg, LegState.ANSWERED, 200),
        PlayFinished(leg, "/x.wav", audio=False),
        RecordFinished(leg, str(tmp_path / "r.wav"), 0.0, audio=False),
        DtmfReceived(leg, "1"), DtmfReceived(leg, "2"),
        LegChanged(leg, LegState.ENDED, 200, "hangup", HangupCause.NORMAL),
    ]
    assert not (tmp_path / "r.wav").exists()  # it does not pretend to have recorded


async def test_dial_bridge_conference_and_errors() -> None:
    engine = NullMediaEngine(max_legs=2)
    events: list[MediaEvent] = []
    engine.subscribe(events.append)
    a = await engine.dial("sip:a@b")
    b = await engine.dial("sip:c@d", near=a)
    with pytest.raises(NoCapacity):
        await engine.dial("sip:e@f")
    await engine.bridge(a, b)
    await engine.conference_join(a, "room")
    await engine.send_dtmf(a, "9")
    assert engine.sent_dtmf == [(a, "9")]
    with pytest.raises(CommandFailed):
        await engine.answer(a)  # already answered
    with pytest.raises(LegNotFound):
        await engine.play(LegId("nope"), "/x.wav")
    engine.simulate_hangup(b)
    await settle()
    states = [(e.leg, e.state) for e in events if isinstance(e, LegChanged)]
    assert states == [(a, LegState.RINGING), (a, LegState.ANSWERED), (b, LegState.RINGING),
                      (b, LegState.ANSWERED), (b, LegState.ENDED)]


async def test_reject() -> None:
    engine = NullMediaEngine()
    events: list[MediaEvent] = []
    engine.subscribe(events.append)
    engine.simulate_incoming(LegId("L"))
    await engine.reject(LegId("L"), code=486)
    await settle()
    assert isinstance(events[-1], LegChanged) and events[-1].cause is HangupCause.BUSY
