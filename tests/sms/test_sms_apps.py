"""An inbound SMS to a number whose SmsApplicationSid names no application of its account
(a reference an older version kept when the application was deleted)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from appliance.app import Appliance
from appliance.errors import Forbidden
from tests.conftest import ADMIN_SID, Api
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import deliver_pdu
from tests.sms.conftest import SIM_NUMBER, Hook

NUMBERS = f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json"
GONE = "AP" + "7" * 32


async def plant(app: Appliance, sid: str, application_sid: str) -> None:
    """Point number SID at APPLICATION_SID in the database, as an older version left it."""
    number = await app.store.get_number(sid)
    assert number is not None
    await app.store.update_number(dataclasses.replace(number,
                                                      sms_application_sid=application_sid))


async def notifications(api: Api, within: float = 10.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(within):
        while True:
            status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
            notes: list[dict[str, Any]] = json.loads(body)["notifications"]
            if notes:
                return notes
            await asyncio.sleep(0.05)


async def test_a_missing_application_falls_back_to_the_sms_fallback_url(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem, hook: Hook) -> None:
    # Before: nothing was requested, no Notification written, the SmsFallbackUrl ignored.
    hook.reply("/fallback", "<Response/>")
    status, body, _ = await gsm_api.post(NUMBERS, {"PhoneNumber": SIM_NUMBER,
                                                   "SmsFallbackUrl": hook.url("/fallback")})
    assert status == 200, body
    await plant(gsm_appliance, json.loads(body)["sid"], GONE)
    fake.deliver_sms(deliver_pdu("+15559990000", "anyone there?"))
    await hook.wait(lambda: bool(hook.posts_to("/fallback")))
    assert hook.posts_to("/fallback")[0]["Body"] == "anyone there?"
    [note] = await notifications(gsm_api)
    assert note["error_code"] == 21218 and note["log"] == 1
    assert GONE in note["message_text"] and hook.url("/fallback") in note["message_text"]


async def test_another_accounts_application_is_not_run_and_the_sms_url_answers(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem, hook: Hook) -> None:
    # Before: the other account's application was requested with this account's message.
    hook.reply("/own", "<Response/>")
    status, body, _ = await gsm_api.post("Accounts.json", {"EmailAddress": "kid@example.com",
                                                           "Password": "Pbx-edge-7"})
    assert status == 200, body
    status, body, _ = await gsm_api.post(
        f"Accounts/{json.loads(body)['sid']}/Applications.json",
        {"FriendlyName": "theirs", "RcmlUrl": hook.url("/theirs")})
    assert status == 200, body
    theirs = json.loads(body)["sid"]
    status, body, _ = await gsm_api.post(NUMBERS, {"PhoneNumber": SIM_NUMBER,
                                                   "SmsUrl": hook.url("/own")})
    assert status == 200, body
    await plant(gsm_appliance, json.loads(body)["sid"], theirs)
    fake.deliver_sms(deliver_pdu("+15559990000", "who answers?"))
    await hook.wait(lambda: bool(hook.posts_to("/own")))
    [note] = await notifications(gsm_api)
    assert note["error_code"] == 21218 and theirs in note["message_text"]
    assert hook.posts_to("/theirs") == []


async def test_with_no_url_left_the_notification_is_an_error(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem, hook: Hook) -> None:
    status, body, _ = await gsm_api.post(NUMBERS, {"PhoneNumber": SIM_NUMBER})
    assert status == 200, body
    await plant(gsm_appliance, json.loads(body)["sid"], GONE)
    fake.deliver_sms(deliver_pdu("+15559990000", "into the void"))
    [note] = await notifications(gsm_api)
    assert note["error_code"] == 21218 and note["log"] == 0
    assert "no SmsUrl or SmsFallbackUrl" in note["message_text"]
    assert hook.requests == []


async def test_the_notification_is_written_once_a_minute_not_for_every_message(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem, hook: Hook) -> None:
    # Anyone can send SMS to the number: each wrote a 21218 before, so spoofed traffic
    # grew the Notifications table without bound. Every message is still handled.
    hook.reply("/fallback", "<Response/>")
    status, body, _ = await gsm_api.post(NUMBERS, {"PhoneNumber": SIM_NUMBER,
                                                   "SmsFallbackUrl": hook.url("/fallback")})
    assert status == 200, body
    await plant(gsm_appliance, json.loads(body)["sid"], GONE)
    for n in range(5):
        fake.deliver_sms(deliver_pdu("+15559990000", f"spam {n}"))
    await hook.wait(lambda: len(hook.posts_to("/fallback")) == 5)
    await asyncio.sleep(0.3)
    notes = await notifications(gsm_api)
    assert [n["error_code"] for n in notes] == [21218], notes


async def test_a_developer_accounts_sms_app_sends_no_sms(gsm_api: Api, fake: FakeModem,
                                                         hook: Hook) -> None:
    """The Developer role may not send SMS (docs/sms.md): its SMS app's <Sms> to a number
    goes nowhere either, with a Notification saying why; to a Client (free) it goes."""
    status, body, _ = await gsm_api.post("Accounts.json", {
        "EmailAddress": "dev@example.com", "Password": "Pbx-edge-7", "Role": "Developer"})
    assert status == 200, body
    dev = json.loads(body)["sid"]
    developer = gsm_api.as_user("dev@example.com", "Pbx-edge-7")
    status, body, _ = await developer.post(f"Accounts/{dev}/Clients.json",
                                           {"Login": "devdesk", "Password": "Pbx-edge-7x"})
    assert status == 200, body
    reply = hook.reply("/sms", "<Response><Sms to=\"+15550009999\">paid by a Developer</Sms>"
                               "<Sms to=\"client:devdesk\">free</Sms></Response>")
    status, body, _ = await gsm_api.post(f"Accounts/{dev}/IncomingPhoneNumbers.json",
                                         {"PhoneNumber": SIM_NUMBER, "SmsUrl": reply})
    assert status == 200, body
    fake.deliver_sms(deliver_pdu("+15559990000", "Hello"))
    await hook.wait(lambda: bool(hook.posts_to("/sms")))
    async with asyncio.timeout(10):
        while True:
            status, body, _ = await developer.get(f"Accounts/{dev}/Notifications.json")
            notes = json.loads(body)["notifications"]
            if notes:
                break
            await asyncio.sleep(0.05)
    [note] = notes
    assert note["error_code"] == 14101, note
    assert "Missing permission RestComm:Create:SmsMessages" in note["message_text"], note
    # The message received and the forward to the Client; nothing to +15550009999. The
    # forward is queued just after the Notification is written: wait for it (it was read
    # too soon now and then), then for anything more that would have come with it.
    async with asyncio.timeout(10):
        while True:
            status, body, _ = await developer.get(f"Accounts/{dev}/SMS/Messages.json")
            messages = json.loads(body)["messages"]
            if len(messages) >= 2:
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    status, body, _ = await developer.get(f"Accounts/{dev}/SMS/Messages.json")
    messages = json.loads(body)["messages"]
    assert sorted(m["to"] for m in messages) == [SIM_NUMBER, "client:devdesk"], messages
    assert fake.sent == []


async def suspended_owner(api: Api, hook: Hook) -> str:
    """A sub-account owning the SIM's number (its SmsUrl replies by SMS), then suspended."""
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "gone@example.com",
                                                       "Password": "Pbx-edge-7"})
    assert status == 200, body
    sid: str = json.loads(body)["sid"]
    reply = hook.reply("/sms", '<Response><Sms to="+15550009999">paid for</Sms></Response>')
    status, body, _ = await api.post(f"Accounts/{sid}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": SIM_NUMBER, "SmsUrl": reply})
    assert status == 200, body
    status, body, _ = await api.post(f"Accounts/{sid}.json", {"Status": "suspended"})
    assert status == 200, body
    return sid


async def test_an_sms_to_a_suspended_accounts_number_runs_no_app(
        gsm_api: Api, fake: FakeModem, hook: Hook) -> None:
    """The message is kept (listed under the account, as received), but its SmsUrl is not
    requested, as for a number with no SmsUrl; a Notification says why."""
    # Before: the SmsUrl was requested and its <Sms> reply sent by the modem.
    sid = await suspended_owner(gsm_api, hook)
    fake.deliver_sms(deliver_pdu("+15559990000", "still there?"))
    async with asyncio.timeout(10):
        while True:
            status, body, _ = await gsm_api.get(f"Accounts/{sid}/Notifications.json")
            notes = json.loads(body)["notifications"]
            if notes:
                break
            await asyncio.sleep(0.05)
    [note] = notes
    assert note["error_code"] == 20005 and "suspended" in note["message_text"], note
    _, body, _ = await gsm_api.get(f"Accounts/{sid}/SMS/Messages.json")
    [message] = json.loads(body)["messages"]
    assert (message["from"], message["body"], message["status"]) == (
        "+15559990000", "still there?", "received"), message
    await asyncio.sleep(0.5)
    assert hook.requests == [] and fake.sent == []


async def test_an_app_of_a_suspended_account_sends_no_sms(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem, hook: Hook) -> None:
    """A voice app's <Sms> (and a Client's MESSAGE to a number) goes through
    send_from_client: an account suspended while its app runs sends nothing more."""
    # Before: the message was queued and sent by the modem.
    sid = await suspended_owner(gsm_api, hook)
    with pytest.raises(Forbidden, match="Provided Account is not active"):
        await gsm_appliance.messaging.send_from_client(sid, "+15550001000", "+15550009999",
                                                       "paid for")
    await asyncio.sleep(0.5)
    assert fake.sent == []
