"""WorkerClient against a scripted fake worker on a Unix socket (no pjsua2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from appliance.media import protocol as p
from appliance.media.client import WorkerClient
from appliance.media.engine import CommandFailed, WorkerGone

READY = p.Ready(pid=1, worker="0", sip_port=5070, rtp_ports=(10000, 10099), max_calls=4)

Script = Callable[[p.Command, asyncio.StreamWriter], None]


class FakeWorker:
    """Sends ready, then answers each command through ``script`` (default: ok)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: list[p.Command] = []
        self.script: Script = lambda cmd, w: w.write(p.encode(p.Reply(re=cmd.id, ok=True)))
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(p.encode(READY))
        async for line in reader:
            cmd = p.decode(line)
            assert isinstance(cmd, p.Command)
            self.seen.append(cmd)
            self.script(cmd, writer)
        writer.close()


@pytest.fixture
async def fake(sock_dir: Path) -> AsyncIterator[FakeWorker]:
    fw = FakeWorker(str(sock_dir / "fake.sock"))
    server = await asyncio.start_unix_server(fw.handle, path=fw.path)
    async with server:
        yield fw


async def test_request_reply_and_ready(fake: FakeWorker) -> None:
    client = await WorkerClient.connect(fake.path)
    assert await client.wait_ready() == READY
    reply = await client.request(p.Answer(leg="CA1"))
    assert reply.ok and reply.re == fake.seen[0].id
    assert fake.seen[0] == p.Answer(leg="CA1", id=reply.re)
    await client.close()


async def test_replies_out_of_order_are_correlated(fake: FakeWorker) -> None:
    held: list[p.Command] = []

    def script(cmd: p.Command, w: asyncio.StreamWriter) -> None:
        held.append(cmd)
        if len(held) == 2:  # answer the second first
            for c in reversed(held):
                w.write(p.encode(p.Reply(re=c.id, ok=True, detail=getattr(c, "leg", ""))))

    fake.script = script
    client = await WorkerClient.connect(fake.path)
    r1, r2 = await asyncio.gather(client.request(p.Hangup(leg="A")),
                                  client.request(p.Hangup(leg="B")))
    assert (r1.detail, r2.detail) == ("A", "B")
    await client.close()


async def test_error_reply_timeout_and_gone(fake: FakeWorker) -> None:
    def script(cmd: p.Command, w: asyncio.StreamWriter) -> None:
        if isinstance(cmd, p.Hangup):
            w.write(p.encode(p.Reply(re=cmd.id, ok=False, error="no-such-leg", detail="A")))
        elif isinstance(cmd, p.Shutdown):
            w.close()  # the worker dies mid-request
        # Stop: never answered

    fake.script = script
    client = await WorkerClient.connect(fake.path)
    with pytest.raises(CommandFailed) as info:
        await client.request(p.Hangup(leg="A"))
    assert info.value.code == "no-such-leg"
    with pytest.raises(TimeoutError):
        await client.request(p.Stop(leg="A"), seconds=0.2)
    with pytest.raises(WorkerGone):
        await client.request(p.Shutdown())
    await client.wait_closed()
    with pytest.raises(WorkerGone):
        await client.request(p.Ping())
    await client.close()


async def test_event_iterator_skips_bad_frames(fake: FakeWorker) -> None:
    def script(cmd: p.Command, w: asyncio.StreamWriter) -> None:
        w.write(p.encode(p.DtmfEvent(leg="A", digit="1")))
        w.write(b"garbage\n" + b"z" * (p.MAX_FRAME + 10) + b"\n")
        w.write(p.encode(p.Reply(re=cmd.id, ok=True)))
        w.write(p.encode(p.Heartbeat(age=0.0, calls=0)))
        w.close()

    fake.script = script
    client = await WorkerClient.connect(fake.path)
    await client.request(p.Ping())
    got = [ev async for ev in client.events()]
    assert got == [READY, p.DtmfEvent(leg="A", digit="1"), p.Heartbeat(age=0.0, calls=0)]
    await client.close()


async def test_callback_mode_and_on_close(fake: FakeWorker) -> None:
    seen: list[p.Event] = []
    closed = asyncio.Event()
    client = await WorkerClient.connect(fake.path, on_event=seen.append, on_close=closed.set)
    await client.wait_ready()
    fake.writers[0].write(p.encode(p.DtmfEvent(leg="A", digit="9")))
    fake.writers[0].close()
    async with asyncio.timeout(2):
        await closed.wait()
    assert seen == [READY, p.DtmfEvent(leg="A", digit="9")]
    await client.close()
