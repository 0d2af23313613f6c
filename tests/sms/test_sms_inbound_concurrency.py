"""Received SMS are handed to their apps side by side, one conversation (sender, receiving
number) at a time: a slow app holds up only the messages of its own conversation.

The SIM has one number, so the conversations here differ by sender."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from appliance.app import Appliance
from appliance.services.messaging import INBOUND_CONCURRENCY
from tests.conftest import ADMIN_SID, Api
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import deliver_pdu
from tests.sms.conftest import SIM_NUMBER, gsm_config, running, until

NUMBERS = f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json"


@dataclasses.dataclass
class Run:
    sender: str
    body: str
    started: float
    ended: float | None = None


class SlowApp:
    """A customer's SMS app that takes DELAYS[body] seconds (default: DEFAULT) to answer."""

    def __init__(self) -> None:
        self.delays: dict[str, float] = {}
        self.default = 0.0
        self.runs: list[Run] = []
        self.in_flight = 0
        self.most = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        run = Run(form["From"], form["Body"], asyncio.get_running_loop().time())
        self.runs.append(run)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(self.delays.get(run.body, self.default))
        finally:
            self.in_flight -= 1
            run.ended = asyncio.get_running_loop().time()
        return web.Response(text="<Response/>", content_type="application/xml")

    def run_of(self, body: str) -> Run | None:
        return next((run for run in self.runs if run.body == body), None)

    def bodies_from(self, sender: str) -> list[str]:
        return [run.body for run in self.runs if run.sender == sender]


@pytest.fixture
async def app(aiohttp_server: Any) -> SlowApp:
    slow = SlowApp()
    web_app = web.Application()
    web_app.router.add_post("/sms", slow.handle)
    server = await aiohttp_server(web_app, host="127.0.0.1")
    slow.url = f"http://127.0.0.1:{server.port}/sms"
    return slow


async def provision(api: Api, app: SlowApp) -> None:
    status, body, _ = await api.post(NUMBERS, {"PhoneNumber": SIM_NUMBER, "SmsUrl": app.url})
    assert status == 200, body


async def test_a_slow_app_does_not_delay_another_conversation(
        gsm_api: Api, fake: FakeModem, app: SlowApp) -> None:
    await provision(gsm_api, app)
    app.delays["slow question"] = 5.0
    fake.deliver_sms(deliver_pdu("+15557770001", "slow question"))
    await until(lambda: app.run_of("slow question") is not None)
    sent_at = asyncio.get_running_loop().time()
    fake.deliver_sms(deliver_pdu("+15557770002", "quick question"))
    await until(lambda: app.run_of("quick question") is not None, within=10)
    quick = app.run_of("quick question")
    assert quick is not None
    assert quick.started - sent_at < 3.0, quick.started - sent_at  # the slow one holds 5 s
    slow = app.run_of("slow question")
    assert slow is not None and slow.ended is None  # still running: not queued behind it


async def test_messages_of_one_conversation_are_handed_in_order_one_at_a_time(
        gsm_api: Api, fake: FakeModem, app: SlowApp) -> None:
    await provision(gsm_api, app)
    app.default = 1.5
    app.delays["other"] = 0.0
    fake.deliver_sms(deliver_pdu("+15557770001", "step 1"))
    await until(lambda: app.run_of("step 1") is not None)
    fake.deliver_sms(deliver_pdu("+15557770001", "step 2"))
    fake.deliver_sms(deliver_pdu("+15557770002", "other"))
    fake.deliver_sms(deliver_pdu("+15557770001", "step 3"))
    await until(lambda: len(app.runs) == 4 and all(r.ended for r in app.runs), within=15)
    assert app.bodies_from("+15557770001") == ["step 1", "step 2", "step 3"]
    first, second, third, other = (app.run_of(b) for b in ("step 1", "step 2", "step 3",
                                                          "other"))
    assert first and second and third and other and first.ended and second.ended
    assert second.started >= first.ended and third.started >= second.ended  # no overlap
    assert other.started < first.ended  # the other sender did not wait for this one


async def test_at_most_a_few_apps_run_at_once_and_every_message_is_handed(
        gsm_api: Api, fake: FakeModem, app: SlowApp) -> None:
    await provision(gsm_api, app)
    app.default = 1.5
    for n in range(20):
        fake.deliver_sms(deliver_pdu(f"+1555888{n:04d}", f"message {n}"))
    await until(lambda: len(app.runs) == 20 and all(r.ended for r in app.runs), within=30)
    assert app.most == INBOUND_CONCURRENCY
    assert sorted(run.body for run in app.runs) == sorted(f"message {n}" for n in range(20))


async def test_a_message_put_off_for_a_retry_does_not_hold_its_conversation(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem, app: SlowApp,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A fault on the appliance's side puts "boom" off for a minute; the sender's next message
    # is handed meanwhile, and "boom" after it (as docs/sms.md says).
    service = gsm_appliance.messaging
    run_app = service._run_sms_app

    async def faulty(record: Any, *args: Any) -> None:
        if record.body == "boom":
            raise RuntimeError("a fault of ours")
        await run_app(record, *args)

    monkeypatch.setattr(service, "_run_sms_app", faulty)
    await provision(gsm_api, app)
    fake.deliver_sms(deliver_pdu("+15557770001", "boom"))
    fake.deliver_sms(deliver_pdu("+15557770001", "after boom"))
    await until(lambda: app.run_of("after boom") is not None)
    [job] = await service._sms.due_inbound_jobs("9999-12-31T00:00:00Z")
    assert job.attempts == 1 and job.conversation == ("+15557770001", SIM_NUMBER)


async def test_a_backlog_after_a_restart_keeps_each_conversations_order(
        tmp_path: Path, fake: FakeModem, app: SlowApp, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    config = gsm_config(tmp_path, fake)
    async with running(config) as (appliance, api):
        await provision(api, app)

        async def stuck(job: object) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(appliance.messaging, "_deliver_inbound_guarded", stuck)
        for n in range(4):
            for sender in ("+15557770001", "+15557770002", "+15557770003"):
                fake.deliver_sms(deliver_pdu(sender, f"{sender} {n}"))
        await until(lambda: not fake.store, within=20)  # all read and stored
    app.default = 0.3
    async with running(config):
        await until(lambda: len(app.runs) == 12 and all(r.ended for r in app.runs),
                    within=20)
    for sender in ("+15557770001", "+15557770002", "+15557770003"):
        assert app.bodies_from(sender) == [f"{sender} {n}" for n in range(4)]
    assert app.most == 3


async def test_a_job_whose_retry_cannot_be_recorded_is_not_run_again_at_once(
        gsm_appliance: Appliance, gsm_api: Api, fake: FakeModem, app: SlowApp,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The store fails to put "boom" off: it must not be picked again each time another job
    # ends (a loop hammering a failing database); its conversation rests, the others go on.
    service = gsm_appliance.messaging
    run_app = service._run_sms_app
    tries: list[str] = []

    async def faulty(record: Any, *args: Any) -> None:
        if record.body == "boom":
            tries.append(record.sid)
            raise RuntimeError("a fault of ours")
        await run_app(record, *args)

    async def broken(sid: str, next_attempt_at: str) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(service, "_run_sms_app", faulty)
    monkeypatch.setattr(service._sms, "retry_inbound_job", broken)
    await provision(gsm_api, app)
    fake.deliver_sms(deliver_pdu("+15557770001", "boom"))
    await until(lambda: len(tries) == 1)
    for n in range(5):
        fake.deliver_sms(deliver_pdu("+15557770002", f"fine {n}"))
    await until(lambda: len(app.bodies_from("+15557770002")) == 5)
    await asyncio.sleep(0.3)
    assert len(tries) == 1
