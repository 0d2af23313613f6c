"""Front-panel LEDs and button through gpiozero, behind the small ``Indicators`` Protocol.

What the panel shows
--------------------
============  ==============================================================================
status LED    booting: slow blink · healthy: steady on · fault: fast blink
line LED      on while a SIP gateway/trunk is registered or the modem is on the network
signal LED    off: no modem or no signal · blinking: weak (CSQ < 10, about −93 dBm) · on: good
button        short press: blink the last octet of the IPv4 address on the status LED, one
              group of pulses per digit (``.57`` → 5 pulses, pause, 7 pulses; a 0 is 10
              pulses, as in pulse dialling) · hold 10 s: factory reset
============  ==============================================================================

Threads
-------
gpiozero blinks LEDs on its own threads (harmless: they only toggle pins) and fires button
callbacks on a background thread. Those callbacks are the only crossing into our code and each
hops to the event loop with ``loop.call_soon_threadsafe`` (style.md §5 habit 7); everything
else here runs on the loop.

Machines without GPIO (a laptop, CI, a Pi without a pin backend) get ``NullLeds``:
``open_indicators`` falls back to it when gpiozero raises ``BadPinFactory`` or the chip cannot
be opened. This module owns gpiozero and imports no other appliance module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import ipaddress
import logging
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from appliance.config import GpioConfig

logger = logging.getLogger(__name__)

# +CSQ rssi (3GPP TS 27.007 §8.5): 0..31 means -113 + 2n dBm, 99 unknown. Below 10 (-93 dBm)
# calls and SMS get unreliable; that is the "weak" threshold on the signal LED.
WEAK_CSQ = 10
CSQ_UNKNOWN = 99


@dataclasses.dataclass(frozen=True)
class Timing:
    """Blink and button timings in seconds; tests shrink them to keep fast."""

    slow_blink: float = 0.5  # booting, and a weak signal: 1 Hz
    fast_blink: float = 0.1  # fault: 5 Hz
    pulse_on: float = 0.25  # address report: one pulse
    pulse_off: float = 0.35
    digit_gap: float = 1.5  # address report: pause between digits, and before/after
    hold_time: float = 10.0  # button held this long: factory reset
    bounce_time: float | None = 0.05  # button debounce; None on mock pins


class SystemState(enum.Enum):
    BOOTING = "booting"
    HEALTHY = "healthy"
    FAULT = "fault"


class Indicators(Protocol):
    """What the composition root drives; ``StatusLeds`` and ``NullLeds`` implement it."""

    def set_state(self, state: SystemState) -> None: ...

    def set_line(self, up: bool) -> None: ...

    def set_signal(self, csq: int | None) -> None: ...

    def close(self) -> None: ...


def octet_pulses(address: str | None) -> list[int]:
    """Pulse counts for the last octet of an IPv4 address: ``"10.0.0.57"`` → ``[5, 7]``.

    A zero digit is 10 pulses (no pulses would be invisible). Anything that is not an IPv4
    address gives ``[]``.
    """
    if not address:
        return []
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return []
    return [int(d) or 10 for d in str(ip.packed[-1])]


class NullLeds:
    """``Indicators`` for machines without GPIO: remembers what it was told, drives nothing."""

    def __init__(self) -> None:
        self.state = SystemState.BOOTING
        self.line = False
        self.signal: int | None = None

    def set_state(self, state: SystemState) -> None:
        self.state = state

    def set_line(self, up: bool) -> None:
        self.line = up

    def set_signal(self, csq: int | None) -> None:
        self.signal = csq

    def close(self) -> None:
        pass


class StatusLeds:
    """``Indicators`` on real (or gpiozero mock) pins. Create it on the event loop thread.

    ``address`` returns the IPv4 address to report on a short press (called on the loop);
    ``on_factory_reset`` runs on the loop once the button has been held ``timing.hold_time``.
    ``pin_factory`` is passed to gpiozero (None: its default, or ``Device.pin_factory``).
    """

    def __init__(
        self,
        config: GpioConfig,
        *,
        on_factory_reset: Callable[[], None],
        address: Callable[[], str | None],
        timing: Timing = Timing(),
        pin_factory: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # Imported here so that a machine without gpiozero's backends can still import us.
        from gpiozero import LED, Button

        self._loop = loop or asyncio.get_running_loop()
        self._timing = timing
        self._on_factory_reset = on_factory_reset
        self._address = address
        self._tasks: set[asyncio.Task[None]] = set()
        self._devices: list[Any] = []
        self._reporting = False
        self._held = False
        self._closed = False
        self.state = SystemState.BOOTING
        self.line = False
        self.signal: int | None = None

        try:
            self._status = self._open(LED, config.status_led, pin_factory)
            self._line = self._open(LED, config.line_led, pin_factory)
            self._signal = self._open(LED, config.signal_led, pin_factory)
            self._button: Any = None
            if config.button is not None:
                self._button = Button(
                    config.button,
                    pull_up=True,
                    bounce_time=timing.bounce_time,
                    hold_time=timing.hold_time,
                    pin_factory=pin_factory,
                )
                self._devices.append(self._button)
                self._button.when_pressed = self._threadsafe(self._pressed)
                self._button.when_held = self._threadsafe(self._held_long)
                self._button.when_released = self._threadsafe(self._released)
        except BaseException:
            self._close_devices()
            raise
        self._apply_state()
        self._apply_signal()

    def _open(self, cls: Any, pin: int | None, pin_factory: Any) -> Any:
        if pin is None:
            return None
        device = cls(pin, pin_factory=pin_factory)
        self._devices.append(device)
        return device

    # -- the Indicators protocol ------------------------------------------------------------

    def set_state(self, state: SystemState) -> None:
        if state is not self.state:
            logger.info("- status %s -> %s", self.state.value, state.value)
        self.state = state
        self._apply_state()

    def set_line(self, up: bool) -> None:
        self.line = up
        if self._line is not None and not self._closed:
            self._line.value = up

    def set_signal(self, csq: int | None) -> None:
        """Called again and again with the same value (every status tick): a blink is only
        restarted when the LED's pattern changes, so a weak signal blinks evenly."""
        before = self._signal_pattern(self.signal)
        self.signal = None if csq == CSQ_UNKNOWN else csq
        if self._signal_pattern(self.signal) != before:
            self._apply_signal()

    def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._close_devices()

    # -- the address report -----------------------------------------------------------------

    async def report_address(self) -> None:
        """Blink the last octet of ``address()`` on the status LED, then restore the state."""
        led = self._status
        if led is None or self._reporting:
            return
        pulses = octet_pulses(self._address())
        if not pulses:
            logger.info("- no IPv4 address to report")
            return
        logger.info("- reporting address octet as %s", pulses)
        t = self._timing
        self._reporting = True
        try:
            led.off()
            await asyncio.sleep(t.digit_gap)
            for count in pulses:
                for _ in range(count):
                    led.on()
                    await asyncio.sleep(t.pulse_on)
                    led.off()
                    await asyncio.sleep(t.pulse_off)
                await asyncio.sleep(t.digit_gap)
        finally:
            self._reporting = False
            if not self._closed:
                self._apply_state()

    async def drain(self) -> None:
        """Wait for running reports and callbacks (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- internals --------------------------------------------------------------------------

    def _apply_state(self) -> None:
        led = self._status
        if led is None or self._reporting or self._closed:
            return
        t = self._timing
        if self.state is SystemState.HEALTHY:
            led.on()
        elif self.state is SystemState.BOOTING:
            led.blink(on_time=t.slow_blink, off_time=t.slow_blink)
        else:
            led.blink(on_time=t.fast_blink, off_time=t.fast_blink)

    @staticmethod
    def _signal_pattern(signal: int | None) -> str:
        if not signal:  # None or 0: no signal
            return "off"
        return "blink" if signal < WEAK_CSQ else "on"

    def _apply_signal(self) -> None:
        led = self._signal
        if led is None or self._closed:
            return
        pattern = self._signal_pattern(self.signal)
        if pattern == "off":
            led.off()
        elif pattern == "blink":
            led.blink(on_time=self._timing.slow_blink, off_time=self._timing.slow_blink)
        else:
            led.on()

    def _threadsafe(self, handler: Callable[[], None]) -> Callable[[], None]:
        """Wrap a loop-side handler so gpiozero's thread can fire it."""

        def fire() -> None:
            try:
                self._loop.call_soon_threadsafe(handler)
            except RuntimeError:  # the loop is closed: we are shutting down
                pass

        return fire

    def _pressed(self) -> None:
        self._held = False

    def _held_long(self) -> None:
        if self._closed or self._held:
            return
        self._held = True
        logger.warning("- button held %.0f s: factory reset", self._timing.hold_time)
        try:
            self._on_factory_reset()
        except Exception:
            logger.exception("x factory reset callback failed")

    def _released(self) -> None:
        if self._closed:
            return
        if self._held:  # the end of a long hold, already handled
            self._held = False
            return
        self._spawn(self.report_address())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_devices(self) -> None:
        for device in reversed(self._devices):
            try:
                device.close()
            except Exception:
                logger.exception("x closing %r", device)
        self._devices.clear()
        self._status = self._line = self._signal = self._button = None


def open_indicators(
    config: GpioConfig,
    *,
    on_factory_reset: Callable[[], None],
    address: Callable[[], str | None],
    timing: Timing = Timing(),
    pin_factory: Any = None,
) -> StatusLeds | NullLeds:
    """``StatusLeds`` when GPIO is enabled and usable, else ``NullLeds`` (logged once).

    Call on the event loop thread.
    """
    if not config.enabled or not config.pins():
        return NullLeds()
    try:
        from gpiozero.exc import GPIOZeroError, PinFactoryFallback
    except ImportError:
        logger.warning("x gpio enabled but gpiozero is not installed; LEDs off")
        return NullLeds()
    try:
        # gpiozero warns once per pin backend it cannot load (PinFactoryFallback); keep those
        # out of the journal unless asked for, the outcome is logged below either way.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PinFactoryFallback)
            leds = StatusLeds(
                config,
                on_factory_reset=on_factory_reset,
                address=address,
                timing=timing,
                pin_factory=pin_factory,
            )
        for warning in caught:
            logger.debug("- gpio: %s", warning.message)
        return leds
    except (GPIOZeroError, OSError) as err:
        for warning in caught:
            logger.debug("- gpio: %s", warning.message)
        # BadPinFactory: no lgpio/RPi.GPIO backend or not a Pi; OSError: no /dev/gpiochip*
        # or no permission (the service needs the gpio group and DeviceAllow=char-gpiochip).
        logger.warning("x gpio unavailable, LEDs off: %s", err)
        return NullLeds()
