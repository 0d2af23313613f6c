"""SMS through a modem that hangs, goes away or reports congestion: retried, never twice.

The appliance runs with short modem timeouts (`FAST_MODEM`), so the recovery ladder takes a
second or two instead of ten.
"""

from __future__ import annotations

import json

import pytest

from appliance.gsm.pdu import Submit, decode_sms_pdu
from tests.conftest import ADMIN_SID, Api
from tests.fakes.modem import FakeModem
from tests.sms.conftest import FAST_MODEM, Hook, until
from tests.sms.test_sms import SMS, wait_status


@pytest.fixture
def modem_settings() -> dict[str, float]:
    return FAST_MODEM


def texts(fake: FakeModem) -> list[str]:
    out = []
    for pdu in fake.sent:
        submit = decode_sms_pdu(pdu)
        assert isinstance(submit, Submit)
        out.append(submit.user_data.text or "")
    return out


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
