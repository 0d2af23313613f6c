"""sd_notify over the socket, and a watchdog task that pets systemd only while healthy.

Theory of operation
-------------------
systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) to a
``Type=notify`` service. The protocol is one ``AF_UNIX``/``SOCK_DGRAM`` datagram of
newline-separated ``KEY=VALUE`` assignments: ``READY=1`` ends start-up, ``STATUS=…`` is shown
by ``systemctl status``, ``WATCHDOG=1`` pets the watchdog, ``STOPPING=1`` announces shutdown.
That is all systemd-python's ``daemon.notify`` does, so we skip its C build
(``ecosystem.md`` §2.1). Without ``NOTIFY_SOCKET`` (a laptop, the tests) every call is a no-op
that returns False.

With ``WatchdogSec=`` systemd also sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``); if no
``WATCHDOG=1`` arrives within that interval it kills and restarts the service. ``Watchdog``
pets at half the interval, and only when every health check passes: a wedged component (SIP
transport, DB thread, media workers) stops the petting and gets the process restarted. A
blocked event loop needs no check at all: the watchdog task itself cannot run, so no pet is
sent.

This module owns the notify socket and nothing else; it imports no other appliance module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[bool]]
"""An async callable answering "is my component working?"; False, a timeout or an exception
all count as unhealthy."""

# A health check that takes longer than this is a failed check (HA's coordinator pattern:
# every device call sits in asyncio.timeout). Capped at a quarter of the watchdog interval so
# that a slow check cannot by itself make us miss the deadline.
CHECK_TIMEOUT = 5.0


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return None
    if addr[0] == "@":  # abstract namespace: leading NUL instead of "@"
        return "\0" + addr[1:]
    if addr[0] != "/":  # systemd also accepts vsock:… addresses; we run on a plain host
        logger.warning("x NOTIFY_SOCKET %r is not a Unix socket address; ignored", addr)
        return None
    return addr


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields in one datagram; False when there is no socket or it failed.

    Raises ValueError on a malformed field (no ``=``, or a newline, which would split it).
    """
    for field in fields:
        key, sep, _ = field.partition("=")
        if not sep or not key or "\n" in field:
            raise ValueError(f"not a KEY=VALUE sd_notify field: {field!r}")
    if not fields:
        return False
    addr = _address()
    if addr is None:
        return False
    payload = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, addr)
    except OSError as err:
        # Never let a missing or full notify socket take the service down; systemd notices a
        # lack of READY/WATCHDOG on its own.
        logger.warning("x sd_notify %s: %s", fields[0], err)
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    """Start-up is complete (``READY=1``), optionally with a ``STATUS=`` line."""
    fields = ["READY=1"]
    if status is not None:
        fields.append(f"STATUS={_one_line(status)}")
    return notify(*fields)


def status(text: str) -> bool:
    """One-line health summary for ``systemctl status`` (newlines are folded to spaces)."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(status: str | None = None) -> bool:
    """Shutdown has begun (``STOPPING=1``)."""
    fields = ["STOPPING=1"]
    if status is not None:
        fields.append(f"STATUS={_one_line(status)}")
    return notify(*fields)


def reloading() -> bool:
    """A configuration reload has begun; follow it with ``ready()``."""
    return notify("RELOADING=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for more start-up/shutdown time (``EXTEND_TIMEOUT_USEC``), e.g. during migrations."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")


def watchdog_ping() -> bool:
    """Pet the watchdog (``WATCHDOG=1``)."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """The watchdog interval in seconds, or None when systemd expects no pets from us.

    Reads ``WATCHDOG_USEC``; ``WATCHDOG_PID``, when set, must be our pid (it is absent or
    another pid in processes we spawned that inherited the environment).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


def _name(check: HealthCheck) -> str:
    return getattr(check, "__qualname__", None) or repr(check)


class Watchdog:
    """Pets systemd at half the watchdog interval while every health check passes.

    Run ``await watchdog.run()`` as a task owned by the composition root's TaskGroup; cancel
    it at shutdown. With no watchdog interval (not under systemd, or ``WatchdogSec=`` unset)
    ``run()`` returns at once.
    """

    def __init__(
        self,
        checks: Sequence[HealthCheck] = (),
        *,
        interval: float | None = None,
        check_timeout: float = CHECK_TIMEOUT,
        ping: Callable[[], bool] = watchdog_ping,
    ) -> None:
        self._checks = list(checks)
        self._interval = watchdog_interval() if interval is None else interval
        self._check_timeout = check_timeout
        self._ping = ping
        self.healthy = True
        self.failing: tuple[str, ...] = ()
        self.pets = 0
        self.max_lag = 0.0

    @property
    def interval(self) -> float | None:
        """The full watchdog interval in seconds (pets go out at half of it)."""
        return self._interval

    def add_check(self, check: HealthCheck) -> None:
        self._checks.append(check)

    async def run(self) -> None:
        if self._interval is None or self._interval <= 0:
            logger.debug("- watchdog off (no WATCHDOG_USEC)")
            return
        loop = asyncio.get_running_loop()
        period = self._interval / 2
        limit = min(self._check_timeout, self._interval / 4)
        logger.info("- watchdog on: interval %.3f s, pet every %.3f s", self._interval, period)
        next_at = loop.time()
        while True:
            # If the loop was blocked, this task woke late: report it. No pet could be sent
            # while blocked, which is exactly what lets systemd restart a wedged process.
            lag = loop.time() - next_at
            if lag > period:
                logger.warning("x event loop was blocked for %.3f s", lag)
            self.max_lag = max(self.max_lag, lag)
            await self._check_and_pet(limit)
            next_at = loop.time() + period
            await asyncio.sleep(period)

    async def _check_and_pet(self, limit: float) -> None:
        results = await asyncio.gather(*(self._run_check(c, limit) for c in self._checks))
        failing = tuple(_name(c) for c, ok in zip(self._checks, results, strict=True) if not ok)
        if failing != self.failing:
            if failing:
                logger.warning("x unhealthy, not petting the watchdog: %s", ", ".join(failing))
            else:
                logger.info("- healthy again, petting the watchdog")
        self.failing = failing
        self.healthy = not failing
        if self.healthy and self._ping():
            self.pets += 1

    @staticmethod
    async def _run_check(check: HealthCheck, limit: float) -> bool:
        try:
            async with asyncio.timeout(limit):
                return bool(await check())
        except TimeoutError:
            logger.warning("x health check %s timed out after %.2f s", _name(check), limit)
            return False
        except Exception:
            logger.exception("x health check %s raised", _name(check))
            return False
