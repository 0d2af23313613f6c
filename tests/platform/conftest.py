"""Fixtures of the platform tests: gpiozero's mock pins, and the fake modem of the SMS tests
(the panel's signal LED follows it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from tests.sms.conftest import fake  # noqa: F401 - a fixture, shared with the SMS tests


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    """gpiozero's MockFactory as the pin factory for the test, the previous one restored."""
    saved = Device.pin_factory
    Device.pin_factory = factory = MockFactory()
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = saved
