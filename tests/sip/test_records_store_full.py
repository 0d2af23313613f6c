"""Calls and MESSAGEs while the database cannot take writes (a full disk): signalling goes
on, and the log gets the store's one line, not a traceback per CDR or SMS row."""

from __future__ import annotations

import logging

import pytest

from appliance.app import Appliance
from tests.api.test_store_unavailable import _fill_up
from tests.sip.test_cdr_audit import call, message, on_store


async def test_calls_and_messages_on_a_full_disk_log_one_line_not_a_traceback_each(
        appliance: Appliance, caplog: pytest.LogCaptureFixture) -> None:
    h, alice, bob = on_store(appliance)
    await _fill_up(appliance)
    # A few rows still fit in the pages there are: enough calls that most of them do not
    # (each moves the clock by 128 s: within the phones' hour of registration).
    for _ in range(20):
        await call(h, alice, bob, 200, talk=3)
        await message(h, alice, "bob", b"hello")
        [(relayed, _)] = h.sender.requests("MESSAGE")
        h.sender.take()
        await h.send(bob, bob.answer(relayed, 200, to_tag="m"))
    assert appliance.store.write_failure() is not None
    assert not [r.getMessage() for r in caplog.records if r.exc_info]
    store_lines = [r.getMessage() for r in caplog.records
                   if r.name == "appliance.store.failures" and r.levelno >= logging.WARNING]
    # The SMS rows fit in their table's pages longer than the CDRs do in theirs: writes
    # that go through between the failing ones are said once a minute too.
    assert [line for line in store_lines if line.startswith("x ")] == [
        "x the database cannot be written: database or disk is full; writes fail (API: 503) "
        "until it can"]
    assert len(store_lines) <= 2
