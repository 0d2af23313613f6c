"""CallLog, the CDR writer, against the clocks of an RTC-less box (its wall clock is restored
from the last save at boot and stepped by NTP later, possibly mid-call) and against power
cuts (the calls in progress are checkpointed; the next start closes them at that point)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.errors import StoreBusy
from appliance.models import CallRecord, CallStatus
from appliance.services import telephony
from appliance.services.telephony import CallLog
from appliance.store.db import Store

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


# --- checkpoints while calls are in progress -------------------------------------------------


class Batches(Rows):
    """A store with ``write_calls``: each call is one transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[list[CallRecord], list[CallRecord]]] = []
        self.failing = False

    async def write_calls(self, inserts: list[CallRecord], updates: list[CallRecord]) -> None:
        if self.failing:
            raise OSError("disk I/O error")
        self.batches.append((inserts, updates))
        for record in [*inserts, *updates]:
            self.calls[record.sid] = record


async def test_a_checkpoint_writes_the_answered_calls_in_one_commit() -> None:
    clocks, store = Clocks(), Batches()
    log = call_log(clocks, store)
    sids = [(await log.opened(account_sid=ACCOUNT, from_=f"a{n}", to="bob",
                              direction="inbound")).sid for n in range(6)]
    assert await log.checkpoint() == 0  # nothing answered: nothing written
    for n, sid in enumerate(sids[:5]):
        await log.answered(sid)
        clocks.advance(n)  # answered at 0, 0, 1, 3, 6 s; the sixth is not answered
    clocks.advance(60)
    clocks.step(timedelta(hours=2))  # not talk time
    store.batches.clear()
    assert await log.checkpoint() == 5
    [(inserts, updates)] = store.batches
    assert inserts == [] and [r.sid for r in updates] == sids[:5]
    assert [r.duration for r in updates] == [70, 70, 69, 67, 64]
    assert {(r.status, r.date_updated) for r in updates} == {("in-progress", clocks.now)}
    assert store.calls[sids[5]].status == "queued"
    # The end still counts from the answer, and is written after the checkpoint.
    clocks.advance(5)
    final = await log.ended(sids[0], CallStatus.COMPLETED)
    assert final is not None and (final.duration, store.calls[sids[0]]) == (75, final)


@pytest.mark.parametrize("checkpoint_first", [True, False])
async def test_a_checkpoint_never_reopens_a_call_ending_meanwhile(checkpoint_first: bool
                                                                   ) -> None:
    clocks, store = Clocks(), Batches()
    log = call_log(clocks, store)
    record = await log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound")
    await log.answered(record.sid)
    clocks.advance(30)
    ending = log.ended(record.sid, CallStatus.COMPLETED)
    if checkpoint_first:
        await asyncio.gather(log.checkpoint(), ending)
    else:
        await asyncio.gather(ending, log.checkpoint())
    row = store.calls[record.sid]
    assert (row.status, row.duration, row.end_time) == ("completed", 30, clocks.now)
    assert await log.checkpoint() == 0


async def test_the_checkpoint_task_runs_until_cancelled_and_outlives_a_failed_commit() -> None:
    clocks, store = Clocks(), Batches()
    log = call_log(clocks, store)
    record = await log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound")
    await log.answered(record.sid)
    clocks.advance(61)
    store.failing = True
    task = asyncio.get_running_loop().create_task(log.run(interval=0.001))
    try:
        await asyncio.sleep(0.01)  # a few checkpoints fail: logged, the task goes on
        assert not task.done()
        store.failing = False
        async with asyncio.timeout(5):
            while store.calls[record.sid].duration != 61:
                await asyncio.sleep(0.001)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_power_cut_closes_a_call_at_its_last_checkpoint(tmp_path: Path) -> None:
    clocks = Clocks()
    store = Store(tmp_path / "appliance.db")
    await store.open()
    try:
        crashed = call_log(clocks, store)
        talking = await crashed.opened(account_sid=ACCOUNT, from_="alice", to="bob",
                                       direction="inbound")
        ringing = await crashed.opened(account_sid=ACCOUNT, from_="alice", to="carol",
                                       direction="inbound")
        clocks.advance(2)
        await crashed.ringing(ringing.sid)
        await crashed.answered(talking.sid)
        clocks.advance(60)
        clocks.step(timedelta(hours=-1))  # NTP, between two checkpoints: not talk time
        clocks.advance(60)
        await crashed.checkpoint()
        checkpointed_at = clocks.now
        clocks.advance(45)  # the power goes before the next checkpoint
        del crashed  # no close_all: the row stays in progress
        clocks.advance(3 * 3600)  # back up hours later
        started = call_log(clocks, store)
        assert await started.close_leftovers() == 2
        bob = await store.get_call(talking.sid)
        assert bob is not None
        assert (bob.status, bob.duration, bob.end_time) == ("completed", 120, checkpointed_at)
        assert bob.date_updated == clocks.now  # the row was closed now
        carol = await store.get_call(ringing.sid)
        assert carol is not None
        assert (carol.status, carol.duration, carol.end_time) == ("failed", 0, T0 +
                                                                   timedelta(seconds=2))
        assert await store.open_calls() == []
        assert await started.close_leftovers() == 0
    finally:
        await store.close()


# --- an end whose commit is cancelled or fails; a batch that fails -----------------------------


class FlakyStore:
    """The real Store, except that its next FAILURES batches of call rows fail, as with a
    locked database or an I/O error: nothing of them is committed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failures = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def write_calls(self, inserts: list[CallRecord], updates: list[CallRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("database is locked")
        await self.store.write_calls(inserts, updates)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    real = Store(tmp_path / "appliance.db")
    await real.open()
    try:
        yield FlakyStore(real)
    finally:
        await real.close()


async def talking(clocks: Clocks, log: CallLog, seconds: float) -> CallRecord:
    """A call answered after 2 s of ringing, SECONDS ago."""
    record = await log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound")
    await log.ringing(record.sid)
    clocks.advance(2)
    await log.answered(record.sid)
    clocks.advance(seconds)
    return record


async def test_an_end_whose_caller_is_cancelled_in_the_commit_stays_completed(
        store: FlakyStore) -> None:
    """A BYE handled just before a stop: its handler task, waiting for the commit of the
    end, is cancelled with the transport. The call is over all the same; the stop that
    follows (close_all) neither finds it open nor ends it again as `failed`."""
    clocks = Clocks()
    log = call_log(clocks, store)
    record = await talking(clocks, log, 42)
    bye = asyncio.get_running_loop().create_task(log.ended(record.sid, CallStatus.COMPLETED))
    await asyncio.sleep(0)  # the end is queued, its commit under way
    bye.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bye
    assert log.live_count() == 0
    clocks.advance(30)  # the stop comes later
    assert await log.close_all() == 0
    row = await store.get_call(record.sid)
    assert row is not None
    assert (row.status, row.duration, row.ring_duration) == ("completed", 42, 2)
    assert row.end_time == T0 + timedelta(seconds=44)


async def test_an_end_whose_commit_fails_is_written_later_still_completed(
        store: FlakyStore, caplog: pytest.LogCaptureFixture) -> None:
    """The failed commit is logged, not raised: `ended` returns the final record, so its
    caller (in a `finally`) still posts the `completed` status callback; the row is
    written later."""
    clocks = Clocks()
    log = call_log(clocks, store)
    record = await talking(clocks, log, 42)
    store.failures = 1
    final = await log.ended(record.sid, CallStatus.COMPLETED)
    assert final is not None and (final.status, final.duration) == ("completed", 42)
    assert f"end of call {record.sid} not committed yet" in caplog.text
    assert await store.get_call(record.sid) != final
    assert log.live_count() == 0
    assert await log.ended(record.sid, CallStatus.FAILED) is None  # over: not ended again
    clocks.advance(30)
    assert await log.close_all() == 0  # writes the end kept from the failed batch
    row = await store.get_call(record.sid)
    assert row is not None
    assert (row.status, row.duration, row.end_time) == ("completed", 42,
                                                        T0 + timedelta(seconds=44))
    assert await store.open_calls() == []


async def test_a_call_whose_first_commit_failed_gets_its_row(store: FlakyStore) -> None:
    """The batch holding the call's INSERT fails: the next change of the call writes the
    whole row, and the Calls row exists with the final state."""
    clocks = Clocks()
    log = call_log(clocks, store)
    store.failures = 1
    sid = log.new_sid()
    with pytest.raises(OSError):
        await log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound",
                         sid=sid)
    assert await store.get_call(sid) is None
    await log.ringing(sid)
    ringing = await store.get_call(sid)
    assert ringing is not None and ringing.status == "ringing"
    clocks.advance(3)
    await log.answered(sid)
    clocks.advance(10)
    final = await log.ended(sid, CallStatus.COMPLETED)
    assert final is not None and await store.get_call(sid) == final
    assert (final.status, final.duration, final.ring_duration) == ("completed", 10, 3)


async def test_the_rows_of_a_failed_batch_are_written_at_the_next_checkpoint(
        store: FlakyStore) -> None:
    """No later change comes (the call was not answered, nothing else happens): the next
    checkpoint writes the lost rows, though no call is in progress."""
    clocks = Clocks()
    log = call_log(clocks, store)
    record = await log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound")
    clocks.advance(5)
    store.failures = 1
    await log.ended(record.sid, CallStatus.BUSY)  # its commit fails: logged
    assert record.sid in log._failed
    assert await log.checkpoint() == 0  # no call in progress, but the end is written
    row = await store.get_call(record.sid)
    assert row is not None and (row.status, row.end_time) == ("busy", clocks.now)


async def test_the_rows_kept_from_failed_batches_are_bounded(
        store: FlakyStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A store failing for long: the rows kept for the next batch stop at MAX_FAILED_ROWS,
    the newest kept and the drop logged, and the store back at work writes those."""
    monkeypatch.setattr(telephony, "MAX_FAILED_ROWS", 3)
    clocks = Clocks()
    log = call_log(clocks, store)
    store.failures = 1
    opened = [log.opened(account_sid=ACCOUNT, from_="alice", to=f"bob{n}",
                         direction="inbound") for n in range(5)]
    results = await asyncio.gather(*opened, return_exceptions=True)
    assert all(isinstance(result, OSError) for result in results)
    assert "2 CDR rows dropped" in caplog.text
    assert await log.checkpoint() == 0  # the store works again: the kept rows are written
    written = [await store.get_call(sid) for sid in list(log._live)]
    assert [row is not None for row in written] == [False, False, True, True, True]


# --- a row the store refuses ----------------------------------------------------------------


class RefusingStore(FlakyStore):
    """FlakyStore refusing, whole, any batch holding a To or From that is no UTF-8 (a lone
    surrogate the SIP parser's surrogateescape left), as sqlite3 does when binding it: such
    a row fails every time, unlike a locked database."""

    async def write_calls(self, inserts: list[CallRecord], updates: list[CallRecord]) -> None:
        for record in [*inserts, *updates]:
            record.to.encode("utf-8")
            record.from_.encode("utf-8")
        await super().write_calls(inserts, updates)


@pytest.fixture
async def refusing(store: FlakyStore) -> RefusingStore:
    return RefusingStore(store.store)


async def test_a_row_the_store_refuses_is_dropped_and_blocks_no_other(
        refusing: RefusingStore, caplog: pytest.LogCaptureFixture) -> None:
    """The calls committed with it and after it are all written: its batch is written again
    row by row, and only the refused row is dropped, logged with its sid, its error raised to
    its own caller alone; it is not kept for the next batches."""
    log = call_log(Clocks(), refusing)
    poison = log.new_sid()
    results = await asyncio.gather(
        log.opened(account_sid=ACCOUNT, from_="\udcffmallory", to="bob", direction="inbound",
                   sid=poison),
        *(log.opened(account_sid=ACCOUNT, from_="alice", to=f"bob{n}", direction="inbound")
          for n in range(3)), return_exceptions=True)
    assert isinstance(results[0], UnicodeEncodeError)
    same_batch = [result for result in results[1:] if isinstance(result, CallRecord)]
    assert len(same_batch) == 3
    assert f"CDR row of call {poison} dropped" in caplog.text
    assert [r.levelname for r in caplog.records if poison in r.getMessage()] == ["ERROR"]
    assert log._failed == {}
    later = []
    for n in range(3):
        record = await log.opened(account_sid=ACCOUNT, from_="alice", to=f"carol{n}",
                                  direction="inbound")
        await log.ended(record.sid, CallStatus.BUSY)
        later.append(record.sid)
    for sid in [r.sid for r in same_batch]:
        row = await refusing.get_call(sid)
        assert row is not None and row.status == "queued"
    for sid in later:
        row = await refusing.get_call(sid)
        assert row is not None and row.status == "busy"
    assert await refusing.get_call(poison) is None
    assert await log.checkpoint() == 0  # nothing kept to write again


async def test_a_row_failing_alone_for_the_stores_sake_is_kept(
        refusing: RefusingStore) -> None:
    """Written row by row, a row that fails as a locked database does is not the one the
    store refuses: it is kept, and written with the next batch."""
    log = call_log(Clocks(), refusing)
    poison, good = log.new_sid(), log.new_sid()
    real_write = refusing.write_calls
    calls = 0

    async def locked_on_the_second_write(inserts: list[CallRecord],
                                         updates: list[CallRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # the batch, the poison row alone, then the good one alone
            raise OSError("database is locked")
        await real_write(inserts, updates)

    refusing.write_calls = locked_on_the_second_write  # type: ignore[method-assign]
    results = await asyncio.gather(
        log.opened(account_sid=ACCOUNT, from_="\udcffmallory", to="bob", direction="inbound",
                   sid=poison),
        log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound",
                   sid=good), return_exceptions=True)
    assert isinstance(results[0], UnicodeEncodeError) and isinstance(results[1], OSError)
    assert list(log._failed) == [good]
    assert await log.checkpoint() == 0
    row = await refusing.get_call(good)
    assert row is not None and row.status == "queued"
    assert await refusing.get_call(poison) is None


async def test_the_bound_on_kept_rows_drops_the_oldest_after_two_failures(
        store: FlakyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches fail in a row: the rows kept from the first go in front of the changes
    queued since, so the bound drops those older rows, not the newest changes."""
    monkeypatch.setattr(telephony, "MAX_FAILED_ROWS", 3)
    log = call_log(Clocks(), store)
    store.failures = 2
    old = [log.opened(account_sid=ACCOUNT, from_="alice", to=f"old{n}", direction="inbound")
           for n in range(3)]
    await asyncio.gather(*old, return_exceptions=True)
    old_sids = list(log._live)
    new = [log.opened(account_sid=ACCOUNT, from_="alice", to=f"new{n}", direction="inbound")
           for n in range(3)]
    await asyncio.gather(*new, return_exceptions=True)
    new_sids = [sid for sid in log._live if sid not in old_sids]
    assert list(log._failed) == new_sids
    assert await log.checkpoint() == 0
    assert [await store.get_call(sid) is not None for sid in old_sids + new_sids] == [
        False] * 3 + [True] * 3


async def test_a_kept_row_changed_since_is_written_with_its_later_change(
        store: FlakyStore) -> None:
    """A kept row whose call changed since is written once, with the later change and the
    INSERT the failed batch owed."""
    clocks = Clocks()
    log = call_log(clocks, store)
    store.failures = 1
    sid = log.new_sid()
    with pytest.raises(OSError):
        await log.opened(account_sid=ACCOUNT, from_="alice", to="bob", direction="inbound",
                         sid=sid)
    other, _ = await asyncio.gather(
        log.opened(account_sid=ACCOUNT, from_="alice", to="carol", direction="inbound"),
        log.ringing(sid))  # one batch, with the kept row
    row = await store.get_call(sid)
    assert row is not None and row.status == "ringing"
    assert await store.get_call(other.sid) is not None and log._failed == {}


class RefusingThenBusyStore:
    """A batch refused for one row's sake, then a locked database: every later write
    fails busy (each would wait out the lock for seconds in production)."""

    def __init__(self) -> None:
        self.attempts = 0

    async def write_calls(self, inserts: list[CallRecord], updates: list[CallRecord]) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise ValueError("a row the store refuses")
        raise StoreBusy("database is locked")


async def test_rows_tried_alone_stop_at_the_first_busy_answer() -> None:
    """After a batch refused for a row's sake each row is tried alone; once the store
    answers busy, the rest are kept for the next batch untried, not each made to wait out
    the lock while calls wait for the writer."""
    store = RefusingThenBusyStore()
    log = CallLog(store, Clocks().wall)  # type: ignore[arg-type]
    opened = [log.opened(account_sid=ACCOUNT, from_="alice", to=f"bob{n}",
                         direction="inbound") for n in range(40)]
    results = await asyncio.gather(*opened, return_exceptions=True)
    assert all(isinstance(result, StoreBusy) for result in results)
    assert store.attempts == 2  # the batch, then one row alone
    assert len(log._failed) == 40  # all kept for the next batch
