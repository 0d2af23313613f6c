"""A tiny service for test_notify_program.py: what `appliance serve` does with systemd.

Run as ``python notify_program.py BLOCK_SECONDS`` with NOTIFY_SOCKET and WATCHDOG_USEC set.
It starts the Watchdog, sends READY=1 + STATUS=, lets a few pets go out, blocks its own event
loop with time.sleep (so no pet can be sent), recovers, and on SIGTERM sends STOPPING=1.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from appliance.platform import systemd


async def main(block_seconds: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def store_ok() -> bool:
        return True

    watchdog = systemd.Watchdog([store_ok])
    async with asyncio.TaskGroup() as tasks:
        pets = tasks.create_task(watchdog.run())
        systemd.ready("serving")
        await asyncio.sleep(0.5)
        systemd.status("blocking")
        time.sleep(block_seconds)  # noqa: ASYNC251 - a wedged loop, on purpose
        systemd.status("unblocked")
        await stop.wait()
        systemd.stopping("stopping")
        pets.cancel()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
