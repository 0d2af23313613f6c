"""The line and signal LEDs follow the trunk and the modem: the status loop of ``serve``
(``appliance.app._report``) drives gpiozero MockFactory pins from a real appliance, with a
gateway registered to a provider played by a UDP socket on loopback, and a fake modem."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from appliance import app as app_module
from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, ModemConfig, SipConfig
from appliance.platform.gpio import GpioConfig, StatusLeds, SystemState, Timing
from tests.conftest import Api, free_port
from tests.fakes.modem import FakeModem
from tests.sip.test_trunk import GW, state_of
from tests.sip.test_trunk_keepalive import Provider

STATUS, LINE, SIGNAL = 17, 27, 22
CONFIG = GpioConfig(enabled=True, status_led=STATUS, line_led=LINE, signal_led=SIGNAL,
                    button=None)
FAST = Timing(slow_blink=0.05, fast_blink=0.01, bounce_time=None)


@contextlib.asynccontextmanager
async def reporting(appliance: Appliance, monkeypatch: pytest.MonkeyPatch
                    ) -> AsyncIterator[StatusLeds]:
    """serve's status loop, on mock pins, ticking every 50 ms."""
    monkeypatch.setattr(app_module, "PANEL_INTERVAL", 0.05)
    leds = StatusLeds(CONFIG, on_factory_reset=lambda: None, address=lambda: None,
                      timing=FAST)
    task = asyncio.create_task(app_module._report(appliance, leds))
    try:
        yield leds
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        leds.close()


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)


def rising(pin: Any) -> int:
    return sum(1 for s in pin.states[1:] if s.state)


async def test_line_led_follows_a_registered_gateway(api: Api, appliance: Appliance,
                                                     pins: MockFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    line, signal = pins.pin(LINE), pins.pin(SIGNAL)
    provider = Provider(clock=appliance.timer_clock)
    try:
        async with reporting(appliance, monkeypatch):
            await asyncio.sleep(0.2)
            assert not line.state  # no gateway yet

            # A Register=false gateway never lights the line.
            status, body, _ = await api.post(f"{GW}.json", {
                "FriendlyName": "static", "UserName": "office", "Password": "Trunk-pass-1",
                "Proxy": "127.0.0.1:9", "Register": "false", "TTL": "600"})
            assert status == 200, body
            await asyncio.sleep(0.2)
            assert not line.state

            status, body, _ = await api.post(f"{GW}.json", {
                "FriendlyName": "provider", "UserName": "office", "Password": "Trunk-pass-1",
                "Proxy": f"127.0.0.1:{provider.port}", "Register": "true", "TTL": "600"})
            assert status == 200, body
            sid = json.loads(body)["sid"]
            await state_of(api, sid, {"registered"})
            await until(lambda: bool(line.state))
            assert not signal.state  # no modem: the signal LED stays off

            status, _, _ = await api.request("DELETE", f"{GW}/{sid}")
            assert status == 200
            await until(lambda: not line.state)
    finally:
        provider.close()


async def test_line_and_signal_leds_follow_the_modem(tmp_path: Path, fake: FakeModem,
                                                     pins: MockFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                  domain="pbx.example.com"),
                    media=MediaConfig(workers=0), modem=ModemConfig(device=str(fake.link)))
    appliance = Appliance(config)
    await appliance.start()
    try:
        await appliance.wait_modem(10)
        line, signal = pins.pin(LINE), pins.pin(SIGNAL)
        async with reporting(appliance, monkeypatch):
            # The fake modem is registered home with +CSQ: 21 (good): both steady on.
            await until(lambda: bool(line.state) and bool(signal.state))
            signal.clear_states()
            await asyncio.sleep(0.3)
            assert rising(signal) == 0  # steady, not restarted at every tick

            fake.unplug()  # the modem is gone: off the network, signal unknown
            await until(lambda: not line.state and not signal.state)
    finally:
        await appliance.stop()


async def test_a_fault_in_the_panel_does_not_end_the_status_loop(
        appliance: Appliance, pins: MockFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # The loop shares serve's TaskGroup: an exception out of it would stop the appliance.
    calls = 0
    panel = appliance.panel

    def flaky() -> tuple[bool, int | None]:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("a fault in the panel")
        return panel()

    monkeypatch.setattr(appliance, "panel", flaky)
    async with reporting(appliance, monkeypatch):
        await until(lambda: calls > 5)
    assert [r.getMessage() for r in caplog.records if "status and LEDs" in r.getMessage()] == [
        "x status and LEDs"]  # logged once, not at every tick


async def test_a_health_check_that_raises_shows_a_fault(
        appliance: Appliance, pins: MockFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # A store that fails in a way health() does not expect: the panel must not stay green.
    async def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(appliance, "health", broken)
    async with reporting(appliance, monkeypatch) as leds:
        await until(lambda: leds.state is SystemState.FAULT)
