"""PDU codec: hand-built vectors (TS 23.040/23.038), splitting, round trips and a fuzz test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fakes.pdus import deliver_pdu, status_report_pdu
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.gsm.alphabet import (
    GSM7_BASIC,
    MAX_PARTS,
    Encoding,
    gsm7_decode,
    gsm7_encode,
    pack_septets,
    split_text,
    unpack_septets,
)
from appliance.gsm.errors import PduError
from appliance.gsm.pdu import (
    Concat,
    Deliver,
    DeliveryOutcome,
    StatusReport,
    Submit,
    decode_relative_validity,
    decode_scts,
    decode_sms_deliver,
    decode_sms_pdu,
    decode_status_report,
    encode_address,
    encode_relative_validity,
    encode_sms,
    encode_sms_submit,
)

UTC1 = timezone(timedelta(hours=1))


# ---- alphabet and packing -------------------------------------------------------------------


def test_alphabet_traps() -> None:
    assert len(GSM7_BASIC) == 128
    assert gsm7_decode([0x5F, 0x24, 0x02, 0x60]) == "§¤$¿"
    assert gsm7_encode("^{}\\[~]|€") == [0x1B, 0x14, 0x1B, 0x28, 0x1B, 0x29, 0x1B, 0x2F, 0x1B,
                                        0x3C, 0x1B, 0x3D, 0x1B, 0x3E, 0x1B, 0x40, 0x1B, 0x65]
    assert gsm7_decode([0x1B, 0x41]) == "A"  # unknown escape → the basic character
    with pytest.raises(PduError):
        gsm7_encode("š")


def test_hellohello_packing() -> None:
    # The classic TS 23.038 §6.1.2.1 illustration: 10 septets → 9 octets.
    septets = gsm7_encode("hellohello")
    assert pack_septets(septets).hex().upper() == "E8329BFD4697D9EC37"
    assert gsm7_decode(unpack_septets(bytes.fromhex("E8329BFD4697D9EC37"), 10)) == "hellohello"


def test_pbx_packing_and_cr_padding_position() -> None:
    assert pack_septets(gsm7_encode("PBX")).hex().upper() == "502116"
    assert pack_septets(gsm7_encode("ABCDEFG")).hex().upper() == "41E19058341E01"


def test_fill_bit_after_8bit_concat_udh() -> None:
    assert pack_septets(gsm7_encode("Hi"), fill_bits=1).hex().upper() == "9069"


# ---- fields -------------------------------------------------------------------------------


def test_address_encoding() -> None:
    assert encode_address("+15551234567").hex().upper() == "0B915155214365F7"
    assert encode_address("0123").hex().upper() == "04811032"
    with pytest.raises(PduError):
        encode_address("+1-555")


@pytest.mark.parametrize(
    ("octets", "expected"),
    [
        ("42303090507040", datetime(2024, 3, 3, 9, 5, 7, tzinfo=UTC1)),
        ("4230309050700A", datetime(2024, 3, 3, 9, 5, 7, tzinfo=timezone(timedelta(hours=-5)))),
        ("42303090507022",
         datetime(2024, 3, 3, 9, 5, 7, tzinfo=timezone(timedelta(hours=5, minutes=30)))),
        ("89101010101000", datetime(1998, 1, 1, 1, 1, 1, tzinfo=UTC)),
    ],
)
def test_scts(octets: str, expected: datetime) -> None:
    assert decode_scts(bytes.fromhex(octets)) == expected


@pytest.mark.parametrize("octets", ["42313090507040", "4A303090507040", "423030905070F0"])
def test_bad_scts(octets: str) -> None:
    with pytest.raises(PduError):
        decode_scts(bytes.fromhex(octets))


@pytest.mark.parametrize(
    ("vp", "period"),
    [(0x00, timedelta(minutes=5)), (0xA7, timedelta(hours=24)), (0xA9, timedelta(days=3)),
     (0xAA, timedelta(days=4)), (0xF4, timedelta(weeks=52)), (0xFF, timedelta(weeks=63))],
)
def test_relative_validity(vp: int, period: timedelta) -> None:
    assert decode_relative_validity(vp) == period
    assert encode_relative_validity(period) == vp


# ---- SUBMIT -------------------------------------------------------------------------------


def test_worked_submit_example() -> None:
    # modem.md §3.7: "PBX" to +15551234567, validity 4 days, default SMSC.
    [part] = encode_sms("+15551234567", "PBX", validity=timedelta(days=4))
    assert part.hex == "0011000B915155214365F70000AA03502116"
    assert part.tpdu_length == 17


def test_submit_with_status_report_and_smsc() -> None:
    part = encode_sms_submit("+15551234567", "PBX", status_report=True, smsc="+15550000001")
    assert part.hex == "07915155000000F1" + "2100" + "0B915155214365F7" + "0000" + "03502116"
    assert part.tpdu_length == 16


def test_submit_concat_gsm7_hi() -> None:
    part = encode_sms_submit("+15551234567", "Hi", concat=Concat(0x42, 2, 1))
    # FO 0x41 (UDHI), UDL 9 = 7 header septets + 2; UD = 050003420201 + 9069
    assert part.hex == "0041000B915155214365F70000" + "09" + "050003420201" + "9069"


def test_submit_ucs2_emoji() -> None:
    part = encode_sms_submit("+15551234567", "Hi 😀")
    assert part.hex.endswith("0008" + "0A" + "004800690020D83DDE00")


# ---- DELIVER / STATUS-REPORT ----------------------------------------------------------------


def test_deliver_built_field_by_field() -> None:
    pdu = ("07915155000000F1"  # SCA +15550000001
           "04"  # FO: SMS-DELIVER, TP-MMS=1
           "0B915155214365F7"  # OA +15551234567
           "00" "00"  # PID, DCS GSM-7
           "42303090507040"  # SCTS 2024-03-03 09:05:07 +01:00
           "0A" "E8329BFD4697D9EC37")  # UDL 10, "hellohello"
    d = decode_sms_deliver(pdu)
    assert d.smsc == "+15550000001"
    assert d.sender == "+15551234567" and d.sender_toa == 0x91
    assert d.timestamp == datetime(2024, 3, 3, 9, 5, 7, tzinfo=UTC1)
    assert d.text == "hellohello" and d.concat is None and not d.more_messages
    assert deliver_pdu("+15551234567", "hellohello") == pdu


@pytest.mark.parametrize(
    ("address", "name"),
    [("06D0502116", "PBX"), ("0DD041E19058341E01", "ABCDEFG"), ("0BD0C7F7FBCC2E03", "Google")],
)
def test_alphanumeric_sender(address: str, name: str) -> None:
    d = decode_sms_deliver("00" "04" + address + "0000" "42303090507040" "05C8329BFD06")
    assert d.sender == name  # 13 semi-octets → 7 characters, no trailing "@"
    assert d.text == "Hello"


def test_deliver_ucs2_and_16bit_concat() -> None:
    pdu = deliver_pdu("+15551234567", "😀 ok", ucs2=True, concat=Concat(0x1234, 3, 2, True))
    d = decode_sms_deliver(pdu)
    assert d.text == "😀 ok"
    assert d.concat == Concat(0x1234, 3, 2, ref16=True)


def test_deliver_gsm7_16bit_concat_keeps_first_character() -> None:
    # 7-octet UDH needs 0 fill bits; python-gsmmodem-new dropped the first character here.
    d = decode_sms_deliver(deliver_pdu("123", "Abc", concat=Concat(0xBEEF, 2, 1, True)))
    assert d.text == "Abc" and d.sender == "123"


def test_deliver_8bit_wap_push_two_ies() -> None:
    # DCS 0xF5 with a port IE (05) and a concat IE (00): bytes, never text.
    udh = "0B" "05040B8423F0" "00030A0201"
    d = decode_sms_deliver("00" "44" "0B915155214365F7" "00" "F5" "42303090507040"
                           "10" + udh + "DEADBEEF")
    assert d.text is None and d.user_data.data == bytes.fromhex("DEADBEEF")
    assert d.concat == Concat(0x0A, 2, 1)
    assert [iei for iei, _ in d.user_data.headers] == [0x05, 0x00]


def test_status_report() -> None:
    pdu = status_report_pdu(0x2A, "+15551234567", 0x00)
    assert pdu == ("00" "06" "2A" "0B915155214365F7" "42303090507040" "42303090502140" "00")
    sr = decode_status_report(pdu)
    assert (sr.mr, sr.recipient, sr.outcome) == (42, "+15551234567", DeliveryOutcome.DELIVERED)
    assert decode_status_report(pdu[2:]).mr == 42  # no SCA at all (ZTE +CDS)


@pytest.mark.parametrize(("st", "outcome"), [(0x00, DeliveryOutcome.DELIVERED),
                                             (0x01, DeliveryOutcome.DELIVERED),
                                             (0x21, DeliveryOutcome.PENDING),
                                             (0x30, DeliveryOutcome.PENDING),
                                             (0x41, DeliveryOutcome.FAILED),
                                             (0x62, DeliveryOutcome.FAILED)])
def test_status_outcome_by_range(st: int, outcome: DeliveryOutcome) -> None:
    assert decode_status_report(status_report_pdu(1, "+1555", st)).outcome is outcome


@pytest.mark.parametrize(
    "pdu",
    ["", "zz", "00", "0004", "00040B91515521", "000400000042303090507040",  # truncated
     "00040B915155214365F7000042303090507040" "0A" "E832",  # UDL exceeds data
     "00440B915155214365F7000042303090507040" "0A" "0900030A02",  # IE overruns UDH
     "00070B915155214365F7"],  # MTI 3
)
def test_malformed_raise_pdu_error(pdu: str) -> None:
    with pytest.raises(PduError):
        decode_sms_pdu(pdu)


# ---- splitting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "sizes"),
    [
        ("a" * 160, Encoding.GSM7, [160]),
        ("a" * 161, Encoding.GSM7, [153, 8]),
        ("€" * 80, Encoding.GSM7, [80]),
        ("€" * 153, Encoding.GSM7, [76, 76, 1]),
        ("ж" * 70, Encoding.UCS2, [70]),
        ("ж" * 71, Encoding.UCS2, [67, 4]),
        ("ж" * 201, Encoding.UCS2, [67, 67, 67]),
        ("ж" * 202, Encoding.UCS2, [67, 67, 67, 1]),
    ],
)
def test_split_examples(text: str, encoding: Encoding, sizes: list[int]) -> None:
    enc, parts = split_text(text)
    assert enc is encoding and [len(p) for p in parts] == sizes


def test_split_never_breaks_escape_or_surrogate_pairs() -> None:
    _, parts = split_text("a" * 152 + "€" + "b" * 10)
    assert parts == ["a" * 152, "€" + "b" * 10]  # the € (2 septets) does not fit in 153
    _, parts = split_text("ж" * 66 + "😀" + "x" * 5)
    assert parts == ["ж" * 66, "😀xxxxx"]  # the pair (2 units) does not fit in 67


def test_split_maximum_parts() -> None:
    assert len(split_text("a" * 153 * MAX_PARTS)[1]) == MAX_PARTS
    with pytest.raises(PduError):
        split_text("a" * (153 * MAX_PARTS + 1))


# ---- round trips and fuzzing ----------------------------------------------------------------


def _as_delivered(submit_hex: str) -> str:
    """Re-wrap a SUBMIT's DCS/UDL/UD in a DELIVER header, as the recipient would see it."""
    raw = bytes.fromhex(submit_hex)
    pos = 1 + raw[0]  # SCA
    fo = raw[pos]
    da_len = raw[pos + 2]
    pos += 2 + 2 + (da_len + 1) // 2  # FO, MR, DA
    dcs = raw[pos + 1]
    pos += 2 + (1 if fo & 0x18 == 0x10 else 0)  # PID, DCS, VP
    ud = raw[pos:]
    deliver = bytes([0x04 | (fo & 0x40)]) + encode_address("+15551234567") + bytes([0, dcs])
    return "00" + (deliver + bytes.fromhex("42303090507040") + ud).hex()


@pytest.mark.parametrize("text", ["hello", "x" * 400, "€[]{}" * 40, "emoji 😀" * 30, "ж" * 150])
def test_round_trip(text: str) -> None:
    parts = encode_sms("+15551234567", text, reference=7, validity=timedelta(days=1))
    decoded = [decode_sms_deliver(_as_delivered(p.hex)) for p in parts]
    assert "".join(d.text or "" for d in decoded) == text
    submits = [decode_sms_pdu(p.hex) for p in parts]
    assert all(isinstance(s, Submit) and s.destination == "+15551234567" for s in submits)
    if len(parts) > 1:
        assert [d.concat for d in decoded] == [Concat(7, len(parts), i + 1)
                                               for i in range(len(parts))]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(GSM7_BASIC.replace("\x1b", "")) + list("€^{}😀ж")),
               max_size=400))
def test_round_trip_property(text: str) -> None:
    parts = encode_sms("+1555", text, reference=1)
    assert "".join(decode_sms_deliver(_as_delivered(p.hex)).text or "" for p in parts) == text


_HEADER = "00040B915155214365F7"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=180), st.booleans())
def test_fuzz_decoder_only_raises_pdu_error(data: bytes, with_header: bool) -> None:
    pdu = (_HEADER if with_header else "") + data.hex()
    try:
        result = decode_sms_pdu(pdu)
    except PduError:
        return
    assert isinstance(result, Deliver | Submit | StatusReport)
