"""GatewayService against a real SQLite file: what the trunk is told agrees with the store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.errors import NotFound
from appliance.models import Gateway
from appliance.services.gateways import GatewayService
from appliance.store.db import Store
from appliance.store.gateways import GatewayStore


class Trunk:
    """The lines the trunk would keep registered."""

    def __init__(self) -> None:
        self.lines: dict[str, Gateway] = {}

    def apply(self, gateway: Gateway) -> None:
        self.lines[gateway.sid] = gateway

    def remove(self, sid: str) -> None:
        self.lines.pop(sid, None)


async def test_an_update_racing_a_delete_leaves_no_line_for_a_deleted_gateway(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "a.db")
    await store.open()
    try:
        service = GatewayService(GatewayStore(store), lambda: datetime.now(UTC))
        monkeypatch.setattr(service, "_check", lambda actor: None)
        trunk = Trunk()
        service.trunk = trunk  # type: ignore[assignment]
        gateway = await service.create(None, {  # type: ignore[arg-type]
            "UserName": "office", "Password": "p", "Proxy": "192.0.2.1:5060",
            "Register": "true", "TTL": "3600"})
        update, _ = await asyncio.gather(
            service.update(None, gateway.sid, {"Password": "new"}),  # type: ignore[arg-type]
            service.delete(None, gateway.sid),  # type: ignore[arg-type]
            return_exceptions=True)
        assert await service.all() == []
        assert trunk.lines == {}  # before: registered on, its provider trusted, till a restart
        assert isinstance(update, NotFound)
    finally:
        await store.close()
