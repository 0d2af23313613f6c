"""What a voice application's call reports, end to end with real pjsua2 phones (the ``voice``
fixture of test_voice_apps.py): a number's StatusCallback, the call's Notifications, and
POST Calls' From.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import ADMIN_SID
from tests.voice.test_voice_apps import NUMBER

pytest.importorskip("pjsua2")


async def test_number_app_status_callback_sends_the_four_events(voice: Any) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = '<Response><Pause length="3"/><Hangup/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json", {
        "PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/start",
        "StatusCallback": f"{rcml.base}/status"})
    assert status == 200, body
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--timeout", "20")
    await alice.finish()
    async with asyncio.timeout(10):
        while not any(p == "/status" and f["CallStatus"] == "completed" for p, f in rcml.got):
            await asyncio.sleep(0.1)
    events = {f["CallStatus"]: f for p, f in rcml.got if p == "/status"}
    assert set(events) == {"initiated", "ringing", "answered", "completed"}, events
    assert {e: f["SequenceNumber"] for e, f in events.items()} == {
        "initiated": "0", "ringing": "1", "answered": "2", "completed": "3"}
    sid = events["completed"]["CallSid"]
    for form in events.values():
        assert (form["CallSid"], form["From"], form["To"], form["Direction"]) == (
            sid, "alice", NUMBER, "inbound")
        assert form["CallbackSource"] == "call-progress-events"
        # api-behaviour.md §1.5: `EEE, dd MMM yyyy HH:mm:ss`, as Twilio's `+0000`.
        assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000",
                            form["Timestamp"]), form["Timestamp"]
        stamped = email.utils.parsedate_to_datetime(form["Timestamp"])
        assert abs((stamped - datetime.now(UTC)).total_seconds()) < 60
    assert 2 <= int(events["completed"]["CallDuration"]) <= 5, events["completed"]
    assert "CallDuration" not in events["answered"]
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls/{sid}.json")
    assert abs(json.loads(body)["duration"] - int(events["completed"]["CallDuration"])) <= 1


async def test_a_calls_notifications_subresource_lists_its_notifications(voice: Any) -> None:
    appliance, api, rcml, phone = voice
    dead = "http://127.0.0.1:9/gone.xml"  # discard port: nothing listens, the fetch fails
    rcml.docs["/start"] = f'<Response><Pause length="1"/><Redirect>{dead}</Redirect></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/start"})
    assert status == 200, body
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--timeout", "20")
    sid = (await rcml.wait("/start"))["CallSid"]
    await alice.finish()
    calls = f"Accounts/{ADMIN_SID}/Calls"
    async with asyncio.timeout(10):
        while True:
            status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json",
                                            params={"ErrorCode": "11200"})
            if json.loads(body)["notifications"]:
                break
            await asyncio.sleep(0.1)
    # another call's notification, which the call's list must not show
    await appliance.history.notify(ADMIN_SID, 11200, "elsewhere",
                                            call_sid="CA" + "0" * 32)
    status, body, _ = await api.get(f"{calls}/{sid}.json")
    uri = json.loads(body)["subresource_uris"]["notifications"]
    assert uri.endswith(f"/2012-04-24/{calls}/{sid}/Notifications.json"), uri
    status, body, _ = await api.get(uri.split("/2012-04-24/", 1)[1])
    assert status == 200, body
    page = json.loads(body)
    [note] = page["notifications"]
    assert (note["call_sid"], note["error_code"]) == (sid, 11200), note
    # the failed <Redirect>'s request, as a failed first fetch's
    assert (note["request_url"], note["request_method"]) == (dead, "POST"), note
    assert page["total"] == 1 and f"/{calls}/{sid}/Notifications.json" in page["uri"], page
    status, body, _ = await api.get(f"{calls}/{sid}/Notifications")
    assert status == 200 and "<Notifications" in body and f"<CallSid>{sid}</CallSid>" in body
    status, body, _ = await api.get(f"{calls}/{sid}/Notifications.json",
                                    params={"ErrorCode": "12100"})
    assert json.loads(body)["notifications"] == []
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json",
                                    params={"CallSid": sid})
    assert [n["sid"] for n in json.loads(body)["notifications"]] == [note["sid"]]
    status, body, _ = await api.get(f"{calls}/CA{'1' * 32}/Notifications.json")
    assert status == 404, body
