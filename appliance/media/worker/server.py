"""The worker's control socket: newline-delimited JSON frames ⇄ the pj thread (style.md §2.1).

Runs on the worker's asyncio loop. Commands go to the pj thread through ``submit`` (its
inbox); events come back through ``emit_threadsafe`` and are written to every connected
client. A bad frame is answered with an error reply (or an ``error`` event when it has no
readable id); it never ends the connection, let alone the worker.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
from typing import Protocol

from appliance.media import protocol as p

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
_BACKLOG = 1000  # events kept while no client is connected (start-up, a reconnect)
_MAX_BUFFERED = 4 * 1024 * 1024  # a client that stops reading is cut off, not buffered for


class Executor(Protocol):
    """What the server needs from the pj thread (implemented by ``worker.pj.PjWorker``)."""

    def submit(self, cmd: p.Command) -> concurrent.futures.Future[p.Reply]: ...

    def heartbeat_age(self) -> float: ...

    @property
    def calls(self) -> int: ...

    def join(self, timeout: float | None = None) -> bool: ...


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def send(self, frame: p.Frame) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(p.encode(frame))
        if self.writer.transport.get_write_buffer_size() > _MAX_BUFFERED:
            logger.warning("x control client is not reading; closing it")
            self.writer.close()


class ControlServer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.ready: p.Ready | None = None
        self.executor: Executor | None = None
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[_Conn] = set()
        self._backlog: collections.deque[p.Event] = collections.deque(maxlen=_BACKLOG)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------------ pj side

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def emit_threadsafe(self, event: p.Event) -> None:
        """The pj thread's only way out: copy of a frozen event onto the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed under us during teardown
            loop.call_soon_threadsafe(self.broadcast, event)

    def broadcast(self, event: p.Event) -> None:
        if not self._conns:
            self._backlog.append(event)
            return
        for conn in list(self._conns):
            conn.send(event)

    # ------------------------------------------------------------------ loop side

    async def serve(self, executor: Executor, ready: p.Ready) -> int:
        """Serve until ``shutdown`` (or ``stop()``); returns the process exit code."""
        self.executor, self.ready = executor, ready
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o600)
        logger.info("- worker %s ready: sip 127.0.0.1:%d rtp %d-%d, %d calls", ready.worker,
                    ready.sip_port, ready.rtp_ports[0], ready.rtp_ports[1], ready.max_calls)
        beat = asyncio.create_task(self._heartbeat())
        try:
            await self._stop.wait()
        finally:
            beat.cancel()
            server.close()
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    await conn.writer.drain()
                conn.writer.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        return self.exit_code

    async def shutdown(self) -> None:
        """Graceful stop (SIGTERM): the pj thread tears down, then the loop ends."""
        if self._stopping or self.executor is None:
            self._stop.set()
            return
        self._stopping = True
        await asyncio.wrap_future(self.executor.submit(p.Shutdown()))
        self._stop.set()

    async def _heartbeat(self) -> None:
        assert self.executor is not None
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if self.executor.join(0):  # the pj thread is gone without being asked to
                if not self._stopping:
                    logger.error("x pj thread died")
                    self.exit_code = 1
                self._stop.set()
                return
            self.broadcast(p.Heartbeat(age=round(self.executor.heartbeat_age(), 3),
                                       calls=self.executor.calls))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        if self.ready is not None:
            conn.send(self.ready)
        while self._backlog:
            conn.send(self._backlog.popleft())
        self._conns.add(conn)
        frames = p.FrameBuffer()
        try:
            while data := await reader.read(65536):
                for item in frames.feed(data):
                    self._handle(conn, item)
        except (ConnectionError, OSError):
            pass
        finally:
            self._conns.discard(conn)
            writer.close()

    def _handle(self, conn: _Conn, item: bytes | p.FrameTooLarge) -> None:
        if isinstance(item, p.FrameTooLarge):
            conn.send(p.ErrorEvent(code=item.code, detail=str(item)))
            return
        try:
            frame = p.decode(item)
        except p.ProtocolError as err:
            logger.warning("x bad frame: %s", err)
            if err.id is not None:
                conn.send(p.Reply(re=err.id, ok=False, error=err.code, detail=str(err)))
            else:
                conn.send(p.ErrorEvent(code=err.code, detail=str(err)))
            return
        if not isinstance(frame, p.Command):
            conn.send(p.ErrorEvent(code="bad-frame", detail="a worker accepts commands only"))
            return
        if isinstance(frame, p.Ping):
            # Answered here, not by the pj thread: a wedged pj thread shows as a growing age.
            assert self.executor is not None
            conn.send(p.Reply(re=frame.id, ok=True,
                              heartbeat_age=round(self.executor.heartbeat_age(), 3)))
            return
        task = asyncio.create_task(self._run(conn, frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: _Conn, cmd: p.Command) -> None:
        assert self.executor is not None
        if self._stopping:
            conn.send(p.Reply(re=cmd.id, ok=False, error="stopping"))
            return
        if isinstance(cmd, p.Shutdown):
            self._stopping = True
        reply = await asyncio.wrap_future(self.executor.submit(cmd))
        conn.send(reply)
        if isinstance(cmd, p.Shutdown):
            self._stop.set()
