"""SMS received while the database cannot take writes (another process holds its lock): each
stays on the modem, said in one line, with no traceback per message."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from appliance.app import Appliance
from tests.api.test_store_unavailable import _pragma
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import deliver_pdu
from tests.sms.conftest import until


async def test_sms_received_while_the_database_is_locked_stay_on_the_modem(
        gsm_appliance: Appliance, fake: FakeModem, caplog: pytest.LogCaptureFixture) -> None:
    await _pragma(gsm_appliance, "busy_timeout = 100")  # the store's 5 s, shorter
    other = sqlite3.connect(gsm_appliance.config.data_dir / "appliance.db",
                            isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # e.g. an admin's sqlite3 shell in a write
        for n in range(3):
            fake.deliver_sms(deliver_pdu(f"+1555999000{n}", f"hello {n}"))

        def kept() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.getMessage().endswith("not stored, it stays on the modem: The "
                                               "appliance cannot write its database: "
                                               "database is locked")]
        await until(lambda: len(kept()) == 3)
        assert len(fake.store) == 3
        assert not [r.getMessage() for r in caplog.records if r.exc_info]
        assert [r.getMessage() for r in caplog.records
                if r.name == "appliance.store.failures" and r.levelno >= logging.WARNING] == [
            "x the database cannot be written: database is locked; writes fail (API: 503) "
            "until it can"]
    finally:
        other.close()
