"""Background jobs that run in order per key, a few at a time, with a bounded backlog.

For requests to customers' servers (SMS StatusCallback, received SMS handed to their app)
that must not hold up the caller: a server that takes 10 s to answer would otherwise delay
every message after it. Jobs with the same key (a message's SID, a conversation) run one
after the other, in the order they were put (`sent` before `delivered`); jobs with different
keys run side by side, at most `concurrency` at once."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class OrderedJobs:
    def __init__(self, name: str, *, concurrency: int, backlog: int) -> None:
        self._name = name
        self._slots = asyncio.Semaphore(concurrency)
        # Back-pressure instead of unbounded memory: `put` waits while this many jobs are
        # pending, which only a flood of callbacks to dead servers can reach.
        self._room = asyncio.Semaphore(backlog)
        self._last: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def put(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        """Run JOB once the jobs put before it with KEY have ended (whatever their outcome)."""
        await self._room.acquire()
        task = asyncio.create_task(self._run(self._last.get(key), job))
        self._last[key] = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.release()
        if self._last.get(key) is task:
            del self._last[key]

    async def _run(self, previous: asyncio.Task[None] | None,
                   job: Callable[[], Awaitable[None]]) -> None:
        if previous is not None:
            # Waits without a slot, so a chain never starves the jobs it waits for.
            await asyncio.wait([previous])
        async with self._slots:
            try:
                await job()
            except Exception:  # noqa: BLE001 - one job's fault must not reach the others
                logger.exception("x %s", self._name)

    async def close(self, grace: float, *, resumed: bool = False) -> int:
        """Give pending jobs GRACE seconds, then cancel the rest; how many were cancelled.
        RESUMED: the jobs are kept elsewhere (a table) and run again after a restart."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            logger.warning("x %s: %d not done at stop, %s", self._name, len(pending),
                           "run again after the restart" if resumed else "dropped")
        return len(pending)
