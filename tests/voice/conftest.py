"""The ``voice`` fixture (a real appliance with a media worker) for every module here."""

import contextlib

import pytest

with contextlib.suppress(pytest.skip.Exception):  # no pjsua2: those modules skip themselves
    from tests.voice.test_voice_apps import voice  # noqa: F401 - a fixture, found by name
