"""Restcomm's OutboundProxy endpoints over the outbound routes' gateways."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import (
    ApiConfig,
    Config,
    Endpoint,
    MediaConfig,
    OutboundConfig,
    OutboundRoute,
    SipConfig,
)
from appliance.services.outbound import OutboundProxies
from tests.conftest import ADMIN_SID, Api, free_port

ROUTES = (OutboundRoute("+44", ("gateway:uk", "gateway:backup")),
          OutboundRoute("", ("gateway:main", "modem", "gateway:backup")))


def test_switch_prefers_the_fallback_in_every_route_that_lists_it() -> None:
    proxies = OutboundProxies(OutboundConfig(routes=ROUTES))
    assert proxies.lines_for("+15551234") == ("gateway:main", "modem", "gateway:backup")
    proxies.using_fallback = True
    assert proxies.lines_for("+15551234") == ("gateway:backup", "gateway:main", "modem")
    assert proxies.lines_for("+4420") == ("gateway:backup", "gateway:uk")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port())),
                    media=MediaConfig(workers=0), outbound=OutboundConfig(routes=ROUTES))
    app = Appliance(config)
    await app.start()
    password = (tmp_path / "var" / "admin-password").read_text().strip()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                      password, tmp_path / "var")
    finally:
        await app.stop()


async def test_get_and_switch(api: Api) -> None:
    base = f"Accounts/{ADMIN_SID}/OutboundProxy"
    status, body, _ = await api.get(f"{base}.json")
    assert status == 200
    assert json.loads(body) == {"ActiveProxy": "gateway:main", "UsingFallBackProxy": False,
                                "PrimaryProxy": "gateway:main",
                                "FallbackProxy": "gateway:backup"}
    status, body, _ = await api.get(f"{base}/switchProxy.json")
    assert json.loads(body)["ActiveProxy"] == "gateway:backup"
    status, body, _ = await api.get(f"{base}/getActiveProxy")
    assert "<ActiveProxy>gateway:backup</ActiveProxy>" in body
    await api.get(f"{base}/switchProxy")
    status, body, _ = await api.get(f"{base}/getActiveProxy.json")
    assert json.loads(body)["UsingFallBackProxy"] is False


async def test_only_the_top_level_administrator(api: Api) -> None:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                        "Password": "Pbx-edge-7"})
    sub = json.loads(body)["sid"]
    other = api.as_user("sub@example.com", "Pbx-edge-7")
    status, _, _ = await other.get(f"Accounts/{sub}/OutboundProxy.json")
    assert status == 403
