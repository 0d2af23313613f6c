"""The log's shape as `appliance serve` sets it up: a database fault costs a line, not a
traceback, in every path that reports it (the store logs the fault itself)."""

from __future__ import annotations

import subprocess
import sys

REPORTER = """
import logging
from appliance import logsetup
from appliance.errors import StoreBusy

logsetup.setup("info")
log = logging.getLogger("appliance.services.messaging")
for sid in ("SM1", "SM2"):
    try:
        try:
            raise StoreBusy("The appliance cannot write its database: database or disk is "
                            "full", cause="database or disk is full")
        except StoreBusy as err:
            raise RuntimeError("delivery failed") from err  # as a caller may wrap it
    except RuntimeError:
        log.exception("x inbound SMS %s: delivery to its app failed", sid)
try:
    raise KeyError("a bug of ours")
except KeyError:
    log.exception("x inbound SMS %s: delivery to its app failed", "SM3")
"""


def test_a_database_fault_is_reported_in_one_line_a_bug_with_its_traceback() -> None:
    run = subprocess.run([sys.executable, "-c", REPORTER], capture_output=True, text=True,
                         timeout=30, check=True)
    lines = run.stderr.splitlines()
    assert lines[:2] == [
        "ERROR appliance.services.messaging: x inbound SMS SM1: delivery to its app failed "
        "(the database: database or disk is full)",
        "ERROR appliance.services.messaging: x inbound SMS SM2: delivery to its app failed "
        "(the database: database or disk is full)"]
    assert lines[2] == ("ERROR appliance.services.messaging: x inbound SMS SM3: delivery to "
                        "its app failed")
    assert lines[3] == "Traceback (most recent call last):"  # a bug keeps its traceback
    assert "KeyError: 'a bug of ours'" in run.stderr
