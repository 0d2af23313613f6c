"""A live redirect (POST Calls/{sid} Url=) or a graceful stop in the middle of a verb, end to
end with real pjsua2 phones (the ``voice`` fixture of test_voice_apps.py: one appliance, one
media worker, Clients alice and bob).

What the phone hears is read from its recording in quarter seconds: the new document's
prompts must be heard in full, not cut short by the end of the prompt they replaced.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_SID
from tests.media.audio import read_samples, tone_share, write_tone

pytest.importorskip("pjsua2")

CALLS = f"Accounts/{ADMIN_SID}/Calls"


def seconds_of(path: Path, freq: float) -> float:
    """How long FREQ is heard in the WAV at PATH, in quarter seconds."""
    samples, rate = read_samples(path)
    step = rate // 4
    return 0.25 * sum(1 for i in range(0, len(samples) - step, step)
                      if tone_share(list(samples[i:i + step]), rate, freq) > 0.5)


async def _call_bob(api: Any, rcml: Any, path: str, **extra: str) -> str:
    status, body, _ = await api.post(f"{CALLS}.json", {"From": "alice", "To": "client:bob",
                                                       "Url": f"{rcml.base}{path}", **extra})
    assert status == 200, body
    sid: str = json.loads(body)["sid"]
    return sid


async def _recordings(api: Any) -> list[dict[str, Any]]:
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Recordings.json")
    assert status == 200, body
    recordings: list[dict[str, Any]] = json.loads(body)["recordings"]
    return recordings


def _no_orphan(appliance: Any) -> None:
    """Every file in the recordings directory is a Recording's (RE….wav), none left over."""
    files = sorted(p.name for p in (appliance.config.data_dir / "recordings").iterdir())
    assert files and all(f.startswith("RE") and f.endswith(".wav") for f in files), files


@pytest.mark.parametrize("first, then, after", [
    # two prompts of 1.5 s: each is heard in full, then the call ends
    ('<Play loop="0">{base}/tone.wav</Play>',
     '<Play>{base}/high.wav</Play><Play>{base}/low.wav</Play><Hangup/>', 3.0),
    # a menu: its 3 s prompt is heard in full, and only then the Gather waits 2 s for a
    # digit (not while the prompt plays: the call would end after some 2 s)
    ('<Say loop="0">This is a long sentence that keeps going on and on.</Say>',
     '<Gather numDigits="1" timeout="2" action="/g"><Play>{base}/menu.wav</Play></Gather>'
     '<Hangup/>', 5.0),
], ids=["play-then-two-prompts", "say-then-menu"])
async def test_a_redirect_during_a_prompt_plays_the_new_prompts_in_full(
        voice: Any, tmp_path: Path, first: str, then: str, after: float) -> None:
    appliance, api, rcml, phone = voice
    rcml.files["/high.wav"] = ("audio/wav",
                               write_tone(tmp_path / "high.wav", 2000, 1.5).read_bytes())
    rcml.files["/low.wav"] = ("audio/wav",
                              write_tone(tmp_path / "low.wav", 500, 1.5).read_bytes())
    rcml.files["/menu.wav"] = ("audio/wav",
                               write_tone(tmp_path / "menu.wav", 2000, 3.0).read_bytes())
    rcml.docs["/outbound"] = f"<Response>{first}</Response>"
    rcml.docs["/moved"] = f"<Response>{then}</Response>"
    heard = tmp_path / "bob.wav"
    bob = await phone("--user", "bob", "--answer", "--once", "--record", str(heard),
                      "--timeout", "25")
    sid = await _call_bob(api, rcml, "/outbound")
    await rcml.wait("/outbound")
    await asyncio.sleep(2.5)  # in the middle of the first prompt
    status, body, _ = await api.post(f"{CALLS}/{sid}.json", {"Url": f"{rcml.base}/moved"})
    assert status == 200, body
    await rcml.wait("/moved")
    loop = asyncio.get_running_loop()
    moved = loop.time()
    await bob.finish()
    lasted = loop.time() - moved
    assert lasted >= after - 0.3, f"the call ended {lasted:.2f} s after the new document"
    assert seconds_of(heard, 2000) >= (2.75 if "menu.wav" in then else 1.25), \
        seconds_of(heard, 2000)
    if "low.wav" in then:
        assert seconds_of(heard, 500) >= 1.25, seconds_of(heard, 500)
    assert "/g" not in [path for path, _ in rcml.got]  # no digit: the Gather timed out


async def test_a_redirect_during_a_record_keeps_it_and_the_new_record_runs(
        voice: Any) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/outbound"] = ('<Response><Record timeout="30" maxLength="60" playBeep="false" '
                              'action="/act1"/></Response>')
    rcml.docs["/moved"] = ('<Response><Record maxLength="2" playBeep="false" action="/act2"/>'
                           '</Response>')
    rcml.docs["/act2"] = "<Response><Hangup/></Response>"
    bob = await phone("--user", "bob", "--answer", "--once", "--tone", "600",
                      "--timeout", "25")
    sid = await _call_bob(api, rcml, "/outbound")
    await rcml.wait("/outbound")
    await asyncio.sleep(2.5)
    status, body, _ = await api.post(f"{CALLS}/{sid}.json", {"Url": f"{rcml.base}/moved"})
    assert status == 200, body
    act2 = await rcml.wait("/act2", 15)
    await bob.finish()
    # The new document's <Record> ran to its maxLength and reported, as any other.
    assert (act2["Digits"], act2["CallStatus"]) == ("", "in-progress"), act2
    assert 1.5 <= float(act2["RecordingDuration"]) <= 2.6, act2
    # The redirect abandoned the first document: its action is never requested...
    assert "/act1" not in [path for path, _ in rcml.got]
    # ...but what was recorded until the redirect is kept, a Recording of the call.
    durations = sorted(float(r["duration"]) for r in await _recordings(api))
    assert len(durations) == 2, durations
    assert abs(durations[0] - float(act2["RecordingDuration"])) < 0.06, durations
    assert 2.0 <= durations[1] <= 4.5, durations
    _no_orphan(appliance)
    status, body, _ = await api.get(f"{CALLS}/{sid}/Notifications.json")
    assert json.loads(body)["notifications"] == [], body


@pytest.mark.parametrize("action_delay", [0.0, 60.0], ids=["action", "slow-action"])
async def test_a_graceful_stop_during_a_record_keeps_it_and_reports_it(
        voice: Any, action_delay: float) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/outbound"] = ('<Response><Record timeout="30" maxLength="60" playBeep="false" '
                              'action="/act"/><Say>Not said.</Say></Response>')
    rcml.delay["/act"] = action_delay  # 60: an action URL that never answers in time
    bob = await phone("--user", "bob", "--answer", "--once", "--tone", "600",
                      "--timeout", "25")
    sid = await _call_bob(api, rcml, "/outbound", StatusCallback=f"{rcml.base}/status")
    await rcml.wait("/outbound")
    await asyncio.sleep(2.5)
    loop = asyncio.get_running_loop()
    stopping = loop.time()
    async with asyncio.timeout(15):
        await appliance.calls.stop()  # the first step of a stop (SIGTERM: a restart)
    took = loop.time() - stopping
    await bob.finish()
    assert took < 8.0, f"the calls took {took:.1f} s to stop"
    # The caller was hung up on as if they had hung up: the action reports the recording
    # (its answer, too late anyway, is not waited for)...
    act = await rcml.wait("/act", 1)
    assert (act["Digits"], act["CallStatus"], act["CallSid"]) == ("hangup", "completed", sid)
    assert 2.0 <= float(act["RecordingDuration"]) <= 4.5, act
    # ...and the recording is kept before the stop completes.
    [rec] = await _recordings(api)
    assert rec["call_sid"] == sid, rec
    assert abs(float(rec["duration"]) - float(act["RecordingDuration"])) < 0.06, rec
    _no_orphan(appliance)
    if action_delay:
        return  # the call's task was cancelled, its action still unanswered
    # The call was closed and reported, its action answered in time, as when the caller
    # hangs up.
    status, body, _ = await api.get(f"{CALLS}/{sid}.json")
    assert json.loads(body)["status"] == "completed", body
    ends = [f for path, f in rcml.got if path == "/status" and f["CallStatus"] == "completed"]
    assert len(ends) == 1 and int(ends[0]["CallDuration"]) >= 2, ends


async def test_a_digit_barging_into_a_prompt_then_the_next_prompt_is_heard_in_full(
        voice: Any, tmp_path: Path) -> None:
    appliance, api, rcml, phone = voice
    rcml.files["/high.wav"] = ("audio/wav",
                               write_tone(tmp_path / "high.wav", 2000, 1.5).read_bytes())
    rcml.docs["/outbound"] = ('<Response><Gather numDigits="2" timeout="3" action="/g">'
                              '<Play loop="0">{base}/tone.wav</Play></Gather></Response>')
    rcml.docs["/g"] = "<Response><Play>{base}/high.wav</Play><Hangup/></Response>"
    heard = tmp_path / "bob.wav"
    bob = await phone("--user", "bob", "--answer", "--once", "--record", str(heard),
                      "--dtmf", "12", "--dtmf-delay", "2.0", "--timeout", "25")
    await _call_bob(api, rcml, "/outbound")
    gathered = await rcml.wait("/g", 15)
    await bob.finish()
    assert gathered["Digits"] == "12", gathered
    # The first digit stopped the looping prompt; the prompt of the action's document is
    # not taken as ended by that stopped prompt's end.
    assert seconds_of(heard, 2000) >= 1.25, seconds_of(heard, 2000)
    assert seconds_of(heard, 1000) <= 3.0, seconds_of(heard, 1000)
