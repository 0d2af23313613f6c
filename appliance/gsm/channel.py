"""The AT channel: one open serial port, one command in flight, a timeout on every exchange.

I/O (L1), owning pyserial / pyserial-asyncio-fast; split from `modem.py` at the second reason
to change (style.md §6.9): this module moves bytes and keeps the clock per exchange, `modem.py`
decides what to send (init, SMS, recovery). All parsing is `at.AtParser` (sans-I/O).

A timeout abandons the command in the parser (late lines become URCs or are dropped as stray
finals), aborts an open `> ` prompt with ESC (TS 27.005 §3.5.1), and calls `on_timeout` so the
driver can climb its recovery ladder (modem.md §2.11).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import serial
import serial_asyncio_fast

from appliance.gsm import at
from appliance.gsm.at import Final, Intermediate, Prompt, Urc
from appliance.gsm.errors import ModemError, ModemTimeout, ModemUnavailable
from appliance.gsm.urc import UrcValue

logger = logging.getLogger(__name__)

_SECRET = re.compile(r'(AT\+CPIN=)"?[^"]*"?', re.IGNORECASE)
_PDU = re.compile(r"[0-9A-Fa-f]{24,}")


class _SelectFreeSerial(serial.Serial):  # type: ignore[misc]  # pyserial has no types
    """pyserial's port, read and written without ``select()``. The event loop already says
    when the port is ready (serial_asyncio_fast's add_reader/add_writer), and pyserial's own
    read and write call ``select.select``, which fails on a descriptor of 1024 or more: with
    the open-file limit above 1024 (LimitNOFILE) a port re-opened during a connection flood
    would get one, and every read would then raise, the loop spinning, the modem dead."""

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise serial.PortNotOpenError()
        try:
            data = os.read(self.fd, size)
        except BlockingIOError:
            return b""
        except OSError as err:  # EIO: the device went away
            raise serial.SerialException(f"read failed: {err}") from err
        if not data and size:
            # Ready to read, yet nothing: the other end is gone (as pyserial reports it).
            raise serial.SerialException("device reports readiness to read but returned no "
                                         "data (device disconnected?)")
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not self.is_open:
            raise serial.PortNotOpenError()
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as err:
            raise serial.SerialException(f"write failed: {err}") from err


def redact(line: str) -> str:
    """No PINs and no SMS bodies in logs (style.md §1.3, aiosmtpd's sanitized_log)."""
    line = _SECRET.sub(r'\1"****"', line)
    return f"<pdu {len(line) // 2} octets>" if _PDU.fullmatch(line) else line


@dataclass
class _Exchange:
    prompt: asyncio.Future[None]
    final: asyncio.Future[Final]
    lines: list[str]


class _Port(asyncio.Protocol):
    def __init__(self, channel: AtChannel) -> None:
        self.channel = channel
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.channel._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        self.channel._on_lost(self, exc)


class AtChannel:
    def __init__(
        self, on_urc: Callable[[UrcValue], None], on_timeout: Callable[[], None], *,
        prompt_timeout: float = 5.0, timeout_scale: float = 1.0,
    ) -> None:
        self._on_urc = on_urc
        self._on_timeout = on_timeout
        self.prompt_timeout = prompt_timeout
        self.timeout_scale = timeout_scale
        self.lock = asyncio.Lock()  # one command in flight; hold it for multi-step exchanges
        self._parser = at.AtParser()
        self._transport: asyncio.Transport | None = None
        self._port: _Port | None = None
        self._exchange: _Exchange | None = None

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    @property
    def lost(self) -> asyncio.Event | None:
        """Set when the open port is lost (unplugged, EIO); None while closed."""
        return self._port.lost if self._port is not None else None

    async def open(self, path: str, baudrate: int) -> None:
        """Open `path` exclusively; raises OSError (serial.SerialException is one)."""
        loop = asyncio.get_running_loop()
        port = _Port(self)
        serial_port = _SelectFreeSerial(
            path, baudrate=baudrate,
            exclusive=True,  # flock(LOCK_EX|LOCK_NB): nothing else shares the port (§2.1)
        )
        transport, _ = await serial_asyncio_fast.connection_for_serial(
            loop, lambda: port, serial_port)
        serial_port.reset_input_buffer()  # §2.1: flush input after opening
        self._parser.reset()
        self._transport, self._port = transport, port
        logger.info("- opened %s", path)

    async def close(self) -> None:
        transport, port = self._transport, self._port
        # Ours to close: its loss is no news ("port lost" is for a device that went away).
        self._transport, self._port = None, None
        self._fail_exchange(ModemUnavailable("port closed"))
        if transport is None or port is None:
            return
        if not transport.is_closing():
            transport.abort()  # no flush: a wedged device would block the drain
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await port.lost.wait()

    async def run(self, command: at.Command, *, report: bool = True,
                  scale: bool = True) -> list[str]:
        """One exchange; returns the information lines, raises the mapped error."""
        async with self.lock:
            return await self.run_locked(command, report=report, scale=scale)

    async def run_locked(self, command: at.Command, pdu: str | None = None, *,
                         report: bool = True, scale: bool = True) -> list[str]:
        """As `run`, for a caller already holding `lock`. `pdu` answers the `> ` prompt."""
        transport = self._transport
        if transport is None:
            raise ModemUnavailable("modem port is not open")
        loop = asyncio.get_running_loop()
        ex = _Exchange(loop.create_future(), loop.create_future(), [])
        self._exchange = ex
        self._parser.start(command)
        factor = self.timeout_scale if scale else 1.0
        logger.debug("> %s", redact(command.text))
        written = False  # the PDU was handed to the port: from then on the modem may send it
        try:
            transport.write(bytes(command))
            if command.expects_prompt:
                async with asyncio.timeout(self.prompt_timeout * factor):
                    await ex.prompt
                if not ex.final.done():
                    written = True  # set before the write: a failing write counts as written
                    transport.write((pdu or "").encode("ascii") + at.CTRL_Z)
            async with asyncio.timeout(command.timeout * factor):
                final = await ex.final
        except TimeoutError:
            self._parser.abandon()
            if command.expects_prompt and self._transport is not None:
                self._transport.write(at.ESC)
            logger.warning("x %s timed out", redact(command.text))
            if report:
                self._on_timeout()
            stage = ("" if not command.expects_prompt
                     else " after the PDU" if written else " before the prompt")
            err = ModemTimeout(f"{command.text}: no answer{stage}")
            err.pdu_written = written
            raise err from None
        except ModemUnavailable as err:  # the port was lost or closed mid-exchange
            err.pdu_written = written
            raise
        finally:
            self._exchange = None
        if not final.ok:
            raise final.error(redact(command.text))
        return ex.lines

    def _on_data(self, data: bytes) -> None:
        for event in self._parser.feed(data):
            ex = self._exchange
            if isinstance(event, Urc):
                logger.debug("< %s", redact(event.line))
                self._on_urc(event.value)
            elif ex is None:
                continue
            elif isinstance(event, Intermediate):
                logger.debug("< %s", redact(event.line))
                ex.lines.append(event.line)
            elif isinstance(event, Prompt):
                if not ex.prompt.done():
                    ex.prompt.set_result(None)
            elif isinstance(event, Final) and not ex.final.done():
                logger.debug("< %s", event.result.value)
                ex.final.set_result(event)
                if not ex.prompt.done():
                    ex.prompt.set_result(None)
        if self._parser.overflows:
            logger.warning("x dropped %d over-long line(s)", self._parser.overflows)
            self._parser.overflows = 0

    def _on_lost(self, port: _Port, exc: Exception | None) -> None:
        if port is self._port:
            logger.warning("x port lost: %s", exc)
            self._fail_exchange(ModemUnavailable(f"port lost: {exc}"))

    def _fail_exchange(self, err: ModemError) -> None:
        ex = self._exchange
        if ex is not None:
            for fut in (ex.prompt, ex.final):
                if not fut.done():
                    fut.set_exception(err)
                    fut.exception()  # mark retrieved: the awaiting side may be gone
