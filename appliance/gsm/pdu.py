"""SMS TPDU codec: SMS-SUBMIT encoding; SMS-DELIVER, SMS-SUBMIT and SMS-STATUS-REPORT decoding.

Pure (no I/O, clock or logging). The hex strings are what `AT+CMGS`, `+CMGR`, `+CMGL`, `+CMT`
and `+CDS` carry in PDU mode: `<SCA><TPDU>` (TS 27.005 §3.1, modem.md §3.1).

Every malformed input raises `PduError` and nothing else: truncated fields, a UDL larger than
the data present, UDH IEs overrunning the UDHL, bad BCD in a timestamp (modem.md §3.1, and the
§3.8 list of other libraries' crashes). `_Reader.take()` is the one place that checks lengths.

References: TS 23.040 §9.2.2 (TPDU layouts), §9.2.3 (fields), §9.2.3.24 (UDH); TS 23.038 §4
(DCS); modem.md §3.2–§3.7.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from appliance.gsm.alphabet import (
    MAX_PARTS,
    Encoding,
    choose_encoding,
    gsm7_decode,
    gsm7_encode,
    pack_septets,
    split_text,
    ucs2_decode,
    ucs2_encode,
    unpack_septets,
)
from appliance.gsm.errors import PduError

TOA_INTERNATIONAL = 0x91
# Numbers without "+": TS 23.040 allows "unknown" (0x81) or "national" (0xA1); python-messaging
# uses 0x81, python-gsmmodem 0xA1. We send 0x81 (modem.md §3.3) so the network decides.
TOA_UNKNOWN = 0x81
TOA_ALPHANUMERIC = 0xD0
_BCD_DIGITS = "0123456789*#abc"  # TS 23.040 §9.1.2.3: 0xA–0xE; 0xF is the odd-length filler

IEI_CONCAT8 = 0x00
IEI_CONCAT16 = 0x08


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PduError(f"PDU truncated at octet {self.pos} (wanted {n})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


def _unhex(pdu_hex: str) -> bytes:
    try:
        return bytes.fromhex(pdu_hex.strip())
    except ValueError as err:
        raise PduError("PDU is not hex") from err


# ---- addresses (TS 23.040 §9.1.2.5) --------------------------------------------------------


def _bcd_encode(digits: str) -> bytes:
    nibbles = []
    for ch in digits:
        idx = _BCD_DIGITS.find(ch.lower())
        if idx < 0:
            raise PduError(f"{ch!r} cannot be sent as a phone-number digit")
        nibbles.append(idx)
    if len(nibbles) % 2:
        nibbles.append(0xF)
    return bytes(nibbles[i] | nibbles[i + 1] << 4 for i in range(0, len(nibbles), 2))


def _bcd_decode(data: bytes, count: int) -> str:
    out: list[str] = []
    for octet in data:
        for nib in (octet & 0x0F, octet >> 4):
            if nib != 0xF and len(out) < count:
                out.append(_BCD_DIGITS[nib])
    return "".join(out)


def encode_address(number: str) -> bytes:
    """Destination address: length in digits, TOA, swapped BCD. `+` → international."""
    international = number.startswith("+")
    digits = number[1:] if international else number
    if not digits or len(digits) > 20:
        raise PduError(f"bad destination number {number!r}")
    toa = TOA_INTERNATIONAL if international else TOA_UNKNOWN
    return bytes([len(digits), toa]) + _bcd_encode(digits)


def _read_address(r: _Reader) -> tuple[str, int]:
    semi_octets, toa = r.byte(), r.byte()
    data = r.take((semi_octets + 1) // 2)
    if toa & 0x70 == 0x50:  # type of number 101 = alphanumeric, GSM-7 packed (§9.1.2.5)
        # ⌊len·4/7⌋ characters: 13 semi-octets → 7 characters, not 8 with a trailing "@".
        return gsm7_decode(unpack_septets(data, semi_octets * 4 // 7)), toa
    digits = _bcd_decode(data, semi_octets)
    return ("+" + digits if toa & 0x70 == 0x10 else digits), toa


def encode_smsc(number: str | None) -> bytes:
    """SCA field: `00` = the modem's configured SMSC. Its length counts octets (with TOA)."""
    if not number:
        return b"\x00"
    addr = encode_address(number)
    return bytes([len(addr) - 1]) + addr[1:]


def _read_smsc(r: _Reader) -> str | None:
    length = r.byte()
    if length == 0:
        return None
    if length > 11:
        raise PduError(f"SMSC field of {length} octets")
    toa = r.byte()
    digits = _bcd_decode(r.take(length - 1), 2 * (length - 1))
    return "+" + digits if toa & 0x70 == 0x10 else digits


# ---- timestamps and validity (TS 23.040 §9.2.3.11, §9.2.3.12) ------------------------------


def _swapped(octet: int) -> int:
    lo, hi = octet & 0x0F, octet >> 4
    if lo > 9 or hi > 9:
        raise PduError(f"bad BCD octet {octet:02X} in a timestamp")
    return lo * 10 + hi


def decode_scts(data: bytes) -> datetime:
    """7 octets of swapped BCD YY MM DD hh mm ss TZ; TZ in quarter-hours, sign in bit 3."""
    if len(data) != 7:
        raise PduError("a timestamp is 7 octets")
    yy, mo, dd, hh, mi, ss = (_swapped(o) for o in data[:6])
    tz = data[6]
    quarters = (tz & 0x07) * 10 + (tz >> 4)
    if tz >> 4 > 9:
        raise PduError(f"bad BCD octet {tz:02X} in a time zone")
    offset = timedelta(minutes=15 * quarters) * (-1 if tz & 0x08 else 1)
    year = 2000 + yy if yy < 70 else 1900 + yy  # 2-digit years: 00–69 → 20xx (modem.md §3.3)
    try:
        return datetime(year, mo, dd, hh, mi, ss, tzinfo=timezone(offset))
    except ValueError as err:
        raise PduError(f"bad timestamp {data.hex()}") from err


def encode_scts(when: datetime) -> bytes:
    """The inverse of `decode_scts` (for tests and fakes); `when` must be aware."""
    offset = when.utcoffset()
    if offset is None:
        raise PduError("timestamp needs a time zone")
    quarters = int(abs(offset.total_seconds()) // 900)

    def sw(v: int) -> int:
        return (v % 10) << 4 | (v // 10) % 10

    tz = sw(quarters) | (0x08 if offset < timedelta(0) else 0)
    return bytes([sw(when.year % 100), sw(when.month), sw(when.day), sw(when.hour),
                  sw(when.minute), sw(when.second), tz])


def decode_relative_validity(vp: int) -> timedelta:
    """TP-VP relative format (TS 23.040 §9.2.3.12.1, table in modem.md §3.3)."""
    if vp <= 143:
        return timedelta(minutes=(vp + 1) * 5)
    if vp <= 167:
        return timedelta(hours=12, minutes=(vp - 143) * 30)
    if vp <= 196:
        return timedelta(days=vp - 166)
    return timedelta(weeks=vp - 192)


def encode_relative_validity(period: timedelta) -> int:
    """The smallest TP-VP whose period is at least `period` (capped at 63 weeks = 0xFF)."""
    for vp in range(256):
        if decode_relative_validity(vp) >= period:
            return vp
    return 0xFF


# ---- user data header (TS 23.040 §9.2.3.24) ------------------------------------------------


@dataclass(frozen=True)
class Concat:
    """Concatenation IE: same `reference` on every part, `seq` 1-based, `total` ≤ 255."""

    reference: int
    total: int
    seq: int
    ref16: bool = False

    def encode(self) -> bytes:
        if self.ref16:
            return bytes([IEI_CONCAT16, 4, self.reference >> 8 & 0xFF, self.reference & 0xFF,
                          self.total, self.seq])
        return bytes([IEI_CONCAT8, 3, self.reference & 0xFF, self.total, self.seq])


def parse_udh(udh: bytes) -> tuple[tuple[tuple[int, bytes], ...], Concat | None]:
    """All IEs of a UDH (without its UDHL octet), and the concatenation IE if any. Unknown IEs
    are kept and ignored; an IE overrunning the header is an error (modem.md §3.6)."""
    r = _Reader(udh)
    ies: list[tuple[int, bytes]] = []
    concat = None
    while r.pos < len(udh):
        iei, length = r.byte(), r.byte()
        data = r.take(length)
        ies.append((iei, data))
        if iei == IEI_CONCAT8 and length == 3 and data[1] and 1 <= data[2] <= data[1]:
            concat = Concat(data[0], data[1], data[2])
        elif iei == IEI_CONCAT16 and length == 4 and data[2] and 1 <= data[3] <= data[2]:
            concat = Concat(data[0] << 8 | data[1], data[2], data[3], ref16=True)
    return tuple(ies), concat


def _fill_bits(udh_octets: int) -> int:
    """Fill bits after a UDH of n octets so GSM-7 text starts on a septet boundary (§9.2.3.24)."""
    return (7 - (udh_octets * 8) % 7) % 7


# ---- DCS (TS 23.038 §4) --------------------------------------------------------------------


def decode_dcs(dcs: int) -> tuple[Encoding, int | None, bool]:
    """→ (alphabet, message class or None, compressed)."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding (and "automatic deletion", 01xx)
        alphabet = (dcs >> 2) & 0x3
        encoding = {1: Encoding.BINARY, 2: Encoding.UCS2}.get(alphabet, Encoding.GSM7)
        return encoding, (dcs & 0x3) if dcs & 0x10 else None, bool(dcs & 0x20)
    if group in (0xC, 0xD):  # message waiting indication, GSM-7
        return Encoding.GSM7, None, False
    if group == 0xE:  # message waiting indication, UCS-2
        return Encoding.UCS2, None, False
    if group == 0xF:  # data coding / message class
        return (Encoding.BINARY if dcs & 0x04 else Encoding.GSM7), dcs & 0x3, False
    return Encoding.GSM7, None, False  # reserved groups 8–B: treat as GSM-7


@dataclass(frozen=True)
class UserData:
    encoding: Encoding
    text: str | None  # None for 8-bit data: binary payloads are never text (modem.md §3.4)
    data: bytes  # the payload after the UDH (octets; for GSM-7 the packed septets)
    headers: tuple[tuple[int, bytes], ...]
    concat: Concat | None


def _read_user_data(r: _Reader, dcs: int, udhi: bool) -> UserData:
    encoding, _, compressed = decode_dcs(dcs)
    udl = r.byte()
    body = r.rest()
    headers: tuple[tuple[int, bytes], ...] = ()
    concat = None
    header_octets = 0
    if udhi:
        if not body:
            raise PduError("UDHI set but no user data")
        header_octets = body[0] + 1
        if header_octets > len(body):
            raise PduError("UDH longer than the user data")
        headers, concat = parse_udh(body[1:header_octets])
    if encoding is Encoding.GSM7 and not compressed:
        fill = _fill_bits(header_octets) if udhi else 0
        header_septets = (header_octets * 8 + fill) // 7
        count = udl - header_septets
        if count < 0:
            raise PduError("UDL smaller than the UDH")
        payload = body[header_octets:]
        if (7 * udl + 7) // 8 > len(body):
            raise PduError(f"UDL {udl} septets exceeds the {len(body)} octets present")
        text = gsm7_decode(unpack_septets(payload, count, fill))
        return UserData(encoding, text, payload[:(fill + 7 * count + 7) // 8], headers, concat)
    if udl > len(body) or udl < header_octets:
        raise PduError(f"UDL {udl} octets does not match the {len(body)} octets present")
    payload = body[header_octets:udl]
    if compressed:
        return UserData(Encoding.BINARY, None, payload, headers, concat)
    if encoding is Encoding.UCS2:
        return UserData(encoding, ucs2_decode(payload), payload, headers, concat)
    return UserData(encoding, None, payload, headers, concat)


# ---- the three TPDUs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Deliver:
    """SMS-DELIVER (TS 23.040 §9.2.2.1)."""

    smsc: str | None
    sender: str  # "+15551234567", "0123", or the alphanumeric name
    sender_toa: int
    pid: int
    dcs: int
    message_class: int | None
    timestamp: datetime
    user_data: UserData
    more_messages: bool  # TP-MMS = 0
    status_report_indication: bool
    reply_path: bool

    @property
    def text(self) -> str | None:
        return self.user_data.text

    @property
    def concat(self) -> Concat | None:
        return self.user_data.concat


@dataclass(frozen=True)
class Submit:
    """SMS-SUBMIT as decoded (messages the modem stored as STO SENT/UNSENT, and tests)."""

    smsc: str | None
    mr: int
    destination: str
    destination_toa: int
    dcs: int
    validity: timedelta | None
    status_report_request: bool
    user_data: UserData


# TP-ST values (TS 23.040 §9.2.3.15), for messages a person reads; others print as a number.
TP_ST_NAMES: dict[int, str] = {
    0x00: "received by the SME",
    0x01: "forwarded, delivery not confirmed",
    0x02: "replaced by the SC",
    0x20: "congestion", 0x21: "SME busy", 0x22: "no response from SME",
    0x23: "service rejected", 0x24: "quality of service not available", 0x25: "error in SME",
    0x40: "remote procedure error",
    0x41: "incompatible destination",
    0x42: "connection rejected by SME",
    0x43: "not obtainable",
    0x44: "quality of service not available",
    0x45: "no interworking available",
    0x46: "validity period expired",
    0x47: "deleted by the originating SME",
    0x48: "deleted by SC administration",
    0x49: "SM does not exist",
    0x60: "congestion", 0x61: "SME busy", 0x62: "no response from SME",
    0x63: "service rejected", 0x64: "quality of service not available", 0x65: "error in SME",
}


class DeliveryOutcome(enum.Enum):
    """TP-ST by range (TS 23.040 §9.2.3.15, modem.md §2.6): never "any non-zero is failure"."""

    DELIVERED = "delivered"  # 0x00–0x1F
    PENDING = "pending"  # 0x20–0x3F: the SC is still trying
    FAILED = "failed"  # 0x40 and above (0x60–0x7F: temporary, but the SC gave up)


@dataclass(frozen=True)
class StatusReport:
    """SMS-STATUS-REPORT (TS 23.040 §9.2.2.3)."""

    smsc: str | None
    mr: int
    recipient: str
    recipient_toa: int
    timestamp: datetime
    discharge_time: datetime
    status: int

    @property
    def outcome(self) -> DeliveryOutcome:
        if self.status < 0x20:
            return DeliveryOutcome.DELIVERED
        if self.status < 0x40:
            return DeliveryOutcome.PENDING
        return DeliveryOutcome.FAILED


def decode_sms_pdu(pdu_hex: str, *, has_smsc: bool = True) -> Deliver | Submit | StatusReport:
    """Decode `<SCA><TPDU>` hex by its TP-MTI. Raises only PduError."""
    r = _Reader(_unhex(pdu_hex))
    smsc = _read_smsc(r) if has_smsc else None
    fo = r.byte()
    mti = fo & 0x03
    if mti == 0:
        sender, toa = _read_address(r)
        pid, dcs = r.byte(), r.byte()
        scts = decode_scts(r.take(7))
        ud = _read_user_data(r, dcs, bool(fo & 0x40))
        return Deliver(smsc, sender, toa, pid, dcs, decode_dcs(dcs)[1], scts, ud,
                       more_messages=not fo & 0x04, status_report_indication=bool(fo & 0x20),
                       reply_path=bool(fo & 0x80))
    if mti == 1:
        mr = r.byte()
        dest, toa = _read_address(r)
        _pid, dcs = r.byte(), r.byte()
        vpf = (fo >> 3) & 0x3
        validity = None
        if vpf == 2:
            validity = decode_relative_validity(r.byte())
        elif vpf in (1, 3):
            r.take(7)  # enhanced / absolute: skipped, not used by anything we receive
        ud = _read_user_data(r, dcs, bool(fo & 0x40))
        return Submit(smsc, mr, dest, toa, dcs, validity, bool(fo & 0x20), ud)
    if mti == 2:
        mr = r.byte()
        recipient, toa = _read_address(r)
        scts, dt = decode_scts(r.take(7)), decode_scts(r.take(7))
        return StatusReport(smsc, mr, recipient, toa, scts, dt, r.byte())
    raise PduError("reserved TP-MTI 3")


def decode_sms_deliver(pdu_hex: str) -> Deliver:
    decoded = decode_sms_pdu(pdu_hex)
    if not isinstance(decoded, Deliver):
        raise PduError(f"expected SMS-DELIVER, got {type(decoded).__name__}")
    return decoded


def decode_status_report(pdu_hex: str) -> StatusReport:
    """Lenient: some modems omit the SCA in `+CDS` or send a broken one (ZTE, modem.md §2.6);
    if parsing with an SCA fails, retry without one."""
    for has_smsc in (True, False):
        try:
            decoded = decode_sms_pdu(pdu_hex, has_smsc=has_smsc)
        except PduError:
            continue
        if isinstance(decoded, StatusReport):
            return decoded
    raise PduError("not an SMS-STATUS-REPORT")


@dataclass(frozen=True)
class SubmitPdu:
    """One part ready for `AT+CMGS=<tpdu_length>` followed by `hex` and Ctrl-Z."""

    hex: str
    tpdu_length: int  # octets, excluding the SCA (TS 27.005 §3.5.1)
    text: str


def encode_sms_submit(
    destination: str, text: str, *, encoding: Encoding | None = None,
    concat: Concat | None = None, status_report: bool = False,
    validity: timedelta | None = None, mr: int = 0, smsc: str | None = None,
) -> SubmitPdu:
    """One SMS-SUBMIT for one part's text (use `encode_sms` for a whole message)."""
    encoding = encoding or choose_encoding(text)
    udh = b""
    if concat is not None:
        ie = concat.encode()
        udh = bytes([len(ie)]) + ie
    if encoding is Encoding.GSM7:
        septets = gsm7_encode(text)
        fill = _fill_bits(len(udh)) if udh else 0
        udl = (len(udh) * 8 + fill) // 7 + len(septets)
        ud = udh + pack_septets(septets, fill)
        dcs = 0x00
    elif encoding is Encoding.UCS2:
        ud = udh + ucs2_encode(text)
        udl, dcs = len(ud), 0x08
    else:
        raise PduError("8-bit SUBMIT is not supported")
    if len(ud) > 140:
        raise PduError(f"user data of {len(ud)} octets exceeds 140")
    # FO: MTI 01, VPF 10 if a validity is given, SRR 0x20, UDHI 0x40 (modem.md §3.2, §3.7).
    fo = 0x01 | (0x10 if validity is not None else 0) | (0x20 if status_report else 0)
    fo |= 0x40 if udh else 0
    tpdu = bytes([fo, mr & 0xFF]) + encode_address(destination) + bytes([0x00, dcs])
    if validity is not None:
        tpdu += bytes([encode_relative_validity(validity)])
    tpdu += bytes([udl]) + ud
    return SubmitPdu((encode_smsc(smsc) + tpdu).hex().upper(), len(tpdu), text)


def encode_sms(
    destination: str, text: str, *, reference: int = 0, ref16: bool = False,
    status_report: bool = False, validity: timedelta | None = None, smsc: str | None = None,
    max_parts: int = MAX_PARTS,
) -> list[SubmitPdu]:
    """A whole message → its SUBMIT parts. `reference` is the concatenation reference the
    caller rolls per destination (modem.md §3.6); it is ignored for a single part."""
    encoding, parts = split_text(text, ref16=ref16, max_parts=max_parts)
    if len(parts) == 1:
        return [encode_sms_submit(destination, text, encoding=encoding,
                                  status_report=status_report, validity=validity, smsc=smsc)]
    return [
        encode_sms_submit(destination, part, encoding=encoding,
                          concat=Concat(reference, len(parts), seq, ref16),
                          status_report=status_report, validity=validity, smsc=smsc)
        for seq, part in enumerate(parts, start=1)
    ]
