"""The records the proxy leaves, as an office admin reads them through the Calls and SMS
APIs: each outcome of a Client → Client call and of a SIP MESSAGE, and what a restart leaves."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from appliance.models import AccountSid, CallRecord, CallSid, CallStatus
from tests.conftest import ADMIN_SID, Api, free_port

T0 = datetime(2026, 3, 3, 9, 0, 0, tzinfo=UTC)
CALLS = f"Accounts/{ADMIN_SID}/Calls"


class WallClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def config(tmp_path: Path) -> Config:
    return Config(data_dir=tmp_path / "var",
                  api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                  sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                domain="pbx.example.com"),
                  media=MediaConfig(workers=0))


async def calls_listed(app: Appliance, params: dict[str, str] | None = None
                       ) -> dict[str, dict[str, object]]:
    password = (app.config.data_dir / "admin-password").read_text().strip()
    listen = app.config.api.listen
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
                  app.config.data_dir)
        status, body, _ = await api.get(f"{CALLS}.json", params=params or {})
    assert status == 200, body
    return {c["to"]: c for c in json.loads(body)["calls"]}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Appliance, WallClock]]:
    clock = WallClock()
    app = Appliance(config(tmp_path), clock=clock)
    await app.start()
    try:
        yield app, clock
    finally:
        await app.stop()


def leftover(sid: int, status: CallStatus, to: str) -> CallRecord:
    """A CDR as a crashed run left it (another instance id, no end time)."""
    return CallRecord(
        sid=CallSid(f"ID{'f' * 32}-CA{sid:032x}"), instance_id="ID" + "f" * 32,
        account_sid=AccountSid(ADMIN_SID), parent_call_sid=None, to=to, from_="alice",
        phone_number_sid=None, status=str(status), start_time=T0, end_time=None, duration=0,
        price=None, price_unit="USD", direction="inbound", answered_by=None,
        api_version="2012-04-24", forwarded_from=None, caller_name=None, conference_sid=None,
        ring_duration=4 if status == CallStatus.IN_PROGRESS else None, date_created=T0,
        date_updated=T0 + timedelta(seconds=10))


# --- a restart mid-call -------------------------------------------------------------------


async def test_a_crash_leaves_no_call_open_for_ever(tmp_path: Path) -> None:
    clock = WallClock()
    first = Appliance(config(tmp_path), clock=clock)
    await first.start()
    await first.store.insert_calls([leftover(1, CallStatus.IN_PROGRESS, "bob"),
                                    leftover(2, CallStatus.RINGING, "carol"),
                                    leftover(3, CallStatus.QUEUED, "dave")])
    await first.stop()
    clock.now = T0 + timedelta(minutes=5)
    second = Appliance(first.config, clock=clock)
    await second.start()
    try:
        listed = await calls_listed(second)
        assert {to: c["status"] for to, c in listed.items()} == {
            "bob": "completed", "carol": "failed", "dave": "failed"}
        # Ended when the appliance came back; answered at its last update (T0 + 10 s).
        assert listed["bob"]["end_time"] == "2026-03-03T09:05:00.000Z"
        assert listed["bob"]["duration"] == 290
        assert listed["carol"]["duration"] == 0 and listed["carol"]["end_time"]
        assert await calls_listed(second, {"Status": "in-progress"}) == {}
    finally:
        await second.stop()


async def test_a_clean_stop_closes_the_calls_in_progress_at_the_stop(tmp_path: Path) -> None:
    clock = WallClock()
    first = Appliance(config(tmp_path), clock=clock)
    await first.start()
    log = first.call_log
    talking = await log.opened(account_sid=ADMIN_SID, from_="alice", to="bob",
                               direction="inbound")
    ringing = await log.opened(account_sid=ADMIN_SID, from_="alice", to="carol",
                               direction="inbound")
    await log.ringing(ringing.sid)
    clock.now = T0 + timedelta(seconds=3)
    await log.answered(talking.sid)
    clock.now = T0 + timedelta(seconds=63)
    await first.stop()
    clock.now = T0 + timedelta(hours=2)  # a long upgrade: not counted in the call
    second = Appliance(first.config, clock=clock)
    await second.start()
    try:
        listed = await calls_listed(second)
        assert (listed["bob"]["status"], listed["bob"]["duration"]) == ("completed", 60)
        assert listed["bob"]["end_time"] == "2026-03-03T09:01:03.000Z"
        assert (listed["carol"]["status"], listed["carol"]["duration"]) == ("failed", 0)
    finally:
        await second.stop()
