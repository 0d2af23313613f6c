"""Providers that send calls from other addresses than their registrar (docs/gateways.md
"Calls from the provider to a DID"): ``[inbound.sources]`` lists them per gateway; anyone
else is still a stranger and challenged. sipp plays the provider from distinct loopback
addresses (127.0.0.x); no media worker is needed: a DID without a voice application is
answered 404 to a provider and 407 to a stranger."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, InboundConfig, MediaConfig, SipConfig
from appliance.sip.trunk import parse_sources
from tests.conftest import ADMIN_SID, Api, free_port

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed")

SIPP = Path(__file__).resolve().parents[1] / "data" / "sip" / "sipp"
GW = f"Accounts/{ADMIN_SID}/Management/Gateways"
DID = "+15550004321"
EDGE_PORT = 25099  # the call-only trunk's listed source port


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[tuple[Appliance, Api]]:
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                  domain="pbx.example.com"),
                    media=MediaConfig(workers=0),
                    inbound=InboundConfig(sources=(
                        ("provider", (("127.0.0.2/32", None),)),
                        ("edge", (("127.0.0.4/32", EDGE_PORT),)))))
    app = Appliance(config)
    await app.start()
    password = (config.data_dir / "admin-password").read_text().strip()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                      password, config.data_dir)
            yield app, api
    finally:
        await app.stop()


async def call_from(app: Appliance, address: str, port: int, expect: int,
                    tmp_path: Path) -> int:
    """sipp as the provider at ADDRESS:PORT calls DID, expecting EXPECT; its exit code."""
    scenario = tmp_path / f"expect-{expect}.xml"
    scenario.write_text((SIPP / "provider-uac-refused.xml").read_text().replace(
        '<recv response="404"/>', f'<recv response="{expect}"/>'))
    sip = app.config.sip.listen
    proc = await asyncio.create_subprocess_exec(
        "sipp", f"{sip.host}:{sip.port}", "-sf", str(scenario), "-i", address, "-p",
        str(port), "-m", "1", "-s", DID, "-nostdin", "-timeout", "10", "-timeout_error",
        "-bind_local", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(15):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0


async def test_listed_provider_addresses_are_trusted_and_strangers_are_not(
        appliance: tuple[Appliance, Api], tmp_path: Path) -> None:
    app, api = appliance
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": DID})  # no voice app: 404 to a provider
    assert status == 200, body
    sids = {}
    for name in ("provider", "edge"):  # call-only trunks: Register=false
        status, body, _ = await api.post(f"{GW}.json", {
            "FriendlyName": name, "UserName": "office", "Password": "Trunk-pass-1",
            "Proxy": f"127.0.0.1:{free_port()}", "Register": "false", "TTL": "600"})
        assert status == 200, body
        sids[name] = json.loads(body)["sid"]
    # "provider": any port of 127.0.0.2; "edge": only 127.0.0.4:EDGE_PORT.
    assert await call_from(app, "127.0.0.2", free_port(), 404, tmp_path) == 0
    assert await call_from(app, "127.0.0.4", EDGE_PORT, 404, tmp_path) == 0
    # Strangers: another address, or a listed address from another port.
    assert await call_from(app, "127.0.0.3", free_port(), 407, tmp_path) == 0
    assert await call_from(app, "127.0.0.4", free_port(), 407, tmp_path) == 0
    # A deleted gateway's sources are no longer trusted.
    status, body, _ = await api.request("DELETE", f"{GW}/{sids['provider']}.json")
    assert status == 200, body
    assert await call_from(app, "127.0.0.2", free_port(), 407, tmp_path) == 0


async def test_an_ipv4_mapped_source_is_the_provider_it_maps_to(
        appliance: tuple[Appliance, Api]) -> None:
    """With `[sip] listen` on "::", an IPv4 provider's packets arrive from ::ffff:a.b.c.d:
    the same provider as a.b.c.d (its calls are taken, it is spared the budget)."""
    app, api = appliance
    for name in ("provider", "edge"):
        status, body, _ = await api.post(f"{GW}.json", {
            "FriendlyName": name, "UserName": "office", "Password": "Trunk-pass-1",
            "Proxy": f"127.0.0.1:{free_port()}", "Register": "false", "TTL": "600"})
        assert status == 200, body
    trunk = app.trunk
    assert trunk.is_provider("::ffff:127.0.0.2") and trunk.is_provider("::FFFF:127.0.0.2")
    edge = trunk.gateway_at("::ffff:127.0.0.4", EDGE_PORT)
    assert edge is not None and edge.friendly_name == "edge"
    assert trunk.gateway_at("::ffff:127.0.0.4", EDGE_PORT + 1) is None
    assert not trunk.is_provider("::ffff:127.0.0.3") and not trunk.is_provider("::1")


def test_a_source_network_written_ipv4_mapped_is_its_ipv4_network() -> None:
    """Sources are matched in their IPv4 form, so a listed ``::ffff:…`` network is read as
    the IPv4 network it maps (an IPv4 address is in no IPv6 network)."""
    (mapped, any_port), (one, port), (v6, _) = parse_sources((
        ("::ffff:203.0.113.0/120", None), ("::ffff:192.0.2.10", 5080), ("2001:db8::/32", None)))
    assert (mapped, any_port) == (ipaddress.ip_network("203.0.113.0/24"), None)
    assert ipaddress.ip_address("203.0.113.7") in mapped
    assert (one, port) == (ipaddress.ip_network("192.0.2.10/32"), 5080)
    assert v6 == ipaddress.ip_network("2001:db8::/32")
