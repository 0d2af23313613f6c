"""Gateways register upstream: sipp plays the provider's registrar on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ADMIN_SID, Api, free_port

SCENARIO = Path(__file__).resolve().parents[1] / "data" / "sip" / "sipp" / "provider-registrar.xml"
GW = f"Accounts/{ADMIN_SID}/Management/Gateways"

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed")


def provider(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sipp", "-sf", str(SCENARIO), "-i", "127.0.0.1", "-p", str(port), "-m", "1",
         "-nostdin", "-timeout", "20", "-timeout_error", "-bind_local"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def state_of(api: Api, sid: str, wanted: set[str], within: float = 10.0) -> dict:
    got: dict = {}
    async with asyncio.timeout(within):
        while True:
            _, body, _ = await api.get(f"{GW}/{sid}.json")
            got = json.loads(body)
            if got["registration_state"] in wanted:
                return got
            await asyncio.sleep(0.05)


async def test_gateway_registers_with_digest(api: Api) -> None:
    port = free_port()
    sipp = provider(port)
    try:
        await asyncio.sleep(0.3)
        status, body, _ = await api.post(f"{GW}.json", {
            "FriendlyName": "provider", "UserName": "office", "Password": "Trunk-pass-1",
            "Proxy": f"127.0.0.1:{port}", "Register": "true", "TTL": "600"})
        assert status == 200, body
        gw = await state_of(api, json.loads(body)["sid"], {"registered", "failed"})
        assert gw["registration_state"] == "registered", gw
        assert "registration_error" not in gw
        assert sipp.wait(10) == 0, sipp.stderr.read() if sipp.stderr else ""
        async with api.session.get(f"{api.base}/health") as resp:
            health = await resp.json()
            assert resp.status == 200, health
        assert health["components"]["gateways"]["provider"]["state"] == "registered"
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait()


async def test_wrong_password_shows_the_error(api: Api) -> None:
    port = free_port()
    sipp = provider(port)
    try:
        await asyncio.sleep(0.3)
        status, body, _ = await api.post(f"{GW}.json", {
            "FriendlyName": "provider", "UserName": "office", "Password": "wrong-one",
            "Proxy": f"127.0.0.1:{port}",
            "Register": "true", "TTL": "600"})
        gw = await state_of(api, json.loads(body)["sid"], {"registered", "failed"})
        assert gw["registration_state"] == "failed"
        assert "403" in gw["registration_error"]
        # The office's line is down: /health says so, as the status LED then does.
        async with api.session.get(f"{api.base}/health") as resp:
            health = await resp.json()
            assert resp.status == 503 and health["status"] == "degraded", health
        assert "403" in health["components"]["gateways"]["provider"]["last_error"]
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait()


async def test_register_false_and_delete(api: Api) -> None:
    status, body, _ = await api.post(f"{GW}.json", {
        "UserName": "office", "Password": "x", "Proxy": "127.0.0.1:9", "Register": "false",
        "TTL": "600"})
    gw = json.loads(body)
    assert gw["registration_state"] == "disabled"
    status, _, _ = await api.request("DELETE", f"{GW}/{gw['sid']}")
    assert status == 200
