"""The SQLite store: migrations, pragmas, the writer thread, counters kept by triggers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from appliance.models import AccountSid, Notification, NotificationSid, mint_sid
from appliance.queries import ListQuery
from appliance.store.db import Store

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
                                  "m004_conferences"]
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
