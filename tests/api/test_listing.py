"""api/listing.py writes the very bytes the generic path writes, from the stored rows.

Generated rows go into a real SQLite file through raw SQL (so they can hold what the API
would never write: NUL, control characters, REAL in an INTEGER column, a BLOB, timestamps
of odd shapes); each page or list is then rendered both ways, as JSON and as XML:

* old: Store.page_calls / list_clients (models) -> representations -> render.paged / many;
* new: Store.page_calls_stored / list_clients_stored -> listing.calls_page / clients.

The bytes must be equal, or both must fail with the same exception.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.api import listing, render, representations
from appliance.models import API_VERSION
from appliance.queries import Condition, ListQuery
from appliance.store.db import Store
from appliance.timefmt import storage

ACCOUNTS = ("ACae6e420f425248d6a26948c17a9e2acf", "AC0123456789abcdef0123456789abcdef")
_SETTINGS = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])

# Text with what needs escaping in JSON or XML, non-ASCII, and blanks.
_TEXT = st.one_of(
    st.just(""), st.sampled_from(['a "quoted" <b>&amp;</b>', " />", "\\", "é€😀", "  ", "\t\r\n"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12))
def _nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def _sometimes_odd(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]
                   ) -> st.SearchStrategy[Any]:
    """Mostly GOOD values: an odd one often makes the whole page fail, both ways."""
    return st.one_of(*[good] * 12, odd)


_INT = st.one_of(st.integers(-5, 5000), st.integers(-(2**63), 2**63 - 1))
# An INTEGER column may also hold a REAL, a text or a BLOB (SQLite's type affinity).
# REALs SQLite's JSON would print with 15 digits (the store must not fetch those as JSON).
_INEXACT = st.sampled_from([0.1 + 0.2, 1 / 3, 2 / 3 * 1e-9])
_NUMBER = st.one_of(_INT, st.floats(allow_nan=False),
                    st.sampled_from([0.1 + 0.2, 1 / 3, 1e-7, 2.5, "x", "1.5e3"]),
                    _sometimes_odd(st.just(7), st.just(b"\x00")))  # JSON cannot write bytes
_MOMENT = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30),
                       timezones=st.just(UTC))
# What storage() writes, mostly; then shapes it never writes.
_STAMP = st.one_of(
    _MOMENT.map(storage), _MOMENT.map(storage), _MOMENT.map(storage),
    st.sampled_from(["2024-02-30T10:00:00.000000Z", "2024-03-03T24:00:00.000000Z",
                     "2024-03-03T10:00:60.000000Z", "2024-03-03T10:00:00,000000Z",
                     "2024-03-03 10:00:00.000000Z", "2024-03-03T10:00:00.000000+00:00",
                     "0000-01-01T00:00:00.000000Z", "２０２４-03-03T10:00:00.000000Z", "",
                     "garbage"]))
# Readable by the store, both: what storage() writes, and years before 1000 with zeros (which
# storage() itself would not write: strftime gives "999-…").
_GOOD_STAMP = st.one_of(
    _MOMENT.map(storage), _MOMENT.map(storage),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(999, 12, 31),
                 timezones=st.just(UTC)).map(lambda d: storage(d).zfill(27)))


_CALL = st.fixed_dictionaries({
    "sid": st.one_of(st.text(min_size=1, max_size=8), st.just("CA" + "0" * 32)),
    "instance_id": _nullable(_TEXT), "account_sid": st.sampled_from(ACCOUNTS),
    "parent_call_sid": _nullable(_TEXT), "to": _TEXT, "from": _TEXT,
    "phone_number_sid": _nullable(_TEXT), "status": _sometimes_odd(_TEXT, _INT),
    "start_time": _nullable(_sometimes_odd(_GOOD_STAMP, _STAMP)),
    "end_time": _nullable(_sometimes_odd(_GOOD_STAMP, _STAMP)),
    "duration": st.one_of(_INT, _NUMBER, _INEXACT), "price": _nullable(_TEXT), "price_unit": _TEXT,
    "direction": _TEXT, "answered_by": _nullable(_TEXT), "api_version": _TEXT,
    "forwarded_from": _nullable(_TEXT), "caller_name": _nullable(_TEXT),
    "conference_sid": _nullable(_TEXT), "ring_duration": _nullable(st.one_of(_INT, _NUMBER)),
    "date_created": _sometimes_odd(_GOOD_STAMP, _STAMP),
    "date_updated": _sometimes_odd(_GOOD_STAMP, _STAMP),
})

_CLIENT = st.fixed_dictionaries({
    "friendly_name": _TEXT, "ha1_md5": st.just("0" * 32), "ha1_sha256": st.just("0" * 64),
    "realm": st.just("pbx"), "status": _sometimes_odd(_INT, st.sampled_from(["1", "x", 1.5])),
    "voice_url": _nullable(_TEXT), "voice_method": _TEXT, "voice_fallback_url": _nullable(_TEXT),
    "voice_fallback_method": _TEXT, "voice_application_sid": _nullable(_TEXT),
    "push_client_identity": _nullable(_TEXT), "api_version": _TEXT,
    "date_created": _sometimes_odd(_GOOD_STAMP, _STAMP),
    "date_updated": _sometimes_odd(_GOOD_STAMP, _STAMP),
})

_ORDERS = [(("date_created", True),), (("date_created", False),),
           (("duration", True), ("date_created", True)), (("from", False), ("date_created", True))]


class _Db:
    """One store for the module; each example replaces the rows through a raw connection."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        asyncio.run(self.store.open())
        self.raw = sqlite3.connect(path, isolation_level=None)
        now = storage(datetime(2024, 3, 3, tzinfo=UTC))
        for sid in ACCOUNTS:
            self.raw.execute(
                "INSERT INTO accounts (sid, friendly_name, email_address, type, status, role, "
                "auth_token, date_created, date_updated, organization_sid) "
                "VALUES (?, ?, ?, 'Full', 'active', 'Administrator', 't', ?, ?, 'OR1')",
                (sid, sid, f"{sid}@x", now, now))

    def replace(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.raw.execute("BEGIN")
        self.raw.execute(f"DELETE FROM {table}")
        for row in rows:
            names = ", ".join(f'"{k}"' for k in row)
            marks = ", ".join("?" for _ in row)
            self.raw.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})",
                             list(row.values()))
        self.raw.execute("COMMIT")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Db]:
    d = _Db(tmp_path_factory.mktemp("listing") / "a.db")
    yield d
    d.raw.close()
    asyncio.run(d.store.close())


def _outcome(make: Callable[[], bytes]) -> tuple[str, bytes | str]:
    try:
        return "ok", make()
    except Exception as err:  # noqa: BLE001 - comparing failures is the point
        return type(err).__name__, str(err)


def _both(old_items: Callable[[], Coroutine[Any, Any, Any]],
          new_items: Callable[[], Coroutine[Any, Any, Any]],
          render_old: Callable[[Any], bytes], render_new: Callable[[Any], bytes]) -> None:
    old = _outcome(lambda: render_old(asyncio.run(old_items())))
    new = _outcome(lambda: render_new(asyncio.run(new_items())))
    if old[0] == "ok":
        assert new == old
    else:
        # A value the generic path cannot convert or render (a 500 either way). With two
        # such values on a page the paths may trip on different ones first (the store
        # converts a whole row before anything is rendered), so only failing is compared.
        assert new[0] != "ok", old


@_SETTINGS
@given(calls=st.lists(_CALL, max_size=7, unique_by=lambda c: c["sid"]),
       page_size=st.integers(1, 5), page=st.integers(0, 2), order=st.sampled_from(_ORDERS),
       scope=st.sampled_from([ACCOUNTS[:1], ACCOUNTS]), status=st.sampled_from([None, "%a%"]),
       as_json=st.booleans())
def test_calls_pages_are_the_generic_bytes(db: _Db, calls: list[dict[str, Any]],
                                           page_size: int, page: int,
                                           order: tuple[tuple[str, bool], ...],
                                           scope: tuple[str, ...], status: str | None,
                                           as_json: bool) -> None:
    db.replace("calls", calls)
    query = ListQuery(account_sids=scope, order=order, page=page, page_size=page_size,
                      conditions=(Condition("status", "like", status),) if status else ())
    uri = f"/{API_VERSION}/Accounts/{scope[0]}/Calls"
    _both(lambda: db.store.page_calls(query), lambda: db.store.page_calls_stored(query),
          lambda p: render.paged(p, [representations.call(c, as_json) for c in p.items],
                                 uri=uri, json_key="calls", list_tag="Calls",
                                 xml_attributes=True, as_json=as_json),
          lambda p: listing.calls_page(p, uri=uri, as_json=as_json))


@_SETTINGS
@given(clients=st.lists(_CLIENT, max_size=6), as_json=st.booleans(),
       account=st.sampled_from(ACCOUNTS))
def test_clients_lists_are_the_generic_bytes(db: _Db, clients: list[dict[str, Any]],
                                             as_json: bool, account: str) -> None:
    rows = [{"sid": f"CL{i:032x}", "login": f"login{i}", "account_sid": ACCOUNTS[i % 2], **c}
            for i, c in enumerate(clients)]
    db.replace("clients", rows)
    _both(lambda: db.store.list_clients(account), lambda: db.store.list_clients_stored(account),
          lambda cs: render.many([representations.client(c, as_json) for c in cs], "Clients",
                                 as_json),
          lambda rs: listing.clients(rs, as_json))


def test_a_large_page_of_ordinary_calls(db: _Db) -> None:
    """Fifty calls as the appliance writes them, every format, first and later pages."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    calls = [{
        "sid": f"CA{i:032x}", "instance_id": None, "account_sid": ACCOUNTS[0],
        "parent_call_sid": None, "to": f"client:bench{i:03d}", "from": f"+1555{i:07d}",
        "phone_number_sid": None, "status": "completed" if i % 3 else "no-answer",
        "start_time": storage(start + timedelta(hours=i)) if i % 3 else None,
        "end_time": storage(start + timedelta(hours=i, seconds=90)) if i % 3 else None,
        "duration": 90 if i % 3 else 0, "price": None, "price_unit": "USD",
        "direction": "inbound", "answered_by": None, "api_version": API_VERSION,
        "forwarded_from": None, "caller_name": f"Caller {i}" if i % 4 == 0 else None,
        "conference_sid": None, "ring_duration": i % 25,
        "date_created": storage(start + timedelta(hours=i, microseconds=i)),
        "date_updated": storage(start + timedelta(hours=i, minutes=5)),
    } for i in range(120)]
    db.replace("calls", calls)
    uri = f"/{API_VERSION}/Accounts/{ACCOUNTS[0]}/Calls"
    for page in (0, 1, 2, 3):
        query = ListQuery(account_sids=ACCOUNTS[:1], page=page, page_size=50)
        old = asyncio.run(db.store.page_calls(query))
        new = asyncio.run(db.store.page_calls_stored(query))
        for as_json in (True, False):
            reps = [representations.call(c, as_json) for c in old.items]
            assert listing.calls_page(new, uri=uri, as_json=as_json) == render.paged(
                old, reps, uri=uri, json_key="calls", list_tag="Calls", xml_attributes=True,
                as_json=as_json)
