"""SMS end to end: REST API -> durable queue -> modem (a fake on a pty) and back."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from appliance.app import Appliance
from appliance.gsm.pdu import Concat, Submit, decode_sms_pdu
from tests.conftest import ADMIN_SID, Api
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import deliver_pdu, status_report_pdu
from tests.sms.conftest import SIM_NUMBER, Hook, gsm_config, running, until

SMS = f"Accounts/{ADMIN_SID}/SMS/Messages"


async def get_sms(api: Api, sid: str) -> dict[str, object]:
    status, body, _ = await api.get(f"{SMS}/{sid}.json")
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


async def wait_status(api: Api, sid: str, wanted: str, within: float = 10.0) -> dict[str, object]:
    result: dict[str, object] = {}

    async def check() -> bool:
        nonlocal result
        result = await get_sms(api, sid)
        return result["status"] == wanted

    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.05)
    return result


async def test_send_single_sms(gsm_api: Api, fake: FakeModem) -> None:
    status, body, _ = await gsm_api.post(f"{SMS}.json", {
        "From": "+19876543212", "To": "+13216549878", "Body": "This is a test from RestComm",
        "X-MyCustomHeader-1": "Value1"})
    assert status == 200, body
    sms = json.loads(body)
    assert sms["status"] in ("queued", "sending", "sent")
    assert sms["direction"] == "outbound-api"
    final = await wait_status(gsm_api, sms["sid"], "sent")
    assert final["date_sent"]
    assert len(fake.sent) == 1
    submit = decode_sms_pdu(fake.sent[0])
    assert isinstance(submit, Submit)
    assert submit.user_data.text == "This is a test from RestComm"
    assert submit.destination == "+13216549878"
    assert submit.status_report_request


async def test_long_unicode_sms_is_sent_in_parts(gsm_api: Api, fake: FakeModem) -> None:
    body = "Grüße 😀 " * 20  # 180 characters, needs UCS-2: 3 parts
    status, text, _ = await gsm_api.post(f"{SMS}.json", {"From": "me", "To": "+447700900123",
                                                          "Body": body})
    sid = json.loads(text)["sid"]
    await wait_status(gsm_api, sid, "sent")
    parts = [decode_sms_pdu(p) for p in fake.sent]
    assert len(parts) == 3 and all(isinstance(p, Submit) for p in parts)
    concat = [p.user_data.concat for p in parts]  # type: ignore[union-attr]
    assert [c.seq for c in concat if c] == [1, 2, 3]
    assert len({c.reference for c in concat if c}) == 1
    assert "".join(p.user_data.text or "" for p in parts) == body  # type: ignore[union-attr]


async def test_validation_errors(gsm_api: Api) -> None:
    cases = [
        ({}, "From can not be null."),
        ({"From": "x"}, "To can not be null."),
        ({"From": "x", "To": "+15551234567"}, "Body can not be null."),
        ({"From": "x", "To": "+15551234567", "Body": "hi", "Encoding": "EBCDIC"}, None),
        ({"From": "x", "To": "not a number", "Body": "hi"}, None),
        ({"From": "x", "To": "+15551234567", "Body": "a" * 1601}, None),
        ({"From": "x", "To": "+15551234567", "Body": "😀" * 400}, None),
    ]
    for data, text in cases:
        status, body, _ = await gsm_api.post(f"{SMS}.json", data)
        assert status == 400, (data, body)
        if text:
            assert body == text


async def test_length_limit_keeps_two_unit_characters_whole(gsm_api: Api) -> None:
    # 10 parts of 153 septets / 67 UCS-2 units, but "€" (ESC pair) and an emoji (surrogate
    # pair) are never split across parts: 76 / 33 a part, so 760 / 330 at most.
    for fits, too_long in (("€" * 760, "€" * 761), ("😀" * 330, "😀" * 331),
                           ("a" * 1530, "a" * 1531)):
        status, body, _ = await gsm_api.post(f"{SMS}.json", {"From": "x", "To": "+15551234567",
                                                              "Body": fits})
        assert status == 200, body
        status, body, _ = await gsm_api.post(f"{SMS}.json", {"From": "x", "To": "+15551234567",
                                                              "Body": too_long})
        assert status == 400
        assert body.startswith("Body is too long: at most 10 parts of 153 GSM-7 characters, "
                               "or of 67 UCS-2 units"), body
        assert "never split across parts" in body


async def test_modem_error_fails_the_message_with_a_notification(
        gsm_api: Api, fake: FakeModem, hook: Hook) -> None:
    fake.fail_next_send(500)
    status, body, _ = await gsm_api.post(f"{SMS}.json", {
        "From": "me", "To": "+15551234567", "Body": "will fail",
        "StatusCallback": hook.url("/status")})
    sid = json.loads(body)["sid"]
    final = await wait_status(gsm_api, sid, "failed")
    assert final["error_code"] == 30008
    assert "+CMS ERROR 500" in str(final["error_message"])
    await hook.wait(lambda: bool(hook.posts_to("/status")))
    posted = hook.posts_to("/status")[-1]
    assert posted["MessageStatus"] == "failed" and posted["MessageSid"] == sid
    assert posted["ErrorCode"] == "30008"
    status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    assert any(sid in n["message_text"] for n in json.loads(body)["notifications"])


async def test_delivery_report_marks_delivered(gsm_api: Api, fake: FakeModem,
                                               hook: Hook) -> None:
    status, body, _ = await gsm_api.post(f"{SMS}.json", {
        "From": "me", "To": "+15557654321", "Body": "report me",
        "StatusCallback": hook.url("/status")})
    sid = json.loads(body)["sid"]
    await wait_status(gsm_api, sid, "sent")
    mr = fake.next_mr - 1
    fake.deliver_status_report(status_report_pdu(mr, "+15557654321", 0x00))
    await wait_status(gsm_api, sid, "delivered")
    await hook.wait(lambda: any(p["MessageStatus"] == "delivered"
                                for p in hook.posts_to("/status")))


async def test_failed_delivery_report_fills_the_error_code(gsm_api: Api, fake: FakeModem,
                                                          hook: Hook) -> None:
    cases = [(0x46, 30003, "validity period expired"),  # the handset stayed unreachable
             (0x41, 30006, "incompatible destination"),  # cannot take SMS (a landline)
             (0x64, 30008, "quality of service not available")]
    for st, code, meaning in cases:
        status, body, _ = await gsm_api.post(f"{SMS}.json", {
            "From": "me", "To": "+15557654321", "Body": f"report {st}",
            "StatusCallback": hook.url(f"/status{st}")})
        sid = json.loads(body)["sid"]
        await wait_status(gsm_api, sid, "sent")
        fake.deliver_status_report(status_report_pdu(fake.next_mr - 1, "+15557654321", st))
        final = await wait_status(gsm_api, sid, "undelivered")
        assert final["error_code"] == code, final
        assert f"TP-ST 0x{st:02X}" in str(final["error_message"])
        assert meaning in str(final["error_message"])
        await hook.wait(lambda st=st: any(p["MessageStatus"] == "undelivered"  # type: ignore[misc]
                                          for p in hook.posts_to(f"/status{st}")))
        posted = [p for p in hook.posts_to(f"/status{st}") if p["MessageStatus"] == "undelivered"]
        assert posted[0]["ErrorCode"] == str(code)


async def test_incoming_sms_requests_smsurl_and_sends_the_reply(
        gsm_api: Api, fake: FakeModem, hook: Hook) -> None:
    reply = hook.reply("/sms", "<Response><Sms>Thanks, got it</Sms></Response>")
    status, body, _ = await gsm_api.post(
        f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
        {"PhoneNumber": SIM_NUMBER, "SmsUrl": reply})
    assert status == 200, body
    fake.deliver_sms(deliver_pdu("+15559990000", "Hello appliance"))
    await hook.wait(lambda: bool(hook.posts_to("/sms")))
    request = hook.posts_to("/sms")[0]
    assert request["From"] == "+15559990000" and request["To"] == SIM_NUMBER
    assert request["Body"] == "Hello appliance" and request["AccountSid"] == ADMIN_SID
    await until(lambda: len(fake.sent) == 1)
    answer = decode_sms_pdu(fake.sent[0])
    assert isinstance(answer, Submit)
    assert answer.user_data.text == "Thanks, got it"
    assert answer.destination == "+15559990000"
    status, body, _ = await gsm_api.get(f"{SMS}.json")
    messages = json.loads(body)["messages"]
    directions = sorted(m["direction"] for m in messages)
    assert directions == ["inbound", "outbound-reply"]
    inbound = next(m for m in messages if m["direction"] == "inbound")
    assert inbound["status"] == "received" and inbound["body"] == "Hello appliance"
    # Deleted from the modem only after it was stored.
    await until(lambda: not fake.store)


async def test_relative_urls_in_sms_rcml_resolve_against_the_document(
        gsm_api: Api, fake: FakeModem, hook: Hook) -> None:
    # As in voice RCML: action, statusCallback and <Redirect> may be relative to the URL the
    # document came from (Restcomm's own examples use action="/sms-action").
    hook.reply("/app/sms", '<Response><Sms action="/sms-action" '
                           'statusCallback="/sms-reply-status">One</Sms></Response>')
    hook.reply("/sms-action", "<Response><Redirect>/app/sms2</Redirect></Response>")
    hook.reply("/app/sms2", '<Response><Sms action="smsact2">Two</Sms></Response>')
    hook.reply("/app/smsact2", "<Response/>")
    await gsm_api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                       {"PhoneNumber": SIM_NUMBER, "SmsUrl": hook.url("/app/sms")})
    fake.deliver_sms(deliver_pdu("+15559990002", "relative"))
    await hook.wait(lambda: bool(hook.posts_to("/app/smsact2")))
    documents = [p for _, p, _ in hook.requests if p != "/sms-reply-status"]
    assert documents == ["/app/sms", "/sms-action", "/app/sms2", "/app/smsact2"]
    assert hook.posts_to("/app/smsact2")[0]["SmsStatus"] == "sending"
    await until(lambda: len(fake.sent) == 2)
    sent = [decode_sms_pdu(p) for p in fake.sent]
    assert [s.user_data.text for s in sent if isinstance(s, Submit)] == ["One", "Two"]
    await hook.wait(lambda: bool(hook.posts_to("/sms-reply-status")))
    assert hook.posts_to("/sms-reply-status")[0]["Body"] == "One"
    status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    assert json.loads(body)["notifications"] == []  # no 11200 "bad URL"


async def test_an_unparsable_url_in_sms_rcml_is_reported_and_sends_the_reply_once(
        gsm_api: Api, fake: FakeModem, hook: Hook) -> None:
    # "http://[bad/next" cannot even be resolved against the document's URL: it is a bad URL
    # like any other (11200), the reply goes out once, and the next SMS gets its app too.
    hook.reply("/sms", '<Response><Sms action="http://[bad/next">Thanks</Sms></Response>')
    await gsm_api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                       {"PhoneNumber": SIM_NUMBER, "SmsUrl": hook.url("/sms")})

    def replies(number: str) -> list[str]:
        return [s.user_data.text or "" for s in map(decode_sms_pdu, fake.sent)
                if isinstance(s, Submit) and s.destination == number]

    fake.deliver_sms(deliver_pdu("+15559990000", "first"))
    await until(lambda: len(replies("+15559990000")) == 1)
    fake.deliver_sms(deliver_pdu("+15559990001", "second"))
    await until(lambda: len(replies("+15559990001")) == 1)
    await asyncio.sleep(1.0)  # what a stuck job would resend comes at the next wake-up
    assert replies("+15559990000") == ["Thanks"]
    assert replies("+15559990001") == ["Thanks"]
    status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    notes = json.loads(body)["notifications"]
    assert [n["error_code"] for n in notes] == [11200, 11200]
    assert all("http://[bad/next" in n["request_url"] for n in notes)


async def test_a_job_failing_on_our_side_is_retried_later_and_blocks_no_other(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    service = gsm_appliance.messaging
    run_app = service._run_sms_app

    async def faulty(record: Any, *args: Any) -> None:
        if record.body == "boom":
            raise RuntimeError("a fault of ours")
        await run_app(record, *args)

    monkeypatch.setattr(service, "_run_sms_app", faulty)
    hook.reply("/sms", "<Response><Sms>Thanks</Sms></Response>")
    await gsm_api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                       {"PhoneNumber": SIM_NUMBER, "SmsUrl": hook.url("/sms")})
    fake.deliver_sms(deliver_pdu("+15559990000", "boom"))
    fake.deliver_sms(deliver_pdu("+15559990001", "fine"))
    await until(lambda: len(fake.sent) == 1)
    [reply] = [decode_sms_pdu(p) for p in fake.sent]
    assert isinstance(reply, Submit) and reply.destination == "+15559990001"
    jobs = await service._sms.due_inbound_jobs("9999-12-31T00:00:00Z")
    assert [job.attempts for job in jobs] == [1]  # kept, to be tried again in a minute


async def test_a_job_retried_after_its_reply_was_queued_does_not_send_it_again(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Marking the job done fails once (a locked database) after the app's reply was queued:
    # the retry finishes the job, it does not run the app again.
    service = gsm_appliance.messaging
    finish = service._sms.finish_inbound_job
    faults = [RuntimeError("database is locked")]

    async def flaky(sid: str) -> None:
        if faults:
            raise faults.pop()
        await finish(sid)

    monkeypatch.setattr(service._sms, "finish_inbound_job", flaky)
    hook.reply("/sms", "<Response><Sms>Thanks</Sms></Response>")
    await gsm_api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                       {"PhoneNumber": SIM_NUMBER, "SmsUrl": hook.url("/sms")})
    fake.deliver_sms(deliver_pdu("+15559990000", "hello"))
    await until(lambda: len(fake.sent) == 1)
    [job] = await service._sms.due_inbound_jobs("9999-12-31T00:00:00Z")
    assert job.attempts == 1 and job.handed
    await service._deliver_inbound_guarded(job)  # the retry, a minute early
    await asyncio.sleep(0.5)
    assert len(fake.sent) == 1 and len(hook.posts_to("/sms")) == 1
    assert await service._sms.due_inbound_jobs("9999-12-31T00:00:00Z") == []


async def test_fallback_url_and_notification_on_failure(gsm_api: Api, fake: FakeModem,
                                                        hook: Hook) -> None:
    hook.reply("/broken", "oops", status=500)
    hook.reply("/fallback", "<Response/>")
    await gsm_api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                       {"PhoneNumber": SIM_NUMBER, "SmsUrl": hook.url("/broken"),
                        "SmsFallbackUrl": hook.url("/fallback")})
    fake.deliver_sms(deliver_pdu("+15559990001", "try the fallback"))
    await hook.wait(lambda: bool(hook.posts_to("/fallback")))
    status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    notes = json.loads(body)["notifications"]
    assert any(n["error_code"] == 11200 and n["request_url"].endswith("/broken") for n in notes)


async def test_multipart_reassembly_out_of_order_with_duplicates(
        gsm_api: Api, fake: FakeModem) -> None:
    parts = ["first part, ", "second part, ", "third part."]
    pdus = [deliver_pdu("+15551112222", text, concat=Concat(77, 3, i + 1))
            for i, text in enumerate(parts)]
    for pdu in (pdus[2], pdus[0], pdus[2], pdus[1]):
        fake.deliver_sms(pdu)

    async def bodies() -> list[str]:
        status, body, _ = await gsm_api.get(f"{SMS}.json", params={"Status": "received"})
        return [m["body"] for m in json.loads(body)["messages"]]

    async with asyncio.timeout(10):
        while await bodies() != ["first part, second part, third part."]:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert await bodies() == ["first part, second part, third part."]


async def test_missing_part_is_released_incomplete(gsm_api: Api, gsm_appliance: Appliance,
                                                   fake: FakeModem) -> None:
    fake.deliver_sms(deliver_pdu("+15553334444", "only the first", concat=Concat(9, 2, 1)))
    await until(lambda: not fake.store)
    released = await gsm_appliance.messaging.release_stale_fragments(timedelta(seconds=-1))
    assert released == 1
    status, body, _ = await gsm_api.get(f"{SMS}.json")
    (msg,) = json.loads(body)["messages"]
    assert msg["body"].startswith("only the first") and "[incomplete: 1 of 2 parts]" in msg["body"]


async def test_undecodable_pdu_is_kept_and_reported(gsm_api: Api, fake: FakeModem) -> None:
    fake.deliver_sms("0004DEADBEEF")
    await until(lambda: not fake.store)
    status, body, _ = await gsm_api.get(f"{SMS}.json")
    (msg,) = json.loads(body)["messages"]
    assert msg["body"] == "[undecodable message]"
    status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    assert "could not be decoded" in body


async def test_ussd_balance_check(gsm_api: Api) -> None:
    status, body, _ = await gsm_api.post(f"Accounts/{ADMIN_SID}/UssdPush.json",
                                         {"To": "*100#"})
    assert status == 200, body
    got = json.loads(body)
    assert got["message"] == "Your balance is 5.00" and got["status"] == "completed"
    status, body, _ = await gsm_api.post(f"Accounts/{ADMIN_SID}/UssdPush.json",
                                         {"To": "rm -rf"})
    assert status == 400


async def test_modem_state_in_api_and_health(gsm_api: Api) -> None:
    status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Modem.json")
    state = json.loads(body)
    assert state["phase"] == "ready" and state["sim"] == "READY"
    assert state["manufacturer"] == "Quectel"
    async with gsm_api.session.get(f"{gsm_api.base}/health") as resp:
        health = await resp.json()
    assert resp.status == 200
    assert health["components"]["modem"]["phase"] == "ready"


async def test_unplugged_modem_reports_no_stale_radio_state(gsm_api: Api,
                                                           fake: FakeModem) -> None:
    radio = ("sim", "operator", "registration", "signal_rssi", "signal_dbm")

    async def modem_json() -> dict[str, object]:
        status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Modem.json")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    async def health() -> dict[str, object]:
        async with gsm_api.session.get(f"{gsm_api.base}/health") as resp:
            return (await resp.json())["components"]["modem"]  # type: ignore[no-any-return]

    before = await modem_json()
    assert (before["sim"], before["registration"], before["signal_rssi"]) == ("READY", "home", 21)
    fake.unplug()
    seen = []  # never `ready` without a SIM: the phase goes down with the radio values
    async with asyncio.timeout(10):
        while (state := await modem_json())["phase"] != "down":
            seen.append((state["phase"], state.get("sim")))
            await asyncio.sleep(0.02)
    assert ("ready", None) not in seen, seen
    gone = await modem_json()
    assert [k for k in radio if k in gone] == []  # unknown: nulls are omitted
    assert gone["manufacturer"] == "Quectel"  # the device's identity is kept
    down = await health()
    assert down["phase"] == "down" and [down[k] for k in radio] == [None] * len(radio)
    fake.replug()
    async with asyncio.timeout(15):
        while (await modem_json())["phase"] != "ready":
            await asyncio.sleep(0.05)
    back = await modem_json()
    assert (back["sim"], back["operator"], back["registration"], back["signal_rssi"]) == (
        "READY", "Fake Telecom", "home", 21)
    assert (await health())["sim"] == "READY"


async def test_developer_role_cannot_send_sms(gsm_api: Api) -> None:
    status, body, _ = await gsm_api.post("Accounts.json", {
        "EmailAddress": "dev@example.com", "Password": "Pbx-edge-7", "Role": "Developer"})
    sid = json.loads(body)["sid"]
    dev = gsm_api.as_user("dev@example.com", "Pbx-edge-7")
    status, _, _ = await dev.post(f"Accounts/{sid}/SMS/Messages.json",
                                  {"From": "a", "To": "+15551234567", "Body": "x"})
    assert status == 403


async def test_a_backlog_of_received_messages_is_handed_over_without_pauses(
        tmp_path: Path, fake: FakeModem, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    # Jobs are read a few at a time: after a stop with more than that due (a power cut, apps
    # that were slow), the rest must not wait 30 s per batch for a wake-up that nothing sends.
    config = gsm_config(tmp_path, fake)
    hook.reply("/sms", "<Response/>")
    async with running(config) as (app, api):
        await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                       {"PhoneNumber": SIM_NUMBER, "SmsUrl": hook.url("/sms")})

        async def stuck(job: object) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(app.messaging, "_deliver_inbound_guarded", stuck)
        for n in range(45):
            fake.deliver_sms(deliver_pdu(f"+1555000{n:04d}", f"message {n}"))

        async def received() -> int:
            _, text, _ = await api.get(f"{SMS}.json?PageSize=100")
            return sum(m["direction"] == "inbound" for m in json.loads(text)["messages"])

        async with asyncio.timeout(20):
            while await received() < 45:
                await asyncio.sleep(0.05)
    async with running(config):
        await hook.wait(lambda: len(hook.posts_to("/sms")) >= 45, within=10)
    assert sorted(post["Body"] for post in hook.posts_to("/sms")) == sorted(
        f"message {n}" for n in range(45))
