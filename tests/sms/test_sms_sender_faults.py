"""Faults of the appliance itself while sending (the store, the OS) are not the message's: it
stays queued and goes after a pause; only after several in a row, each time while other messages
went out, is it failed (a lasting fault of the appliance fails none). A message once
`sent` is never made `failed`; one the modem may have taken is never sent again. Callbacks
carry the status each change wrote, in order, however quickly the status report comes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.app import Appliance
from appliance.gsm.pdu import Submit, decode_sms_pdu
from appliance.services.history import HistoryService
from appliance.services.messaging import MAX_SENDER_FAULTS, MessagingService
from appliance.services.ordered_jobs import OrderedJobs
from appliance.store.db import Store
from appliance.store.sms import SmsStore
from tests.conftest import ADMIN_SID, Api
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import status_report_pdu
from tests.sms.conftest import Hook, gsm_config, running, until
from tests.sms.test_sms import SMS, get_sms, wait_status
from tests.sms.test_sms_clients import phone

PAUSE = 0.2  # the sender's pause after a fault, shortened for the tests


@pytest.fixture(autouse=True)
def short_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.services.messaging.SENDER_FAULT_PAUSE", PAUSE)


async def send(api: Api, to: str = "+15557770000", body: str = "hello",
               **extra: str) -> str:
    status, text, _ = await api.post(f"{SMS}.json", {"From": "me", "To": to, "Body": body,
                                                     **extra})
    assert status == 200, text
    return str(json.loads(text)["sid"])


async def notification_codes(api: Api) -> list[int]:
    _, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    return [n["error_code"] for n in json.loads(body)["notifications"]]


def destinations(fake: FakeModem) -> list[str]:
    return [s.destination for s in map(decode_sms_pdu, fake.sent) if isinstance(s, Submit)]


@pytest.mark.parametrize("fault", [sqlite3.OperationalError("database is locked"),
                                   OSError(5, "Input/output error")])
async def test_a_passing_fault_of_the_store_leaves_the_message_queued(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem,
        monkeypatch: pytest.MonkeyPatch, fault: Exception) -> None:
    real = SmsStore.begin_part
    calls = 0

    async def flaky(self: SmsStore, *args: Any, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise fault
        await real(self, *args, **kw)

    monkeypatch.setattr(SmsStore, "begin_part", flaky)
    sid = await send(gsm_api)
    final = await wait_status(gsm_api, sid, "sent", within=5)
    assert final.get("error_code") is None, final
    assert calls == 2 and destinations(fake) == ["+15557770000"]
    assert 30008 not in await notification_codes(gsm_api)


async def test_a_message_that_meets_a_fault_every_time_is_failed_after_five_in_a_row(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = SmsStore.begin_part
    tries: list[str] = []

    async def broken_for_one(self: SmsStore, sid: str, *args: Any, **kw: Any) -> None:
        # The first message sent is the broken one: the sender may reach it before the
        # API's answer has given the test its sid.
        if not tries or sid == tries[0]:
            tries.append(sid)
            raise sqlite3.OperationalError("disk I/O error")
        await real(self, sid, *args, **kw)

    monkeypatch.setattr(SmsStore, "begin_part", broken_for_one)
    stuck = await send(gsm_api, "+15557770001", "stuck")
    # Alone, its fault cannot be told from the appliance's: it stays queued.
    await until(lambda: len(tries) >= MAX_SENDER_FAULTS + 2, within=10)
    assert set(tries) == {stuck}
    assert (await get_sms(gsm_api, stuck))["status"] == "queued"
    # Each other message that goes out between two of its tries counts one against it.
    for n in range(MAX_SENDER_FAULTS):
        assert (await get_sms(gsm_api, stuck))["status"] == "queued", n
        after = await send(gsm_api, f"+1555777100{n}", f"after {n}")
        await wait_status(gsm_api, after, "sent", within=5)
        if n < MAX_SENDER_FAULTS - 1:  # its next try, so that the next message judges it
            await until(functools.partial(lambda seen: len(tries) > seen, len(tries)),
                        within=5)
    failed = await wait_status(gsm_api, stuck, "failed", within=5)
    assert failed["error_code"] == 30008, failed
    assert "5 times in a row" in str(failed["error_message"]), failed
    assert destinations(fake) == [f"+1555777100{n}" for n in range(MAX_SENDER_FAULTS)]
    assert await notification_codes(gsm_api) == [30008]


async def test_a_lasting_fault_of_the_appliance_fails_no_message(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = SmsStore.begin_part
    tries: list[str] = []
    full = True

    async def disk_full(self: SmsStore, sid: str, *args: Any, **kw: Any) -> None:
        if full:
            tries.append(sid)
            raise sqlite3.OperationalError("database or disk is full")
        await real(self, sid, *args, **kw)

    monkeypatch.setattr(SmsStore, "begin_part", disk_full)
    sids = [await send(gsm_api, f"+155577720{n}", f"full {n}") for n in range(3)]
    # Before, they were failed one after the other, each after its fifth try.
    await until(lambda: all(tries.count(sid) > 2 * MAX_SENDER_FAULTS for sid in sids),
                within=15)
    for sid in sids:
        assert (await get_sms(gsm_api, sid))["status"] == "queued"
    assert 30008 not in await notification_codes(gsm_api)
    full = False  # the disk has room again: every message goes
    for sid in sids:
        await wait_status(gsm_api, sid, "sent", within=5)
    assert sorted(destinations(fake)) == [f"+155577720{n}" for n in range(3)]
    assert 30008 not in await notification_codes(gsm_api)


async def test_a_fault_after_the_client_phone_took_the_message_never_delivers_it_again(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = SmsStore.client_delivered
    faults = 2 * MAX_SENDER_FAULTS  # more than a message's own faults may be: never counted

    async def flaky(self: SmsStore, *args: Any, **kw: Any) -> Any:
        nonlocal faults
        if faults:
            faults -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return await real(self, *args, **kw)

    dave = await phone(gsm_api, gsm_appliance, "dave")
    try:
        assert await dave.register() == 200
        monkeypatch.setattr(SmsStore, "client_delivered", flaky)
        sid = await send(gsm_api, "client:dave", "hello dave",
                         StatusCallback=hook.url("/status"))
        final = await wait_status(gsm_api, sid, "sent", within=10)
        assert final.get("error_code") is None, final
        assert faults == 0
        assert dave.messages == ["hello dave"]  # before: delivered again after each fault
        await hook.wait(lambda: bool(hook.posts_to("/status")))
        await asyncio.sleep(2 * PAUSE)
        assert dave.messages == ["hello dave"]
        assert [p["MessageStatus"] for p in hook.posts_to("/status")] == ["sent"]
        assert 30008 not in await notification_codes(gsm_api)
    finally:
        dave.close()


async def test_a_report_on_a_failed_message_keeps_its_status_and_error_and_callbacks_in_order(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = HistoryService.notify

    async def slow(self: HistoryService, account_sid: str, code: int, message: str,
                   **kw: Any) -> Any:
        if code == 30008 and "CMS" in message:
            # Part 1's report comes in while the failure's Notification is being written.
            fake.deliver_status_report(status_report_pdu(1, "+15557770000", 0x41))
            await asyncio.sleep(0.5)
        return await real(self, account_sid, code, message, **kw)

    monkeypatch.setattr(HistoryService, "notify", slow)
    fake.next_mr = 1
    fake.fail_next_send(500, after=1)  # part 2 refused for good
    sid = await send(gsm_api, body="z" * 300, StatusCallback=hook.url("/status"))
    await hook.wait(lambda: bool(hook.posts_to("/status")), within=10)
    await asyncio.sleep(1.0)  # the report is handled by now
    final = await get_sms(gsm_api, sid)
    # Before: `undelivered` 30006, its callback ahead of `failed`'s, "part 2" lost.
    assert final["status"] == "failed" and final["error_code"] == 30008, final
    assert "part 2 of the message" in str(final["error_message"]), final
    assert [p["MessageStatus"] for p in hook.posts_to("/status")] == ["failed"]


async def test_a_fault_after_the_modem_took_the_part_fails_it_as_in_doubt_never_sends_twice(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = SmsStore.part_sent
    calls = 0

    async def flaky(self: SmsStore, *args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("database is locked")
        return await real(self, *args, **kw)

    monkeypatch.setattr(SmsStore, "part_sent", flaky)
    sid = await send(gsm_api, "+15557770001", "in doubt")
    failed = await wait_status(gsm_api, sid, "failed", within=5)
    assert failed["error_code"] == 30008, failed
    assert "it may have been delivered. Not resent" in str(failed["error_message"]), failed
    after = await send(gsm_api, "+15557770002", "after")
    await wait_status(gsm_api, after, "sent", within=5)
    assert destinations(fake) == ["+15557770001", "+15557770002"]  # not resent


async def test_a_sent_message_stays_sent_when_its_callback_cannot_be_queued(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = OrderedJobs.put
    calls = 0

    async def flaky(self: OrderedJobs, *args: Any, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("database is locked")
        await real(self, *args, **kw)

    monkeypatch.setattr(OrderedJobs, "put", flaky)
    sid = await send(gsm_api, StatusCallback=hook.url("/status"))
    await until(lambda: calls >= 1, within=5)
    await asyncio.sleep(2 * PAUSE)  # a retry, if any, would come by now
    final = await get_sms(gsm_api, sid)
    assert final["status"] == "sent" and final.get("error_code") is None, final
    assert destinations(fake) == ["+15557770000"]
    assert 30008 not in await notification_codes(gsm_api)
    # The next status still gets its callback.
    fake.deliver_status_report(status_report_pdu(fake.next_mr - 1, "+15557770000", 0x00))
    await wait_status(gsm_api, sid, "delivered")
    await hook.wait(lambda: bool(hook.posts_to("/status")))
    assert [p["MessageStatus"] for p in hook.posts_to("/status")] == ["delivered"]


async def test_a_final_status_is_never_overwritten_by_a_failure(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem) -> None:
    sid = await send(gsm_api)
    await wait_status(gsm_api, sid, "sent")
    sms_store = gsm_appliance.messaging._sms
    assert await sms_store.fail(sid, 30008, "late", "2030-01-01 00:00:00") is None
    assert (await get_sms(gsm_api, sid))["status"] == "sent"
    fake.deliver_status_report(status_report_pdu(fake.next_mr - 1, "+15557770000", 0x00))
    await wait_status(gsm_api, sid, "delivered")
    assert await sms_store.fail(sid, 30008, "late", "2030-01-01 00:00:00") is None
    final = await get_sms(gsm_api, sid)
    assert final["status"] == "delivered" and final.get("error_code") is None, final


async def test_callbacks_are_sent_then_delivered_when_the_report_comes_at_once(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem, hook: Hook) -> None:
    # The network's report right behind +CMGS: before, the `sent` callback re-read the row
    # after a few awaits and often found `delivered` already (both callbacks said so).
    real = fake._submit

    def submit_then_report(pdu: str) -> None:
        mr = fake.next_mr
        real(pdu)
        submitted = decode_sms_pdu(pdu)
        assert isinstance(submitted, Submit)
        fake.deliver_status_report(status_report_pdu(mr, submitted.destination, 0x00))

    fake._submit = submit_then_report  # type: ignore[method-assign]
    sids = []
    for n in range(10):
        sid = await send(gsm_api, f"+1555777000{n}", f"quick {n}",
                         StatusCallback=hook.url(f"/status{n}"))
        await wait_status(gsm_api, sid, "delivered", within=5)
        sids.append(sid)
    await hook.wait(lambda: len(hook.requests) == 20)
    await asyncio.sleep(0.2)  # nothing more comes
    for n, sid in enumerate(sids):
        posts = hook.posts_to(f"/status{n}")
        assert [(p["MessageSid"], p["MessageStatus"]) for p in posts] == [
            (sid, "sent"), (sid, "delivered")], n


async def test_a_stop_waits_for_a_slow_send_only_so_long(
        tmp_path: Path, fake: FakeModem, monkeypatch: pytest.MonkeyPatch) -> None:
    """A +CMGS answer slower than the stop's grace (10 s; 0.5 s here): the stop goes on
    then, and the part the modem took is failed as "may have been delivered", never resent."""
    monkeypatch.setattr("appliance.services.messaging.SEND_GRACE", 0.5)
    config = gsm_config(tmp_path, fake)
    async with running(config) as (_, api):
        fake.slow_next("CMGS", 4.0)
        sid = await send(api, body="very slow network")
        await until(lambda: len(fake.sent) == 1)
        started = time.monotonic()
    assert time.monotonic() - started < 3.0  # 0.5 s, then the modem's port closes
    async with running(config) as (_, api):
        message = await get_sms(api, sid)
        assert message["status"] == "failed" and message["error_code"] == 30008
        assert "may have been delivered" in str(message["error_message"])
        await asyncio.sleep(0.5)
    assert len(fake.sent) == 1


@contextlib.asynccontextmanager
async def bare_messaging(tmp_path: Path, messenger: object
                         ) -> AsyncIterator[tuple[MessagingService, Store]]:
    """The messaging service alone on a real SQLite file, MESSENGER as its SIP side (to make
    faults of ours and answers at chosen moments)."""
    from datetime import UTC, datetime

    from appliance.services.accounts import AccountService
    from appliance.webhooks import Webhooks

    def clock() -> datetime:
        return datetime.now(UTC)

    store = Store(tmp_path / "a.db")
    await store.open()
    accounts = AccountService(store, clock)
    await accounts.bootstrap_admin("admin@example.com", "Very-strong-pass-123", tmp_path)
    service = MessagingService(store, SmsStore(store), HistoryService(store, clock,
                                                                      accounts.scope_sids),
                               Webhooks(), clock, "")
    service.client_messenger = messenger  # type: ignore[assignment]
    service.start()
    try:
        yield service, store
    finally:
        await service.stop()
        await store.close()


async def send_to_client(service: MessagingService, login: str, body: str) -> str:
    record = await service._enqueue(ADMIN_SID, "desk", f"client:{login}", body, False, None,
                                    {}, "outbound-api")
    return str(record.sid)


async def test_a_retry_in_flight_is_not_failed_by_a_message_going_out_meanwhile(
        tmp_path: Path) -> None:
    """The Clients' sender works beside the modem's, several sends at once: a message that
    met faults of ours, whose next try is in flight, must not be counted (and failed, at the
    fifth) because another message went through meanwhile. The phone gets it: `sent`."""
    tries = 0
    answer = asyncio.Event()
    got: list[str] = []

    class Messenger:  # the SIP side: a fault of ours on xavier's first MESSAGEs
        async def deliver(self, login: str, from_: str, body: str) -> int | None:
            nonlocal tries
            if login == "xavier":
                tries += 1
                if tries <= MAX_SENDER_FAULTS:
                    raise RuntimeError("a fault of ours")
                await answer.wait()  # this try is in flight until the phone answers
            got.append(body)
            return 200

    async with bare_messaging(tmp_path, Messenger()) as (service, store):
        xavier = await send_to_client(service, "xavier", "X")
        for n in range(1, MAX_SENDER_FAULTS):  # each fault but the last followed by a
            # message going out: counted against it
            await until(lambda n=n: tries >= n)  # type: ignore[misc]
            await send_to_client(service, f"y{n}", f"Y{n}")
            await until(lambda n=n: f"Y{n}" in got)  # type: ignore[misc]
        # The last fault, not judged yet, and the next try in flight already
        await until(lambda: tries > MAX_SENDER_FAULTS)
        await send_to_client(service, "zed", "Z")
        await until(lambda: "Z" in got)
        answer.set()
        await until(lambda: "X" in got)
        await asyncio.sleep(0.2)
        record = await store.get_sms(xavier)
        assert record is not None and record.status == "sent", record


async def test_a_phone_that_registers_again_under_an_unanswered_message_gets_it_at_once(
        tmp_path: Path) -> None:
    """The phone reboots while a MESSAGE to its old contact is timing out (up to 32 s): its
    REGISTER came during the send, so the message is tried again at once, not in 10 min."""
    in_flight = asyncio.Event()
    timed_out = asyncio.Event()
    got: list[str] = []

    class Messenger:
        async def deliver(self, login: str, from_: str, body: str) -> int | None:
            if not in_flight.is_set():
                in_flight.set()
                await timed_out.wait()
                return 408  # the old contact never answered
            got.append(body)
            return 200

    async with bare_messaging(tmp_path, Messenger()) as (service, _):
        await send_to_client(service, "dave", "after the reboot")
        await until(in_flight.is_set)
        service.client_registered("dave")  # its REGISTER, from the rebooted phone
        timed_out.set()
        await until(lambda: got == ["after the reboot"], within=5)
