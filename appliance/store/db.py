"""The Store: one SQLite connection owned by one thread, async methods returning models.

Every statement runs on a single-thread executor (datasette's write-thread pattern), so the
event loop never blocks on disk and there is exactly one writer. WAL + synchronous=FULL: a
commit is on disk before the caller hears about it, which is what "lose no SMS" rests on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from appliance import models
from appliance.errors import Duplicate, StoreBusy
from appliance.queries import ListQuery
from appliance.store import rows, schema
from appliance.store.failures import WriteFailures
from appliance.timefmt import storage

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=5000",
            "journal_size_limit=4194304")


# How often data_version() asks SQLite about commits by other connections. The store's own
# writes are seen at once (through total_changes); other processes do not write while the
# appliance serves (restore takes the instance lock), so a short delay there costs nothing,
# and not asking on every API request saves a query per request.
FOREIGN_POLL = 0.05

# The columns of incoming_phone_numbers that name an application.
_APP_REFS = ("voice_application_sid, sms_application_sid, ussd_application_sid, "
             "refer_application_sid")

# The CDRs a crash left open (Store.open_calls, at every start): served by the partial index
# calls_open (schema m005), whose condition is this query's `end_time IS NULL`.
OPEN_CALLS = ("SELECT * FROM calls WHERE end_time IS NULL AND status IN "
              "('queued', 'ringing', 'in-progress')")


class Store:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: Database | None = None
        self._thread_id: int | None = None
        # Change detection for caches on the event-loop thread (see data_version()).
        self._watch: sqlite3.Connection | None = None
        self._changes = 0
        self._foreign: int | None = None
        self._foreign_read_at = -FOREIGN_POLL
        self._json_checks: dict[tuple[str, str], str] = {}  # see _inexact_json
        # Writes the storage could not take (a full disk, a lock, an I/O error): raised as
        # StoreBusy, logged throttled, and the last one reported by /health (write_failure).
        self.failures = WriteFailures()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> list[str]:
        """Open the file, set the pragmas and apply pending migrations."""
        return await self._run(self._open_sync)

    def _open_sync(self) -> list[str]:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        make_private(self._path)
        conn = sqlite3.connect(str(self._path), timeout=5.0, check_same_thread=False)
        # No sqlite-utils plugins: none is installed, none may change this connection, and
        # looking for them reads the metadata of every installed distribution at each start
        # (~0.6 MB of idle RSS, issue #3).
        db = Database(conn, execute_plugins=False)
        for pragma in _PRAGMAS:
            db.execute("PRAGMA " + pragma)
        self._db = db
        self._thread_id = threading.get_ident()
        # A second connection used only for `PRAGMA data_version` from the event loop: it
        # never writes and never waits (timeout 0; a busy answer just means "unknown").
        self._watch = sqlite3.connect(str(self._path), timeout=0, check_same_thread=False,
                                      isolation_level=None)
        applied = schema.apply(db)
        if applied:
            logger.info("- applied migrations %s", ", ".join(applied))
        with db.atomic():
            shared = schema.ensure_unique_gateway_names(db.conn)
        if shared:
            logger.warning(
                "x gateways share the FriendlyName(s) %s: routes and [inbound.sources] name "
                "gateways by FriendlyName, so give each its own (the API refuses new "
                "duplicates)", ", ".join(repr(n) for n in shared))
        return applied

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        assert self._db is not None  # noqa: S101 - internal invariant, not peer input
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.conn.close()
            self._db = None

    async def ping(self) -> bool:
        """A trivial query through the writer thread: proves the thread and file answer.
        It writes nothing (an SD card wears with every write): whether writes fail is
        `write_failure`'s."""
        return await self._run(lambda: self._conn().execute("SELECT 1").fetchone() == (1,))

    def write_failure(self) -> tuple[str, float] | None:
        """The cause of the last failed write and its age in seconds, while writes fail:
        no write has succeeded since, and it is less than failures.FAILING_FOR old."""
        return self.failures.failing()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._counted, fn, *args)

    def _counted(self, fn: Callable[..., T], *args: Any) -> T:
        before, serving = self._changes, self._db is not None
        try:
            result = fn(*args)
        except sqlite3.Error as err:
            # Not while opening: start-up reports SQLite's own error and stops.
            busy = self.failures.unavailable(err) if serving else None
            if busy is None:
                raise
            raise busy from err
        finally:
            if self._db is not None:
                # Rows changed through this connection, committed or not, read on the store
                # thread so the event loop never touches the writer connection.
                self._changes = self._db.conn.total_changes
        if serving and self._changes != before:
            self.failures.wrote()
        return result

    def data_version(self) -> tuple[int, int] | None:
        """A value that changes whenever the database content may have changed; None if unknown.

        Cheap and non-blocking, for the event-loop thread. It combines the rows changed
        through the store's own connection (updated after each store call) with SQLite's
        `PRAGMA data_version` on a separate connection, which moves on every commit by any
        other connection: the store's writer and other processes alike (read at most every
        FOREIGN_POLL seconds).
        """
        watch = self._watch
        if watch is None:
            return None
        now = time.monotonic()
        if self._foreign is None or now - self._foreign_read_at >= FOREIGN_POLL:
            try:
                row = watch.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error:
                self._foreign = None
                return None
            self._foreign, self._foreign_read_at = int(row[0]), now
        return self._changes, self._foreign

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db.conn

    def _database(self) -> Database:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    # -- generic helpers (run on the store thread) ----------------------------------------------

    def _fetch_one(self, sql: str, params: Iterable[Any], convert: Callable[[sqlite3.Row], T]
                   ) -> T | None:
        cur = self._conn().execute(sql, _bindable(params))
        cur.row_factory = sqlite3.Row  # type: ignore[assignment]
        row = cur.fetchone()
        return convert(row) if row is not None else None

    def _fetch_all(self, sql: str, params: Iterable[Any], convert: Callable[[sqlite3.Row], T]
                   ) -> list[T]:
        cur = self._conn().execute(sql, _bindable(params))
        cur.row_factory = sqlite3.Row  # type: ignore[assignment]
        return [convert(r) for r in cur.fetchall()]

    def _fetch_tuples(self, sql: str, params: Iterable[Any], table: str, columns: str
                      ) -> list[Sequence[Any]]:
        """The rows of SQL, which selects COLUMNS of TABLE, as sequences of their values.

        SQLite builds them into one JSON array, read in one step: fetching row by row, the
        sqlite3 module releases and retakes the GIL for every row, and with the event loop
        rendering meanwhile that hand-off cost more CPU than the query did (about a fifth
        of the server's time under load). JSON gives back NULL, INTEGER and TEXT values
        exactly; a page holding a REAL (only possible in a column without TEXT affinity),
        a BLOB (json_array refuses one before SQLite 3.45 and may read it as JSONB after)
        or text SQLite cannot encode is fetched row by row instead. The rows keep their
        order: SQLite does not flatten a subquery with ORDER BY into an aggregate query
        (the query plan shows it run as a co-routine the aggregate scans in order), and
        tests/api/test_listing.py compares the pages with those fetched row by row.
        """
        conn = self._conn()
        params = tuple(params)
        try:
            text, inexact = conn.execute(
                f"SELECT json_group_array(json_array({columns})), "
                f"max({self._inexact_json(table, columns)}) FROM ({sql})", params).fetchone()
        except sqlite3.Error:
            inexact = True
        if not inexact:
            return json.loads(text)  # type: ignore[no-any-return]
        cur = conn.execute(sql, params)
        cur.row_factory = None
        return cur.fetchall()

    def _inexact_json(self, table: str, columns: str) -> str:
        """An SQL condition true for a row of TABLE whose COLUMNS JSON would not carry
        exactly (see _fetch_tuples)."""
        key = (table, columns)
        check = self._json_checks.get(key)
        if check is None:
            declared = {name: kind.upper() for _, name, kind, *_ in
                        self._conn().execute(f'PRAGMA table_info("{table}")')}
            conditions = ["0"]
            for quoted in columns.split(", "):
                kind = declared[quoted.strip('"')]
                if not any(text in kind for text in ("CHAR", "CLOB", "TEXT")):
                    conditions.append(f"typeof({quoted}) = 'real'")
                if sqlite3.sqlite_version_info >= (3, 45):
                    conditions.append(f"typeof({quoted}) = 'blob'")
            check = self._json_checks[key] = " OR ".join(conditions)
        return check

    def _insert(self, table: str, values: Mapping[str, Any]) -> None:
        columns = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        try:
            with self._database().atomic():
                self._conn().execute(f'INSERT INTO "{table}" ({columns}) VALUES ({marks})',
                                     _bindable(values.values()))
        except sqlite3.IntegrityError as err:
            duplicate = as_duplicate(err)
            if duplicate is None:
                raise
            raise duplicate from err

    def _update(self, table: str, sid: str, values: Mapping[str, Any]) -> None:
        sets = ", ".join(f'"{c}" = ?' for c in values)
        with self._database().atomic():
            self._conn().execute(f'UPDATE "{table}" SET {sets} WHERE sid = ?',
                                 _bindable((*values.values(), sid)))

    def _delete(self, table: str, sid: str) -> bool:
        with self._database().atomic():
            cur = self._conn().execute(f'DELETE FROM "{table}" WHERE sid = ?', (sid,))
        return cur.rowcount > 0

    # -- settings ----------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        def run() -> str | None:
            row = self._conn().execute("SELECT value FROM settings WHERE key = ?",
                                       (key,)).fetchone()
            return row[0] if row else None
        return await self._run(run)

    async def set_setting_if_absent(self, key: str, value: str) -> str:
        """Store VALUE under KEY unless a value is already there; return the stored one."""
        def run() -> str:
            with self._database().atomic():
                self._conn().execute(
                    "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                    (key, value))
                row = self._conn().execute("SELECT value FROM settings WHERE key = ?",
                                           (key,)).fetchone()
            return str(row[0])
        return await self._run(run)

    # -- accounts ----------------------------------------------------------------------------

    async def get_account(self, sid: str) -> models.Account | None:
        return await self._run(self._fetch_one, "SELECT * FROM accounts WHERE sid = ?", (sid,),
                               rows.account)

    async def find_account(self, key: str) -> models.Account | None:
        """By email first, then by SID (Basic-auth user lookup order)."""
        return await self._run(
            self._fetch_one,
            "SELECT * FROM accounts WHERE email_address = ? OR sid = ? "
            "ORDER BY email_address = ? DESC LIMIT 1",
            (key.lower(), key, key.lower()), rows.account)

    async def accounts_named(self, name: str) -> list[models.Account]:
        """Every account whose friendly name is NAME (names are not unique), oldest first."""
        return await self._run(self._fetch_all,
                               "SELECT * FROM accounts WHERE friendly_name = ? "
                               "ORDER BY date_created, sid", (name,), rows.account)

    async def child_accounts(self, parent_sid: str) -> list[models.Account]:
        return await self._run(self._fetch_all,
                               "SELECT * FROM accounts WHERE parent_sid = ? ORDER BY date_created",
                               (parent_sid,), rows.account)

    async def insert_account(self, account: models.Account) -> None:
        await self._run(self._insert, "accounts", rows.account_values(account))

    async def update_account(self, account: models.Account) -> None:
        await self._run(self._update, "accounts", account.sid, rows.account_values(account))

    async def set_status_recursive(self, sids: list[str], status: str, now: str,
                                   purge: bool) -> None:
        """Set STATUS on every SID (children first); with PURGE delete what closing removes."""
        def run() -> None:
            conn = self._conn()
            with self._database().atomic():
                for sid in sids:
                    conn.execute("UPDATE accounts SET status = ?, date_updated = ? WHERE sid = ?",
                                 (status, now, sid))
                    if purge:
                        for table in ("notifications", "recordings", "applications",
                                      "incoming_phone_numbers", "clients"):
                            conn.execute(f'DELETE FROM "{table}" WHERE account_sid = ?', (sid,))
        await self._run(run)

    async def all_accounts(self) -> list[models.Account]:
        return await self._run(self._fetch_all, "SELECT * FROM accounts", (), rows.account)

    # -- clients -----------------------------------------------------------------------------

    async def get_client(self, sid: str) -> models.Client | None:
        return await self._run(self._fetch_one, "SELECT * FROM clients WHERE sid = ?", (sid,),
                               rows.client)

    async def get_client_by_login(self, login: str) -> models.Client | None:
        return await self._run(self._fetch_one, "SELECT * FROM clients WHERE login = ?",
                               (login,), rows.client)

    async def all_clients(self) -> list[models.Client]:
        """Every Client of every account (the SIP directory reads them at once)."""
        return await self._run(self._fetch_all, "SELECT * FROM clients", (), rows.client)

    async def list_clients(self, account_sid: str) -> list[models.Client]:
        return await self._run(self._fetch_all,
                               "SELECT * FROM clients WHERE account_sid = ? ORDER BY date_created",
                               (account_sid,), rows.client)

    async def list_clients_stored(self, account_sid: str) -> list[Sequence[Any]]:
        """list_clients as stored records (rows.CLIENT_STORED): no models are built."""
        return await self._run(
            self._fetch_tuples,
            f"SELECT {rows.CLIENT_STORED} FROM clients WHERE account_sid = ? ORDER BY date_created",
            (account_sid,), "clients", rows.CLIENT_STORED)

    async def insert_client(self, client: models.Client) -> None:
        await self._run(self._insert, "clients", rows.client_values(client))

    async def update_client(self, client: models.Client) -> None:
        await self._run(self._update, "clients", client.sid, rows.client_values(client))

    async def delete_client(self, sid: str) -> bool:
        return await self._run(self._delete, "clients", sid)

    # -- applications ------------------------------------------------------------------------

    async def get_application(self, sid: str) -> models.Application | None:
        return await self._run(self._fetch_one, "SELECT * FROM applications WHERE sid = ?",
                               (sid,), rows.application)

    async def list_applications(self, account_sid: str) -> list[models.Application]:
        return await self._run(
            self._fetch_all,
            "SELECT * FROM applications WHERE account_sid = ? ORDER BY date_created",
            (account_sid,), rows.application)

    async def insert_application(self, app: models.Application) -> None:
        await self._run(self._insert, "applications", rows.application_values(app))

    async def update_application(self, app: models.Application) -> None:
        await self._run(self._update, "applications", app.sid, rows.application_values(app))

    async def delete_application(self, sid: str, now: str) -> tuple[int, list[str]]:
        """Delete application SID and, in the same transaction, every reference to it: the
        numbers' and Clients' *_application_sid become NULL (date_updated NOW). Returns how
        many numbers and which Clients (logins) referred to it."""
        def run() -> tuple[int, list[str]]:
            conn = self._conn()
            with self._database().atomic():
                logins = [r[0] for r in conn.execute(
                    "SELECT login FROM clients WHERE voice_application_sid = ?", (sid,))]
                conn.execute("UPDATE clients SET voice_application_sid = NULL, date_updated = ? "
                             "WHERE voice_application_sid = ?", (now, sid))
                numbers = conn.execute(
                    f"SELECT count(*) FROM incoming_phone_numbers WHERE ? IN ({_APP_REFS})",
                    (sid,)).fetchone()[0]
                for column in _APP_REFS.split(", "):
                    conn.execute(f"UPDATE incoming_phone_numbers SET {column} = NULL, "
                                 f"date_updated = ? WHERE {column} = ?", (now, sid))
                conn.execute("DELETE FROM applications WHERE sid = ?", (sid,))
            return int(numbers), logins
        return await self._run(run)

    async def numbers_using_application(self, app_sid: str) -> list[models.PhoneNumber]:
        return await self._run(
            self._fetch_all,
            "SELECT * FROM incoming_phone_numbers WHERE voice_application_sid = ? "
            "OR sms_application_sid = ? OR ussd_application_sid = ? ORDER BY phone_number",
            (app_sid, app_sid, app_sid), rows.phone_number)

    # -- incoming phone numbers ----------------------------------------------------------------

    async def get_number(self, sid: str) -> models.PhoneNumber | None:
        return await self._run(self._fetch_one,
                               "SELECT * FROM incoming_phone_numbers WHERE sid = ?", (sid,),
                               rows.phone_number)

    async def find_number(self, phone_number: str) -> models.PhoneNumber | None:
        return await self._run(self._fetch_one,
                               "SELECT * FROM incoming_phone_numbers WHERE phone_number = ?",
                               (phone_number,), rows.phone_number)

    async def insert_number(self, number: models.PhoneNumber) -> None:
        await self._run(self._insert, "incoming_phone_numbers", rows.number_values(number))

    async def update_number(self, number: models.PhoneNumber) -> None:
        await self._run(self._update, "incoming_phone_numbers", number.sid,
                        rows.number_values(number))

    async def delete_number(self, sid: str) -> bool:
        return await self._run(self._delete, "incoming_phone_numbers", sid)

    async def page_numbers(self, query: ListQuery) -> models.Page[models.PhoneNumber]:
        return await self._run(self._page, "incoming_phone_numbers", query, rows.phone_number)

    # -- calls, SMS, notifications, recordings ---------------------------------------------------

    async def insert_call(self, call: models.CallRecord) -> None:
        await self._run(self._insert, "calls", rows.call_values(call))

    async def insert_calls(self, calls: list[models.CallRecord]) -> None:
        def run() -> None:
            conn = self._conn()
            if not calls:
                return
            values = [rows.call_values(c) for c in calls]
            columns = ", ".join(f'"{c}"' for c in values[0])
            marks = ", ".join("?" for _ in values[0])
            with self._database().atomic():
                conn.executemany(f"INSERT INTO calls ({columns}) VALUES ({marks})",
                                 [tuple(v.values()) for v in values])
        await self._run(run)

    async def write_calls(self, inserts: list[models.CallRecord],
                          updates: list[models.CallRecord]) -> None:
        """Write call rows in one transaction: ``CallLog`` commits the CDR changes of many
        concurrent calls together (one commit, one fsync, one hop).

        Every row is an upsert, one statement per row, whichever list it is in: a row is
        written whole, so a change creates the row when the batch holding its INSERT failed
        (a locked database, an I/O error), instead of updating no row at all, and a batch
        retried after a failure of uncertain outcome cannot fail on its own INSERT. The
        lists remain for stores without this method (CallLog calls insert_call/update_call
        on those).

        A database that cannot take the write now (sqlite3.OperationalError: locked, an I/O
        error) raises StoreBusy: worth trying the same rows again later, unlike an error
        due to a row itself."""
        await self._upsert("calls", [rows.call_values(c) for c in (*inserts, *updates)])

    async def open_calls(self) -> list[models.CallRecord]:
        """The CDRs of calls not over yet (queued, ringing or in progress, no end time):
        after a crash, those the last run left."""
        return await self._run(self._fetch_all, OPEN_CALLS, (), rows.call)

    async def update_call(self, call: models.CallRecord) -> None:
        await self._run(self._update, "calls", call.sid, rows.call_values(call))

    async def get_call(self, sid: str) -> models.CallRecord | None:
        return await self._run(self._fetch_one, "SELECT * FROM calls WHERE sid = ?", (sid,),
                               rows.call)

    async def page_calls(self, query: ListQuery) -> models.Page[models.CallRecord]:
        return await self._run(self._page, "calls", query, rows.call)

    async def page_calls_stored(self, query: ListQuery) -> models.Page[Sequence[Any]]:
        """page_calls with each CDR as a stored record (rows.CALL_STORED): no models are built."""
        return await self._run(self._page_stored, "calls", query, rows.CALL_STORED)

    async def insert_sms(self, sms: models.SmsRecord) -> None:
        await self._run(self._insert, "sms_messages", rows.sms_values(sms))

    async def write_sms(self, records: list[models.SmsRecord]) -> None:
        """Write SMS rows in one transaction, each an upsert (as ``write_calls``): a SIP
        MESSAGE's final state lands even when the batch holding its `sending` insert failed."""
        await self._upsert("sms_messages", [rows.sms_values(r) for r in records])

    async def _upsert(self, table: str, values: list[dict[str, Any]]) -> None:
        """VALUES (rows of TABLE, keyed by sid, all with the same columns) written in one
        transaction, each an upsert; StoreBusy when the database cannot take it now."""
        def run() -> None:
            columns = list(values[0])
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join("?" for _ in columns)
            sets = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c != "sid")
            sql = (f"INSERT INTO {table} ({names}) VALUES ({marks}) "
                   f"ON CONFLICT(sid) DO UPDATE SET {sets}")
            with self._database().atomic():
                self._conn().executemany(sql, [_bindable(v.values()) for v in values])
        if values:
            try:
                await self._run(run)
            except sqlite3.OperationalError as err:
                raise StoreBusy(f"{table} rows not written: {err}") from err

    async def fail_sip_messages(self, status: str, error_code: int, message: str,
                                now: datetime) -> int:
        """Fail the SIP MESSAGE rows left in STATUS (a crash came before their answer);
        how many. Those are the rows with no modem queue entry: an SMS through the modem
        has one from the start, and its own recovery (``store.sms``)."""
        def run() -> int:
            with self._database().atomic():
                return int(self._conn().execute(
                    "UPDATE sms_messages SET status = 'failed', error_code = ?, "
                    "error_message = ?, date_updated = ? "
                    "WHERE account_sid IN (SELECT sid FROM accounts) AND status = ? "
                    "AND NOT EXISTS (SELECT 1 FROM sms_outbox o WHERE o.sid = sms_messages.sid)",
                    (error_code, message, storage(now), status)).rowcount)
        return await self._run(run)

    async def get_sms(self, sid: str) -> models.SmsRecord | None:
        return await self._run(self._fetch_one, "SELECT * FROM sms_messages WHERE sid = ?",
                               (sid,), rows.sms)

    async def page_sms(self, query: ListQuery) -> models.Page[models.SmsRecord]:
        return await self._run(self._page, "sms_messages", query, rows.sms)

    async def insert_notification(self, note: models.Notification) -> None:
        await self._run(self._insert, "notifications", rows.notification_values(note))

    async def get_notification(self, sid: str) -> models.Notification | None:
        return await self._run(self._fetch_one, "SELECT * FROM notifications WHERE sid = ?",
                               (sid,), rows.notification)

    async def page_notifications(self, query: ListQuery) -> models.Page[models.Notification]:
        return await self._run(self._page, "notifications", query, rows.notification)

    async def insert_recording(self, rec: models.Recording) -> None:
        await self._run(self._insert, "recordings", rows.recording_values(rec))

    async def get_recording(self, sid: str) -> models.Recording | None:
        return await self._run(self._fetch_one, "SELECT * FROM recordings WHERE sid = ?",
                               (sid,), rows.recording)

    async def page_recordings(self, query: ListQuery) -> models.Page[models.Recording]:
        return await self._run(self._page, "recordings", query, rows.recording)

    async def delete_recording(self, sid: str) -> bool:
        return await self._run(self._delete, "recordings", sid)

    # -- SIP registrar bindings ----------------------------------------------------------------

    async def save_bindings(self, snapshots: Mapping[str, list[dict[str, Any]]]) -> None:
        """Replace the stored contacts of each AoR in SNAPSHOTS with its bindings
        (Binding.to_dict() values; an empty list removes them all), in one transaction: the
        registrar writes behind, many AoRs at a time."""
        def run() -> None:
            conn = self._conn()
            with self._database().atomic():
                conn.executemany("DELETE FROM sip_bindings WHERE aor = ?",
                                 [_bindable((aor,)) for aor in snapshots])
                conn.executemany(
                    "INSERT INTO sip_bindings(aor, contact, expires_at, data) VALUES (?, ?, ?, ?)",
                    [_bindable((aor, str(b["uri"]), float(b["expires_at"]), json.dumps(b)))
                     for aor, bindings in snapshots.items() for b in bindings])
        if snapshots:
            await self._run(run)

    async def load_bindings(self, now: float) -> list[dict[str, Any]]:
        """Stored bindings that have not expired by NOW (wall-clock seconds)."""
        def run() -> list[dict[str, Any]]:
            rows = self._conn().execute(
                "SELECT data FROM sip_bindings WHERE expires_at > ?", (now,)).fetchall()
            return [json.loads(r[0]) for r in rows]
        return await self._run(run)

    # -- paging ------------------------------------------------------------------------------

    def _page(self, table: str, query: ListQuery, convert: Callable[[sqlite3.Row], T]
              ) -> models.Page[T]:
        total, sql, params = self._page_query(table, query, "*")
        return models.Page(items=self._fetch_all(sql, params, convert), total=total,
                           page=query.page, page_size=query.page_size)

    def _page_stored(self, table: str, query: ListQuery, columns: str
                     ) -> models.Page[Sequence[Any]]:
        total, sql, params = self._page_query(table, query, columns)
        return models.Page(items=self._fetch_tuples(sql, params, table, columns), total=total,
                           page=query.page, page_size=query.page_size)

    def _page_query(self, table: str, query: ListQuery, columns: str
                    ) -> tuple[int, str, list[Any]]:
        """The total matching QUERY, and the SELECT of COLUMNS for its page with its params."""
        allowed = rows.COLUMNS[table]
        where: list[str] = []
        params: list[Any] = []
        marks = ", ".join("?" for _ in query.account_sids)
        where.append(f"account_sid IN ({marks})")
        params.extend(query.account_sids)
        for cond in query.conditions:
            if cond.column not in allowed or cond.op not in ("like", "=", ">=", "<", "<="):
                raise ValueError(f"bad condition {cond}")
            op = "LIKE" if cond.op == "like" else cond.op
            where.append(f'"{cond.column}" {op} ?')
            params.append(cond.value)
        where_sql = " AND ".join(where)
        conn = self._conn()
        if not query.conditions and len(query.account_sids) == 1:
            row = conn.execute("SELECT n FROM row_counts WHERE tbl = ? AND account_sid = ?",
                               (table, query.account_sids[0])).fetchone()
            total = int(row[0]) if row else 0
        else:
            total = int(conn.execute(f'SELECT COUNT(*) FROM "{table}" WHERE {where_sql}',
                                     params).fetchone()[0])
        order_parts = []
        for column, descending in query.order:
            if column not in allowed:
                raise ValueError(f"bad order column {column}")
            order_parts.append(f'"{column}" {"DESC" if descending else "ASC"}')
        order_parts.append(f'rowid {"DESC" if query.order and query.order[-1][1] else "ASC"}')
        sql = (f'SELECT {columns} FROM "{table}" WHERE {where_sql} '
               f'ORDER BY {", ".join(order_parts)} LIMIT ? OFFSET ?')
        return total, sql, [*params, query.page_size, query.page * query.page_size]


_UNIQUE_FAILED = re.compile(r"UNIQUE constraint failed: (\w+)\.(\w+)")


def make_private(db_path: Path) -> None:
    """DB_PATH (created empty when missing) and its -wal and -shm, if any, readable and
    writable by our user only, whatever the umask: the database holds gateway and Client
    passwords. SQLite gives the -wal and -shm files it creates later the database file's
    mode (and chmods them to it, past the umask), so the database's 0600 carries over."""
    os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        except FileNotFoundError:
            pass


def as_duplicate(err: sqlite3.IntegrityError) -> Duplicate | None:
    """ERR as the domain's Duplicate when it is a UNIQUE (or primary key) violation on one
    column; None for any other integrity error (a foreign key, NOT NULL...)."""
    match = _UNIQUE_FAILED.fullmatch(str(err))
    return Duplicate(match[1], match[2]) if match else None


def _bindable(params: Iterable[Any]) -> tuple[Any, ...]:
    """PARAMS as sqlite3 can bind them: text that came from a SIP message may hold lone
    surrogates (its parser decodes with surrogateescape), which sqlite3 refuses with a
    UnicodeEncodeError; they become "?" (a lookup of such text then finds nothing, as no
    stored text holds one, instead of failing the request)."""
    return tuple(rows.bindable(p) if isinstance(p, str) and not p.isascii() else p
                 for p in params)
