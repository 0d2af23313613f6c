"""WorkerClient: the main process's end of one worker's control socket.

One Unix-socket connection; each command gets an id, its reply is matched by ``re`` and
awaited under ``asyncio.timeout``; events go to a callback (``on_event``) or, without one,
to an async iterator (``events()``). When the connection closes, every pending request
fails with WorkerGone and the iterator ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Callable

from appliance.media import protocol as p
from appliance.media.engine import CommandFailed, WorkerGone

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
_EVENT_QUEUE = 10_000  # iterator mode only; a consumer that far behind loses events (logged)

EventHandler = Callable[[p.Event], None]


class WorkerClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 on_event: EventHandler | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._on_close = on_close
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[p.Reply]] = {}
        self._queue: asyncio.Queue[p.Event | None] = asyncio.Queue(_EVENT_QUEUE)
        self._ready: asyncio.Future[p.Ready] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, path: str, *, on_event: EventHandler | None = None,
                      on_close: Callable[[], None] | None = None,
                      seconds: float = REQUEST_TIMEOUT) -> WorkerClient:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_unix_connection(path, limit=p.MAX_FRAME)
        return cls(reader, writer, on_event=on_event, on_close=on_close)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_ready(self, seconds: float = REQUEST_TIMEOUT) -> p.Ready:
        """The worker's ``ready`` event, which it sends first on every connection."""
        async with asyncio.timeout(seconds):
            return await asyncio.shield(self._ready)

    async def request(self, cmd: p.Command, *, seconds: float = REQUEST_TIMEOUT) -> p.Reply:
        """Send ``cmd`` and wait for its reply. CommandFailed if the worker refused it,
        WorkerGone if the connection closed, TimeoutError if no reply came in time."""
        if self.closed:
            raise WorkerGone("worker connection is closed")
        cmd = dataclasses.replace(cmd, id=next(self._ids))
        fut: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self._pending[cmd.id] = fut
        try:
            self._writer.write(p.encode(cmd))
            async with asyncio.timeout(seconds):
                reply = await fut
        finally:
            self._pending.pop(cmd.id, None)
        if not reply.ok:
            raise CommandFailed(reply.error or "failed", reply.detail or "")
        return reply

    async def events(self) -> AsyncIterator[p.Event]:
        """Events in arrival order until the connection closes (iterator mode only)."""
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    # ------------------------------------------------------------------ internals

    async def _read(self) -> None:
        frames = p.FrameBuffer()
        try:
            while data := await self._reader.read(65536):
                for item in frames.feed(data):
                    self._dispatch(item)
        except (ConnectionError, OSError) as err:
            logger.warning("x worker connection: %s", err)
        finally:
            self._finish()

    def _dispatch(self, item: bytes | p.FrameTooLarge) -> None:
        try:
            if isinstance(item, p.FrameTooLarge):
                raise item
            frame = p.decode(item)
        except p.ProtocolError as err:
            logger.warning("x bad frame from worker: %s", err)
            return
        if isinstance(frame, p.Reply):
            fut = self._pending.get(frame.re)
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif isinstance(frame, p.Event):
            if isinstance(frame, p.Ready) and not self._ready.done():
                self._ready.set_result(frame)
            if self._on_event is not None:
                try:
                    self._on_event(frame)
                except Exception:
                    logger.exception("x event handler failed on %s", frame.EVENT)
            else:
                try:
                    self._queue.put_nowait(frame)
                except asyncio.QueueFull:
                    logger.warning("x event queue full; dropped %s", frame.EVENT)

    def _finish(self) -> None:
        self._closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerGone("worker connection closed"))
        if not self._ready.done():
            self._ready.set_exception(WorkerGone("worker closed before ready"))
            self._ready.exception()  # retrieved: nobody may be waiting for it
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        if self._on_close is not None:
            self._on_close()
