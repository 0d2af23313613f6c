"""The log's shape as `appliance serve` sets it up: a database fault costs a line, not a
traceback, in every path that reports it (the store logs the fault itself)."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys

from appliance import logsetup

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


def test_out_of_file_descriptors_costs_one_line_a_minute_without_traceback() -> None:
    now = [100.0]
    kept: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = kept.append  # type: ignore[method-assign]
    log = logging.getLogger("asyncio.test-out-of-resources")
    log.propagate = False
    log.addHandler(handler)
    log.addFilter(logsetup.OutOfResourcesInBrief(clock=lambda: now[0]))
    error = OSError(errno.EMFILE, "Too many open files")

    def accept_fails() -> None:  # as BaseEventLoop.default_exception_handler logs it
        log.error(f"socket.accept() out of system resource\nexception: {error!r}\nsocket: <s>",
                  exc_info=(OSError, error, None))

    for _ in range(5):
        accept_fails()
        now[0] += 1
    log.error("Task exception was never retrieved")
    now[0] += 60
    accept_fails()
    messages = [r.getMessage() for r in kept]
    assert messages == [
        "x out of file descriptors: new connections wait ([Errno 24] Too many open files); "
        "see LimitNOFILE in docs/install.md",
        "Task exception was never retrieved",
        "x out of file descriptors: new connections wait ([Errno 24] Too many open files), "
        "4 more since the last line; see LimitNOFILE in docs/install.md"]
    assert kept[0].exc_info is None and kept[2].exc_info is None


ACCEPT_FAILS = """
import asyncio, errno
from appliance import logsetup

logsetup.setup("info")

async def main():
    loop = asyncio.get_running_loop()
    for _ in range(3):
        loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                     "exception": OSError(errno.EMFILE, "Too many open files")})

asyncio.run(main())
"""


def test_serve_logs_asyncio_out_of_resources_once() -> None:
    run = subprocess.run([sys.executable, "-c", ACCEPT_FAILS], capture_output=True, text=True,
                         timeout=30, check=True)
    assert run.stderr.splitlines() == [
        "ERROR asyncio: x out of file descriptors: new connections wait ([Errno 24] Too many "
        "open files); see LimitNOFILE in docs/install.md"]
