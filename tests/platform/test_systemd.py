"""sd_notify and the watchdog task against a real AF_UNIX datagram socket (ecosystem.md §2.2)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.platform import systemd


class Receiver:
    """The systemd side: a bound datagram socket and the messages it got."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    def drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    async def next(self) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(2.0):
            return (await loop.sock_recv(self.sock, 4096)).decode()


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield Receiver(sock)
    finally:
        sock.close()


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready("x") is False
    assert systemd.watchdog_ping() is False


def test_ready_status_stopping(receiver: Receiver) -> None:
    assert systemd.ready("serving 3 phones")
    assert systemd.status("line 1\nline 2")
    assert systemd.watchdog_ping()
    assert systemd.stopping()
    assert systemd.extend_timeout(1.5)
    assert receiver.drain() == [
        "READY=1\nSTATUS=serving 3 phones",
        "STATUS=line 1 line 2",
        "WATCHDOG=1",
        "STOPPING=1",
        "EXTEND_TIMEOUT_USEC=1500000",
    ]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"appliance-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1", "STATUS=ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


def test_nobody_listening_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.notify("WATCHDOG=1") is False


@pytest.mark.parametrize("field", ["READY", "=1", "STATUS=a\nb"])
def test_malformed_field_is_rejected(receiver: Receiver, field: str) -> None:
    with pytest.raises(ValueError):
        systemd.notify(field)


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for our parent
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "nonsense")
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert systemd.watchdog_interval() is None


async def test_watchdog_off_without_interval(receiver: Receiver) -> None:
    dog = systemd.Watchdog()
    assert dog.interval is None
    async with asyncio.timeout(1):
        await dog.run()  # returns at once
    assert receiver.drain() == []


async def test_watchdog_reads_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    dog = systemd.Watchdog()
    assert dog.interval == 0.1
    task = asyncio.create_task(dog.run())
    try:
        for _ in range(3):
            assert await receiver.next() == "WATCHDOG=1"
    finally:
        task.cancel()


async def test_watchdog_pets_at_half_the_interval(receiver: Receiver) -> None:
    dog = systemd.Watchdog(interval=0.2)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(dog.run())
    try:
        times = []
        for _ in range(5):
            assert await receiver.next() == "WATCHDOG=1"
            times.append(loop.time())
    finally:
        task.cancel()
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    assert 0.08 < gaps[len(gaps) // 2] < 0.15, gaps  # 0.1 s, give or take scheduling
    assert gaps[-1] < 0.35, gaps  # well inside the 0.2 s deadline on a loaded CI box
    assert dog.pets >= 5


async def test_watchdog_stops_petting_while_a_check_fails(receiver: Receiver) -> None:
    healthy = True
    calls = 0

    async def sip_transport() -> bool:
        nonlocal calls
        calls += 1
        return healthy

    dog = systemd.Watchdog([sip_transport], interval=0.1)
    task = asyncio.create_task(dog.run())
    try:
        assert await receiver.next() == "WATCHDOG=1"
        healthy = False
        await asyncio.sleep(0.2)
        receiver.drain()  # a pet may have been in flight when the check flipped
        seen = calls
        await asyncio.sleep(0.3)
        assert calls > seen  # still checking ...
        assert receiver.drain() == []  # ... but not petting
        assert not dog.healthy
        assert dog.failing == (sip_transport.__qualname__,)
        healthy = True
        assert await receiver.next() == "WATCHDOG=1"
        assert dog.healthy and dog.failing == ()
    finally:
        task.cancel()


async def test_a_hanging_or_raising_check_is_a_failure(receiver: Receiver) -> None:
    async def hangs() -> bool:
        await asyncio.sleep(3600)
        return True

    async def raises() -> bool:
        raise RuntimeError("db thread gone")

    async def fine() -> bool:
        return True

    for bad in (hangs, raises):
        dog = systemd.Watchdog([fine, bad], interval=0.1, check_timeout=0.02)
        task = asyncio.create_task(dog.run())
        try:
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
        assert receiver.drain() == []
        assert dog.failing == (bad.__qualname__,)


async def test_a_blocked_loop_gets_no_pets(receiver: Receiver) -> None:
    import time

    dog = systemd.Watchdog(interval=0.1)
    task = asyncio.create_task(dog.run())
    try:
        assert await receiver.next() == "WATCHDOG=1"
        receiver.drain()
        time.sleep(0.4)  # noqa: ASYNC251 - blocking the loop is the point of this test
        assert receiver.drain() == []
        assert await receiver.next() == "WATCHDOG=1"  # resumes once the loop runs again
        await asyncio.sleep(0)
        assert dog.max_lag > 0.3
    finally:
        task.cancel()
