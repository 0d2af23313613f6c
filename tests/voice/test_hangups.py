"""The caller hangs up in the middle of a verb, and what the application and the API are told
then, end to end with real pjsua2 phones (the ``voice`` fixture of test_voice_apps.py: one
appliance, one media worker, Clients alice and bob).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from tests.conftest import ADMIN_SID
from tests.voice.test_voice_apps import NUMBER, PASSWORD

pytest.importorskip("pjsua2")


async def _number_app(api: Any, url: str, **extra: str) -> None:
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": url, **extra})
    assert status == 200, body


async def test_record_ended_by_the_hang_up_reports_the_saved_length(voice: Any) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = ('<Response><Record timeout="30" maxLength="30" playBeep="false" '
                           'action="/recorded"/></Response>')
    await _number_app(api, f"{rcml.base}/start")
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--tone", "600", "--hold", "3", "--timeout", "20")
    recorded = await rcml.wait("/recorded", 20)
    await alice.finish()
    assert (recorded["Digits"], recorded["CallStatus"]) == ("hangup", "completed"), recorded
    assert 2.0 <= float(recorded["RecordingDuration"]) <= 4.5, recorded
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Recordings.json")
    assert status == 200, body
    [rec] = json.loads(body)["recordings"]
    assert 2.0 <= float(rec["duration"]) <= 4.5, rec
    assert abs(float(rec["duration"]) - float(recorded["RecordingDuration"])) < 0.06, rec


async def _children(api: Any, parent: str) -> list[tuple[str, str]]:
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json",
                                    params={"ParentCallSid": parent})
    assert status == 200, body
    return sorted((c["to"], c["status"]) for c in json.loads(body)["calls"])


async def test_dial_bridged_then_the_caller_hangs_up_action_only_reports(
        voice: Any, caplog: pytest.LogCaptureFixture) -> None:
    appliance, api, rcml, phone = voice
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": "carol", "Password": PASSWORD})
    assert status == 200, body
    rcml.docs["/start"] = '<Response><Dial action="/dialed"><Client>bob</Client></Dial></Response>'
    rcml.docs["/dialed"] = '<Response><Dial><Client>carol</Client></Dial></Response>'
    await _number_app(api, f"{rcml.base}/start")
    bob = await phone("--user", "bob", "--answer", "--once", "--timeout", "20")
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--hold", "3", "--timeout", "20")
    dialed = await rcml.wait("/dialed", 20)
    assert (dialed["CallStatus"], dialed["DialCallStatus"]) == ("completed", "completed")
    await alice.finish()
    await bob.finish()
    await asyncio.sleep(1.0)  # what the action returned would have rung carol by now
    assert await _children(api, dialed["CallSid"]) == [("bob", "completed")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_dial_ringing_then_the_api_hangs_up_action_only_reports(voice: Any) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = ('<Response><Dial action="/dialed" timeout="20"><Client>bob</Client>'
                           '</Dial><Say>not said</Say></Response>')
    rcml.docs["/dialed"] = '<Response><Dial><Client>bob</Client></Dial></Response>'
    await _number_app(api, f"{rcml.base}/start")
    await phone("--user", "bob", "--answer-after", "-1", "--timeout", "20")
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--timeout", "20")
    sid = (await rcml.wait("/start"))["CallSid"]
    async with asyncio.timeout(10):  # bob's phone is ringing
        while await _children(api, sid) != [("bob", "ringing")]:
            await asyncio.sleep(0.1)
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls/{sid}.json",
                                     {"Status": "completed"})
    assert status == 200, body
    dialed = await rcml.wait("/dialed", 15)
    assert (dialed["CallStatus"], dialed["DialCallStatus"]) == ("completed", "canceled")
    await alice.finish()
    await asyncio.sleep(1.0)
    assert await _children(api, sid) == [("bob", "canceled")]


async def _status(api: Any, sid: str, final: bool = True) -> str:
    """The call's CDR status; with FINAL, once the call has ended."""
    async with asyncio.timeout(10):
        while True:
            status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls/{sid}.json")
            assert status == 200, body
            cdr: str = json.loads(body)["status"]
            if not final or cdr not in ("queued", "ringing", "in-progress"):
                return cdr
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("hang_up", ["completed", "canceled"])
async def test_post_calls_hung_up_by_the_api_while_ringing_is_canceled(voice: Any,
                                                                       hang_up: str) -> None:
    """POST Calls/{sid} Status=completed (or canceled) on an outbound-api call that still
    rings: the phone stops ringing and the CDR is canceled, as Twilio reports a call hung up
    through the API before it was answered (not no-answer: nobody let it ring out)."""
    appliance, api, rcml, phone = voice
    bob = await phone("--user", "bob", "--answer-after", "-1", "--once", "--timeout", "20")
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls.json",
                                     {"From": "+15551230000", "To": "client:bob",
                                      "Url": f"{rcml.base}/outbound", "Timeout": "30"})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    async with asyncio.timeout(10):
        while await _status(api, sid, final=False) != "ringing":
            await asyncio.sleep(0.1)
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls/{sid}.json",
                                     {"Status": hang_up})
    assert status == 200, body
    await bob.wait(lambda e: e.get("state") == "DISCONNECTED")
    assert await _status(api, sid) == "canceled"
    assert not [p for p, _ in rcml.got if p == "/outbound"]  # never answered: no RCML ran



@pytest.mark.parametrize("hang_up", ["completed", "canceled"])
async def test_an_app_call_hung_up_by_the_api_while_ringing_is_canceled(voice: Any,
                                                                        hang_up: str) -> None:
    """The same for a call to an app that has not answered yet (its document is slow):
    the caller gets 487 and the CDR, which the proxy writes, is canceled, not no-answer."""
    appliance, api, rcml, phone = voice
    rcml.delay["/start"] = 4.0
    rcml.docs["/start"] = "<Response><Say>Too late.</Say></Response>"
    await _number_app(api, f"{rcml.base}/start")
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--timeout", "20")
    sid = (await rcml.wait("/start"))["CallSid"]
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls/{sid}.json",
                                     {"Status": hang_up})
    assert status == 200, body
    await alice.finish()
    states = [e for e in alice.events if e["event"] == "state"]
    assert states[-1]["code"] == 487, states
    assert await _status(api, sid) == "canceled"
