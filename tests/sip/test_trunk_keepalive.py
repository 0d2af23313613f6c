"""NAT keep-alives to a gateway's provider: a real appliance registers to a provider played by
a real UDP socket on loopback, whose datagrams are recorded. The appliance's monotonic clock
is driven by the test (as in test_trunk_clock.py), so the [sip] nat_keepalive_interval of
5 s, the shortest the config allows, takes no real time."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import parse
from appliance.sip.framing import PING
from appliance.sip.message import Request, make_response, parse_message
from tests.conftest import ADMIN_SID, Api, free_port
from tests.sip.test_trunk import GW, state_of

START = 1000.0  # the appliance's monotonic clock when the test begins


class Provider:
    """The provider's registrar on a UDP socket of its own: every REGISTER is answered 200
    granting EXPIRES seconds; every datagram is kept with its source and the appliance's
    monotonic time when it came."""

    def __init__(self, clock: Callable[[], float], expires: int = 600) -> None:
        self.clock = clock
        self.expires = expires
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[tuple[bytes, tuple[str, int], float]] = []
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            self.received.append((data, source, self.clock()))
            if data.startswith(b"REGISTER "):
                request = parse_message(data)
                assert isinstance(request, Request)
                self.answer_register(request, source)

    def answer_register(self, request: Request, source: tuple[str, int]) -> None:
        ok = make_response(request, 200, to_tag="prov")
        ok.add("Contact", f"{request.get('contact')};expires={self.expires}")
        self.sock.sendto(bytes(ok), source)

    def registers(self) -> list[tuple[tuple[str, int], float, Request]]:
        found = []
        for data, source, at in self.received:
            if data.startswith(b"REGISTER "):
                request = parse_message(data)
                assert isinstance(request, Request)
                found.append((source, at, request))
        return found

    def keepalives(self) -> list[tuple[tuple[str, int], float]]:
        return [(source, at) for data, source, at in self.received if data == PING]

    def others(self) -> list[bytes]:
        return [data for data, _, _ in self.received
                if data != PING and not data.startswith(b"REGISTER ")]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class Clock:
    """The appliance's monotonic clock, moved by the test only."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def appliance(tmp_path: Path, clock: Clock, sip: dict[str, object]
                    ) -> AsyncIterator[tuple[Appliance, Api]]:
    """An appliance on loopback whose config has the [sip] keys SIP, read as config.toml's."""
    config = parse({"data_dir": str(tmp_path / "var"),
                    "api": {"listen": f"127.0.0.1:{free_port()}"},
                    "sip": {"listen": f"127.0.0.1:{free_port()}", **sip},
                    "media": {"workers": 0}})
    app = Appliance(config, timer_clock=clock)
    await app.start()
    try:
        password = (config.data_dir / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            yield app, Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                           password, config.data_dir)
    finally:
        await app.stop()


async def tick(app: Appliance, clock: Clock, seconds: float) -> None:
    """SECONDS pass on the appliance's monotonic clock; whatever was due goes out and, on
    loopback, arrives."""
    clock.now += seconds
    await app.trunk.handle_timer(clock.now)
    await asyncio.sleep(0.02)


async def add_gateway(api: Api, provider: Provider, user: str = "office") -> str:
    status, body, _ = await api.post(f"{GW}.json", {
        "FriendlyName": user, "UserName": user, "Password": "Trunk-pass-1",
        "Proxy": f"127.0.0.1:{provider.port}", "Register": "true", "TTL": "600"})
    assert status == 200, body
    sid: str = json.loads(body)["sid"]
    gateway = await state_of(api, sid, {"registered", "failed"}, within=5)
    assert gateway["registration_state"] == "registered", gateway
    return sid


async def test_keep_alives_go_every_interval_from_the_register_port(tmp_path: Path) -> None:
    clock = Clock()
    provider = Provider(clock)
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 5}) as (app, api):
            await add_gateway(api, provider)
            for _ in range(16):
                await tick(app, clock, 1)
            [(source, at, _)] = provider.registers()
            # From the SIP socket's port, the one the REGISTER (and so its NAT mapping)
            # used; every 5 s of silence after it.
            assert source == ("127.0.0.1", app.config.sip.listen.port)
            assert provider.keepalives() == [(source, at + 5), (source, at + 10),
                                              (source, at + 15)]
            assert provider.others() == []
    finally:
        provider.close()


async def test_a_register_refresh_puts_the_keep_alive_off(tmp_path: Path) -> None:
    clock = Clock()
    provider = Provider(clock, expires=14)  # refreshed every 7 s
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 5}) as (app, api):
            await add_gateway(api, provider)
            for _ in range(22):
                await tick(app, clock, 1)
            times = [at - START for _, at, _ in provider.registers()]
            assert times == [0, 7, 14, 21]
            assert [at - START for _, at in provider.keepalives()] == [5, 12, 19]
    finally:
        provider.close()


@pytest.mark.parametrize("how", ["deleted", "unregistered"])
async def test_keep_alives_stop_with_the_registration(tmp_path: Path, how: str) -> None:
    clock = Clock()
    provider = Provider(clock)
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 5}) as (app, api):
            sid = await add_gateway(api, provider)
            for _ in range(6):
                await tick(app, clock, 1)
            assert len(provider.keepalives()) == 1
            if how == "deleted":
                status, _, _ = await api.request("DELETE", f"{GW}/{sid}")
            else:
                status, _, _ = await api.post(f"{GW}/{sid}.json", {"Register": "false"})
            assert status == 200
            async with asyncio.timeout(5):  # the unregistration (Expires: 0) goes out
                while len(provider.registers()) < 2:
                    await asyncio.sleep(0.01)
            assert provider.registers()[1][2].get("expires") == "0"
            for _ in range(30):
                await tick(app, clock, 1)
            assert len(provider.keepalives()) == 1
    finally:
        provider.close()


async def test_no_keep_alives_at_interval_zero(tmp_path: Path) -> None:
    clock = Clock()
    provider = Provider(clock)
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (app, api):
            await add_gateway(api, provider)
            for _ in range(6):
                await tick(app, clock, 10)
            assert len(provider.registers()) == 1
            assert provider.keepalives() == []
    finally:
        provider.close()


async def test_gateways_at_one_provider_address_share_its_keep_alives(tmp_path: Path) -> None:
    clock = Clock()
    provider = Provider(clock)
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 5}) as (app, api):
            await add_gateway(api, provider, "office")
            await add_gateway(api, provider, "fax")
            for _ in range(11):
                await tick(app, clock, 1)
            assert len(provider.registers()) == 2
            assert [at - START for _, at in provider.keepalives()] == [5, 10]
    finally:
        provider.close()
