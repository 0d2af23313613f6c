"""Gateways (upstream SIP providers): global rows, not owned by an account."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Iterator
from typing import Any

from appliance import models
from appliance.store import schema
from appliance.store.db import Store, as_duplicate
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

    async def insert(self, gateway: models.Gateway) -> None:
        """Raise Duplicate when another gateway has its FriendlyName (once the database
        holds no duplicates an older version let in: schema.ensure_unique_gateway_names)."""
        values = _values(gateway)

        def run() -> None:
            columns = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            with _duplicates(), self._store._database().atomic():  # noqa: SLF001
                self._conn().execute(f"INSERT INTO gateways ({columns}) VALUES ({marks})",
                                     tuple(values.values()))
        await self._store._run(run)  # noqa: SLF001

    async def update(self, gateway: models.Gateway) -> bool:
        """Raise Duplicate as insert does. (An UPDATE, never INSERT OR REPLACE: REPLACE
        would delete the other gateway holding the name instead of failing.) False when the
        gateway is gone (deleted meanwhile): nothing was written."""
        values = _values(gateway)
        sid = values.pop("sid")

        def run() -> bool:
            sets = ", ".join(f"{c} = ?" for c in values)
            with _duplicates(), self._store._database().atomic():  # noqa: SLF001
                changed = self._conn().execute(f"UPDATE gateways SET {sets} WHERE sid = ?",
                                               (*values.values(), sid)).rowcount
                schema.ensure_unique_gateway_names(self._conn())
                return bool(changed)
        result: bool = await self._store._run(run)  # noqa: SLF001
        return result

    async def delete(self, sid: str) -> None:
        def run() -> None:
            with self._store._database().atomic():  # noqa: SLF001
                self._conn().execute("DELETE FROM gateways WHERE sid = ?", (sid,))
                schema.ensure_unique_gateway_names(self._conn())
        await self._store._run(run)  # noqa: SLF001

    # -- the trunk's public Contacts (sip.trunk.PublicContacts) -------------------------------

    async def public_contacts(self) -> dict[str, tuple[str, int]]:
        """Per gateway sid, the public address and port its last registration may have left
        bound at the provider."""
        def run() -> dict[str, tuple[str, int]]:
            rows = self._conn().execute(
                "SELECT gateway_sid, host, port FROM trunk_contacts").fetchall()
            return {sid: (host, int(port)) for sid, host, port in rows}
        result: dict[str, tuple[str, int]] = await self._store._run(run)  # noqa: SLF001
        return result

    async def set_public_contact(self, sid: str, address: tuple[str, int] | None) -> None:
        """Keep ADDRESS for the gateway SID (None: forget it). Nothing is kept for a gateway
        deleted meanwhile (its row went with it)."""
        def run() -> None:
            with self._store._database().atomic():  # noqa: SLF001
                if address is None:
                    self._conn().execute("DELETE FROM trunk_contacts WHERE gateway_sid = ?",
                                         (sid,))
                    return
                self._conn().execute(
                    "INSERT INTO trunk_contacts(gateway_sid, host, port) "
                    "SELECT sid, ?, ? FROM gateways WHERE sid = ? "
                    "ON CONFLICT(gateway_sid) DO UPDATE SET host = excluded.host, "
                    "port = excluded.port", (*address, sid))
        await self._store._run(run)  # noqa: SLF001


def _values(gateway: models.Gateway) -> dict[str, Any]:
    values = dataclasses.asdict(gateway)
    values["register"] = int(gateway.register)
    values["date_created"] = storage(gateway.date_created)
    values["date_updated"] = storage(gateway.date_updated)
    return values


@contextlib.contextmanager
def _duplicates() -> Iterator[None]:
    """A UNIQUE violation as the domain's Duplicate (as Store._insert maps them)."""
    try:
        yield
    except sqlite3.IntegrityError as err:
        duplicate = as_duplicate(err)
        if duplicate is None:
            raise
        raise duplicate from err
