"""The SQLite store: migrations, pragmas, the writer thread, counters kept by triggers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from appliance.errors import Duplicate, StoreBusy
from appliance.models import (
    API_VERSION,
    AccountSid,
    Application,
    ApplicationSid,
    CallRecord,
    CallSid,
    Notification,
    NotificationSid,
    SmsRecord,
    SmsSid,
    mint_sid,
)
from appliance.queries import ListQuery
from appliance.store import rows, schema
from appliance.store.db import OPEN_CALLS, Store
from appliance.store.failures import FAILING_FOR, HOLD_FOR, WriteFailures
from appliance.store.sms import InboundJob, SmsStore

NOW = datetime(2024, 3, 3, tzinfo=UTC)


def note(account: str) -> Notification:
    return Notification(
        sid=NotificationSid(mint_sid("NO")), account_sid=AccountSid(account), call_sid=None,
        log=0, error_code=1, more_info="", message_text="m", message_date=NOW, request_url="",
        request_method="", request_variables="", response_headers="", response_body="",
        date_created=NOW, date_updated=NOW)


async def test_migrations_apply_once_and_pragmas_hold(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    assert await store.open() == ["m001_core", "m002_sip_bindings", "m003_sms_queue",
                                  "m004_conferences", "m005_calls_open",
                                  "m006_sms_inbound_handed", "m007_trunk_contacts",
                                  "m008_notifications_call", "m009_role_spelling",
                                  "m010_sms_queue_turns"]
    await store.close()
    store = Store(tmp_path / "a.db")
    assert await store.open() == []
    mode = await store._run(lambda: store._conn().execute("PRAGMA journal_mode").fetchone()[0])
    sync = await store._run(lambda: store._conn().execute("PRAGMA synchronous").fetchone()[0])
    fks = await store._run(lambda: store._conn().execute("PRAGMA foreign_keys").fetchone()[0])
    assert (mode, sync, fks) == ("wal", 2, 1)  # 2 = FULL
    await store.close()


async def test_all_statements_run_on_one_thread_off_the_loop(tmp_path: Path) -> None:
    store = Store(tmp_path / "b.db")
    await store.open()
    loop_thread = threading.get_ident()
    seen = set()
    for _ in range(5):
        seen.add(await store._run(threading.get_ident))
    assert len(seen) == 1 and loop_thread not in seen
    await store.close()


async def test_totals_come_from_trigger_counts(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    await store.open()
    notes = [note("ACa"), note("ACa"), note("ACb")]
    await asyncio.gather(*(store.insert_notification(n) for n in notes))
    page = await store.page_notifications(ListQuery(account_sids=("ACa",)))
    assert page.total == 2 and len(page.items) == 2
    page = await store.page_notifications(ListQuery(account_sids=("ACa", "ACb")))
    assert page.total == 3
    await store.close()
    # The counters agree with COUNT(*) when read back by a plain sqlite3 connection.
    conn = sqlite3.connect(tmp_path / "c.db")
    counted = dict(conn.execute("SELECT account_sid, COUNT(*) FROM notifications "
                                "GROUP BY account_sid").fetchall())
    kept = dict(conn.execute("SELECT account_sid, n FROM row_counts "
                             "WHERE tbl = 'notifications'").fetchall())
    assert counted == kept == {"ACa": 2, "ACb": 1}


async def test_settings_first_value_wins(tmp_path: Path) -> None:
    store = Store(tmp_path / "d.db")
    await store.open()
    assert await store.set_setting_if_absent("sip_realm", "10.0.0.5") == "10.0.0.5"
    assert await store.set_setting_if_absent("sip_realm", "10.0.0.9") == "10.0.0.5"
    assert await store.get_setting("sip_realm") == "10.0.0.5"
    await store.close()


def cdr(status: str, *, ended: bool) -> CallRecord:
    return CallRecord(
        sid=CallSid(mint_sid("CA")), instance_id=None, account_sid=AccountSid("ACa"),
        parent_call_sid=None, to="bob", from_="alice", phone_number_sid=None, status=status,
        start_time=NOW, end_time=NOW if ended else None, duration=0, price=None,
        price_unit="USD", direction="inbound", answered_by=None, api_version=API_VERSION,
        forwarded_from=None, caller_name=None, conference_sid=None, ring_duration=None,
        date_created=NOW, date_updated=NOW)


def open_calls_plan(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return " / ".join(str(row[3]) for row in
                          conn.execute("EXPLAIN QUERY PLAN " + OPEN_CALLS).fetchall())
    finally:
        conn.close()


async def test_open_calls_is_served_by_an_index_not_a_scan(tmp_path: Path) -> None:
    """The leftover-CDR query run at every start reads the few rows without an end time
    through the partial index calls_open, whatever the size of the calls table."""
    store = Store(tmp_path / "calls.db")
    await store.open()
    left = [cdr("in-progress", ended=False), cdr("ringing", ended=False)]
    await store.insert_calls([cdr("completed", ended=True) for _ in range(200)] + left)
    assert {c.sid for c in await store.open_calls()} == {c.sid for c in left}
    await store.close()
    plan = open_calls_plan(tmp_path / "calls.db")
    assert "USING INDEX calls_open" in plan, plan
    assert "SCAN calls" not in plan, plan


async def test_a_database_of_the_previous_schema_gains_the_index_on_upgrade(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = Database(path)  # the schema as the previous release left it (m001-m004)
    schema.migrations.apply(db, stop_before="m005_calls_open")
    leftover = cdr("in-progress", ended=False)
    db["calls"].insert(rows.call_values(leftover))
    db["calls"].insert(rows.call_values(cdr("completed", ended=True)))
    db.conn.close()
    assert "calls_open" not in open_calls_plan(path)

    store = Store(path)
    assert await store.open() == ["m005_calls_open", "m006_sms_inbound_handed",
                                  "m007_trunk_contacts", "m008_notifications_call",
                                  "m009_role_spelling", "m010_sms_queue_turns"]
    assert [c.sid for c in await store.open_calls()] == [leftover.sid]
    await store.close()
    assert "USING INDEX calls_open" in open_calls_plan(path)
    store = Store(path)
    assert await store.open() == []  # applied once
    await store.close()


def sms(direction: str, status: str) -> SmsRecord:
    return SmsRecord(
        sid=SmsSid(mint_sid("SM")), account_sid=AccountSid("ACa"), from_="+15559990000",
        to="+15550001000", body="hello", status=status, direction=direction, error_code=None,
        error_message=None, price="0", price_unit="USD", api_version=API_VERSION,
        date_sent=None, date_created=NOW, date_updated=NOW)


async def test_inbound_jobs_of_the_previous_schema_are_still_delivered_after_upgrade(
        tmp_path: Path) -> None:
    """A received message whose job an older release left due (no `handed` column) is
    still run after the upgrade; a reply queued for it marks the job in the same write."""
    path = tmp_path / "jobs.db"
    db = Database(path)  # as the previous release left it (m001-m005)
    schema.migrations.apply(db, stop_before="m006_sms_inbound_handed")
    received = sms("inbound", "received")
    db["sms_messages"].insert(rows.sms_values(received))
    db["sms_inbound_jobs"].insert({"sid": received.sid, "next_attempt_at": "2024-03-03"})
    db.conn.close()

    store = Store(path)
    assert await store.open() == ["m006_sms_inbound_handed", "m007_trunk_contacts",
                                  "m008_notifications_call", "m009_role_spelling",
                                  "m010_sms_queue_turns"]
    jobs = SmsStore(store)
    conversation = (received.from_, received.to)
    assert await jobs.due_inbound_jobs("9999") == [
        InboundJob(received.sid, 0, handed=False, conversation=conversation)]
    await jobs.enqueue(sms("outbound-reply", "queued"), body="Thanks", ucs2=False,
                       status_report=True, concat_ref=1, x_headers={}, callback=None,
                       now="2024-03-03", handing=received.sid)
    assert await jobs.due_inbound_jobs("9999") == [
        InboundJob(received.sid, 0, handed=True, conversation=conversation)]
    await store.close()


async def test_a_call_write_creates_the_row_it_would_update_and_counts_it_once(
        tmp_path: Path) -> None:
    """write_calls upserts: the change of a call whose INSERT was lost with a failed batch
    creates its row, and writing an insert again (a batch retried) is no error; the Calls
    total counts each row once."""
    store = Store(tmp_path / "upsert.db")
    await store.open()
    try:
        lost, kept = cdr("ringing", ended=False), cdr("queued", ended=False)
        await store.write_calls([kept], [])
        answered = dataclasses.replace(lost, status="in-progress", duration=3)
        await store.write_calls([], [answered])  # its INSERT never committed
        assert await store.get_call(lost.sid) == answered
        ended = dataclasses.replace(kept, status="completed", end_time=NOW, duration=9,
                                    ring_duration=2)
        await store.write_calls([ended], [])  # an insert of a row already there
        assert await store.get_call(kept.sid) == ended
        page = await store.page_calls(ListQuery(account_sids=("ACa",)))
        assert page.total == 2 and {c.sid for c in page.items} == {lost.sid, kept.sid}
    finally:
        await store.close()


async def test_a_call_row_with_a_lone_surrogate_is_written_with_it_replaced(
        tmp_path: Path) -> None:
    """A To or From the SIP parser decoded with surrogateescape (a spoofed INVITE's
    Request-URI or From user holding a byte that is no UTF-8) cannot be bound as is: sqlite3
    raises UnicodeEncodeError. Each row, alone and in a batch, is written with the surrogate
    replaced; other text is written as it is."""
    store = Store(tmp_path / "surrogate.db")
    await store.open()
    try:
        spoofed = dataclasses.replace(cdr("queued", ended=False), to="\udcffbob",
                                      from_="al\udce9ice")
        plain = dataclasses.replace(cdr("queued", ended=False), to="zoë", from_="李")
        await store.write_calls([spoofed, plain], [])
        written = await store.get_call(spoofed.sid)
        assert written is not None and (written.to, written.from_) == ("?bob", "al?ice")
        assert await store.get_call(plain.sid) == plain
        await store.update_call(dataclasses.replace(spoofed, status="busy", to="\udcffbob"))
        updated = await store.get_call(spoofed.sid)
        assert updated is not None and (updated.status, updated.to) == ("busy", "?bob")
    finally:
        await store.close()


async def test_text_with_a_lone_surrogate_is_looked_up_and_written_without_an_error(
        tmp_path: Path) -> None:
    """Lookups and rows of any table take text from SIP messages (a Request-URI user looked
    up as a number, a MESSAGE's From and body): a lone surrogate there was a
    UnicodeEncodeError, i.e. a 500 to the request. Now a lookup finds nothing and a row is
    written with "?" in its place."""
    store = Store(tmp_path / "surrogate.db")
    await store.open()
    try:
        assert await store.find_number("+1555\udcff0001") is None
        assert await store.get_client_by_login("al\udce9ice") is None
        sms = SmsRecord(sid=SmsSid("SM" + "0" * 32), account_sid=AccountSid("ACa"),
                        from_="al\udce9ice", to="bob", body="caf\udce9", status="received",
                        direction="inbound", error_code=None, error_message=None, price="0",
                        price_unit="USD", api_version="2012-04-24", date_sent=NOW,
                        date_created=NOW, date_updated=NOW)
        await store.insert_sms(sms)
        written = await store.get_sms(sms.sid)
        assert written is not None and (written.from_, written.body) == ("al?ice", "caf?")
    finally:
        await store.close()


async def test_a_row_taking_a_unique_value_raises_duplicate_other_violations_do_not(
        tmp_path: Path) -> None:
    """The UNIQUE constraint is what makes "check, then insert" atomic: its violation is the
    domain's Duplicate (naming table and column) for the service to answer as its own check
    does; another integrity error (here a foreign key) stays what it is."""
    store = Store(tmp_path / "unique.db")
    await store.open()
    try:
        sms = SmsRecord(sid=SmsSid("SM" + "1" * 32), account_sid=AccountSid("ACa"),
                        from_="alice", to="bob", body="hi", status="received",
                        direction="inbound", error_code=None, error_message=None, price="0",
                        price_unit="USD", api_version="2012-04-24", date_sent=NOW,
                        date_created=NOW, date_updated=NOW)
        await store.insert_sms(sms)
        with pytest.raises(Duplicate) as caught:
            await store.insert_sms(sms)
        assert (caught.value.table, caught.value.column) == ("sms_messages", "sid")
        orphan = Application(sid=ApplicationSid("AP" + "1" * 32), account_sid=AccountSid("ACa"),
                             friendly_name="x", voice_caller_id_lookup=False, rcml_url=None,
                             kind=None, api_version=API_VERSION, date_created=NOW,
                             date_updated=NOW)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await store.insert_application(orphan)
    finally:
        await store.close()


async def test_call_rows_a_locked_database_cannot_take_raise_store_busy(
        tmp_path: Path) -> None:
    """A write the database cannot take now raises StoreBusy (CallLog keeps those rows for
    its next batch), not sqlite3's error."""
    store = Store(tmp_path / "locked.db")
    await store.open()
    other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        await store._run(lambda: store._conn().execute("PRAGMA busy_timeout = 0"))
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(StoreBusy, match="database is locked") as raised:
            await store.write_calls([cdr("queued", ended=False)], [])
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    finally:
        other.close()
        await store.close()


def _raw_gateway(conn: sqlite3.Connection, sid: str, name: str) -> None:
    conn.execute("INSERT INTO gateways VALUES (?, ?, 'u', 'p', '127.0.0.1', 1, 600, ?, ?)",
                 (sid, name, "2024-03-03T00:00:00.000000Z", "2024-03-03T00:00:00.000000Z"))


async def test_gateway_names_are_unique_once_the_duplicates_are_gone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A database an older version let duplicate FriendlyNames into still opens (nothing
    renamed behind the operator's back, a warning); the unique index comes once they are
    gone, and from then on the database itself refuses a duplicate."""
    from appliance.models import GatewaySid
    from appliance.store.gateways import GatewayStore

    path = tmp_path / "appliance.db"
    store = Store(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"DROP INDEX {schema.GATEWAY_NAMES_INDEX}")
    for sid in ("GW1", "GW2", "GW3"):
        _raw_gateway(conn, sid, "provider")
    conn.commit()
    conn.close()

    store = Store(path)
    await store.open()
    try:
        assert "gateways share the FriendlyName(s) 'provider'" in caplog.text
        gateways = GatewayStore(store)
        assert len(await gateways.all()) == 3
        first, second, third = await gateways.all()
        await gateways.update(dataclasses.replace(second, friendly_name="backup"))
        await gateways.delete(third.sid)
        # No duplicates left: the index is there, without a restart.
        dup = dataclasses.replace(first, sid=GatewaySid("GW4"))
        with pytest.raises(Duplicate):
            await gateways.insert(dup)
        with pytest.raises(Duplicate):
            await gateways.update(dataclasses.replace(second, friendly_name="provider"))
        assert sorted(g.friendly_name for g in await gateways.all()) == ["backup", "provider"]
    finally:
        await store.close()


async def test_a_database_of_the_previous_schema_keeps_trunk_contacts_after_upgrade(
        tmp_path: Path) -> None:
    """m007 on a database as the previous release left it (m001-m006): its gateways gain a
    place for the public Contact the trunk keeps (sip.trunk.PublicContacts), which goes with
    the gateway when it is deleted and is never kept for a gateway that is gone."""
    from appliance.store.gateways import GatewayStore

    path = tmp_path / "gateways.db"
    db = Database(path)
    schema.migrations.apply(db, stop_before="m007_trunk_contacts")
    conn = db.conn
    for sid, name in (("GW1", "office"), ("GW2", "backup")):
        _raw_gateway(conn, sid, name)
    conn.commit()
    conn.close()

    store = Store(path)
    assert await store.open() == ["m007_trunk_contacts", "m008_notifications_call",
                                  "m009_role_spelling", "m010_sms_queue_turns"]
    try:
        gateways = GatewayStore(store)
        assert await gateways.public_contacts() == {}
        await gateways.set_public_contact("GW1", ("203.0.113.50", 61000))
        await gateways.set_public_contact("GW2", ("203.0.113.50", 61001))
        await gateways.set_public_contact("GW1", ("203.0.113.50", 62000))  # replaced
        await gateways.set_public_contact("GW9", ("203.0.113.50", 9))  # no such gateway
        assert await gateways.public_contacts() == {"GW1": ("203.0.113.50", 62000),
                                                    "GW2": ("203.0.113.50", 61001)}
        await gateways.set_public_contact("GW2", None)
        await gateways.delete("GW1")
        assert await gateways.public_contacts() == {}
        await gateways.set_public_contact("GW1", ("203.0.113.50", 62000))  # deleted meanwhile
        assert await gateways.public_contacts() == {}
    finally:
        await store.close()
    store = Store(path)
    assert await store.open() == []  # applied once
    await store.close()


async def test_writes_a_full_disk_refuses_log_a_line_a_minute_and_count_for_health(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each write refused for a full disk raises StoreBusy with SQLite's cause; the log has
    one line per cause a minute, counting those left out; write_failure reports the last
    one until a write succeeds, or for failures.FAILING_FOR when none follows."""
    store = Store(tmp_path / "full.db")
    await store.open()
    now = [1000.0]
    store.failures = WriteFailures(clock=lambda: now[0])
    try:
        pages = await store._run(lambda: store._conn().execute("PRAGMA page_count").fetchone())
        await store._run(lambda: store._conn().execute(f"PRAGMA max_page_count = {pages[0]}"))
        refused = 0
        for _ in range(200):
            try:
                await store.insert_notification(note("AC1"))
            except StoreBusy as err:
                assert err.cause == "database or disk is full"
                assert isinstance(err.__cause__, sqlite3.OperationalError)
                refused += 1
                if refused == 5:
                    break
        assert refused == 5
        now[0] += 61
        with pytest.raises(StoreBusy):
            await store.insert_notification(note("AC1"))
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            "x the database cannot be written: database or disk is full; writes fail (API: "
            "503) until it can",
            "x the database cannot be written: database or disk is full; writes fail (API: "
            "503) until it can (4 more since the last line)"]
        assert store.write_failure() == ("database or disk is full", 0.0)
        await store.get_setting("x")  # a read does not say writes work again
        now[0] += FAILING_FOR - 1
        assert store.write_failure() == ("database or disk is full", FAILING_FOR - 1)
        now[0] += 1  # no write since: nothing says it still holds
        assert store.write_failure() is None
        with pytest.raises(StoreBusy):
            await store.insert_notification(note("AC1"))
        assert store.write_failure() is not None
        await store._run(lambda: store._conn().execute("PRAGMA max_page_count = 1000000"))
        await store.insert_notification(note("AC1"))
        assert caplog.records[-1].getMessage() == (
            "- the database takes writes again (7 writes failed meanwhile)")
        # Still reported a while: on a nearly full disk some writes fit between others that
        # fail, and health must not flicker with each.
        assert store.write_failure() == ("database or disk is full", 0.0)
        now[0] += HOLD_FOR
        assert store.write_failure() is None
    finally:
        await store.close()


async def test_the_senders_read_a_long_queue_only_up_to_what_they_take(tmp_path: Path) -> None:
    # 6,000 queued messages, 4 to each of 1,500 numbers. Each send asks for each number's
    # first message and for when the next is due: these read the queue in accepted order
    # up to what they return (m010). The window they used read and sorted the whole queue
    # (~50 ms at 20,000, per message sent, on the store's only thread). Counted in SQLite
    # VM steps, which do not depend on the machine's speed or load.
    path = tmp_path / "a.db"
    store = Store(path)
    await store.open()
    await store.close()
    db = Database(path)
    accepted = "2026-12-01T00:00:00.000000Z"
    with db.conn:
        for i in range(6000):
            sid = f"SM{i:032x}"
            record = dataclasses.replace(sms("outbound-api", "queued"), sid=SmsSid(sid),
                                         to=f"+4477{i % 1500:07d}")
            db["sms_messages"].insert(rows.sms_values(record))
            db.conn.execute(
                "INSERT INTO sms_outbox (sid, destination, body, ucs2, status_report, "
                "concat_ref, x_headers, state, next_attempt_at, accepted_at) "
                "VALUES (?, ?, 'hi', 0, 0, 0, '{}', 'queued', ?, ?)",
                (sid, record.to, accepted, f"2026-12-01T00:{i // 600:02d}:{i % 60:02d}.{i:06d}Z"))
    db.conn.close()
    store = Store(path)
    await store.open()
    queue = SmsStore(store)
    steps = 0

    def counted(call: Any) -> Any:
        def run() -> Any:
            nonlocal steps

            def step() -> int:
                nonlocal steps
                steps += 100
                return 0
            conn = store._conn()  # noqa: SLF001
            conn.set_progress_handler(step, 100)
            try:
                return call()
            finally:
                conn.set_progress_handler(None, 100)
        return store._run(run)  # noqa: SLF001

    try:
        due = await counted(lambda: queue._firsts_due("2026-12-02T00:00:00Z", 20, False))  # noqa: SLF001
        assert len(due) == 20 and len({item.destination for item in due}) == 20
        assert steps < 20_000, steps
        steps = 0
        assert await queue.next_due() == accepted
        assert await queue.due_for_clients("2026-12-02T00:00:00Z", 8) == []
        # The counts read the live rows only: an office's history of sent messages (rows
        # that stay for good) costs them nothing.
        await store.close()
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE sms_outbox SET state = 'done' WHERE rowid > 10")
        raw.close()
        store = Store(path)
        await store.open()
        queue = SmsStore(store)
        steps = 0

        def step() -> int:
            nonlocal steps
            steps += 100
            return 0
        await store._run(lambda: store._conn().set_progress_handler(step, 100))  # noqa: SLF001
        try:
            assert await queue.queued_count() == 10
            assert await queue.queued_from_calls(1000) == 0  # all outbound-api here
        finally:
            await store._run(  # noqa: SLF001
                lambda: store._conn().set_progress_handler(None, 100))  # noqa: SLF001
        assert steps < 2_000, steps
    finally:
        await store.close()


async def test_the_phones_share_of_the_queue_counts_calls_messages_to_numbers(
        tmp_path: Path) -> None:
    """What bounds the phones' SMS (messaging.MAX_PHONE_SMS_QUEUED): messages to numbers
    from calls (a MESSAGE, a call's app's <Sms>) not finished, counted up to a limit."""
    store = Store(tmp_path / "a.db")
    await store.open()
    queue = SmsStore(store)
    try:
        for direction, to in [("outbound-call", "+15550001000")] * 3 + [
                ("outbound-api", "+15550001000"), ("outbound-call", "client:alice")]:
            record = dataclasses.replace(sms(direction, "queued"), to=to)
            await queue.enqueue(record, body="hi", ucs2=False, status_report=True,
                                concat_ref=1, x_headers={}, callback=None, now="2026-12-01")
        assert await queue.queued_from_calls(10) == 3
        assert await queue.queued_from_calls(2) == 2
    finally:
        await store.close()
