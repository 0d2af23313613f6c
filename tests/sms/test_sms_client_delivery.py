"""SMS to a Client's phone (`To=client:<login>`): what reaches the phone's SIP stack, whose
Clients an account may reach, and that one dead phone holds up no other message.

Real appliance, real UDP phones (``tests.sms.sipua``), the fake modem on a pty.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from appliance.app import Appliance
from appliance.gsm.pdu import Submit, decode_sms_pdu
from appliance.sip.headers import NameAddr
from appliance.sip.message import Request, parse_message
from appliance.sip.uri import SipUri, parse_uri
from tests.conftest import ADMIN_SID, Api
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import deliver_pdu
from tests.sms.conftest import SIM_NUMBER, Hook, gsm_config, running
from tests.sms.sipua import Phone
from tests.sms.test_sms_clients import PW, client_phone, phone

SMS = f"Accounts/{ADMIN_SID}/SMS/Messages.json"


def sender_of(request: Request) -> str:
    """The user of the MESSAGE's From URI, unescaped; asserts the header is one clean
    name-addr (no raw space or line break in it)."""
    value = request.get("From")
    assert value is not None
    assert " " not in value and "\r" not in value and "\n" not in value, value
    uri = parse_uri(NameAddr.parse(value).uri)
    assert isinstance(uri, SipUri) and uri.user is not None, value
    return uri.user


async def test_an_sms_from_never_writes_a_sip_header(
        gsm_api: Api, gsm_appliance: Appliance) -> None:
    dave = await phone(gsm_api, gsm_appliance, "dave")
    try:
        assert await dave.register() == 200
        injected = "x\r\nX-Injected: yes\r\nP-Asserted-Identity: <sip:ceo"
        for bad in (injected, "tab\there", "del\x7f", "c1\x85"):
            status, body, _ = await gsm_api.post(SMS, {"From": bad, "To": "client:dave",
                                                       "Body": "hi"})
            assert status == 400, body
            assert "From must not contain control characters" in body, body
        # An unencoded `+` arrives as a space; a name may hold any character but a control.
        senders = [" 15552001000", 'Ana María <boss@x>;"q"%', "+15552001000"]
        for sender in senders:
            status, body, _ = await gsm_api.post(SMS, {"From": sender, "To": "client:dave",
                                                       "Body": f"from {sender}"})
            assert status == 200, body
        async with asyncio.timeout(10):
            while len(dave.requests) < len(senders):
                await asyncio.sleep(0.02)
        assert [sender_of(r) for r in dave.requests] == senders
        froms = [r.get("From") or "" for r in dave.requests]
        assert froms[0].startswith("<sip:%2015552001000@"), froms
        assert froms[1].startswith("<sip:Ana%20Mar%C3%ADa%20%3Cboss%40x%3E;%22q%22%25@"), froms
        assert froms[2].startswith("<sip:+15552001000@"), froms
        assert all(r.get("X-Injected") is None and r.get("P-Asserted-Identity") is None
                   for r in dave.requests)
    finally:
        dave.close()


async def test_a_forwarded_sms_from_a_sender_with_a_line_break_writes_no_header(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem) -> None:
    # An alphanumeric sender is the network's text: GSM 7-bit has CR and LF.
    status, body, _ = await gsm_api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                         {"PhoneNumber": SIM_NUMBER, "SmsUrl": "client:erin"})
    assert status == 200, body
    erin = await phone(gsm_api, gsm_appliance, "erin")
    try:
        assert await erin.register() == 200
        fake.deliver_sms(deliver_pdu("a\r\nX-I: y", "forwarded"))
        async with asyncio.timeout(10):
            await erin.got_message.wait()
        (request,) = erin.requests
        assert request.body == b"forwarded"
        assert request.get("X-I") is None
        assert sender_of(request) == "a\r\nX-I: y"
    finally:
        erin.close()


async def test_an_apps_sms_from_is_checked_and_escaped_too(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem, hook: Hook) -> None:
    reply = hook.reply("/sms", '<Response><Sms to="client:dave" from="a&#13;&#10;X-I: y">'
                               'injected</Sms><Sms to="client:dave" from="Help Desk">fine'
                               '</Sms></Response>')
    status, body, _ = await gsm_api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                         {"PhoneNumber": SIM_NUMBER, "SmsUrl": reply})
    assert status == 200, body
    dave = await phone(gsm_api, gsm_appliance, "dave")
    try:
        assert await dave.register() == 200
        fake.deliver_sms(deliver_pdu("+15559990000", "hello"))
        async with asyncio.timeout(10):
            await dave.got_message.wait()
        await asyncio.sleep(0.3)
        assert dave.messages == ["fine"]
        assert sender_of(dave.requests[0]) == "Help Desk"
        assert dave.requests[0].get("X-I") is None
        _, text, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
        (note,) = json.loads(text)["notifications"]
        assert note["error_code"] == 14101, note
        assert "From must not contain control characters" in note["message_text"], note
    finally:
        dave.close()


async def sub_account(api: Api) -> tuple[str, Api]:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                       "Password": "Sub-acct-pass-7"})
    assert status == 200, body
    return json.loads(body)["sid"], api.as_user("sub@example.com", "Sub-acct-pass-7")


async def test_an_account_messages_only_its_own_clients(
        gsm_api: Api, gsm_appliance: Appliance) -> None:
    boss = await phone(gsm_api, gsm_appliance, "boss")  # the administrator's Client
    try:
        assert await boss.register() == 200
        sid, sub = await sub_account(gsm_api)
        status, body, _ = await sub.post(f"Accounts/{sid}/Clients.json",
                                         {"Login": "intern", "Password": PW})
        assert status == 200, body

        async def answer(to: str) -> tuple[int, str]:
            status, body, _ = await sub.post(f"Accounts/{sid}/SMS/Messages.json",
                                             {"From": "+15550001111", "To": to, "Body": "hi"})
            return status, body

        for form in ("client:{}", "{}"):
            foreign = await answer(form.format("boss"))
            missing = await answer(form.format("nosuchlogin"))
            # The same answer: a login of another account cannot be told from none.
            assert foreign[0] == missing[0] == 400, (foreign, missing)
            assert (foreign[1].replace("boss", "?")
                    == missing[1].replace("nosuchlogin", "?")), (foreign, missing)
        status, body = await answer("client:intern")  # its own Client: accepted
        assert status == 200, body
        status, _, _ = await gsm_api.post(SMS, {"From": "+15550001111", "To": "client:boss",
                                                "Body": "from my own account"})
        assert status == 200
        async with asyncio.timeout(10):
            await boss.got_message.wait()
        await asyncio.sleep(0.3)
        assert boss.messages == ["from my own account"]
    finally:
        boss.close()


async def test_a_number_forwards_only_to_a_client_of_its_account(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem) -> None:
    boss = await phone(gsm_api, gsm_appliance, "boss")
    try:
        assert await boss.register() == 200
        sid, sub = await sub_account(gsm_api)
        status, body, _ = await sub.post(f"Accounts/{sid}/IncomingPhoneNumbers.json",
                                         {"PhoneNumber": SIM_NUMBER, "SmsUrl": "client:boss"})
        assert status == 200, body
        fake.deliver_sms(deliver_pdu("+15559990000", "for the boss?"))
        async with asyncio.timeout(10):
            while True:
                _, text, _ = await sub.get(f"Accounts/{sid}/Notifications.json")
                notes = json.loads(text)["notifications"]
                if notes:
                    break
                await asyncio.sleep(0.05)
        (note,) = notes
        assert note["error_code"] == 14101, note
        assert "not forwarded to client:boss" in note["message_text"], note
        await asyncio.sleep(0.3)
        assert boss.messages == []
    finally:
        boss.close()


class DeadPhone(Phone):
    """Registered, takes MESSAGEs and answers none (a phone gone: on a dead LAN, asleep)
    until ``awake``; the texts it saw, once each, in order."""

    awake = False

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse_message(data)
        if isinstance(msg, Request) and msg.method == "MESSAGE" and not self.awake:
            text = msg.body.decode()
            if text not in self.messages:  # not a retransmission
                self.messages.append(text)
            self.got_message.set()
            return
        super().datagram_received(data, addr)


async def test_a_dead_phone_holds_up_no_other_client_nor_the_modem(
        gsm_api: Api, gsm_appliance: Appliance, fake: FakeModem,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.services.messaging.SEND_GRACE", 0.5)  # a quick teardown
    ghost = await client_phone(gsm_api, gsm_appliance, "ghost", DeadPhone)
    dave = await phone(gsm_api, gsm_appliance, "dave")
    try:
        assert await ghost.register() == 200 and await dave.register() == 200
        for n in range(3):
            status, body, _ = await gsm_api.post(SMS, {"From": "+15550001111",
                                                       "To": "client:ghost",
                                                       "Body": f"ghost {n}"})
            assert status == 200, body
        async with asyncio.timeout(5):
            await ghost.got_message.wait()
        for to, text in (("client:dave", "for dave"), ("+15557778888", "by the modem")):
            status, body, _ = await gsm_api.post(SMS, {"From": "+15550001111", "To": to,
                                                       "Body": text})
            assert status == 200, body
        # Before: each waited for the ghost's MESSAGEs, up to 40 s each.
        async with asyncio.timeout(5):
            await dave.got_message.wait()
            while not fake.sent:
                await asyncio.sleep(0.02)
        assert dave.messages == ["for dave"]
        submit = decode_sms_pdu(fake.sent[0])
        assert isinstance(submit, Submit) and submit.user_data.text == "by the modem"
        # One message at a time to a Client, in the order accepted.
        assert ghost.messages == ["ghost 0"]
        ghost.awake = True  # answers the next retransmission, then the rest come in turn
        async with asyncio.timeout(15):
            while list(dict.fromkeys(ghost.messages)) != ["ghost 0", "ghost 1", "ghost 2"]:
                await asyncio.sleep(0.05)
    finally:
        ghost.close()
        dave.close()


async def test_sends_to_clients_are_bounded(gsm_api: Api, gsm_appliance: Appliance,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.services.messaging.CLIENT_CONCURRENCY", 2)
    monkeypatch.setattr("appliance.services.messaging.SEND_GRACE", 0.5)
    listen = gsm_appliance.config.sip.listen
    dead = []
    for login in ("ann", "ben", "cat"):
        status, body, _ = await gsm_api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                             {"Login": login, "Password": PW})
        assert status == 200, body
        dead.append(await DeadPhone(login, PW, (listen.host, listen.port)).start())
    try:
        for one in dead:
            assert await one.register() == 200
        for one in dead:
            status, body, _ = await gsm_api.post(SMS, {"From": "+15550001111",
                                                       "To": f"client:{one.login}",
                                                       "Body": f"for {one.login}"})
            assert status == 200, body
        async with asyncio.timeout(5):
            while sum(bool(one.messages) for one in dead) < 2:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        waiting = [one for one in dead if not one.messages]
        assert len(waiting) == 1  # two MESSAGEs unanswered: the third waits for a slot
        for one in dead:
            one.awake = True
        async with asyncio.timeout(10):
            await waiting[0].got_message.wait()
    finally:
        for one in dead:
            one.close()


async def test_a_message_to_a_dead_phone_at_a_stop_is_sent_after_the_restart(
        tmp_path: Path, fake: FakeModem, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.services.messaging.SEND_GRACE", 0.5)
    config = gsm_config(tmp_path, fake)
    ghost = await DeadPhone("ghost", PW, (config.sip.listen.host,
                                          config.sip.listen.port)).start()
    try:
        async with running(config) as (_, api):
            status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                             {"Login": "ghost", "Password": PW})
            assert status == 200, body
            assert await ghost.register() == 200
            status, body, _ = await api.post(SMS, {"From": "+15550001111",
                                                   "To": "client:ghost", "Body": "kept"})
            assert status == 200, body
            sid = json.loads(body)["sid"]
            async with asyncio.timeout(5):
                await ghost.got_message.wait()
        ghost.awake = True
        async with running(config) as (_, api):
            assert await ghost.register() == 200
            async with asyncio.timeout(10):
                while True:
                    _, body, _ = await api.get(f"Accounts/{ADMIN_SID}/SMS/Messages/{sid}.json")
                    if json.loads(body)["status"] == "sent":
                        break
                    await asyncio.sleep(0.05)
        assert ghost.messages == ["kept", "kept"]  # cut off at the stop, sent again
    finally:
        ghost.close()


class AwayPhone(Phone):
    """Answers each MESSAGE 480 (its user set it to "away") until ``back``."""

    back = False
    refusal = "480 Temporarily Unavailable"

    def _answer(self, request: Request, addr: tuple[str, int]) -> None:
        if request.method != "MESSAGE" or self.back:
            super()._answer(request, addr)
            return
        lines = [f"SIP/2.0 {self.refusal}"]
        for name in ("via", "from", "call-id", "cseq"):
            lines += [f"{name.title()}: {v}" for v in request.get_all(name)]
        lines += [f"To: {request.get('to')};tag=away", "Content-Length: 0"]
        assert self.transport is not None
        self.transport.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), addr)


async def test_a_clients_later_message_waits_for_one_put_back(
        gsm_api: Api, gsm_appliance: Appliance) -> None:
    """The first message met a 480 and waits for a retry; one sent after it does not
    overtake it when the phone answers again, and it does not wait minutes either."""
    fran = await client_phone(gsm_api, gsm_appliance, "fran", AwayPhone)
    try:
        assert await fran.register() == 200
        status, body, _ = await gsm_api.post(SMS, {"From": "desk", "To": "client:fran",
                                                   "Body": "first"})
        assert status == 200, body
        first = json.loads(body)["sid"]
        async with asyncio.timeout(5):
            while not fran.requests:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # its 480 recorded: back in the queue for later
        fran.back = True
        fran.messages.clear()  # what it took from now on
        status, body, _ = await gsm_api.post(SMS, {"From": "desk", "To": "client:fran",
                                                   "Body": "second"})
        assert status == 200, body
        # "first" is tried again now ("second" must wait behind it): before, "second" went
        # at once, ahead of "first", which waited minutes for its retry.
        async with asyncio.timeout(10):
            while len(fran.messages) < 2:
                await asyncio.sleep(0.05)
        assert fran.messages == ["first", "second"]
        status, body, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/SMS/Messages/{first}.json")
        assert json.loads(body)["status"] == "sent", body
    finally:
        fran.close()


async def test_a_phone_registering_again_gets_what_waited_for_it(
        gsm_api: Api, gsm_appliance: Appliance) -> None:
    """A message its phone turned away (480) waits; the phone's next REGISTER (a refresh,
    a reboot: not only a Client's first phone) sends it then, not 10 minutes later."""
    gus = await client_phone(gsm_api, gsm_appliance, "gus", AwayPhone)
    try:
        assert await gus.register() == 200
        status, body, _ = await gsm_api.post(SMS, {"From": "desk", "To": "client:gus",
                                                   "Body": "while you were away"})
        assert status == 200, body
        async with asyncio.timeout(5):
            while not gus.requests:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # its 480 recorded: back in the queue for 10 minutes
        gus.back = True
        gus.messages.clear()
        assert await gus.register() == 200  # the same phone, registering again
        async with asyncio.timeout(5):
            while not gus.messages:
                await asyncio.sleep(0.05)
        assert gus.messages == ["while you were away"]
    finally:
        gus.close()


async def test_a_phone_that_declines_everywhere_fails_the_message(
        gsm_api: Api, gsm_appliance: Appliance) -> None:
    """603 Decline is final (RFC 3261 §21.6.2): the message is failed, not retried for days
    with the Client's later messages behind it."""
    hal = await client_phone(gsm_api, gsm_appliance, "hal", DecliningPhone)
    try:
        assert await hal.register() == 200
        status, body, _ = await gsm_api.post(SMS, {"From": "desk", "To": "client:hal",
                                                   "Body": "no thanks"})
        assert status == 200, body
        sid = json.loads(body)["sid"]
        async with asyncio.timeout(10):
            while True:
                _, got, _ = await gsm_api.get(f"Accounts/{ADMIN_SID}/SMS/Messages/{sid}.json")
                if json.loads(got)["status"] == "failed":
                    break
                await asyncio.sleep(0.1)
        assert "SIP 603" in json.loads(got)["error_message"], got
    finally:
        hal.close()


class DecliningPhone(AwayPhone):
    refusal = "603 Decline"
