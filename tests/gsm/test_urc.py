"""Typed URC and shared-shape parsers: table tests per modem.md §2.10, §4.3."""

from __future__ import annotations

import pytest

from appliance.gsm.urc import (
    CallEnded,
    CallEntry,
    CallerId,
    FunctionalityChanged,
    IncomingSms,
    MalformedUrc,
    Notice,
    RegDomain,
    Registration,
    RegStatus,
    Ring,
    SimState,
    SimStatus,
    StatusReportDelivered,
    StatusReportStored,
    StorageFull,
    UssdResponse,
    is_registration_response,
    parse_clcc,
    parse_cpin,
    parse_csq,
    parse_registration,
    parse_urc,
)

CS, EPS = RegDomain.CS, RegDomain.EPS


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("+CREG: 1", Registration(CS, RegStatus.HOME)),
        ("+CREG: 0,1", Registration(CS, RegStatus.HOME)),
        ("+CREG:0,5", Registration(CS, RegStatus.ROAMING)),
        ('+CREG: 2,1,"4CA","81DE445"', Registration(CS, RegStatus.HOME, 0x4CA, 0x81DE445)),
        ("+CREG: 2,1,4CA,81DE445", Registration(CS, RegStatus.HOME, 0x4CA, 0x81DE445)),
        ('+CREG: 5,"00A1","0001F2",7', Registration(CS, RegStatus.ROAMING, 0xA1, 0x1F2, 7)),
        ('+CEREG: 2,1,"1A2B","01A2B3C4",7',
         Registration(EPS, RegStatus.HOME, 0x1A2B, 0x1A2B3C4, 7)),
        ("+CREG: 2,,", Registration(CS, None)),
        ('+CREG: 2,1,"","605F"', Registration(CS, RegStatus.HOME, None, 0x605F)),
        ('+CREG: 2,1,"0B,"0100701",7', Registration(CS, RegStatus.HOME, 0x0B, 0x100701, 7)),
        ('+CREG: 2,1,"5E25', Registration(CS, RegStatus.HOME, 0x5E25)),
        ("+CGREG: 2", Registration(RegDomain.GPRS, RegStatus.SEARCHING)),
        ("+CREG: 0,42", Registration(CS, RegStatus.UNKNOWN)),
    ],
)
def test_registration_shapes(line: str, expected: Registration) -> None:
    assert parse_registration(line) == expected


def test_registration_response_vs_urc() -> None:
    assert is_registration_response('+CREG: 2,1,"4CA","81DE445"')
    assert not is_registration_response('+CREG: 1,"4CA","81DE445",7')
    assert not is_registration_response("+CREG: 1")
    assert RegStatus.ROAMING.registered and not RegStatus.DENIED.registered


@pytest.mark.parametrize(
    ("line", "rssi", "dbm"),
    [("+CSQ: 21,99", 21, -71), ("+CSQ: 99,99", None, None), ("+CSQ: 0,0", 0, -113),
     ("+CSQ: 31,0", 31, -51), ('+QIND: "csq",27,99', 27, -59), ("^RSSI:17", 17, -79)],
)
def test_signal(line: str, rssi: int | None, dbm: int | None) -> None:
    q = parse_csq(line)
    assert (q.rssi, q.dbm) == (rssi, dbm)


@pytest.mark.parametrize(
    ("line", "state"),
    [("+CPIN: READY", SimState.READY), ("+CPIN:READY", SimState.READY),
     ("+CPIN: SIM PIN", SimState.SIM_PIN), ("+CPIN: SIM PUK", SimState.SIM_PUK),
     ("+CPIN: NOT INSERTED", SimState.NOT_INSERTED), ("+CPIN: PH-SIM PIN", SimState.PH_SIM_PIN),
     ("+CPIN: BANANA", SimState.UNKNOWN)],
)
def test_cpin(line: str, state: SimState) -> None:
    assert parse_cpin(line) is state


@pytest.mark.parametrize(
    ("line", "entry"),
    [
        ('+CLCC: 1,0,2,0,0,"+15551234567",145',
         CallEntry(1, False, 2, 0, False, "+15551234567", 145)),
        ('+CLCC: 1,1,4,0,0,"",128', CallEntry(1, True, 4, 0, False, "", 128)),
        ("+CLCC: 1,1,4,0,0", CallEntry(1, True, 4, 0, False)),
        ('+CLCC: 2,1,0,0,1,"123",129,"Bob"', CallEntry(2, True, 0, 0, True, "123", 129, "Bob")),
    ],
)
def test_clcc(line: str, entry: CallEntry) -> None:
    assert parse_clcc(line) == entry


def test_clcc_number_without_type_is_malformed() -> None:
    assert isinstance(parse_urc('+CLCC: 1,1,4,0,0,"123"'), MalformedUrc)


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ('+CMTI: "ME",3', IncomingSms("ME", 3)),
        ('+CMTI: "SM",1', IncomingSms("SM", 1)),
        ("+CMTI: 3,5", IncomingSms("3", 5)),
        ("+CMTI: ,-1", IncomingSms(None, -1)),
        ('+CDSI: "SR",2', StatusReportStored("SR", 2)),
        ("RING", Ring()),
        ("+CRING: VOICE", Ring("VOICE")),
        ('+CLIP: "+15551234567",145,,,,0', CallerId("+15551234567", 145, 0)),
        ('+CLIP: "",128,,,,1', CallerId("", 128, 1)),
        ("+CUSD: 5", UssdResponse(5)),
        ('+CUSD: 0,"Your balance is 5,00 EUR",15', UssdResponse(0, "Your balance is 5,00 EUR", 15)),
        ('+CUSD: 2,"Initiating Release",15', UssdResponse(2, "Initiating Release", 15)),
        ('+CUSD: 0,"00420061006C",72', UssdResponse(0, "00420061006C", 72)),
        ("+CFUN: 1", FunctionalityChanged(1)),
        ("NO CARRIER", CallEnded("NO CARRIER")),
        ("VOICE CALL: END: 000017", CallEnded("VOICE CALL: END: 000017")),
        ("^CEND:1,5,29,16", CallEnded("^CEND:1,5,29,16")),
        ('^SMMEMFULL: "SM"', StorageFull("SM")),
        ("^BOOT:20,0,0,0,72", Notice("^BOOT:20,0,0,0,72")),
        ("^MODE:5,4", Notice("^MODE:5,4")),
        ("+QIND: SMS DONE", Notice("+QIND: SMS DONE")),
        ("+QUSIM: 1", Notice("+QUSIM: 1")),
        ("Call Ready", Notice("Call Ready")),
        ("+CPIN: NOT READY", SimStatus(SimState.NOT_READY)),
    ],
)
def test_parse_urc(line: str, value: object) -> None:
    assert parse_urc(line) == value


def test_pdu_urcs() -> None:
    assert parse_urc("+CDS: 25", "0006") == StatusReportDelivered(25, "0006")
    assert isinstance(parse_urc("+CMT: ,24"), MalformedUrc)  # no PDU: malformed, not a crash


@pytest.mark.parametrize("line", ["+CMTI: ", '+CMTI: "SM",x', "+CREG: x", "+CSQ: a,b", "+CUSD: ",
                                  "+CLCC: 1", "+CFUN: x"])
def test_malformed_never_raises(line: str) -> None:
    assert isinstance(parse_urc(line), MalformedUrc)
