"""SMS and the desk phones: a Client's MESSAGE to a number leaves by the modem, and an SMS for
a number whose SmsUrl is client:<login> reaches that Client's phone, kept until it registers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TypeVar

import pytest

from appliance.app import Appliance
from appliance.gsm.pdu import Submit, decode_sms_pdu
from appliance.services.rate_limit import TokenBucket
from tests.conftest import ADMIN_SID, Api
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import deliver_pdu
from tests.sms.conftest import SIM_NUMBER, gsm_config, running, until
from tests.sms.sipua import Phone

P = TypeVar("P", bound=Phone)
PW = "Pbx-edge-7"


async def phone(api: Api, appliance: Appliance, login: str) -> Phone:
    return await client_phone(api, appliance, login, Phone)


async def client_phone(api: Api, appliance: Appliance, login: str, kind: type[P]) -> P:
    """Client LOGIN created, and a test phone (a KIND) for it, started, not registered."""
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": login, "Password": PW})
    assert status == 200, body
    listen = appliance.config.sip.listen
    started = await kind(login, PW, (listen.host, listen.port)).start()
    assert isinstance(started, kind)
    return started


async def test_client_message_to_a_number_goes_out_by_sms(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem) -> None:
    alice = await phone(gsm_api, gsm_appliance, "alice")
    try:
        assert await alice.register() == 200
        assert await alice.message("+15557778888", "from my desk phone") == 202
        await until(lambda: len(fake.sent) == 1)
        submit = decode_sms_pdu(fake.sent[0])
        assert isinstance(submit, Submit)
        assert submit.destination == "+15557778888"
        assert submit.user_data.text == "from my desk phone"
        status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json")
        (sms,) = json.loads(body)["messages"]
        assert sms["from"] == "alice" and sms["direction"] == "outbound-call"
    finally:
        alice.close()


async def test_unregistered_phone_cannot_send(gsm_api: Api, gsm_appliance: Appliance,
                                              fake: FakeModem) -> None:
    bob = await phone(gsm_api, gsm_appliance, "bob")
    try:
        assert await bob.message("+15557778888", "sneaky") == 403
        await asyncio.sleep(0.3)
        assert fake.sent == []
    finally:
        bob.close()


async def test_sms_for_a_client_number_waits_for_its_registration(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem) -> None:
    status, body, _ = await gsm_api.post(
        f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
        {"PhoneNumber": SIM_NUMBER, "SmsUrl": "client:carol"})
    assert status == 200, body
    carol = await phone(gsm_api, gsm_appliance, "carol")
    try:
        fake.deliver_sms(deliver_pdu("+15550009999", "for carol's desk"))
        await until(lambda: not fake.store)
        await asyncio.sleep(0.5)
        assert carol.messages == []  # not registered yet: kept

        async def statuses() -> list[str]:
            _, text, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json")
            return sorted(f"{m['direction']}:{m['status']}"
                          for m in json.loads(text)["messages"])

        assert await statuses() == ["inbound:received", "outbound-api:queued"]
        assert await carol.register() == 200
        async with asyncio.timeout(10):
            await carol.got_message.wait()
        assert carol.messages == ["for carol's desk"]
        async with asyncio.timeout(5):
            while await statuses() != ["inbound:received", "outbound-api:sent"]:
                await asyncio.sleep(0.05)
    finally:
        carol.close()


async def test_api_send_to_a_client(gsm_api: Api, gsm_appliance: Appliance) -> None:
    dave = await phone(gsm_api, gsm_appliance, "dave")
    try:
        assert await dave.register() == 200
        status, body, _ = await gsm_api.post(f"Accounts/{ADMIN_SID}/SMS/Messages.json",
                                             {"From": "+15550001111", "To": "client:dave",
                                              "Body": "hello dave"})
        assert status == 200, body
        async with asyncio.timeout(10):
            await dave.got_message.wait()
        assert dave.messages == ["hello dave"]
        status, body, _ = await gsm_api.post(f"Accounts/{ADMIN_SID}/SMS/Messages.json",
                                             {"From": "x", "To": "nobody", "Body": "hi"})
        assert status == 400
    finally:
        dave.close()


async def forwards(api: Api) -> list[str]:
    _, text, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json")
    return sorted(m["body"] for m in json.loads(text)["messages"]
                  if m["to"] == "client:erin")


async def test_a_forward_queued_before_a_crash_is_not_queued_again(
        tmp_path: Path, fake: FakeModem, monkeypatch: pytest.MonkeyPatch) -> None:
    # The appliance stops for good after the forward to the Client was queued and before
    # the inbound job was finished (finishing never reaches the database). The next start
    # only finishes the job: erin's phone must not get the message twice.
    config = gsm_config(tmp_path, fake)
    async with running(config) as (app, api):
        await api.post(f"Accounts/{ADMIN_SID}/Clients.json", {"Login": "erin", "Password": PW})
        await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                       {"PhoneNumber": SIM_NUMBER, "SmsUrl": "client:erin"})

        async def power_cut(sid: str) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(app.messaging._sms, "finish_inbound_job", power_cut)
        fake.deliver_sms(deliver_pdu("+15550009999", "hello"))
        async with asyncio.timeout(10):
            while await forwards(api) != ["hello"]:
                await asyncio.sleep(0.05)
    async with running(config) as (_, api):
        # A second message's job comes after the first's (jobs go in order): once its
        # forward is queued, the restart has done whatever it does with the first job.
        fake.deliver_sms(deliver_pdu("+15550009999", "again"))
        async with asyncio.timeout(10):
            while "again" not in await forwards(api):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert await forwards(api) == ["again", "hello"]


async def test_without_a_modem_sms_to_numbers_are_refused_not_queued(
        api: Api, appliance: Appliance) -> None:
    # No [modem] device: a message to a number used to be accepted `queued` and fail two
    # days later. It is refused at once; messages to Clients still go.
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/SMS/Messages.json", {
        "From": "+15550001000", "To": "+15557778888", "Body": "nowhere to go"})
    assert status == 503 and "No modem is configured" in body, body
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/SMS/Messages.json", {
        "From": "+15550001000", "To": "+15557778888", "Body": "x", "StatusCallback": "ftp://x"})
    assert status == 400 and "StatusCallback must be" in body, body  # a bad parameter first
    alice = await phone(api, appliance, "alice")
    try:
        assert await alice.register() == 200
        assert await alice.message("+15557778888", "from my desk phone") == 503
        status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/SMS/Messages.json", {
            "From": "+15550001000", "To": "client:alice", "Body": "for your phone"})
        assert status == 200, body
        async with asyncio.timeout(10):
            await alice.got_message.wait()
        assert alice.messages == ["for your phone"]
    finally:
        alice.close()
    _, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json?SortBy=DateCreated")
    listed = json.loads(body)["messages"]
    assert sorted((m["to"], m["status"], m.get("error_code")) for m in listed) == [
        ("+15557778888", "failed", 503), ("client:alice", "sent", None)]


async def test_a_phone_sends_no_sms_its_account_may_not(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem) -> None:
    """The account's role applies to its phones as to its API: a Developer account may not
    send SMS (Restcomm #1454), so its Client's MESSAGE to a number is refused 403 and
    nothing is queued or sent; a MESSAGE to another Client of it still goes (costs
    nothing)."""
    status, body, _ = await gsm_api.post("Accounts.json", {
        "EmailAddress": "dev@example.com", "Password": "Dev-Acct-pass-9", "Role": "Developer"})
    assert status == 200, body
    dev_sid = json.loads(body)["sid"]
    phones = []
    for login in ("devdesk", "devpeer"):
        status, body, _ = await gsm_api.post(f"Accounts/{dev_sid}/Clients.json",
                                             {"Login": login, "Password": PW})
        assert status == 200, body
        listen = gsm_appliance.config.sip.listen
        phones.append(await Phone(login, PW, (listen.host, listen.port)).start())
    desk, peer = phones
    try:
        assert await desk.register() == 200 and await peer.register() == 200
        uri = f"sip:+15557778888@{desk.server[0]}:{desk.server[1]}"
        response = await desk.request("MESSAGE", uri, uri,
                                      ["Content-Type: text/plain;charset=UTF-8"], "costs money")
        assert (response.status, response.reason) == (
            403, "Missing permission RestComm:Create:SmsMessages")
        assert await desk.message("devpeer", "free between phones") == 200
        async with asyncio.timeout(10):
            await peer.got_message.wait()
        assert peer.messages == ["free between phones"]
        await asyncio.sleep(0.5)
        assert fake.sent == []
        # The refusal is on record (failed, as any refused MESSAGE), never queued.
        _, body, _ = await gsm_api.get(f"Accounts/{dev_sid}/SMS/Messages.json")
        rows = {m["to"]: m for m in json.loads(body)["messages"]}
        assert rows.keys() == {"devpeer", "+15557778888"}
        refused = rows["+15557778888"]
        assert refused["status"] == "failed", refused
        assert "RestComm:Create:SmsMessages" in (refused["error_message"] or ""), refused
    finally:
        for p in phones:
            p.close()


async def test_a_phone_cannot_flood_the_modem_with_sms(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem) -> None:
    """A DoS test: one softphone (a compromised PC) queued 6,706 SMS in 30 s, all 202, hours
    of modem time on the office's bill. A Client gets a burst, then one per interval
    (shortened here from 6 s); the others are refused 503 + Retry-After and never queued."""
    gsm_appliance.messaging.phone_sms = TokenBucket(burst=10, interval=3.0)
    mallory = await phone(gsm_api, gsm_appliance, "mallory")
    uri = f"sip:+15557654321@{mallory.server[0]}:{mallory.server[1]}"
    try:
        assert await mallory.register() == 200
        answers = [await mallory.request("MESSAGE", uri, uri, ["Content-Type: text/plain"],
                                         f"spam {n}") for n in range(30)]
        assert [a.status for a in answers] == [202] * 10 + [503] * 20
        retry_after = int(answers[-1].get("Retry-After") or 0)
        assert 1 <= retry_after <= 3, answers[-1]
        await asyncio.sleep(retry_after + 0.2)
        assert await mallory.message("+15557654321", "later") == 202
        assert await mallory.message("+15557654321", "too soon") == 503
        await until(lambda: len(fake.sent) == 11)
        await asyncio.sleep(0.3)
        assert len(fake.sent) == 11  # only the accepted ones went to the modem
    finally:
        mallory.close()
    _, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/SMS/Messages.json?PageSize=100")
    rows = json.loads(body)["messages"]
    # Only what was accepted is on record: the refusals of a flood write no row each.
    assert sorted(m["body"] for m in rows) == sorted(
        [f"spam {n}" for n in range(10)] + ["later"])
    assert all(m["status"] != "failed" for m in rows)


async def test_phones_queue_no_sms_while_the_queue_is_full_the_api_still_can(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Many Clients together are bounded by the phones' share of the queue; the API's POST
    SMS/Messages (the admin's own) is not."""
    monkeypatch.setattr("appliance.services.messaging.MAX_PHONE_SMS_QUEUED", 0)
    alice = await phone(gsm_api, gsm_appliance, "alice")
    uri = f"sip:+15557654321@{alice.server[0]}:{alice.server[1]}"
    try:
        assert await alice.register() == 200
        answer = await alice.request("MESSAGE", uri, uri, ["Content-Type: text/plain"], "hi")
        assert (answer.status, answer.get("Retry-After")) == (503, "60")
    finally:
        alice.close()
    status, body, _ = await gsm_api.post(f"Accounts/{ADMIN_SID}/SMS/Messages.json", {
        "From": "+15550001000", "To": "+15557654321", "Body": "from the admin"})
    assert status == 200, body
    await until(lambda: len(fake.sent) == 1)
