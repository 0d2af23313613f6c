"""<Record> silence timeout, <Dial><Sip>, parallel <Dial> and POST /Calls to a Client with
several phones, end to end with real pjsua2 phones (the ``voice`` fixture of
test_voice_apps.py: one appliance, one media worker, Clients alice and bob).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import StoreBusy
from tests.conftest import ADMIN_SID
from tests.media.audio import read_samples, tone_share
from tests.voice.test_voice_apps import DOMAIN, NUMBER, PASSWORD, segment

pytest.importorskip("pjsua2")


async def _number_app(api: Any, url: str) -> None:
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": url})
    assert status == 200, body


async def test_record_ends_after_timeout_seconds_of_silence(voice: Any, tmp_path: Path
                                                            ) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = ('<Response><Record timeout="1" maxLength="20" playBeep="false" '
                           'action="/recorded"/></Response>')
    await _number_app(api, f"{rcml.base}/start")
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--tone", "600", "--tone-seconds", "2", "--timeout", "25")
    await rcml.wait("/start", 20)
    started = time.monotonic()  # not counting the phone's start-up (slow on a loaded CI)
    recorded = await rcml.wait("/recorded", 20)
    elapsed = time.monotonic() - started
    # 2 s of tone, then 1 s of silence ends it: far before maxLength (20 s).
    assert 2.5 <= float(recorded["RecordingDuration"]) <= 5.0, recorded
    assert elapsed < 10, elapsed
    assert recorded["Digits"] == ""
    await alice.finish()
    async with api.session.get(recorded["RecordingUrl"]) as resp:
        assert resp.status == 200
        (tmp_path / "rec.wav").write_bytes(await resp.read())
    rec, rate = segment(tmp_path / "rec.wav", 0.5, 1.5)
    assert tone_share(rec, rate, 600) > 0.5


async def _children(api: Any, parent: str) -> dict[str, dict[str, Any]]:
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json",
                                    params={"ParentCallSid": parent})
    assert status == 200, body
    return {c["to"]: c for c in json.loads(body)["calls"]}


async def test_parallel_dial_bridges_the_first_to_answer(voice: Any, tmp_path: Path) -> None:
    appliance, api, rcml, phone = voice
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": "carol", "Password": PASSWORD})
    assert status == 200, body
    rcml.docs["/start"] = (
        f'<Response><Dial action="/dialed" timeout="8"><Client>alice</Client>'
        f'<Sip>sip:bob@{DOMAIN}</Sip><Sip>sip:mallory@evil.example.net</Sip></Dial></Response>')
    await _number_app(api, f"{rcml.base}/start")
    alice = await phone("--user", "alice", "--answer-after", "-1", "--timeout", "20")
    bob = await phone("--user", "bob", "--answer-after", "1.5", "--once", "--tone", "600",
                      "--hold", "3", "--timeout", "20")
    heard = tmp_path / "carol.wav"
    sip = appliance.config.sip.listen
    carol = await phone("--user", "carol", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--record", str(heard), "--timeout", "20")
    dialed = await rcml.wait("/dialed", 20)
    assert dialed["DialCallStatus"] == "completed", dialed
    assert int(dialed["DialCallDuration"]) >= 2
    await carol.finish()
    await bob.finish()
    # alice's phone rang and was cancelled when bob answered.
    await alice.wait(lambda e: e.get("state") == "DISCONNCTD" or e.get("code") == 487)
    assert any(e.get("code") == 487 for e in alice.events), alice.events
    children = await _children(api, dialed["CallSid"])
    assert set(children) == {"alice", "bob"}, children
    assert children["bob"]["sid"] == dialed["DialCallSid"]
    assert children["bob"]["status"] == "completed"
    assert children["alice"]["status"] == "canceled"
    samples, rate = read_samples(heard)
    block = list(samples)[-3 * rate:]
    best = max((block[i:i + rate] for i in range(0, len(block) - rate, rate // 4)),
               key=lambda b: tone_share(b, rate, 600))
    assert tone_share(best, rate, 600) > 0.5  # carol heard bob through the bridge
    # The foreign SIP URI was not dialled (no open relay): a Notification says so.
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json",
                                    params={"ErrorCode": "13214"})
    texts = [n["message_text"] for n in json.loads(body)["notifications"]]
    assert any("evil.example.net" in t for t in texts), texts


async def test_parallel_dial_nobody_answers(voice: Any) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = ('<Response><Dial action="/dialed" timeout="2"><Client>alice</Client>'
                           '<Client>bob</Client></Dial></Response>')
    await _number_app(api, f"{rcml.base}/start")
    await phone("--user", "bob", "--answer-after", "-1", "--timeout", "15")
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--answer-after", "-1", "--timeout", "15")  # rung too: rings only
    started = time.monotonic()
    dialed = await rcml.wait("/dialed", 15)
    assert time.monotonic() - started < 6  # timeout="2" bounds both
    assert dialed["DialCallStatus"] == "no-answer", dialed
    assert dialed["DialCallSid"] == "null" and dialed["DialCallDuration"] == "0"
    await alice.finish()
    children = await _children(api, dialed["CallSid"])
    assert {c["status"] for c in children.values()} == {"no-answer"}, children


async def test_post_calls_rings_each_registered_phone(voice: Any) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/outbound"] = '<Response><Pause length="1"/><Hangup/></Response>'
    phones = [await phone("--user", "bob", "--answer", "--once", "--timeout", "20")
              for _ in range(2)]
    calls = f"Accounts/{ADMIN_SID}/Calls"
    form = {"From": "alice", "To": "client:bob", "Url": f"{rcml.base}/outbound"}
    status, body, _ = await api.post(f"{calls}.json", {"To": "client:bob",
                                                       "StatusCallbackEvent": "bogus"})
    assert status == 400 and "From" in body, body  # the required fields come first
    status, body, _ = await api.post(f"{calls}.json", {**form, "Timeout": "x",
                                                       "StatusCallbackEvent": "bogus"})
    assert status == 400 and "Timeout" in body, body
    status, body, _ = await api.post(f"{calls}.json", {**form, "StatusCallbackEvent": "bogus"})
    assert status == 400 and "StatusCallbackEvent" in body, body
    status, body, _ = await api.post(f"{calls}.json",
                                     {**form, "To": "sip:bob@evil.example.net"})
    assert status == 403, body  # no open relay
    status, body, _ = await api.post(f"{calls}.json", {
        **form, "StatusCallbackEvent": "answered, completed", "Username": "u",
        "Password": "p"})
    assert status == 200, body
    made = json.loads(body)
    assert isinstance(made, list) and len(made) == 2, made
    assert {c["direction"] for c in made} == {"outbound-api"}
    sids = {c["sid"] for c in made}
    async with asyncio.timeout(15):
        while {f["CallSid"] for p, f in rcml.got if p == "/outbound"} != sids:
            await asyncio.sleep(0.1)
    for p in phones:
        await p.finish()
    for sid in sids:
        status, body, _ = await api.get(f"{calls}/{sid}.json")
        assert json.loads(body)["status"] == "completed", body


async def test_a_locked_database_at_the_end_still_posts_completed(
        voice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit of the call's end fails (the database is locked just then): its
    `completed` status callback is posted all the same, and the end is written later."""
    appliance, api, rcml, phone = voice
    rcml.docs["/outbound"] = '<Response><Pause length="1"/><Hangup/></Response>'
    write_calls = appliance.store.write_calls
    refused: list[str] = []

    async def locked_at_the_end(inserts: list[Any], updates: list[Any]) -> None:
        if not refused and any(r.status == "completed" for r in updates):
            refused.append(updates[0].sid)
            raise StoreBusy("call rows not written: database is locked")
        await write_calls(inserts, updates)

    monkeypatch.setattr(appliance.store, "write_calls", locked_at_the_end)
    bob = await phone("--user", "bob", "--answer", "--once", "--timeout", "20")
    calls = f"Accounts/{ADMIN_SID}/Calls"
    status, body, _ = await api.post(f"{calls}.json", {
        "From": "alice", "To": "client:bob", "Url": f"{rcml.base}/outbound",
        "StatusCallback": f"{rcml.base}/status", "StatusCallbackEvent": "completed"})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    async with asyncio.timeout(15):
        while not any(path == "/status" and form["CallStatus"] == "completed"
                      for path, form in rcml.got):
            await asyncio.sleep(0.1)
    await bob.finish()
    assert refused == [sid]
    assert await appliance.call_log.checkpoint() == 0  # writes the end kept
    status, body, _ = await api.get(f"{calls}/{sid}.json")
    assert json.loads(body)["status"] == "completed", body
