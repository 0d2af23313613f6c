"""The caller hangs up in the middle of a verb, and what the application and the API are told
then, end to end with real pjsua2 phones (the ``voice`` fixture of test_voice_apps.py: one
appliance, one media worker, Clients alice and bob).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import ADMIN_SID
from tests.voice.test_voice_apps import NUMBER

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
    assert recorded["Digits"] == "hangup", recorded
    assert 2.0 <= float(recorded["RecordingDuration"]) <= 4.5, recorded
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Recordings.json")
    assert status == 200, body
    [rec] = json.loads(body)["recordings"]
    assert 2.0 <= float(rec["duration"]) <= 4.5, rec
    assert rec["duration"] == str(float(recorded["RecordingDuration"])), rec
