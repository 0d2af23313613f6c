"""Fixtures for the media tests: real worker processes, a WorkerClient, pjsua2 test phones."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.media import protocol as p
from appliance.media.client import WorkerClient
from tests.conftest import free_port

PHONE = Path(__file__).with_name("phone.py")
_RTP = itertools.count(0)
_RTP_BASE = 20000 + (os.getpid() % 100) * 200  # spread concurrent test runs apart


def free_udp_port() -> int:
    return free_port()


def rtp_slice(size: int = 40) -> tuple[int, int]:
    start = _RTP_BASE + next(_RTP) * size
    if start + size > 60000:
        start = 20000
    return start, start + size - 1


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 108-byte AF_UNIX path limit.
    with tempfile.TemporaryDirectory(prefix="mt", dir="/tmp") as d:
        yield Path(d)


class Events:
    """Collects frames (events) and lets a test wait for one matching a predicate."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(self, pred: Callable[[Any], bool], seconds: float = 8.0,
                       start: int = 0) -> Any:
        async with asyncio.timeout(seconds):
            i = start
            while True:
                while i < len(self.items):
                    if pred(self.items[i]):
                        return self.items[i]
                    i += 1
                self._changed.clear()
                await self._changed.wait()

    def of(self, cls: type, **fields: Any) -> list[Any]:
        return [e for e in self.items if isinstance(e, cls)
                and all(getattr(e, k) == v for k, v in fields.items())]


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process, client: WorkerClient, events: Events,
                 sip_port: int, stderr: Path) -> None:
        self.proc, self.client, self.events = proc, client, events
        self.sip_port = sip_port
        self.stderr = stderr

    @property
    def uri(self) -> str:
        return f"sip:media@127.0.0.1:{self.sip_port}"

    async def cmd(self, cmd: p.Command) -> p.Reply:
        return await self.client.request(cmd)

    async def leg(self, state: str, leg: str | None = None, seconds: float = 8.0
                  ) -> p.LegEvent:
        ev: p.LegEvent = await self.events.wait_for(
            lambda e: isinstance(e, p.LegEvent) and e.state == state
            and (leg is None or e.leg == leg), seconds)
        return ev


async def start_worker(sock_dir: Path, *, max_calls: int = 4, name: str = "w",
                       log_level: str = "info") -> Worker:
    control = str(sock_dir / f"{name}.sock")
    sip_port = free_udp_port()
    lo, hi = rtp_slice()
    stderr = sock_dir / f"{name}.err"
    err = stderr.open("wb")  # noqa: ASYNC230 - a local file, opened once
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance.media.worker", "--control", control,
            "--sip-port", str(sip_port), "--rtp-ports", f"{lo}-{hi}",
            "--max-calls", str(max_calls), "--id", name, "--log-level", log_level,
            stderr=err)
    finally:
        err.close()
    events = Events()
    for _ in range(200):
        try:
            client = await WorkerClient.connect(control, on_event=events.add)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            assert proc.returncode is None, stderr.read_text()
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("worker did not open its socket")
    await client.wait_ready()
    return Worker(proc, client, events, sip_port, stderr)


async def stop_worker(w: Worker) -> None:
    if w.proc.returncode is None:
        with contextlib.suppress(Exception):
            await w.client.request(p.Shutdown(), seconds=10)
        async with asyncio.timeout(10):
            await w.proc.wait()
    await w.client.close()
    text = w.stderr.read_text(errors="replace")
    assert "Assertion" not in text and "Traceback" not in text, text[-2000:]
    assert w.proc.returncode == 0, text[-2000:]


@pytest.fixture
async def worker(sock_dir: Path) -> AsyncIterator[Worker]:
    pytest.importorskip("pjsua2")
    w = await start_worker(sock_dir)
    try:
        yield w
    finally:
        await stop_worker(w)


class Phone:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events = Events()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.add(json.loads(line))

    async def finish(self, seconds: float = 30.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(seconds):
            await self._task
            code = await self.proc.wait()
        assert code == 0, f"phone exited {code}"
        assert self.events.items[-1]["event"] == "done"
        return self.events.items

    def states(self, call: int = 0) -> list[tuple[str, int]]:
        return [(e["state"], e["code"]) for e in self.events.items
                if e["event"] == "state" and e["call"] == call]

    def digits(self) -> str:
        return "".join(e["digit"] for e in self.events.items if e["event"] == "dtmf")

    async def port(self) -> int:
        ev = await self.events.wait_for(lambda e: e["event"] == "ready", 10)
        return int(ev["port"])

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def phones() -> AsyncIterator[Callable[..., Any]]:
    """``await phones("--call", uri, ...)`` starts a test phone process."""
    started: list[Phone] = []

    async def start(*args: str) -> Phone:
        lo, _ = rtp_slice()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(PHONE), "--rtp-port", str(lo), *args,
            stdout=asyncio.subprocess.PIPE)
        phone = Phone(proc)
        started.append(phone)
        return phone

    yield start
    for phone in started:
        phone.kill()
        with contextlib.suppress(Exception):
            await phone.proc.wait()
