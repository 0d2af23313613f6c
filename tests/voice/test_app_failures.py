"""A call to a number whose app is broken or empty, end to end with a real pjsua2 phone (the
``voice`` fixture of test_voice_apps.py): what the caller's phone gets (its final SIP status)
and what the CDR says (Calls.json status and duration).

An app that cannot be fetched or parsed, even from its fallback URL, fails the call (SIP 500,
CDR ``failed``, its 11200/12100 Notification); an empty ``<Response/>`` ran and ended (answered
and hung up, CDR ``completed``, ~0 s), as a document that ends after some verbs does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import ADMIN_SID
from tests.voice.test_voice_apps import NUMBER

pytest.importorskip("pjsua2")


async def _call(voice: Any, **number: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """Alice calls NUMBER, whose app is NUMBER's settings; the call's sid, the phone's call
    states, and the call's CDR once it has ended."""
    appliance, api, rcml, phone = voice
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, **number})
    assert status == 200, body
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--timeout", "20")
    await alice.finish()
    sid = (await rcml.wait("/start"))["CallSid"]
    states = [e for e in alice.events if e["event"] == "state"]
    async with asyncio.timeout(10):
        while True:
            status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls/{sid}.json")
            cdr = json.loads(body)
            if status == 200 and cdr["status"] not in ("queued", "ringing", "in-progress"):
                return sid, states, cdr
            await asyncio.sleep(0.1)


async def _notes(voice: Any, sid: str) -> list[int]:
    _, api, _, _ = voice
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls/{sid}/Notifications.json")
    assert status == 200, body
    return sorted(int(n["error_code"]) for n in json.loads(body)["notifications"])


def _final(states: list[dict[str, Any]]) -> int:
    """The phone's final status for its INVITE: 200 once it was answered, else the error."""
    codes = [s["code"] for s in states]
    return 200 if 200 in codes else codes[-1]


@pytest.mark.parametrize("fault", ["http-500", "bad-xml", "bad-encoding", "timeout"])
async def test_an_app_that_cannot_run_fails_the_call_with_500(
        voice: Any, fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    appliance, _, rcml, _ = voice
    if fault == "http-500":
        rcml.status["/start"] = 500
    elif fault == "bad-xml":
        rcml.docs["/start"] = "<Response><Say>unclosed</Response>"
    elif fault == "bad-encoding":
        rcml.docs["/start"] = '<?xml version="1.0" encoding="TF-8"?><Response/>'
    else:
        monkeypatch.setattr(appliance.webhooks, "_timeout", 1.0)
        rcml.delay["/start"] = 3.0
    sid, states, cdr = await _call(voice, VoiceUrl=f"{rcml.base}/start")
    assert _final(states) == 500, states
    assert (cdr["status"], cdr["duration"]) == ("failed", 0), cdr
    assert await _notes(voice, sid) == [11200 if fault in ("http-500", "timeout") else 12100]


async def test_fallback_url_runs_when_the_url_fails(voice: Any) -> None:
    _, _, rcml, _ = voice
    rcml.status["/start"] = 500
    rcml.docs["/fallback"] = '<Response><Pause length="1"/><Hangup/></Response>'
    sid, states, cdr = await _call(voice, VoiceUrl=f"{rcml.base}/start",
                                   VoiceFallbackUrl=f"{rcml.base}/fallback")
    assert _final(states) == 200, states
    assert cdr["status"] == "completed" and 1 <= cdr["duration"] <= 3, cdr
    assert await _notes(voice, sid) == [11200]
    assert [p for p, _ in rcml.got] == ["/start", "/fallback"]


async def test_both_url_and_fallback_failing_fail_the_call(voice: Any) -> None:
    _, _, rcml, _ = voice
    rcml.status["/start"] = 500
    rcml.docs["/fallback"] = "not xml at all <"
    sid, states, cdr = await _call(voice, VoiceUrl=f"{rcml.base}/start",
                                   VoiceFallbackUrl=f"{rcml.base}/fallback")
    assert _final(states) == 500, states
    assert (cdr["status"], cdr["duration"]) == ("failed", 0), cdr
    assert await _notes(voice, sid) == [11200, 12100]


@pytest.mark.parametrize("doc", ["<Response/>", "<Response><Pause length=\"1\"/></Response>"])
async def test_a_document_that_runs_out_of_verbs_is_answered_and_hung_up(
        voice: Any, doc: str) -> None:
    _, _, rcml, _ = voice
    rcml.docs["/start"] = doc
    sid, states, cdr = await _call(voice, VoiceUrl=f"{rcml.base}/start")
    assert _final(states) == 200, states
    assert cdr["status"] == "completed", cdr
    assert cdr["duration"] <= (1 if doc == "<Response/>" else 3), cdr
    assert await _notes(voice, sid) == []


@pytest.mark.parametrize("reject, code, status", [
    ("<Reject/>", 603, "no-answer"),  # reason "rejected", the default
    ('<Reject reason="rejected"/>', 603, "no-answer"),
    ('<Reject reason="busy"/>', 486, "busy"),
])
async def test_reject_refuses_the_call_and_the_cdr_says_how(voice: Any, reject: str,
                                                            code: int, status: str) -> None:
    """<Reject> refuses the INVITE unanswered (603, or 486 for busy); the CDR is what
    Twilio reports for it: no-answer for "rejected", busy for "busy" (a phone's own 603
    Decline stays busy: docs/sip.md)."""
    _, _, rcml, _ = voice
    rcml.docs["/start"] = f"<Response>{reject}</Response>"
    sid, states, cdr = await _call(voice, VoiceUrl=f"{rcml.base}/start")
    assert _final(states) == code, states
    assert (cdr["status"], cdr["duration"]) == (status, 0), cdr
