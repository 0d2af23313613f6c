"""Shared fixtures: a real appliance on loopback with a real SQLite file in a temp dir."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig

ADMIN_SID = "ACae6e420f425248d6a26948c17a9e2acf"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port of 127.0.0.1 free now for both TCP and UDP, and never handed out before in this
    test run: the kernel may give the same port to two picks in a row (the second server to
    bind it then fails to start), and a SIP port is bound for both transports."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        if claim_port(port):
            return port


def claim_port(port: int) -> bool:
    """Record PORT, picked by a test's own means, as handed out in this run (free_port will
    not give it): False if it already was, and the test must pick another."""
    if port in _HANDED_OUT:
        return False
    _HANDED_OUT.add(port)
    return True


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


class Api:
    """A thin HTTP client bound to one running appliance and one set of credentials."""

    def __init__(self, session: aiohttp.ClientSession, base: str, user: str, secret: str,
                 data_dir: Path) -> None:
        self.session = session
        self.base = base
        self.user = user
        self.secret = secret
        self.data_dir = data_dir

    def as_user(self, user: str, secret: str) -> Api:
        return Api(self.session, self.base, user, secret, self.data_dir)

    def url(self, path: str, prefix: str = "/restcomm") -> str:
        return f"{self.base}{prefix}/2012-04-24/{path.lstrip('/')}"

    async def request(self, method: str, path: str, *, data: dict[str, str] | None = None,
                      params: dict[str, str] | None = None, auth: bool = True,
                      headers: dict[str, str] | None = None, prefix: str = "/restcomm"
                      ) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
        hdrs = dict(headers or {})
        if auth:
            hdrs["Authorization"] = basic(self.user, self.secret)
        async with self.session.request(method, self.url(path, prefix), data=data,
                                        params=params, headers=hdrs) as resp:
            return resp.status, await resp.text(), resp.headers

    async def get(self, path: str, **kw: object) -> tuple[int, str, object]:
        return await self.request("GET", path, **kw)  # type: ignore[arg-type]

    async def post(self, path: str, data: dict[str, str] | None = None, **kw: object
                   ) -> tuple[int, str, object]:
        return await self.request("POST", path, data=data or {}, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[Appliance]:
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                  domain="pbx.example.com"),
                    media=MediaConfig(workers=0))  # tests/voice starts real workers
    app = Appliance(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
async def api(appliance: Appliance) -> AsyncIterator[Api]:
    password = (appliance.config.data_dir / "admin-password").read_text().strip()
    listen = appliance.config.api.listen
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
                  appliance.config.data_dir)
