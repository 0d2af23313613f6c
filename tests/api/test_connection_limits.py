"""The HTTP server's connection caps and deadlines (docs/api.md, Limits): a LAN host opening
many silent or slow connections (slowloris) cannot use up the process's file descriptors and
lock the administrator out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from appliance.api.server import MAX_PER_ADDRESS, ConnectionCount, ConnectionLimits
from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from tests.conftest import ADMIN_SID, basic, free_port

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def start(tmp_path: Path, limits: ConnectionLimits | None = None) -> Appliance:
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port())),
                    media=MediaConfig(workers=0))
    app = Appliance(config, api_limits=limits)
    await app.start()
    return app


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Appliance]:
    app = await start(tmp_path)
    try:
        yield app
    finally:
        await app.stop()


async def connect(app: Appliance, source: str) -> Conn:
    port = app.config.api.listen.port
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_within(conn: Conn, seconds: float) -> bytes | None:
    """What the server sent before closing CONN, or None if it is still open after SECONDS."""
    reader, _ = conn
    got = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(4096):
                got += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return got


async def admin_get(app: Appliance) -> int:
    password = (app.config.data_dir / "admin-password").read_text().strip()
    listen = app.config.api.listen
    url = f"http://{listen.host}:{listen.port}/restcomm/2012-04-24/Accounts/{ADMIN_SID}.json"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
            session.get(url, headers={"Authorization": basic(ADMIN_SID, password)}) as resp:
        return resp.status


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


def test_count_caps_per_address_and_in_all() -> None:
    count = ConnectionCount(ConnectionLimits(max_connections=3, max_per_address=2))
    assert count.admit("10.0.0.1") and count.admit("10.0.0.1")
    assert not count.admit("10.0.0.1")  # its own cap
    assert count.admit("10.0.0.2")
    assert not count.admit("10.0.0.3")  # the cap in all
    count.release("10.0.0.1")
    assert count.admit("10.0.0.3") and not count.admit("10.0.0.1")
    assert count.total == 3


async def test_one_host_past_its_cap_is_refused_and_the_admin_still_gets_in(
        box: Appliance, caplog: pytest.LogCaptureFixture) -> None:
    conns = [await connect(box, "127.0.0.5") for _ in range(MAX_PER_ADDRESS)]
    extra = [await connect(box, "127.0.0.5") for _ in range(3)]
    try:
        for conn in extra:  # refused at once with a 503, not left hanging
            answer = await closed_within(conn, 3)
            assert answer is not None and answer.startswith(b"HTTP/1.1 503 "), answer
        assert await closed_within(conns[0], 0.2) is None  # those within the cap stay open
        started = time.monotonic()
        assert await admin_get(box) == 200  # from 127.0.0.1: another address
        assert time.monotonic() - started < 2
    finally:
        close_all(conns + extra)
    await asyncio.sleep(0.1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_at_the_cap_in_all_a_new_address_displaces_the_most_crowded_one(
        tmp_path: Path) -> None:
    # Hosts reconnecting from a few addresses held every slot and kept the administrator
    # out. At the cap, a newcomer from an address holding none (the admin's, here
    # 127.0.0.1) takes the place of the oldest connection of the address holding the most;
    # one from an address already holding some is refused, 503.
    app = await start(tmp_path, ConnectionLimits(max_connections=6, max_per_address=4))
    conns = [await connect(app, f"127.0.0.{2 + i // 4}") for i in range(6)]
    try:
        await asyncio.sleep(0.2)  # all six counted
        late = await connect(app, "127.0.0.3")  # holds 2 already
        answer = await closed_within(late, 3)
        assert answer is not None and answer.startswith(b"HTTP/1.1 503 ")
        assert await admin_get(app) == 200
        assert await closed_within(conns[0], 3) == b""  # 127.0.0.2's oldest made room
        for conn in conns[1:]:
            assert await closed_within(conn, 0.2) is None  # the others stay
    finally:
        close_all(conns)
        await app.stop()


async def test_silent_slow_and_idle_connections_are_closed_after_the_deadline(
        tmp_path: Path) -> None:
    app = await start(tmp_path, ConnectionLimits(idle_timeout=1.0))
    try:
        silent = await connect(app, "127.0.0.2")
        slow = await connect(app, "127.0.0.3")
        kept = await connect(app, "127.0.0.4")
        kept[1].write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        request = b"GET /restcomm/2012-04-24/Accounts.json HTTP/1.1\r\nHost: a\r\nX-a: " + b"b" * 50

        async def trickle() -> None:
            for byte in request:
                slow[1].write(bytes([byte]))
                await asyncio.sleep(0.1)

        sending = asyncio.create_task(trickle())
        started = time.monotonic()
        assert await closed_within(silent, 4) == b""
        assert await closed_within(slow, 4) == b""
        answered = await closed_within(kept, 4)  # its response, then closed when idle
        assert answered is not None and answered.startswith(b"HTTP/1.1 ")
        assert time.monotonic() - started < 4
        assert not sending.done()  # the slow one was cut before its headers were done
        sending.cancel()
        close_all([silent, slow, kept])
    finally:
        await app.stop()


async def test_with_tls_a_connection_that_never_shakes_hands_is_closed_after_the_deadline(
        tmp_path: Path) -> None:
    # Under TLS the server sees a connection only once its handshake is over: one that
    # never sends its ClientHello was held for asyncio's 60 s, out of reach of the caps.
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port()), tls=True),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port())),
                    media=MediaConfig(workers=0))
    app = Appliance(config, api_limits=ConnectionLimits(idle_timeout=1.0))
    await app.start()
    try:
        silent = await connect(app, "127.0.0.2")
        started = time.monotonic()
        assert await closed_within(silent, 5) == b""
        assert time.monotonic() - started < 4
        close_all([silent])
    finally:
        await app.stop()
