"""<Dial><Conference> end to end: two registered pjsua2 test phones call a number whose RCML
puts them in one conference; each hears the other's tone; the Conferences API lists it with
two participants; muting one silences it for the other; DELETE takes a participant out (its
RCML goes on with the Dial action); when the last one is gone the conference is COMPLETED.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_SID
from tests.media.audio import read_samples, rms, tone_share
from tests.voice import test_voice_apps

pytest.importorskip("pjsua2")

voice = test_voice_apps.voice  # the same fixture: an appliance, one worker, the RCML server
NUMBER = test_voice_apps.NUMBER


def best_share(samples: list[int], rate: int, freq: float) -> float:
    """The highest share of energy at FREQ over the one-second windows of SAMPLES."""
    windows = (samples[i:i + rate] for i in range(0, max(1, len(samples) - rate), rate // 4))
    return max((tone_share(w, rate, freq) for w in windows), default=0.0)


async def poll(api: Any, path: str, check: Any, seconds: float = 10.0) -> Any:
    async with asyncio.timeout(seconds):
        while True:
            status, body, _ = await api.get(path)
            assert status == 200, body
            data = json.loads(body)
            if check(data):
                return data
            await asyncio.sleep(0.2)


async def test_two_phones_in_a_conference(voice: Any, tmp_path: Path) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/conf"] = ('<Response><Dial action="/left"><Conference>room 1</Conference>'
                          '</Dial></Response>')
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/conf"})
    assert status == 200, body
    sip = appliance.config.sip.listen
    target = f"sip:{NUMBER}@{sip.host}:{sip.port}"
    heard_a, heard_b = tmp_path / "alice.wav", tmp_path / "bob.wav"
    alice = await phone("--user", "alice", "--call", target, "--record", str(heard_a),
                        "--tone", "1000", "--timeout", "40")
    bob = await phone("--user", "bob", "--call", target, "--record", str(heard_b),
                      "--tone", "600", "--timeout", "40")
    base = f"Accounts/{ADMIN_SID}/Conferences"
    listed = await poll(api, f"{base}.json", lambda d: d["conferences"])
    [conf] = listed["conferences"]
    assert conf["friendly_name"] == "room 1" and conf["sid"].startswith("CF")
    assert conf["subresource_uris"]["participants"].endswith("/Participants.json")
    cf = conf["sid"]
    parts = await poll(api, f"{base}/{cf}/Participants.json",
                       lambda d: len(d["participants"]) == 2)
    sids = {p["call_sid"] for p in parts["participants"]}
    conf = json.loads((await api.get(f"{base}/{cf}.json"))[1])
    assert conf["status"] == "RUNNING_MODERATOR_PRESENT"
    got = {form["From"]: form["CallSid"] for path, form in rcml.got if path == "/conf"}
    assert set(got.values()) == sids
    status, body, _ = await api.get(f"{base}?Status=RUNNING_MODERATOR_PRESENT")
    assert status == 200 and "<Conferences page=\"0\"" in body and f"<Sid>{cf}</Sid>" in body
    calls = json.loads((await api.get(f"Accounts/{ADMIN_SID}/Calls.json?ConferenceSid={cf}"))[1])
    assert {c["sid"] for c in calls["calls"]} == sids

    await asyncio.sleep(2.5)  # both talk
    status, body, _ = await api.post(f"{base}/{cf}/Participants/{got['bob']}.json",
                                     {"Muted": "true"})
    assert status == 200, body
    assert json.loads(body)["muted"] is True
    status, body, _ = await api.get(f"{base}/{cf}/Participants/{got['bob']}")
    assert status == 200 and "<Muted>true</Muted>" in body
    await asyncio.sleep(2.5)  # alice hears nothing from bob now
    # Restcomm's Mute on the Calls resource works on a participant too.
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls/{got['alice']}.json",
                                     {"Mute": "true"})
    assert status == 200, body
    part = json.loads((await api.get(f"{base}/{cf}/Participants/{got['alice']}.json"))[1])
    assert part["muted"] is True and part["conference_sid"] == cf

    status, body, _ = await api.request("DELETE", f"{base}/{cf}/Participants/{got['alice']}")
    assert status == 204, body
    left = await rcml.wait("/left")  # her RCML went on with the action (then hung up)
    assert left["CallSid"] == got["alice"] and left["DialCallStatus"] == "completed"
    assert left["ConferenceSid"] == cf and int(left["DialCallDuration"]) >= 4
    await alice.finish()
    parts = json.loads((await api.get(f"{base}/{cf}/Participants.json"))[1])
    assert [p["call_sid"] for p in parts["participants"]] == [got["bob"]]
    status, body, _ = await api.request("DELETE", f"{base}/{cf}/Participants/{got['alice']}")
    assert status == 404, body

    # Bob's call is hung up through the Calls API: the last one out ends the conference.
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls/{got['bob']}.json",
                                     {"Status": "completed"})
    assert status == 200, body
    await bob.finish()
    await poll(api, f"{base}/{cf}.json", lambda d: d["status"] == "COMPLETED")
    parts = json.loads((await api.get(f"{base}/{cf}/Participants.json"))[1])
    assert parts["participants"] == [] and parts["total"] == 0

    # Audio. Alice heard bob's 600 Hz until he was muted, then silence until she left.
    samples, rate = read_samples(heard_a)
    a = list(samples)
    assert best_share(a[:-3 * rate], rate, 600) > 0.5
    tail = a[-int(2.0 * rate):-int(0.5 * rate)]
    assert rms(tail) < 100, rms(tail)
    # Bob heard alice's 1000 Hz.
    samples, rate = read_samples(heard_b)
    assert best_share(list(samples), rate, 1000) > 0.5


@pytest.mark.parametrize("voice", [2], indirect=True)
async def test_a_conference_spans_two_media_workers(voice: Any, tmp_path: Path) -> None:
    """Alice's call lands on worker 0, bob's on worker 1 (the pool spreads calls): the room
    on worker 0 is linked to a satellite on worker 1 by a leg pair, and they hear each
    other; a muted bob reaches nobody; the link goes with the last participant on 1 (no
    CDR, no participant for its legs)."""
    appliance, api, rcml, phone = voice
    pool = appliance.media_engine
    rcml.docs["/conf"] = ('<Response><Dial><Conference>room 2</Conference></Dial>'
                          '</Response>')
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/conf"})
    assert status == 200, body
    sip = appliance.config.sip.listen
    target = f"sip:{NUMBER}@{sip.host}:{sip.port}"
    heard_a, heard_b = tmp_path / "alice.wav", tmp_path / "bob.wav"
    alice = await phone("--user", "alice", "--call", target, "--record", str(heard_a),
                        "--tone", "1000", "--timeout", "30")
    base = f"Accounts/{ADMIN_SID}/Conferences"
    listed = await poll(api, f"{base}.json", lambda d: d["conferences"])
    cf = listed["conferences"][0]["sid"]
    await poll(api, f"{base}/{cf}/Participants.json", lambda d: len(d["participants"]) == 1)
    bob = await phone("--user", "bob", "--call", target, "--record", str(heard_b),
                      "--tone", "600", "--timeout", "30")
    parts = await poll(api, f"{base}/{cf}/Participants.json",
                       lambda d: len(d["participants"]) == 2)
    async with asyncio.timeout(5):
        while not pool.links():  # the participant on worker 1 comes through a link
            await asyncio.sleep(0.05)
    assert pool.load() == {"0": 2, "1": 2}  # a call and a link leg on each worker
    got = {form["From"]: form["CallSid"] for path, form in rcml.got if path == "/conf"}
    assert {p["call_sid"] for p in parts["participants"]} == set(got.values())

    await asyncio.sleep(2.5)  # both talk
    status, body, _ = await api.post(f"{base}/{cf}/Participants/{got['bob']}.json",
                                     {"Muted": "true"})
    assert status == 200, body
    await asyncio.sleep(2.5)  # alice hears nothing from bob now
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls/{got['alice']}.json",
                                     {"Status": "completed"})
    assert status == 200, body
    await alice.finish()
    await poll(api, f"{base}/{cf}/Participants.json", lambda d: len(d["participants"]) == 1)
    assert pool.links() != {}  # bob is still on worker 1
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls/{got['bob']}.json",
                                     {"Status": "completed"})
    assert status == 200, body
    await bob.finish()
    await poll(api, f"{base}/{cf}.json", lambda d: d["status"] == "COMPLETED")
    async with asyncio.timeout(5):
        while pool.links() or any(pool.load().values()):  # the link went with bob
            await asyncio.sleep(0.1)
    calls = json.loads((await api.get(f"Accounts/{ADMIN_SID}/Calls.json"))[1])
    assert {c["sid"] for c in calls["calls"]} == set(got.values())  # link legs: no CDR

    samples, rate = read_samples(heard_a)
    a = list(samples)
    assert best_share(a[:-3 * rate], rate, 600) > 0.5
    tail = a[-int(2.0 * rate):-int(0.5 * rate)]
    assert rms(tail) < 100, rms(tail)
    samples, rate = read_samples(heard_b)
    assert best_share(list(samples), rate, 1000) > 0.5
