"""LEDs and button on gpiozero's MockFactory (ecosystem.md §3)."""

from __future__ import annotations

import asyncio
import threading
from statistics import median
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from appliance.platform.gpio import (
    GpioConfig,
    Indicators,
    NullLeds,
    StatusLeds,
    SystemState,
    Timing,
    octet_pulses,
    open_indicators,
)

CONFIG = GpioConfig(enabled=True, status_led=17, line_led=27, signal_led=22, button=23)
FAST = Timing(
    slow_blink=0.05, fast_blink=0.01, pulse_on=0.01, pulse_off=0.01, digit_gap=0.06,
    hold_time=0.2, bounce_time=None,
)


class Resets:
    def __init__(self) -> None:
        self.count = 0
        self.threads: list[threading.Thread] = []

    def __call__(self) -> None:
        self.count += 1
        self.threads.append(threading.current_thread())


@pytest.fixture
async def leds(pins: MockFactory) -> Any:
    resets = Resets()
    leds = StatusLeds(CONFIG, on_factory_reset=resets, address=lambda: "192.168.1.57",
                      timing=FAST)
    leds.resets = resets  # type: ignore[attr-defined]
    try:
        yield leds
    finally:
        leds.close()


def edges(pin: Any) -> list[tuple[float, bool]]:
    """(seconds since the previous change, new state) for every recorded change."""
    return [(s.timestamp, bool(s.state)) for s in pin.states[1:]]


def rising(pin: Any) -> int:
    return sum(1 for _, state in edges(pin) if state)


async def test_booting_blinks_slowly_then_healthy_is_steady(leds: StatusLeds,
                                                            pins: MockFactory) -> None:
    status = pins.pin(17)
    assert leds.state is SystemState.BOOTING
    await asyncio.sleep(0.35)
    slow = edges(status)
    assert 3 <= len(slow) <= 10, slow  # ~0.05 s per half-period
    assert median(t for t, _ in slow[1:]) > 0.04, slow
    leds.set_state(SystemState.HEALTHY)
    status.clear_states()
    await asyncio.sleep(0.2)
    assert status.state  # on ...
    assert rising(status) <= 1  # ... and steady (at most the one switch-on)


async def test_fault_blinks_fast(leds: StatusLeds, pins: MockFactory) -> None:
    status = pins.pin(17)
    await asyncio.sleep(0.25)
    slow = edges(status)
    leds.set_state(SystemState.FAULT)
    status.clear_states()
    await asyncio.sleep(0.25)
    fast = edges(status)
    assert len(fast) > 2 * len(slow), (fast, slow)
    assert median(t for t, _ in fast[1:]) < median(t for t, _ in slow[1:]) / 2, (fast, slow)


async def test_line_and_signal(leds: StatusLeds, pins: MockFactory) -> None:
    line, signal = pins.pin(27), pins.pin(22)
    assert not line.state and not signal.state
    leds.set_line(True)
    assert line.state
    leds.set_line(False)
    assert not line.state

    leds.set_signal(25)  # good
    assert signal.state
    signal.clear_states()
    await asyncio.sleep(0.1)
    assert edges(signal) == []

    leds.set_signal(5)  # weak: blinking
    await asyncio.sleep(0.3)
    assert rising(signal) >= 2

    for none in (None, 0, 99):
        leds.set_signal(none)
        signal.clear_states()
        await asyncio.sleep(0.12)
        assert not signal.state and edges(signal) == []


def pulse_groups(pin: Any, gap: float) -> list[int]:
    """Count pulses per digit: a low period of `gap` or longer separates digits."""
    groups: list[int] = []
    count = 0
    for since, state in edges(pin):
        if state:  # rising: the low period before it lasted `since`
            if since >= gap * 0.8 and count:
                groups.append(count)
                count = 0
            count += 1
    if count:
        groups.append(count)
    return groups


async def test_report_address_blinks_the_last_octet(leds: StatusLeds,
                                                    pins: MockFactory) -> None:
    status = pins.pin(17)
    leds.set_state(SystemState.HEALTHY)
    status.clear_states()
    await leds.report_address()
    changes = edges(status)
    assert changes[0][1] is False and changes[-1][1] is True  # off first, steady on restored
    status.states = status.states[:-1]  # drop the final restore to steady on
    assert pulse_groups(status, FAST.digit_gap) == [5, 7]


async def test_short_press_reports_the_address(leds: StatusLeds, pins: MockFactory) -> None:
    status, button = pins.pin(17), pins.pin(23)
    leds.set_state(SystemState.HEALTHY)
    status.clear_states()
    button.drive_low()  # pressed (pull-up: active low)
    await asyncio.sleep(0.02)
    button.drive_high()
    await asyncio.sleep(0.05)  # let the callbacks hop to the loop
    await leds.drain()
    status.states = status.states[:-1]  # drop the final restore to steady on
    assert pulse_groups(status, FAST.digit_gap) == [5, 7]
    assert leds.resets.count == 0  # type: ignore[attr-defined]
    assert status.state  # steady on again


async def test_hold_triggers_factory_reset_on_the_loop_thread(leds: StatusLeds,
                                                              pins: MockFactory) -> None:
    status, button = pins.pin(17), pins.pin(23)
    leds.set_state(SystemState.HEALTHY)
    status.clear_states()
    button.drive_low()
    await asyncio.sleep(FAST.hold_time / 2)
    assert leds.resets.count == 0  # type: ignore[attr-defined]
    await asyncio.sleep(FAST.hold_time)  # past hold_time: fired while still held
    assert leds.resets.count == 1  # type: ignore[attr-defined]
    assert leds.resets.threads == [threading.current_thread()]  # type: ignore[attr-defined]
    button.drive_high()
    await asyncio.sleep(0.05)
    await leds.drain()
    assert leds.resets.count == 1  # type: ignore[attr-defined]
    assert rising(status) == 0  # releasing after a hold does not report the address


async def test_a_failing_reset_callback_is_logged_not_raised(pins: MockFactory,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    def broken() -> None:
        raise RuntimeError("disk full")

    leds = StatusLeds(CONFIG, on_factory_reset=broken, address=lambda: None, timing=FAST)
    try:
        pins.pin(23).drive_low()
        await asyncio.sleep(FAST.hold_time * 2)
        assert "factory reset callback failed" in caplog.text
    finally:
        leds.close()


@pytest.mark.parametrize(
    ("address", "pulses"),
    [("192.168.1.57", [5, 7]), ("10.0.0.1", [1]), ("10.0.0.200", [2, 10, 10]),
     ("10.0.0.0", [10]), ("fe80::1", []), ("", []), (None, []), ("nonsense", [])],
)
def test_octet_pulses(address: str | None, pulses: list[int]) -> None:
    assert octet_pulses(address) == pulses


async def test_disabled_gives_null_leds(pins: MockFactory) -> None:
    leds = open_indicators(GpioConfig(), on_factory_reset=lambda: None, address=lambda: None)
    assert isinstance(leds, NullLeds)
    none = GpioConfig(enabled=True, status_led=None, line_led=None, signal_led=None,
                      button=None)
    assert isinstance(
        open_indicators(none, on_factory_reset=lambda: None, address=lambda: None), NullLeds)


async def test_enabled_with_mock_pins_gives_status_leds(pins: MockFactory) -> None:
    leds = open_indicators(CONFIG, on_factory_reset=lambda: None, address=lambda: None,
                           timing=FAST)
    try:
        assert isinstance(leds, StatusLeds)
    finally:
        leds.close()


async def test_no_pin_backend_falls_back_to_null_leds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Off a Pi, with no factory set, gpiozero raises BadPinFactory (ecosystem.md §3).
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    saved = Device.pin_factory
    Device.pin_factory = None
    try:
        leds = open_indicators(CONFIG, on_factory_reset=lambda: None, address=lambda: None)
    finally:
        if Device.pin_factory is not None:
            Device.pin_factory.close()
        Device.pin_factory = saved
    assert isinstance(leds, NullLeds)


async def test_a_pin_in_use_fails_cleanly(pins: MockFactory) -> None:
    clash = GpioConfig(enabled=True, status_led=17, line_led=17, signal_led=None, button=None)
    leds = open_indicators(clash, on_factory_reset=lambda: None, address=lambda: None)
    assert isinstance(leds, NullLeds)
    # The half-built StatusLeds released pin 17: it can be claimed again.
    ok = open_indicators(CONFIG, on_factory_reset=lambda: None, address=lambda: None)
    assert isinstance(ok, StatusLeds)
    ok.close()


def test_both_implement_the_protocol() -> None:
    def takes(indicators: Indicators) -> None:
        indicators.set_state(SystemState.FAULT)
        indicators.set_line(True)
        indicators.set_signal(20)
        indicators.close()

    null = NullLeds()
    takes(null)
    assert (null.state, null.line, null.signal) == (SystemState.FAULT, True, 20)
