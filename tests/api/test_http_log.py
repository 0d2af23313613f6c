"""Malformed HTTP requests cost the log one throttled line, not a traceback each."""

from __future__ import annotations

import asyncio
import logging

import pytest

from appliance.app import Appliance
from tests.conftest import Api


async def send_raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(200)
    finally:
        writer.close()


async def test_a_flood_of_over_long_requests_logs_one_line(
        api: Api, appliance: Appliance, caplog: pytest.LogCaptureFixture) -> None:
    port = appliance.config.api.listen.port
    caplog.set_level(logging.DEBUG)
    for n in range(100):
        line = b"GET /" + b"a" * 9000 if n % 2 else b"GET / HTTP/1.1\r\nX: " + b"b" * 9000
        answer = await send_raw(port, line + b" HTTP/1.1\r\n\r\n")
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage()[:100] for r in lines]
    [line] = lines
    assert line.exc_info is None and line.levelno == logging.WARNING
    assert line.getMessage().startswith("x malformed HTTP request from 127.0.0.1 answered 400")
    assert len(caplog.text) < 2000
    status, _, _ = await api.get("Accounts.json")
    assert status == 200


def test_left_out_lines_are_counted_in_the_next() -> None:
    from aiohttp.http_exceptions import LineTooLong

    from appliance.api.http_log import MalformedRequests

    now = [0.0]
    keep = MalformedRequests(clock=lambda: now[0], interval=60)

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, __file__, 1,
                                 "Error handling request from %s", ("10.0.0.9",),
                                 (type(error), error, None))

    first = record(LineTooLong("line", "8190", "9000"))
    assert keep.filter(first) and "10.0.0.9" in first.getMessage()
    assert not any(keep.filter(record(LineTooLong("x", "1"))) for _ in range(5))
    now[0] = 61
    later = record(LineTooLong("line", "8190"))
    assert keep.filter(later) and "(5 more since the last line)" in later.getMessage()
    bug = record(RuntimeError("ours"))
    assert keep.filter(bug) and bug.exc_info is not None  # a bug keeps its traceback
