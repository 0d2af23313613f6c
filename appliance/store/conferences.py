"""Conferences and their participants (<Dial><Conference>, the Conferences API)."""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance import models
from appliance.queries import Condition, ListQuery
from appliance.store.db import Store
from appliance.store.rows import _dt
from appliance.timefmt import storage


def conference(r: sqlite3.Row) -> models.Conference:
    return models.Conference(
        sid=models.ConferenceSid(r["sid"]), account_sid=models.AccountSid(r["account_sid"]),
        friendly_name=r["friendly_name"], status=models.ConferenceStatus(r["status"]),
        api_version=r["api_version"], date_created=_dt(r["date_created"]),
        date_updated=_dt(r["date_updated"]))


def conference_values(c: models.Conference) -> dict[str, Any]:
    return {"sid": c.sid, "account_sid": c.account_sid, "friendly_name": c.friendly_name,
            "status": str(c.status), "api_version": c.api_version,
            "date_created": storage(c.date_created), "date_updated": storage(c.date_updated)}


def participant(r: sqlite3.Row) -> models.Participant:
    return models.Participant(
        call_sid=r["call_sid"], conference_sid=models.ConferenceSid(r["conference_sid"]),
        account_sid=models.AccountSid(r["account_sid"]), muted=bool(r["muted"]),
        start_conference_on_enter=bool(r["start_conference_on_enter"]),
        end_conference_on_exit=bool(r["end_conference_on_exit"]),
        connected=bool(r["connected"]), date_created=_dt(r["date_created"]),
        date_updated=_dt(r["date_updated"]))


def participant_values(p: models.Participant) -> dict[str, Any]:
    return {"conference_sid": p.conference_sid, "call_sid": p.call_sid,
            "account_sid": p.account_sid, "muted": int(p.muted),
            "start_conference_on_enter": int(p.start_conference_on_enter),
            "end_conference_on_exit": int(p.end_conference_on_exit),
            "connected": int(p.connected), "date_created": storage(p.date_created),
            "date_updated": storage(p.date_updated)}


class ConferenceStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store._conn()  # noqa: SLF001 - same package: runs on the store thread

    async def insert(self, conf: models.Conference) -> None:
        await self._store._run(self._store._insert, "conferences",  # noqa: SLF001
                               conference_values(conf))

    async def update(self, conf: models.Conference) -> None:
        await self._store._run(self._store._update, "conferences", conf.sid,  # noqa: SLF001
                               conference_values(conf))

    async def get(self, sid: str) -> models.Conference | None:
        result: models.Conference | None = await self._store._run(  # noqa: SLF001
            self._store._fetch_one, "SELECT * FROM conferences WHERE sid = ?",  # noqa: SLF001
            (sid,), conference)
        return result

    async def page(self, query: ListQuery) -> models.Page[models.Conference]:
        result: models.Page[models.Conference] = await self._store._run(  # noqa: SLF001
            self._store._page, "conferences", query, conference)  # noqa: SLF001
        return result

    async def save_participant(self, p: models.Participant) -> None:
        values = participant_values(p)

        def run() -> None:
            columns = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            with self._store._database().atomic():  # noqa: SLF001
                self._conn().execute(
                    f"INSERT OR REPLACE INTO conference_participants ({columns}) "  # noqa: S608 - fixed column names
                    f"VALUES ({marks})", tuple(values.values()))
        await self._store._run(run)  # noqa: SLF001

    async def get_participant(self, conference_sid: str, call_sid: str
                              ) -> models.Participant | None:
        result: models.Participant | None = await self._store._run(  # noqa: SLF001
            self._store._fetch_one,  # noqa: SLF001
            "SELECT * FROM conference_participants WHERE conference_sid = ? AND call_sid = ?",
            (conference_sid, call_sid), participant)
        return result

    async def page_participants(self, account_sid: str, conference_sid: str, page: int,
                                page_size: int) -> models.Page[models.Participant]:
        """The participants still connected, oldest first."""
        query = ListQuery(account_sids=(account_sid,),
                          conditions=(Condition("conference_sid", "=", conference_sid),
                                      Condition("connected", "=", "1")),
                          order=(("date_created", False),), page=page, page_size=page_size)
        result: models.Page[models.Participant] = await self._store._run(  # noqa: SLF001
            self._store._page, "conference_participants", query, participant)  # noqa: SLF001
        return result

    async def close_all(self, now: str) -> int:
        """At start: conferences left running by a stop or crash are over; returns how many."""
        def run() -> int:
            with self._store._database().atomic():  # noqa: SLF001
                cur = self._conn().execute(
                    "UPDATE conferences SET status = ?, date_updated = ? WHERE status <> ?",
                    (str(models.ConferenceStatus.COMPLETED), now,
                     str(models.ConferenceStatus.COMPLETED)))
                self._conn().execute(
                    "UPDATE conference_participants SET connected = 0, date_updated = ? "
                    "WHERE connected = 1", (now,))
            return cur.rowcount
        result: int = await self._store._run(run)  # noqa: SLF001
        return result
