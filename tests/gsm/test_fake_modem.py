"""The fake modem itself, driven through pyserial on its pty (no driver involved)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from fakes.modem import FakeModem
from fakes.pdus import deliver_pdu


@pytest.fixture
def fake() -> Iterator[FakeModem]:
    with FakeModem() as modem:
        yield modem


def chat(port: serial.Serial, command: str, until: bytes = b"OK\r\n", timeout: float = 2) -> str:
    if command:
        port.write(command.encode() + b"\r")
    data = b""
    deadline = time.monotonic() + timeout
    while until not in data and time.monotonic() < deadline:
        data += port.read(port.in_waiting or 1)
    return data.decode()


def test_echo_until_ate0_and_setup(fake: FakeModem) -> None:
    with serial.Serial(fake.path, timeout=0.05) as port:
        assert chat(port, "AT") == "AT\r\r\nOK\r\n"
        assert chat(port, "ATE0") == "ATE0\r\r\nOK\r\n"
        assert chat(port, "AT+CSQ") == "\r\n+CSQ: 21,99\r\n\r\nOK\r\n"
        assert "+CREG: 2,1" in chat(port, "AT+CREG=2") + chat(port, "AT+CREG?")
        assert chat(port, "AT+BOGUS", until=b"ERROR\r\n") == "\r\nERROR\r\n"


def test_send_prompt_and_error_injection(fake: FakeModem) -> None:
    with serial.Serial(fake.path, timeout=0.05) as port:
        chat(port, "ATE0")
        chat(port, "AT+CMEE=1")
        assert chat(port, "AT+CMGS=17", until=b"> ") == "\r\n> "
        port.write(b"0011000B915155214365F70000AA03502116\x1a")
        assert chat(port, "") == "\r\n+CMGS: 1\r\n\r\nOK\r\n"
        assert fake.sent == ["0011000B915155214365F70000AA03502116"]
        fake.fail_next_send(500)
        chat(port, "AT+CMGS=17", until=b"> ")
        port.write(b"00\x1a")
        assert chat(port, "", until=b"500\r\n") == "\r\n+CMS ERROR: 500\r\n"


def test_store_cmti_read_delete(fake: FakeModem) -> None:
    with serial.Serial(fake.path, timeout=0.05) as port:
        chat(port, "ATE0")
        chat(port, "AT+CNMI=2,1,0,2,0")
        index = fake.deliver_sms(deliver_pdu("+15551234567", "hi"))
        urc = f'+CMTI: "ME",{index}'
        assert chat(port, "", until=urc.encode() + b"\r\n") == f"\r\n{urc}\r\n"
        reply = chat(port, f"AT+CMGR={index}")
        assert f"+CMGR: 0,,{len(deliver_pdu('+15551234567', 'hi')) // 2 - 8}" in reply
        assert "+CMGL: 0,1" in chat(port, "AT+CMGL=4")
        chat(port, f"AT+CMGD={index}")
        assert fake.store == {}


def test_pin_hang_and_reboot(fake: FakeModem) -> None:
    fake.pin = "1234"
    fake.reboot()
    with serial.Serial(fake.path, timeout=0.05) as port:
        chat(port, "ATE0")
        chat(port, "AT+CMEE=1")
        assert "+CPIN: SIM PIN" in chat(port, "AT+CPIN?")
        assert "+CME ERROR: 11" in chat(port, "AT+CSQ", until=b"11\r\n")
        assert "+CME ERROR: 16" in chat(port, 'AT+CPIN="0000"', until=b"16\r\n")
        assert "+CPIN: READY" in chat(port, 'AT+CPIN="1234"', until=b"DONE\r\n")
        assert fake.pin_attempts == ["0000", "1234"]
        fake.hang()
        assert chat(port, "AT", timeout=0.2) == ""
    time.sleep(0.1)  # the fake notices a re-open only if the port stays closed a moment
    with serial.Serial(fake.path, timeout=0.05) as port:  # re-open clears the hang
        assert "OK" in chat(port, "AT")
        fake.reboot()
        assert "RDY" in chat(port, "", until=b"SMS DONE\r\n")
        assert chat(port, "AT") == "AT\r\r\nOK\r\n"  # echo is back on


def test_unplug_replug_moves_the_link(tmp_path: Path) -> None:
    link = tmp_path / "by-id-modem"
    modem = FakeModem(link=link).start()
    try:
        modem.unplug()
        assert not link.exists()
        modem.replug()
        assert link.resolve() == Path(modem.path)  # (the kernel may reuse the pts number)
        with serial.Serial(str(link), timeout=0.05) as port:
            assert "OK" in chat(port, "AT")
    finally:
        modem.close()
