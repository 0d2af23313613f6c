"""Gateways (upstream SIP providers): global rows, not owned by an account."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from appliance import models
from appliance.store.db import Store
from appliance.timefmt import from_storage, storage


def _gateway(r: tuple[Any, ...], names: list[str]) -> models.Gateway:
    row = dict(zip(names, r, strict=True))
    return models.Gateway(
        sid=models.GatewaySid(row["sid"]), friendly_name=row["friendly_name"],
        user_name=row["user_name"], password=row["password"], proxy=row["proxy"],
        register=bool(row["register"]), ttl=int(row["ttl"]),
        date_created=from_storage(row["date_created"]),
        date_updated=from_storage(row["date_updated"]))


class GatewayStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store._conn()  # noqa: SLF001 - same package: runs on the store thread

    async def all(self) -> list[models.Gateway]:
        def run() -> list[models.Gateway]:
            cur = self._conn().execute("SELECT * FROM gateways ORDER BY date_created")
            names = [d[0] for d in cur.description]
            return [_gateway(r, names) for r in cur.fetchall()]
        result: list[models.Gateway] = await self._store._run(run)  # noqa: SLF001
        return result

    async def get(self, sid: str) -> models.Gateway | None:
        def run() -> models.Gateway | None:
            cur = self._conn().execute("SELECT * FROM gateways WHERE sid = ?", (sid,))
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
            return _gateway(row, names) if row else None
        result: models.Gateway | None = await self._store._run(run)  # noqa: SLF001
        return result

    async def save(self, gateway: models.Gateway) -> None:
        values = dataclasses.asdict(gateway)
        values["register"] = int(gateway.register)
        values["date_created"] = storage(gateway.date_created)
        values["date_updated"] = storage(gateway.date_updated)

        def run() -> None:
            columns = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            with self._store._database().atomic():  # noqa: SLF001
                self._conn().execute(
                    f"INSERT OR REPLACE INTO gateways ({columns}) VALUES ({marks})",
                    tuple(values.values()))
        await self._store._run(run)  # noqa: SLF001

    async def delete(self, sid: str) -> None:
        def run() -> None:
            with self._store._database().atomic():  # noqa: SLF001
                self._conn().execute("DELETE FROM gateways WHERE sid = ?", (sid,))
        await self._store._run(run)  # noqa: SLF001
