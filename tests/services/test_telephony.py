"""CallLog, the CDR writer, against the clocks of an RTC-less box: its wall clock is restored
from the last save at boot and stepped by NTP later, possibly mid-call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.models import CallRecord, CallStatus
from appliance.services.telephony import CallLog

T0 = datetime(2026, 3, 3, 9, 0, 0, tzinfo=UTC)
ACCOUNT = "AC" + "1" * 32


class Clocks:
    """The wall clock (``now``) and the monotonic timer clock. ``advance`` is time passing
    (both move); ``step`` is NTP stepping the wall clock alone."""

    def __init__(self) -> None:
        self.now = T0
        self.elapsed = 1_000.0  # far from any wall time, so mixing the two shows

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.elapsed += seconds

    def step(self, by: timedelta) -> None:
        self.now += by


class Rows:
    """The two store methods CallLog writes with when the store has no batches."""

    def __init__(self) -> None:
        self.calls: dict[str, CallRecord] = {}

    async def insert_call(self, record: CallRecord) -> None:
        self.calls[record.sid] = record

    async def update_call(self, record: CallRecord) -> None:
        self.calls[record.sid] = record


def call_log(clocks: Clocks, store: object) -> CallLog:
    return CallLog(store, clocks.wall, clocks.monotonic)  # type: ignore[arg-type]


@pytest.mark.parametrize("step", [timedelta(hours=2), timedelta(hours=-1)])
async def test_an_ntp_step_during_a_call_is_not_in_its_durations(step: timedelta) -> None:
    clocks, rows = Clocks(), Rows()
    log = call_log(clocks, rows)
    record = await log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound")
    await log.ringing(record.sid)
    clocks.advance(4)
    clocks.step(step)  # NTP, while it rings
    await log.answered(record.sid)
    clocks.advance(30)
    clocks.step(step)  # and again while they talk
    clocks.advance(12)
    final = await log.ended(record.sid, CallStatus.COMPLETED)
    assert final is not None and rows.calls[record.sid] == final
    assert (final.status, final.ring_duration, final.duration) == ("completed", 4, 42)
    # The times the API shows stay on the wall clock, steps and all.
    assert final.start_time == T0
    assert final.end_time == T0 + timedelta(seconds=46) + 2 * step


async def test_an_unanswered_calls_ringing_ignores_a_step() -> None:
    clocks, rows = Clocks(), Rows()
    log = call_log(clocks, rows)
    record = await log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound")
    await log.ringing(record.sid)
    clocks.advance(10)
    clocks.step(timedelta(hours=-1))
    clocks.advance(5)
    final = await log.ended(record.sid, CallStatus.NO_ANSWER)
    assert final is not None
    assert (final.status, final.ring_duration, final.duration) == ("no-answer", 15, 0)
