"""SMS through a modem that hangs, goes away or reports congestion: retried, never twice.

The appliance runs with short modem timeouts (`FAST_MODEM`), so the recovery ladder takes a
second or two instead of ten.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from appliance.gsm.pdu import Submit, decode_sms_pdu
from tests.conftest import ADMIN_SID, Api
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import status_report_pdu
from tests.sms.conftest import FAST_MODEM, Hook, until
from tests.sms.test_power_cut import texts
from tests.sms.test_sms import SMS, get_sms, wait_status


@pytest.fixture
def modem_settings() -> dict[str, float]:
    return FAST_MODEM


async def post(api: Api, body: str, **extra: str) -> str:
    status, text, _ = await api.post(f"{SMS}.json", {"From": "me", "To": "+15551234567",
                                                      "Body": body, **extra})
    assert status == 200, text
    return str(json.loads(text)["sid"])


async def test_hang_before_the_prompt_is_retried_after_recovery(
        gsm_api: Api, fake: FakeModem, hook: Hook) -> None:
    # The modem freezes on AT+CMGS: no `> ` prompt, so the PDU was never written and the
    # message cannot have gone out. It must not be failed as "may have been delivered".
    fake.hang_at("AT+CMGS")
    reopens = fake.reopens
    first = await post(gsm_api, "one", StatusCallback=hook.url("/status"))
    second, third = await post(gsm_api, "two"), await post(gsm_api, "three")
    for sid in (first, second, third):
        final = await wait_status(gsm_api, sid, "sent", within=30)
        assert final.get("error_code") is None
    assert fake.reopens > reopens  # it did hang, and the ladder's re-open cleared it
    assert sorted(texts(fake)) == ["one", "three", "two"]  # each exactly once
    await hook.wait(lambda: bool(hook.posts_to("/status")))
    assert [p["MessageStatus"] for p in hook.posts_to("/status")] == ["sent"]
    status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    assert first not in body  # no "may have been delivered" notification


async def test_no_answer_after_the_pdu_is_in_doubt_and_not_resent(
        gsm_api: Api, fake: FakeModem) -> None:
    # The modem took the PDU, then nothing (+CMGS never came): it may have sent it.
    fake.hang_at("CMGS")
    sid = await post(gsm_api, "in doubt")
    final = await wait_status(gsm_api, sid, "failed", within=30)
    assert final["error_code"] == 30008
    assert "may have been delivered" in str(final["error_message"])
    await until(lambda: fake.reopens > 1)  # recovered
    later = await post(gsm_api, "later")
    await wait_status(gsm_api, later, "sent", within=30)
    assert texts(fake) == ["in doubt", "later"]  # the doubtful one was not resent


def submits(fake: FakeModem) -> list[Submit]:
    out = []
    for pdu in fake.sent:
        submit = decode_sms_pdu(pdu)
        assert isinstance(submit, Submit)
        out.append(submit)
    return out


def assert_one_message(parts: list[Submit], body: str) -> None:
    """PARTS are BODY's parts, each once, in order, under one concatenation reference."""
    concat = [p.user_data.concat for p in parts]
    assert [c.seq for c in concat if c] == list(range(1, len(parts) + 1))
    assert len({(c.reference, c.total) for c in concat if c}) == 1
    assert "".join(p.user_data.text or "" for p in parts) == body


async def test_network_errors_count_per_message_not_per_part(
        gsm_api: Api, fake: FakeModem, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="appliance.services.messaging")
    monkeypatch.setattr("appliance.services.messaging.RETRY_DELAYS", (0.1,) * 5)
    # Part 4 of 6 meets congestion twice: retried like a 1-part message would be, then sent.
    body = "".join(f"<{i}>" + "x" * 150 for i in range(6))  # 918 GSM-7 characters: 6 parts
    fake.fail_next_send(42, after=3, times=2)
    sid = await post(gsm_api, body)
    await wait_status(gsm_api, sid, "sent")
    assert_one_message(submits(fake), body)
    assert len(fake.sent) == 6
    retries = [r.getMessage() for r in caplog.records if "try " in r.getMessage()]
    assert len(retries) == 2, retries
    for line, n in zip(retries, (2, 3), strict=True):
        assert line.startswith(f"x SMS {sid} part 4: AT+CMGS=153: +CMS ERROR 42: congestion"), line
        assert line.endswith(f"; try {n} again in 0.1 s"), line
    # The same two errors on a 1-part message: sent as well.
    fake.fail_next_send(42, times=2)
    single = await post(gsm_api, "short")
    await wait_status(gsm_api, single, "sent")
    assert texts(fake)[-1:] == ["short"] and len(fake.sent) == 7
    # A third retry is the last: four congestion errors in a row fail the message.
    fake.fail_next_send(42, times=4)
    doomed = await post(gsm_api, "congested")
    final = await wait_status(gsm_api, doomed, "failed")
    assert "+CMS ERROR 42" in str(final["error_message"]) and len(fake.sent) == 7


async def test_partly_sent_message_resumes_as_soon_as_the_modem_is_back(
        gsm_api: Api, fake: FakeModem) -> None:
    body = "y" * 600  # 4 parts
    fake.unplug_at("AT+CMGS", after=2)  # the modem vanishes when part 3 is due
    sid = await post(gsm_api, body)
    await until(lambda: fake.link is not None and not fake.link.exists())
    waiting = await post(gsm_api, "queued during the outage")
    await asyncio.sleep(6)  # past the first back-off (5 s): the modem is still away then
    assert (await wait_status(gsm_api, sid, "sending"))["status"] == "sending"
    assert len(fake.sent) == 2
    fake.replug()
    await wait_status(gsm_api, sid, "sent", within=5)  # not at some 300 s back-off
    await wait_status(gsm_api, waiting, "sent", within=5)
    parts = submits(fake)
    assert_one_message([p for p in parts if p.user_data.text != "queued during the outage"],
                       body)
    assert len(parts) == 5


async def test_an_undelivered_part_is_not_overwritten_by_sent_when_the_rest_goes(
        gsm_api: Api, fake: FakeModem, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    # Part 1 is reported undelivered while part 2 waits out a congestion retry: the network's
    # answer stands once part 2 goes, and no `sent` callback contradicts it.
    monkeypatch.setattr("appliance.services.messaging.RETRY_DELAYS", (2,) * 5)
    fake.fail_next_send(42, after=1)
    sid = await post(gsm_api, "w" * 300, StatusCallback=hook.url("/status"))  # 2 parts
    await until(lambda: len(fake.sent) == 1)
    fake.deliver_status_report(status_report_pdu(fake.next_mr - 1, "+15551234567", 0x46))
    await wait_status(gsm_api, sid, "undelivered", within=5)
    await until(lambda: len(fake.sent) == 2, within=15)
    await asyncio.sleep(0.5)
    final = await get_sms(gsm_api, sid)
    assert final["status"] == "undelivered" and final["error_code"] == 30003
    assert final["date_sent"] is not None
    assert [p["MessageStatus"] for p in hook.posts_to("/status")] == ["undelivered"]


async def test_a_message_put_back_after_a_network_error_is_not_overtaken(
        gsm_api: Api, fake: FakeModem, monkeypatch: pytest.MonkeyPatch) -> None:
    """"Meeting at 3pm" meets congestion and waits for its retry; "correction: 4pm", sent to
    the same number just after, must not reach the handset before it. Another number's
    message does not wait."""
    monkeypatch.setattr("appliance.services.messaging.RETRY_DELAYS", (1.0,) * 5)
    fake.fail_next_send(42)
    first = await post(gsm_api, "1: meeting at 3pm")
    second = await post(gsm_api, "2: correction, 4pm")
    other = await post(gsm_api, "for someone else", To="+15557770002")
    await wait_status(gsm_api, other, "sent")
    await wait_status(gsm_api, second, "sent")
    await wait_status(gsm_api, first, "sent")
    assert texts(fake) == ["for someone else", "1: meeting at 3pm", "2: correction, 4pm"]
