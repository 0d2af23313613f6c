"""SIGKILL in the middle of a send and of a receive: nothing lost, nothing twice.

The appliance runs as a real process on the fake modem's pty; the fake lives in this process,
so it keeps what the "network" saw across the kill, as a real modem would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from appliance.gsm.pdu import Submit, decode_sms_pdu
from tests.conftest import ADMIN_SID, basic, free_port
from tests.fakes.modem import FakeModem
from tests.fakes.pdus import deliver_pdu
from tests.test_serve import wait_health


class Box:
    """One appliance process on a fixed data dir and port, restartable."""

    def __init__(self, tmp: Path, fake: FakeModem) -> None:
        self.port = free_port()
        self.config = tmp / "config.toml"
        self.config.write_text(
            f'data_dir = "{tmp / "var"}"\n[api]\nlisten = "127.0.0.1:{self.port}"\n'
            f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[modem]\ndevice = "{fake.link}"\nnumber = "+15550001000"\n'
            '[media]\nworkers = 0\n')  # SMS needs no media worker (less load, faster stop)
        self.data = tmp / "var"
        self.log = tmp / "appliance.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:  # so that an early exit says why
            self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve",
                                          "--config", str(self.config)], stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = wait_health(self.port, self.proc, log=self.log)
            modem = health["components"]["modem"]
            if isinstance(modem, dict) and modem["phase"] == "ready":
                return
            time.sleep(0.1)
        raise AssertionError("modem never ready")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # not into the next test
                self.proc.wait()
                raise

    def call(self, method: str, path: str, data: dict[str, str] | None = None) -> object:
        password = (self.data / "admin-password").read_text().strip()
        body = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in (data or {}).items())
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/restcomm/2012-04-24/Accounts/{ADMIN_SID}/{path}",
            data=body.encode() if data is not None else None, method=method,
            headers={"Authorization": basic(ADMIN_SID, password)})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def messages(self) -> list[dict[str, str]]:
        page = self.call("GET", "SMS/Messages.json?PageSize=100")
        return page["messages"]  # type: ignore[index,no-any-return]


def until(predicate: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeModem]:
    modem = FakeModem(link=tmp_path / "usb-Quectel_EC25-if02-port0").start()
    try:
        yield modem
    finally:
        modem.close()


@pytest.fixture
def box(tmp_path: Path, fake: FakeModem) -> Iterator[Box]:
    b = Box(tmp_path, fake)
    try:
        yield b
    finally:
        b.stop()


def texts(fake: FakeModem) -> list[str]:
    out = []
    for pdu in fake.sent:
        submit = decode_sms_pdu(pdu)
        assert isinstance(submit, Submit)
        out.append(submit.user_data.text or "")
    return out


def test_kill_during_send(box: Box, fake: FakeModem) -> None:
    box.start()
    fake.slow_next("CMGS", 2.0)  # the modem has the PDU; its answer is slow
    first = box.call("POST", "SMS/Messages.json",
                     {"From": "me", "To": "+15551230001", "Body": "first"})
    second = box.call("POST", "SMS/Messages.json",
                      {"From": "me", "To": "+15551230002", "Body": "second"})
    until(lambda: len(fake.sent) == 1)
    box.kill()
    box.start()
    until(lambda: len(fake.sent) == 2)
    time.sleep(1.0)  # anything sent twice would show up by now
    assert texts(fake) == ["first", "second"]  # nothing twice, nothing lost
    by_sid = {m["sid"]: m for m in box.messages()}
    assert by_sid[second["sid"]]["status"] == "sent"  # type: ignore[index]
    doubtful = by_sid[first["sid"]]  # type: ignore[index]
    assert doubtful["status"] == "failed"
    assert "may have been delivered" in doubtful["error_message"]


def test_sigterm_during_send_waits_for_the_modems_answer(box: Box, fake: FakeModem) -> None:
    """A clean stop (systemctl stop/restart) while the modem has a part and its +CMGS answer
    is slow (a slow network): the stop waits for the answer, so the message is `sent`, once;
    a message queued behind it is not started by the stopping appliance, but after the
    restart."""
    box.start()
    fake.slow_next("CMGS", 2.0)
    first = box.call("POST", "SMS/Messages.json",
                     {"From": "me", "To": "+15551230001", "Body": "slow network"})
    until(lambda: len(fake.sent) == 1)  # the modem has the PDU; its answer comes in 2 s
    second = box.call("POST", "SMS/Messages.json",
                      {"From": "me", "To": "+15551230002", "Body": "behind it"})
    started = time.monotonic()
    box.stop()  # SIGTERM; exit code 0 checked by the wait below
    assert box.proc is not None and box.proc.returncode == 0
    assert 1.0 < time.monotonic() - started < 10
    assert texts(fake) == ["slow network"]  # nothing new started while stopping
    box.start()
    until(lambda: len(fake.sent) == 2)
    time.sleep(1.0)  # anything sent twice would show up by now
    assert texts(fake) == ["slow network", "behind it"]
    by_sid = {m["sid"]: m for m in box.messages()}
    assert by_sid[first["sid"]]["status"] == "sent", by_sid[first["sid"]]  # type: ignore[index]
    until(lambda: {m["sid"]: m for m in box.messages()}[second["sid"]]["status"]  # type: ignore[index]
          == "sent")


def test_kill_after_store_before_delete(box: Box, fake: FakeModem) -> None:
    box.start()
    fake.slow_next("AT+CMGD", 2.0)
    fake.deliver_sms(deliver_pdu("+15559990000", "keep me once"))
    until(lambda: any(c.startswith("AT+CMGD") for c in fake.commands))
    box.kill()  # stored, but still on the modem
    assert fake.store
    box.start()  # the start-up sweep reads it again
    until(lambda: not fake.store)
    inbound = [m for m in box.messages() if m["direction"] == "inbound"]
    assert [m["body"] for m in inbound] == ["keep me once"]


def test_kill_while_reading(box: Box, fake: FakeModem) -> None:
    box.start()
    fake.slow_next("AT+CMGR", 2.0)
    fake.deliver_sms(deliver_pdu("+15559990001", "read me after the crash"))
    until(lambda: any(c.startswith("AT+CMGR") for c in fake.commands))
    box.kill()  # not stored yet: it must stay on the modem
    assert fake.store
    box.start()
    until(lambda: not fake.store)
    inbound = [m for m in box.messages() if m["direction"] == "inbound"]
    assert [m["body"] for m in inbound] == ["read me after the crash"]


def test_kill_between_parts_resumes_promptly_after_restart(box: Box, fake: FakeModem) -> None:
    box.start()
    fake.fail_next_send(42, after=2)  # congestion on part 3: back in the queue for 5 s
    sms = box.call("POST", "SMS/Messages.json",
                   {"From": "me", "To": "+15551230003", "Body": "z" * 600})  # 4 parts
    until(lambda: sum(c.startswith("AT+CMGS") for c in fake.commands) == 3)
    time.sleep(0.5)  # the requeue is committed
    box.kill()  # stopped between parts 2 and 3
    time.sleep(5.5)  # its back-off is over: due at the restart, before the modem is ready
    box.start()
    until(lambda: len(fake.sent) == 4, within=10)  # not after a 300 s back-off
    parts = [decode_sms_pdu(p) for p in fake.sent]
    concat = [p.user_data.concat for p in parts if isinstance(p, Submit)]
    assert [c.seq for c in concat if c] == [1, 2, 3, 4]
    assert len({c.reference for c in concat if c}) == 1  # continued, same reference
    until(lambda: {m["sid"]: m for m in box.messages()}[sms["sid"]]["status"]  # type: ignore[index]
          == "sent")


class SmsApp:
    """The customer's SMS app on its own threads (the test's thread blocks in time.sleep).

    It answers every message with `<Sms action="/sms-action">Thanks</Sms>`; the first
    action request is held, so the appliance can be killed after the reply was queued and
    before its job was finished."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()
        self.held = False
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in
                        urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
                app.requests.append((self.path, form))
                body = b"<Response/>"
                if self.path == "/sms":
                    body = b'<Response><Sms action="/sms-action">Thanks</Sms></Response>'
                elif not app.held:
                    app.held = True
                    app.release.wait(15)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the appliance was killed while it waited

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies_of(self, path: str) -> list[str]:
        return [form.get("Body", "") for p, form in self.requests if p == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sms_app() -> Iterator[SmsApp]:
    app = SmsApp()
    try:
        yield app
    finally:
        app.close()


def test_kill_after_the_reply_is_queued_runs_the_app_once(
        box: Box, fake: FakeModem, sms_app: SmsApp) -> None:
    # Killed after the app's reply was committed to the queue (its action request is in
    # flight) but before the inbound job was finished: after the restart the job is only
    # finished. Running the app again would send the customer a second reply.
    box.start()
    box.call("POST", "IncomingPhoneNumbers.json",
             {"PhoneNumber": "+15550001000", "SmsUrl": f"{sms_app.url}/sms"})
    fake.deliver_sms(deliver_pdu("+15559990000", "hello"))
    until(lambda: bool(sms_app.bodies_of("/sms-action")) and len(fake.sent) == 1)
    box.kill()
    box.start()
    # A second message, delivered after the first job's turn (jobs go in order): once its
    # reply is out, whatever the restart did with the first job has been done.
    fake.deliver_sms(deliver_pdu("+15559990001", "again"))
    until(lambda: len(fake.sent) >= 2)
    time.sleep(1.0)  # a reply sent twice would show up by now
    assert sms_app.bodies_of("/sms") == ["hello", "again"]
    assert texts(fake) == ["Thanks", "Thanks"]
    replies = [m for m in box.messages() if m["direction"] == "outbound-reply"]
    assert sorted(m["to"] for m in replies) == ["+15559990000", "+15559990001"]
