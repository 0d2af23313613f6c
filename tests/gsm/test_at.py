"""AtParser framing and classification, result codes, builders and response parsers."""

from __future__ import annotations

import pytest

from appliance.gsm import at
from appliance.gsm.at import AtParser, Final, Intermediate, Prompt, Result, Urc
from appliance.gsm.errors import CmeError, CmsError, CommandError
from appliance.gsm.urc import (
    IncomingSms,
    ModemReady,
    Notice,
    RegDomain,
    Registration,
    RegStatus,
    SignalQuality,
    SimState,
    SimStatus,
    SmsDelivered,
    UnknownUrc,
    UssdResponse,
)


def feed(parser: AtParser, data: bytes) -> list[at.Event]:
    return parser.feed(data)


def test_urc_without_command() -> None:
    assert AtParser().feed(b'+CMTI: "SM",3\r\n') == [
        Urc(IncomingSms("SM", 3), '+CMTI: "SM",3')
    ]


def test_response_with_expected_prefix_and_ok() -> None:
    p = AtParser()
    p.start(at.SIGNAL)
    events = p.feed(b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n")
    assert events == [Intermediate("+CSQ: 21,99"), Final(Result.OK, "OK")]
    assert p.pending is None


def test_line_split_across_reads_and_double_cr() -> None:
    p = AtParser()
    p.start(at.SIGNAL)
    events = []
    for chunk in (b"\r\r\n+CS", b"Q: 2", b"1,99\r", b"\r\nO", b"K\r", b"\n"):
        events += p.feed(chunk)
    assert events == [Intermediate("+CSQ: 21,99"), Final(Result.OK, "OK")]


def test_echo_dropped_before_ate0() -> None:
    p = AtParser()
    p.start(at.ECHO_OFF)
    assert p.feed(b"ATE0\r\r\nOK\r\n") == [Final(Result.OK, "OK")]


def test_registration_urc_inside_registration_query() -> None:
    p = AtParser()
    p.start(at.query_registration("+CREG:"))
    events = p.feed(b'\r\n+CREG: 1,"4CA","81DE445"\r\n+CREG: 2,1,"4CA","81DE445"\r\n\r\nOK\r\n')
    assert events[0] == Urc(Registration(RegDomain.CS, RegStatus.HOME, 0x4CA, 0x81DE445),
                            '+CREG: 1,"4CA","81DE445"')
    assert events[1] == Intermediate('+CREG: 2,1,"4CA","81DE445"')
    assert events[2].__class__ is Final


def test_urc_interleaved_with_response() -> None:
    p = AtParser()
    p.start(at.read_sms(3))
    events = p.feed(b'\r\n+CMTI: "ME",4\r\n+CMGR: 0,,24\r\n0791\r\n+CMTI: "ME",5\r\n\r\nOK\r\n')
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Urc", "Intermediate", "Intermediate", "Urc", "Final"]


def test_prompt_without_newline_only_when_expected() -> None:
    p = AtParser()
    assert p.feed(b"\r\n> ") == []  # nobody asked for a prompt: wait for a line end
    p = AtParser()
    p.start(at.send_pdu(17))
    assert p.feed(b'\r\n+ZPASR: "UMTS"\r\n> ') == [Urc(Notice('+ZPASR: "UMTS"'), '+ZPASR: "UMTS"'),
                                                    Prompt()]
    assert p.pending is not None
    events = p.feed(b"\r\n+CMGS: 42\r\n\r\nOK\r\n")
    assert events == [Intermediate("+CMGS: 42"), Final(Result.OK, "OK")]


def test_prompt_split_from_its_space() -> None:
    p = AtParser()
    p.start(at.send_pdu(17))
    assert p.feed(b"\r\n>") == [Prompt()]
    assert p.feed(b" \r\n+CMGS: 1\r\nOK\r\n") == [Intermediate("+CMGS: 1"), Final(Result.OK, "OK")]


@pytest.mark.parametrize(
    ("line", "exc", "code"),
    [
        (b"+CME ERROR: 11", CmeError, 11),
        (b"+CME ERROR:16", CmeError, 16),
        (b"+CME ERROR: SIM PIN required", CmeError, 11),
        (b"+CME ERROR: weird thing", CmeError, None),
        (b"+CMS ERROR: 500", CmsError, 500),
        (b"+CMS ERROR: 330", CmsError, 330),
        (b"+CMS ERROR: 304", CmsError, 304),
    ],
)
def test_error_codes(line: bytes, exc: type[Exception], code: int | None) -> None:
    p = AtParser()
    p.start(at.PIN_STATUS)
    [final] = p.feed(line + b"\r\n")
    assert isinstance(final, Final) and not final.ok
    err = final.error("AT+CPIN?")
    assert isinstance(err, exc)
    assert err.code == code  # type: ignore[attr-defined]


def test_error_names() -> None:
    assert CmeError(10).text == "SIM not inserted"
    assert CmeError(16).text == "incorrect password"
    assert CmsError(500).text == "unknown error"
    assert CmsError(331).text == "no network service"
    assert CmsError(999).text == "CMS error 999"


def test_plain_error_and_vendor_final() -> None:
    p = AtParser()
    p.start(at.Command("AT+WIND?"))
    [final] = p.feed(b"COMMAND NOT SUPPORT\r\n")
    assert isinstance(final, Final) and final.result is Result.COMMAND_NOT_SUPPORT
    assert isinstance(final.error(), CommandError)


def test_call_results_only_final_for_call_commands() -> None:
    p = AtParser()
    p.start(at.SIGNAL)
    events = p.feed(b"NO CARRIER\r\n+CSQ: 5,0\r\nOK\r\n")
    assert isinstance(events[0], Urc)
    p.start(at.Command("ATD+15551234567;", call=True))
    assert p.feed(b"BUSY\r\n") == [Final(Result.BUSY, "BUSY")]


def test_info_text_without_prefix_is_intermediate() -> None:
    p = AtParser()
    p.start(at.MODEL)
    assert p.feed(b"\r\n MULTIBAND  900E  1800 \r\n\r\nOK\r\n")[0] == Intermediate(
        "MULTIBAND  900E  1800")


def test_unsolicited_boot_lines() -> None:
    events = AtParser().feed(b"\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n\r\nSMS DONE\r\n")
    values = [e.value for e in events if isinstance(e, Urc)]
    assert values[0] == ModemReady()
    assert values[2] == SimStatus(SimState.READY)
    assert values[3] == Notice("SMS DONE")


@pytest.mark.parametrize("line", [b"^BOOT:20,0,0,0,72", b"^MODE:5,4", b"^DSFLOWRPT:00000A,1,2",
                                  b"^RSSI:17"])
def test_huawei_caret_urcs_while_command_pending(line: bytes) -> None:
    p = AtParser()
    p.start(at.SMSC)
    events = p.feed(line + b"\r\n+CSCA: \"+15550000001\",145\r\nOK\r\n")
    assert isinstance(events[0], Urc)
    assert isinstance(events[1], Intermediate)


def test_huawei_rssi_is_signal() -> None:
    [event] = AtParser().feed(b"^RSSI: 17\r\n")
    assert isinstance(event, Urc) and event.value == SignalQuality(17)


def test_cmt_owns_next_line() -> None:
    p = AtParser()
    assert p.feed(b"+CMT: ,24\r\n") == []
    pdu = b"07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"
    [event] = p.feed(pdu + b"\r\n")
    assert isinstance(event, Urc) and isinstance(event.value, SmsDelivered)
    assert event.value.length == 24


def test_cusd_with_newlines_inside_quotes() -> None:
    p = AtParser()
    p.start(at.ussd("*100#"))
    events = p.feed(b'\r\nOK\r\n\r\n+CUSD: 1,"Balance: 5.00\r\n1. Top up\r\n2. Exit",15\r\n')
    assert events[0] == Final(Result.OK, "OK")
    assert isinstance(events[1], Urc)
    assert events[1].value == UssdResponse(1, "Balance: 5.00\n1. Top up\n2. Exit", 15)


def test_unknown_line_without_command() -> None:
    assert AtParser().feed(b"HELLO\r\n") == [Urc(UnknownUrc("HELLO"), "HELLO")]


def test_late_final_without_command_dropped() -> None:
    assert AtParser().feed(b"OK\r\n") == []


def test_overlong_line_is_bounded() -> None:
    p = AtParser(max_line=32)
    events = p.feed(b"X" * 100 + b"\r\n" + b'+CMTI: "SM",1\r\n')
    assert p.overflows == 1
    assert events == [Urc(IncomingSms("SM", 1), '+CMTI: "SM",1')]
    assert len(p._buf) == 0


def test_builders() -> None:
    assert bytes(at.send_pdu(17)) == b"AT+CMGS=17\r"
    assert at.enter_pin("1234").text == 'AT+CPIN="1234"'
    with pytest.raises(ValueError):
        at.enter_pin('12"; AT+CFUN=0')
    assert at.set_storage("ME").text == 'AT+CPMS="ME","ME","ME"'
    assert at.query_registration("+CEREG:") == at.Command("AT+CEREG?", "+CEREG:")
    assert at.raw("AT+CSQ").prefix == "+CSQ:"
    with pytest.raises(ValueError):
        at.raw("AT\rAT+CFUN=0")


def test_response_parsers() -> None:
    assert at.parse_cmgs("+CMGS: 183") == 183
    assert at.parse_cmgr(["+CMGR: 0,,24", "0791AB"], 3) == at.StoredSms(3, 0, 24, "0791AB")
    assert at.parse_cmgr(["+CMGR: ,,27", "00"], 1) == at.StoredSms(1, None, 27, "00")  # ZTE
    assert at.parse_cmgr([], 1) is None
    assert at.parse_cmgl(["+CMGL: 1,0,,24", "AA", "+CMGL: 4,1,,5", "BB"]) == [
        at.StoredSms(1, 0, 24, "AA"), at.StoredSms(4, 1, 5, "BB")]
    assert at.parse_cops('+COPS: 0,0,"Vodafone UK",7') == at.OperatorInfo(0, "Vodafone UK", 7)
    assert at.parse_cops("+COPS: 0") == at.OperatorInfo(0)
    assert at.parse_cfun("+CFUN: 1") == 1
    assert at.parse_cfun("+CFUN: (0-1,4-7),(0-1)") == -1
    assert at.parse_csca('+CSCA: "+15550000001",145') == "+15550000001"
    assert at.parse_csca('+CSCA: "",129') is None
