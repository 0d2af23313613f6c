"""An appliance with a fake modem on a pty, and a webhook server that records requests."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, ModemConfig, SipConfig
from appliance.gsm.state import ModemSettings
from tests.conftest import ADMIN_SID, Api, free_port
from tests.fakes.modem import FakeModem

SIM_NUMBER = "+15550001000"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeModem]:
    modem = FakeModem(link=tmp_path / "usb-Quectel_EC25-if02-port0").start()
    try:
        yield modem
    finally:
        modem.close()


# Short timeouts for tests of a modem that hangs: the `> ` prompt and AT+CMGS wait 0.5 s / 6 s,
# pings 0.2 s, re-opens after 0.1 s. Override `modem_settings` with this in such a module.
FAST_MODEM = {"timeout_scale": 0.1, "ping_timeout": 0.2, "reopen_delay": 0.1,
              "reopen_max_delay": 0.3}


@pytest.fixture
def modem_settings() -> dict[str, float]:
    """Overrides of the appliance's ModemSettings (none: the production defaults)."""
    return {}


def gsm_config(tmp_path: Path, fake: FakeModem) -> Config:
    """An appliance on FAKE with its data under TMP_PATH, on free loopback ports."""
    return Config(data_dir=tmp_path / "var",
                  api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                  sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                domain="pbx.example.com"),
                  modem=ModemConfig(device=str(fake.link), number=SIM_NUMBER),
                  media=MediaConfig(workers=0))  # SMS needs no media worker (less load)


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Appliance, Api]]:
    """An appliance on CONFIG, its modem ready, and its API; for tests that start one twice
    on the same data dir (a restart)."""
    app = Appliance(config)
    await app.start()
    try:
        await app.wait_modem(10)
        password = (config.data_dir / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            yield app, Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                           password, config.data_dir)
    finally:
        await app.stop()


@pytest.fixture
async def gsm_appliance(tmp_path: Path, fake: FakeModem,
                        modem_settings: dict[str, float]) -> AsyncIterator[Appliance]:
    config = gsm_config(tmp_path, fake)
    with pytest.MonkeyPatch.context() as patch:
        if modem_settings:
            patch.setattr("appliance.app.ModemSettings",
                          functools.partial(ModemSettings, **modem_settings))
        app = Appliance(config)
    await app.start()
    await app.wait_modem(10)
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
async def gsm_api(gsm_appliance: Appliance) -> AsyncIterator[Api]:
    password = (gsm_appliance.config.data_dir / "admin-password").read_text().strip()
    listen = gsm_appliance.config.api.listen
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
                  gsm_appliance.config.data_dir)


class Hook:
    """A local HTTP server standing in for the customer's web app."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.replies: dict[str, tuple[int, str, str]] = {}
        self.base = ""
        self.arrived = asyncio.Event()

    def reply(self, path: str, body: str, status: int = 200,
              content_type: str = "application/xml") -> str:
        self.replies[path] = (status, body, content_type)
        return self.base + path

    def url(self, path: str) -> str:
        return self.base + path

    async def handle(self, request: web.Request) -> web.Response:
        form: dict[str, str] = {}
        if request.method == "POST":
            form = {k: str(v) for k, v in (await request.post()).items()}
        else:
            form = dict(request.query)
        self.requests.append((request.method, request.path, form))
        self.arrived.set()
        status, body, content_type = self.replies.get(request.path, (200, "", "text/plain"))
        return web.Response(status=status, text=body, content_type=content_type)

    async def wait(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self.arrived.clear()
                with_timeout = asyncio.wait_for(self.arrived.wait(), 0.2)
                try:
                    await with_timeout
                except TimeoutError:
                    pass

    def posts_to(self, path: str) -> list[dict[str, str]]:
        return [form for _, p, form in self.requests if p == path]


@pytest.fixture
async def hook(aiohttp_server: Any) -> Hook:
    h = Hook()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", h.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    h.base = f"http://127.0.0.1:{server.port}"
    return h


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - state changed by another thread
            await asyncio.sleep(0.02)
