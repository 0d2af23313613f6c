"""Typed unsolicited result codes (URCs) and the payload shapes they share with responses.

Pure: no I/O, no clock, no logging. `parse_urc(line)` never raises; a line with a known prefix
but a broken body becomes `MalformedUrc`, an unknown line `UnknownUrc`, so one odd modem line
can never stop the reader (modem.md §2.2). The same parsers (`parse_registration`, `parse_csq`,
`parse_cpin`, `parse_clcc`, …) serve the solicited responses of `AT+CREG?`, `AT+CSQ`, ….

Sources: 3GPP TS 27.007 §7.2 (CREG), §10.1.20/§10.1.22 (CGREG/CEREG), §8.5 (CSQ), §8.3 (CPIN),
§7.18 (CLCC), §7.6 (CLIP), §7.15 (CUSD); TS 27.005 §3.4.1 (CMTI, CMT, CDSI, CDS); the vendor
lines are from modem.md §2.1, §2.10 and §4.3.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from appliance.gsm.errors import AtParseError


class RegDomain(enum.Enum):
    CS = "+CREG:"  # circuit switched (voice, SMS over CS)
    GPRS = "+CGREG:"  # 2G/3G packet
    EPS = "+CEREG:"  # LTE; LTE-only modems report SMS registration here (modem.md §2.10)


class RegStatus(enum.IntEnum):
    NOT_SEARCHING = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5
    SMS_ONLY_HOME = 6
    SMS_ONLY_ROAMING = 7
    EMERGENCY_ONLY = 8
    CSFB_NOT_PREFERRED_HOME = 9
    CSFB_NOT_PREFERRED_ROAMING = 10

    @property
    def registered(self) -> bool:
        return self in _REGISTERED


_REGISTERED = frozenset(
    {RegStatus.HOME, RegStatus.ROAMING, RegStatus.SMS_ONLY_HOME, RegStatus.SMS_ONLY_ROAMING,
     RegStatus.CSFB_NOT_PREFERRED_HOME, RegStatus.CSFB_NOT_PREFERRED_ROAMING}
)


class SimState(enum.Enum):
    READY = "READY"
    SIM_PIN = "SIM PIN"
    SIM_PUK = "SIM PUK"
    SIM_PIN2 = "SIM PIN2"
    SIM_PUK2 = "SIM PUK2"
    PH_SIM_PIN = "PH-SIM PIN"
    NOT_INSERTED = "NOT INSERTED"
    NOT_READY = "NOT READY"
    UNKNOWN = "UNKNOWN"


# ---- the URC values ------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """`+CREG/+CGREG/+CEREG`, both the URC (`stat[,lac,ci[,act]]`) and response (`n,stat,…`)."""

    domain: RegDomain
    status: RegStatus | None
    lac: int | None = None
    cell_id: int | None = None
    act: int | None = None


@dataclass(frozen=True)
class SignalQuality:
    """`+CSQ: <rssi>,<ber>`; rssi 0..31, 99 = unknown (TS 27.007 §8.5)."""

    rssi: int | None
    ber: int | None = None

    @property
    def dbm(self) -> int | None:
        # TS 27.007 §8.5: 0 = -113 dBm or less, 1 = -111, 2..30 = -109..-53, 31 = -51 or more.
        return None if self.rssi is None else -113 + 2 * self.rssi


@dataclass(frozen=True)
class SimStatus:
    state: SimState


@dataclass(frozen=True)
class IncomingSms:
    """`+CMTI: <mem>,<index>`: a message was stored. index -1 = SIM7000 "can't be read"."""

    storage: str | None
    index: int


@dataclass(frozen=True)
class StatusReportStored:
    """`+CDSI: <mem>,<index>`: a delivery report was stored (CNMI ds=2)."""

    storage: str | None
    index: int


@dataclass(frozen=True)
class SmsDelivered:
    """`+CMT: [<alpha>],<length>` followed by the PDU line (direct routing, CNMI mt=2)."""

    length: int
    pdu: str


@dataclass(frozen=True)
class StatusReportDelivered:
    """`+CDS: <length>` followed by the PDU line (CNMI ds=1)."""

    length: int
    pdu: str


@dataclass(frozen=True)
class UssdResponse:
    """`+CUSD: <m>[,<str>,<dcs>]`.

    m: 0 done, 1 more (menu), 2 released, 3 other client, 4 not supported, 5 timeout.
    """

    mode: int
    text: str | None = None
    dcs: int | None = None


@dataclass(frozen=True)
class Ring:
    """`RING`, or `+CRING: <type>` with AT+CRC=1."""

    kind: str | None = None


@dataclass(frozen=True)
class CallerId:
    """`+CLIP: <number>,<type>[,<subaddr>,<satype>,<alpha>,<validity>]`; number may be empty."""

    number: str
    number_type: int | None
    validity: int | None = None
    alpha: str | None = None


@dataclass(frozen=True)
class CallEntry:
    """One `+CLCC:` line: `<id>,<dir>,<stat>,<mode>,<mpty>[,<number>,<type>[,<alpha>]]`."""

    call_id: int
    incoming: bool
    stat: int  # 0 active, 1 held, 2 dialing, 3 alerting, 4 incoming, 5 waiting
    mode: int
    multiparty: bool
    number: str | None = None
    number_type: int | None = None
    alpha: str | None = None


@dataclass(frozen=True)
class CallEnded:
    """`NO CARRIER` outside a dial, `VOICE CALL: END`, Huawei `^CEND`."""

    text: str


@dataclass(frozen=True)
class DtmfTone:
    """A DTMF digit the modem detected in the call's downlink: SIMCom `+RXDTMF: 8` (after
    `AT+DDET=1`), Quectel `+QTONEDET: 56` (the ASCII *code* of `8`, after `AT+QTONEDET=1`)."""

    digit: str


@dataclass(frozen=True)
class ModemReady:
    """`RDY`: the modem (re)booted; an unsolicited one later means: re-run init (§2.1)."""


@dataclass(frozen=True)
class FunctionalityChanged:
    """`+CFUN: <fun>` as a boot URC."""

    fun: int


@dataclass(frozen=True)
class StorageFull:
    """Huawei `^SMMEMFULL: <mem>`: CMTI stops; sweep now (modem.md §1.2, wdoekes#47)."""

    storage: str | None


@dataclass(frozen=True)
class Notice:
    """A known vendor line with nothing for us to do (`^BOOT`, `^MODE`, `SMS DONE`, …)."""

    line: str


@dataclass(frozen=True)
class UnknownUrc:
    line: str


@dataclass(frozen=True)
class MalformedUrc:
    """A known prefix with a body we could not parse; kept for the log, never raised."""

    line: str
    reason: str


UrcValue = (
    Registration | SignalQuality | SimStatus | IncomingSms | StatusReportStored | SmsDelivered
    | StatusReportDelivered | UssdResponse | Ring | CallerId | CallEntry | CallEnded | DtmfTone
    | ModemReady | FunctionalityChanged | StorageFull | Notice | UnknownUrc | MalformedUrc
)

# ---- grammar: which lines are URCs ---------------------------------------------------------

# Whole-line URCs (V.250 / vendor boot lines, modem.md §2.1 and §4.3).
_EXACT_NOTICES = frozenset(
    {"Call Ready", "SMS Ready", "SMS DONE", "PB DONE", "+QIND: SMS DONE", "+QIND: PB DONE",
     "VOICE CALL: BEGIN"}
)
# Prefixes whose line carries a PDU on the *next* line (TS 27.005 §3.4.1, PDU mode).
PDU_FOLLOWS = ("+CMT:", "+CDS:")
# Vendor URC prefixes that we only note (Quectel, SIMCom, ZTE, Wavecom; modem.md §4.3).
_NOTICE_PREFIXES = (
    "+QIND:", "+QUSIM:", "+CRING:", "MISSED_CALL:", "+ZPASR:",
    "+ZDONR:", "+WIND:", "+CTZV:", "+CTZE:", "*PSUTTZ:", "+CIEV:", "+CSSI:", "+CSSU:",
    "+CNSMOD:", "+QIURC:", "+CGEV:", "+CUSATP:", "HANGUP:", "+CCWA:",
)
URC_PREFIXES = (
    "+CREG:", "+CGREG:", "+CEREG:", "+CSQ:", "+CPIN:", "+CMTI:", "+CDSI:", "+CUSD:", "+CLIP:",
    "+CLCC:", "+CFUN:", "VOICE CALL: END", "+RXDTMF:", "+QTONEDET:", "^", *PDU_FOLLOWS,
    *_NOTICE_PREFIXES,
)
# Call results that arrive after ATD's early OK (modem.md §2.8): the call ended.
CALL_END_LINES = frozenset({"NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE"})
_EXACT_URCS = frozenset({"RING", "RDY", *CALL_END_LINES, *_EXACT_NOTICES})


def is_urc_line(line: str) -> bool:
    """True when `line` has the grammar of an unsolicited result code.

    Every Huawei `^XXX` line is a URC (`^RSSI`, `^BOOT`, `^MODE`, `^DSFLOWRPT`, `^CEND`, …) unless
    the command in flight expects that very prefix, which `AtParser` checks first.
    """
    return line in _EXACT_URCS or line.startswith(URC_PREFIXES)


def split_fields(body: str) -> list[str]:
    """Split a comma-separated AT body, honouring double quotes; quotes are removed, fields
    stripped. Unbalanced quotes are tolerated (the rest of the line is one field)."""
    fields: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            fields.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    fields.append("".join(cur).strip())
    return fields


def _int(text: str, base: int = 10) -> int | None:
    text = text.strip().strip('"').strip()
    if not text:
        return None
    try:
        return int(text, base)
    except ValueError as err:
        raise AtParseError(f"not a number: {text!r}") from err


def _after(line: str, prefix: str) -> str:
    if not line.startswith(prefix):
        raise AtParseError(f"expected {prefix!r}: {line!r}")
    return line[len(prefix):].strip()


# ---- payload parsers (responses and URCs) --------------------------------------------------


def is_registration_response(line: str) -> bool:
    """Tell `+CREG: <n>,<stat>[,…]` (answer to `AT+CREG?`) from the URC `+CREG: <stat>[,…]`.

    The answer's second field is `<stat>`, a small decimal; the URC's second field is the LAC,
    which is quoted or hex. With two fields it can only be `n,stat`.
    """
    raw = line.split(":", 1)[1].split(",") if ":" in line else []
    if len(raw) <= 1:
        return False
    if len(raw) == 2:
        return True
    second = raw[1].strip()
    return len(second) <= 2 and (second == "" or second.isdigit())


def parse_registration(line: str) -> Registration:
    """Both shapes, leniently (modem.md §2.10 and §4.3 "broken CREG"): unquoted hex LAC/CI,
    empty fields, missing closing quotes. Commas never occur inside LAC/CI, so split plainly."""
    for domain in RegDomain:
        if line.startswith(domain.value):
            break
    else:
        raise AtParseError(f"not a registration line: {line!r}")
    raw = [f.strip().strip('"').strip() for f in _after(line, domain.value).split(",")]
    if is_registration_response(line):
        raw = raw[1:]
    stat = _int(raw[0]) if raw else None
    status = RegStatus(stat) if stat is not None and stat in RegStatus._value2member_map_ else None
    if stat is not None and status is None:
        status = RegStatus.UNKNOWN

    def hexfield(i: int) -> int | None:
        if len(raw) <= i or not raw[i]:
            return None
        try:
            return int(raw[i], 16)
        except ValueError:
            return None  # the broken-quoting zoo: keep the status, drop the cell

    act = None
    if len(raw) > 3 and raw[3].isdigit():
        act = int(raw[3])
    return Registration(domain, status, hexfield(1), hexfield(2), act)


def parse_csq(line: str) -> SignalQuality:
    """`+CSQ: 21,99`, Quectel `+QIND: "csq",27,99`, Huawei `^RSSI: 17` / `^RSSI:17`."""
    if line.startswith("+QIND:"):
        fields = split_fields(_after(line, "+QIND:"))[1:]
    elif line.startswith("^RSSI:"):
        fields = split_fields(_after(line, "^RSSI:"))
    else:
        fields = split_fields(_after(line, "+CSQ:"))
    rssi = _int(fields[0]) if fields else None
    ber = _int(fields[1]) if len(fields) > 1 else None
    return SignalQuality(None if rssi in (None, 99) or rssi > 31 else rssi,
                         None if ber in (None, 99) else ber)


def parse_cpin(line: str) -> SimState:
    """`+CPIN: READY`; also `+CPIN:READY` (SIM800, faucamp#117). Unknown codes → UNKNOWN."""
    body = _after(line, "+CPIN:").strip('"').strip().upper()
    return SimState._value2member_map_.get(body, SimState.UNKNOWN)  # type: ignore[return-value]


def parse_memory_index(line: str, prefix: str) -> tuple[str | None, int]:
    """`+CMTI: "ME",3`, `+CMTI: 3,5` (numeric memory), `+CMTI: ,-1` (SIM7000), `+CDSI: "SR",1`."""
    fields = split_fields(_after(line, prefix))
    if len(fields) < 2:
        raise AtParseError(f"missing index: {line!r}")
    index = _int(fields[1])
    if index is None:
        raise AtParseError(f"missing index: {line!r}")
    return (fields[0] or None), index


def parse_cusd(text: str) -> UssdResponse:
    """`+CUSD: <m>[,"<str>"[,<dcs>]]`; the string may hold commas and newlines (§2.7)."""
    body = _after(text, "+CUSD:")
    head, sep, rest = body.partition(",")
    mode = _int(head)
    if mode is None:
        raise AtParseError(f"USSD without a mode: {text!r}")
    if not sep:
        return UssdResponse(mode)
    first, last = rest.find('"'), rest.rfind('"')
    if first == -1:
        fields = split_fields(rest)
        return UssdResponse(mode, fields[0] or None, _int(fields[1]) if len(fields) > 1 else None)
    string = rest[first + 1:last] if last > first else rest[first + 1:]
    tail = rest[last + 1:] if last > first else ""
    dcs = _int(tail.lstrip(",")) if tail.strip(" ,") else None
    return UssdResponse(mode, string, dcs)


def parse_clip(line: str) -> CallerId:
    fields = split_fields(_after(line, "+CLIP:"))
    number_type = _int(fields[1]) if len(fields) > 1 else None
    alpha = fields[4] if len(fields) > 4 and fields[4] else None
    validity = _int(fields[5]) if len(fields) > 5 else None
    return CallerId(fields[0], number_type, validity, alpha)


def parse_clcc(line: str) -> CallEntry:
    """Accepts an empty number, an absent number and a trailing alpha; a number without its
    type is malformed (modem.md §2.8)."""
    fields = split_fields(_after(line, "+CLCC:"))
    if len(fields) < 5:
        raise AtParseError(f"short +CLCC: {line!r}")
    ints = [_int(f) for f in fields[:5]]
    if any(v is None for v in ints):
        raise AtParseError(f"empty +CLCC field: {line!r}")
    call_id, direction, stat, mode, mpty = (v or 0 for v in ints)
    number = number_type = alpha = None
    if len(fields) > 5:
        if len(fields) < 7:
            raise AtParseError(f"+CLCC number without type: {line!r}")
        number, number_type = fields[5], _int(fields[6])
        alpha = fields[7] if len(fields) > 7 and fields[7] else None
    return CallEntry(call_id, direction == 1, stat, mode, mpty == 1, number, number_type, alpha)


_DTMF_DIGITS = "0123456789*#ABCD"


def _dtmf_digit(body: str, *, ascii_code: bool) -> str:
    text = body.strip().strip('"').strip()
    if ascii_code:
        code = _int(text)
        text = chr(code) if code is not None and 0 < code < 128 else ""
    if len(text) != 1 or text.upper() not in _DTMF_DIGITS:
        raise AtParseError(f"not a DTMF digit: {body!r}")
    return text.upper()


def parse_urc(line: str, pdu: str | None = None) -> UrcValue:
    """Turn one unsolicited line (plus the PDU line for `+CMT`/`+CDS`) into a typed value."""
    try:
        return _parse_urc(line, pdu)
    except AtParseError as err:
        return MalformedUrc(line, str(err))


def _parse_urc(line: str, pdu: str | None) -> UrcValue:
    if line == "RDY":
        return ModemReady()
    if line == "RING":
        return Ring()
    if line in CALL_END_LINES or line.startswith(("VOICE CALL: END", "^CEND:")):
        return CallEnded(line)
    if line.startswith("+RXDTMF:"):
        return DtmfTone(_dtmf_digit(_after(line, "+RXDTMF:"), ascii_code=False))
    if line.startswith("+QTONEDET:"):
        return DtmfTone(_dtmf_digit(_after(line, "+QTONEDET:"), ascii_code=True))
    if line in _EXACT_NOTICES:
        return Notice(line)
    if line.startswith(("+CREG:", "+CGREG:", "+CEREG:")):
        return parse_registration(line)
    if line.startswith(("+CSQ:", "^RSSI:")) or line.startswith('+QIND: "csq"'):
        return parse_csq(line)
    if line.startswith("+CPIN:"):
        return SimStatus(parse_cpin(line))
    if line.startswith("+CMTI:"):
        return IncomingSms(*parse_memory_index(line, "+CMTI:"))
    if line.startswith("+CDSI:"):
        return StatusReportStored(*parse_memory_index(line, "+CDSI:"))
    if line.startswith(PDU_FOLLOWS):
        fields = split_fields(line.split(":", 1)[1])
        length = _int(fields[-1])
        if length is None or pdu is None:
            raise AtParseError(f"no length or PDU: {line!r}")
        if line.startswith("+CMT:"):
            return SmsDelivered(length, pdu)
        return StatusReportDelivered(length, pdu)
    if line.startswith("+CUSD:"):
        return parse_cusd(line)
    if line.startswith("+CRING:"):
        return Ring(_after(line, "+CRING:"))
    if line.startswith("+CLIP:"):
        return parse_clip(line)
    if line.startswith("+CLCC:"):
        return parse_clcc(line)
    if line.startswith("+CFUN:"):
        fun = _int(_after(line, "+CFUN:"))
        return FunctionalityChanged(fun if fun is not None else -1)
    if line.startswith("^SMMEMFULL"):
        body = line.partition(":")[2]
        return StorageFull(body.strip().strip('"') or None)
    if line.startswith("^") or line.startswith(_NOTICE_PREFIXES):
        return Notice(line)
    return UnknownUrc(line)
