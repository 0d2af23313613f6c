"""A database that cannot take writes (a full disk, another process's lock): the API answers
503 with the cause and Retry-After, the log gets one line per cause, not a traceback per
request, /health says so, and all recovers by itself once writes go through again."""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest

from appliance.app import Appliance
from tests.conftest import ADMIN_SID, Api

CLIENTS = f"Accounts/{ADMIN_SID}/Clients.json"
PW = "Pbx-edge-7"
FULL = "The appliance cannot write its database: database or disk is full"
LOCKED = "The appliance cannot write its database: database is locked"


async def _pragma(appliance: Appliance, pragma: str) -> int | None:
    """PRAGMA on the store's own connection (the limits below are per connection)."""
    store = appliance.store
    row = await store._run(lambda: store._conn().execute(f"PRAGMA {pragma}").fetchone())
    return None if row is None else int(row[0])


async def _fill_up(appliance: Appliance) -> None:
    """The database may not grow by a page: SQLite's own "database or disk is full"
    (SQLITE_FULL), as a full file system gives it, without needing one."""
    pages = await _pragma(appliance, "page_count")
    await _pragma(appliance, f"max_page_count = {pages}")


async def _health(api: Api) -> tuple[int, dict]:
    async with api.session.get(f"{api.base}/health") as resp:
        return resp.status, json.loads(await resp.text())


@pytest.fixture(autouse=True)
def no_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Health back at the first write that goes through (tests/store holds it a while)."""
    monkeypatch.setattr("appliance.store.failures.HOLD_FOR", 0.0)


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_full_disk_answers_503_with_its_cause_and_logs_one_line(
        appliance: Appliance, api: Api, caplog: pytest.LogCaptureFixture) -> None:
    await _fill_up(appliance)
    # The pages there are still have room for a few rows: write until one does not fit.
    for n in range(500):
        status, body, headers = await api.post(CLIENTS, {"Login": f"u{n}", "Password": PW})
        if status != 200:
            break
    assert (status, body) == (503, FULL)
    assert headers["Retry-After"] == "30"  # type: ignore[index]
    for n in range(20):
        status, body, _ = await api.post(CLIENTS, {"Login": f"more{n}", "Password": PW})
        assert (status, body) == (503, FULL)
    lines = _lines(caplog)
    assert [r.getMessage() for r in lines] == [
        "x the database cannot be written: database or disk is full; writes fail "
        "(API: 503) until it can"]
    assert not any(r.exc_info for r in caplog.records)

    status, health = await _health(api)
    assert status == 503
    assert health["status"] == "degraded"
    assert health["components"]["store"] == "failing"
    assert health["components"]["store_error"].startswith(
        "writes fail: database or disk is full (the last one ")
    assert appliance.status_line().startswith("database writes fail (database or disk is full)")
    # Reads still work.
    status, _, _ = await api.get(CLIENTS)
    assert status == 200

    # Space freed: the next write goes through, and health is back at once.
    await _pragma(appliance, "max_page_count = 1000000")
    status, body, _ = await api.post(CLIENTS, {"Login": "after", "Password": PW})
    assert status == 200, body
    status, health = await _health(api)
    assert (status, health["status"], health["components"]["store"]) == (200, "ok", "up")
    assert "store_error" not in health["components"]
    assert any(r.getMessage().startswith("- the database takes writes again (21 writes failed")
               for r in caplog.records)


async def test_a_database_locked_by_another_process_answers_503_after_the_busy_timeout(
        appliance: Appliance, api: Api, caplog: pytest.LogCaptureFixture) -> None:
    # The store waits up to 5 s for a lock; the same, shorter, keeps the test quick.
    await _pragma(appliance, "busy_timeout = 200")
    other = sqlite3.connect(appliance.config.data_dir / "appliance.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # e.g. an admin's sqlite3 shell in a write
        for n in range(3):
            status, body, headers = await api.post(CLIENTS, {"Login": f"u{n}", "Password": PW})
            assert (status, body) == (503, LOCKED)
            assert headers["Retry-After"] == "30"  # type: ignore[index]
        assert [r.getMessage() for r in _lines(caplog)] == [
            "x the database cannot be written: database is locked; writes fail (API: 503) "
            "until it can"]
        assert not any(r.exc_info for r in caplog.records)
        status, health = await _health(api)
        assert (status, health["components"]["store"]) == (503, "failing")
        assert "database is locked" in health["components"]["store_error"]
        other.execute("ROLLBACK")
        status, body, _ = await api.post(CLIENTS, {"Login": "after", "Password": PW})
        assert status == 200, body
        status, health = await _health(api)
        assert (status, health["components"]["store"]) == (200, "up")
    finally:
        other.close()

