"""Sans-I/O AT engine: command builders and `AtParser.feed(bytes) -> [event]`.

No asyncio, serial, logging or clock here (style.md §3.1); `gsm.modem` owns the port and the
timers. Theory of operation:

* The caller tells the parser which command is in flight (`AtParser.start(command)`); the
  `Command` carries the information-response prefix it expects (`AT+CREG?` expects `+CREG:`).
* Every line is classified by **grammar plus that expected prefix**, never by timing
  (style.md §5 habit 1, §6.5): final result code → `Final` (and the command is over); the echo
  of the command → dropped; the expected prefix → `Intermediate` (unless its shape is the URC
  form, e.g. `+CREG: 1,"4CA","81DE445"`); a URC grammar → `Urc`; any other line while a
  command is in flight → `Intermediate` (`AT+CGMI` text, PDU lines); otherwise `Urc(UnknownUrc)`.
* The `> ` prompt of `AT+CMGS` has no line end (TS 27.005 §3.5.1, modem.md §2.2): it is
  recognised in the unterminated buffer, and only while a prompting command is in flight.
* `\\r` and `\\n` both end a line and empty lines are skipped, which absorbs `\\r\\r\\n`
  (SIMCom, Huawei) and echo lines that end in a bare `\\r`.
* `+CMT:`/`+CDS:` URCs own the next line (their PDU); a `+CUSD:` with an unclosed quote
  continues on the following lines (§2.7).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from appliance.gsm.errors import AtParseError, CmeError, CmsError, CommandError, ModemError
from appliance.gsm.urc import (
    PDU_FOLLOWS,
    UrcValue,
    is_registration_response,
    is_urc_line,
    parse_urc,
    split_fields,
)

# The longest legitimate line is a `+CMGL`/`+CMGR` PDU line: SCA (12 octets) + 164-octet TPDU
# = 176 octets = 352 hex digits (TS 27.005 §3.1), or a UCS-2 `+CUSD` of 160 octets as 4 hex
# digits per unit (~700). 4 KiB leaves headroom and still bounds a modem spewing garbage with
# no line end (h11 keeps a similar hard cap on its receive buffer; style.md §5 habit 6).
MAX_LINE_LENGTH = 4096
# A multi-line `+CUSD` string is bounded too (TS 23.038: at most 182 GSM-7 characters).
MAX_CONTINUATION_LINES = 16

CTRL_Z = b"\x1a"  # ends the PDU after the `> ` prompt (TS 27.005 §3.5.1)
ESC = b"\x1b"  # aborts the `> ` prompt without sending


class Result(enum.Enum):
    """Final result codes (V.250 §5.7.1, TS 27.007 §9.2, TS 27.005 §3.2.5, Huawei)."""

    OK = "OK"
    CONNECT = "CONNECT"
    ERROR = "ERROR"
    CME_ERROR = "+CME ERROR"
    CMS_ERROR = "+CMS ERROR"
    NO_CARRIER = "NO CARRIER"
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"
    NO_DIALTONE = "NO DIALTONE"
    COMMAND_NOT_SUPPORT = "COMMAND NOT SUPPORT"  # Huawei E1752, a *final* result (§4.3)


# Results that end a command only when it is a call command; elsewhere they are call URCs.
_CALL_RESULTS = frozenset({Result.NO_CARRIER, Result.BUSY, Result.NO_ANSWER, Result.NO_DIALTONE,
                           Result.CONNECT})


@dataclass(frozen=True)
class Command:
    """One AT command line and what its exchange looks like."""

    text: str  # without the trailing "\r", e.g. "AT+CREG?"
    prefix: str | None = None  # information-response prefix, e.g. "+CREG:"
    timeout: float = 5.0  # seconds; policy lives with the command, the clock in gsm.modem
    expects_prompt: bool = False  # AT+CMGS: a `> ` prompt comes before the final result
    call: bool = False  # ATD/ATA: NO CARRIER, BUSY, … are its final results

    def __bytes__(self) -> bytes:
        return self.text.encode("ascii") + b"\r"


@dataclass(frozen=True)
class Final:
    result: Result
    text: str = ""  # the argument of +CME/+CMS ERROR, or the raw line

    @property
    def ok(self) -> bool:
        return self.result in (Result.OK, Result.CONNECT)

    def error(self, command: str = "") -> ModemError:
        """The exception for a failed result, with the device code kept as data."""
        if self.result is Result.CME_ERROR:
            return CmeError.parse(self.text, command)
        if self.result is Result.CMS_ERROR:
            return CmsError.parse(self.text, command)
        return CommandError(self.result.value, command)


@dataclass(frozen=True)
class Intermediate:
    line: str


@dataclass(frozen=True)
class Urc:
    value: UrcValue
    line: str = ""


@dataclass(frozen=True)
class Prompt:
    """The `> ` of AT+CMGS: write the PDU hex and Ctrl-Z now."""


Event = Final | Intermediate | Urc | Prompt


def parse_final(line: str) -> Final | None:
    """A final result code, or None. Tolerates `+CME ERROR:3` without the space."""
    for result in (Result.CME_ERROR, Result.CMS_ERROR):
        if line.startswith(result.value + ":"):
            return Final(result, line[len(result.value) + 1:].strip())
    for result in Result:
        if line == result.value or (result is Result.CONNECT and line.startswith("CONNECT ")):
            return Final(result, line)
    return None


@dataclass
class _Continuation:
    head: str
    kind: str  # "pdu" or "quote"
    lines: list[str] = field(default_factory=list)


class AtParser:
    """Bytes from the port in, typed events out. One command in flight at most."""

    def __init__(self, max_line: int = MAX_LINE_LENGTH) -> None:
        self.max_line = max_line
        self.pending: Command | None = None
        self.overflows = 0  # lines dropped for exceeding max_line; gsm.modem logs the count
        self._buf = bytearray()
        self._skipping = False  # discarding the rest of an over-long line
        self._cont: _Continuation | None = None

    def start(self, command: Command) -> None:
        """The caller has written `command`; classify the next lines against it."""
        self.pending = command

    def abandon(self) -> None:
        """Forget the command in flight (it timed out); later lines are classified as URCs."""
        self.pending = None

    def reset(self) -> None:
        """Drop all buffered state (after the port was re-opened)."""
        self.__init__(self.max_line)  # type: ignore[misc]

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._skipping:
                    self._skipping = False
                elif self._buf:
                    line = self._buf.decode("utf-8", "replace").strip()
                    self._buf.clear()
                    if line:
                        self._line(line, events)
                continue
            if self._skipping:
                continue
            if len(self._buf) >= self.max_line:
                self._buf.clear()
                self._skipping = True
                self.overflows += 1
                continue
            self._buf.append(byte)
        # The prompt arrives with no line end; accept it only when a command asked for one.
        if (self.pending is not None and self.pending.expects_prompt
                and self._cont is None and bytes(self._buf).rstrip() == b">"):
            # A lone ">" may still be followed by its space; that space would only start an
            # empty line, which is skipped.
            self._buf.clear()
            events.append(Prompt())
        return events

    def _line(self, line: str, events: list[Event]) -> None:
        cont = self._cont
        if cont is not None:
            cont.lines.append(line)
            if cont.kind == "pdu":
                self._cont = None
                events.append(Urc(parse_urc(cont.head, line), cont.head))
            elif line.count('"') % 2 == 1 or len(cont.lines) >= MAX_CONTINUATION_LINES:
                self._cont = None
                text = "\n".join([cont.head, *cont.lines])
                events.append(Urc(parse_urc(text), text))
            return

        pending = self.pending
        final = parse_final(line)
        if final is not None and (final.result not in _CALL_RESULTS
                                  or (pending is not None and pending.call)):
            if pending is not None:
                self.pending = None
                events.append(final)
            # A final result with nothing in flight (a late OK after a timeout) is dropped.
            return
        if pending is not None:
            if line == pending.text:
                return  # echo (before ATE0)
            if pending.prefix and line.startswith(pending.prefix):
                if not (pending.prefix in _REGISTRATION and not is_registration_response(line)):
                    events.append(Intermediate(line))
                    return
            if line == ">" and pending.expects_prompt:
                events.append(Prompt())
                return
        if is_urc_line(line):
            if line.startswith(PDU_FOLLOWS):
                self._cont = _Continuation(line, "pdu")
            elif line.startswith("+CUSD:") and line.count('"') % 2 == 1:
                self._cont = _Continuation(line, "quote")
            else:
                events.append(Urc(parse_urc(line), line))
            return
        if pending is not None:
            events.append(Intermediate(line))
            return
        events.append(Urc(parse_urc(line), line))


_REGISTRATION = frozenset({"+CREG:", "+CGREG:", "+CEREG:"})

# ---- command builders (TS 27.007 / 27.005; timeouts from modem.md §2.12) -------------------

PING = Command("AT", timeout=1.0)
ECHO_OFF = Command("ATE0")
VERBOSE_ERRORS = Command("AT+CMEE=1")  # numeric +CME/+CMS codes; never 0 (§2.3)
MANUFACTURER = Command("AT+CGMI")
MODEL = Command("AT+CGMM")
REVISION = Command("AT+CGMR")
IMEI = Command("AT+CGSN")
IMSI = Command("AT+CIMI")
PIN_STATUS = Command("AT+CPIN?", "+CPIN:", timeout=15.0)  # ≥ 15 s (babca#11)
FUN_STATUS = Command("AT+CFUN?", "+CFUN:")
OPERATOR_FORMAT = Command("AT+COPS=3,0")  # long alphanumeric names
OPERATOR = Command("AT+COPS?", "+COPS:", timeout=10.0)
SIGNAL = Command("AT+CSQ", "+CSQ:")
PDU_MODE = Command("AT+CMGF=0")
SMSC = Command("AT+CSCA?", "+CSCA:")
LIST_ALL = Command("AT+CMGL=4", "+CMGL:", timeout=30.0)  # Huawei may hang here (gammu#4)


def set_charset(charset: str) -> Command:
    return Command(f'AT+CSCS="{charset}"')


def enter_pin(pin: str) -> Command:
    if not pin.isdigit() or not 4 <= len(pin) <= 8:  # TS 11.11: PINs are 4–8 digits
        raise ValueError("a PIN is 4 to 8 digits")
    return Command(f'AT+CPIN="{pin}"', timeout=15.0)


def set_fun(fun: int, reset: bool = False) -> Command:
    return Command(f"AT+CFUN={fun},1" if reset else f"AT+CFUN={fun}", timeout=30.0)


def set_registration_urcs(domain_prefix: str, n: int = 2) -> Command:
    return Command(f"AT{domain_prefix.rstrip(':')}={n}")


def query_registration(domain_prefix: str) -> Command:
    return Command(f"AT{domain_prefix.rstrip(':')}?", domain_prefix)


def set_storage(memory: str) -> Command:
    return Command(f'AT+CPMS="{memory}","{memory}","{memory}"', "+CPMS:")


def set_indications(mode: str = "2,1,0,2,0") -> Command:
    return Command(f"AT+CNMI={mode}")


def read_sms(index: int) -> Command:
    return Command(f"AT+CMGR={index}", "+CMGR:", timeout=10.0)


def delete_sms(index: int) -> Command:
    return Command(f"AT+CMGD={index}", timeout=10.0)


def send_pdu(tpdu_length: int) -> Command:
    # 60 s for +CMGS (§2.4); the 5 s prompt timeout is applied by gsm.modem.
    return Command(f"AT+CMGS={tpdu_length}", "+CMGS:", timeout=60.0, expects_prompt=True)


def ussd(request: str, dcs: int = 15) -> Command:
    if '"' in request:
        raise ValueError("a USSD string cannot contain a double quote")
    return Command(f'AT+CUSD=1,"{request}",{dcs}', timeout=15.0)  # the answer is a +CUSD URC


# ---- voice calls (modem.md §2.8) and digital voice audio (§2.9) ------------------------------

LIST_CALLS = Command("AT+CLCC", "+CLCC:")
ANSWER = Command("ATA", call=True, timeout=20.0)  # NO CARRIER if the caller gave up meanwhile
HANGUP = Command("AT+CHUP", timeout=10.0)  # never AT+QHUP: it hangs the Quectel EP06 (§2.8)
HANGUP_ATH = Command("ATH", timeout=10.0)  # fallback; needs AT+CVHU=0 on some modems
VOICE_HANGUP_MODE = Command("AT+CVHU=0")  # ATH ends voice calls too (SIMCom)
# TS 27.007 §7.13: "releases all held calls or sets User Determined User Busy (UDUB) for a
# waiting call": the waiting caller hears busy, the active call goes on (AT+CHUP/ATH would
# end it too).
REJECT_WAITING = Command("AT+CHLD=0", timeout=10.0)
# Quectel Voice-over-USB: each mode fails while the other is on, so always off first.
QUECTEL_PCM_OFF = Command("AT+QPCMV=0")
QUECTEL_PCM_ON = Command("AT+QPCMV=1,0")  # 8 kHz S16LE mono on USB if01, before ATD/ATA
SIMCOM_PCM_OFF = Command("AT+CPCMREG=0")
SIMCOM_PCM_ON = Command("AT+CPCMREG=1")  # only once the call is active (~1 s after)

_NUMBER_CHARS = frozenset("0123456789*#")
DTMF_DIGITS = frozenset("0123456789*#ABCD")


def dial(number: str) -> Command:
    """`ATD<number>;`: the `;` makes it a voice call. Most modems answer OK at once; the call
    results (NO CARRIER, BUSY, …) are final only while ATD is in flight (Wavecom, ZTE)."""
    body = number[1:] if number.startswith("+") else number
    if not 0 < len(body) <= 40 or not set(body) <= _NUMBER_CHARS:
        raise ValueError(f"not a dialable number: {number!r}")
    return Command(f"ATD{number};", call=True, timeout=60.0)


def send_tone(digit: str) -> Command:
    """`AT+VTS=<d>`, one digit per command (the quoted string form is not universal)."""
    if len(digit) != 1 or digit.upper() not in DTMF_DIGITS:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return Command(f"AT+VTS={digit.upper()}", timeout=5.0)


def raw(text: str, timeout: float = 10.0) -> Command:
    """A diagnostic command typed by an operator (`appliance modem at …`)."""
    if not text.upper().startswith("AT") or any(c in text for c in "\r\n\x1a\x1b"):
        raise ValueError("not a single AT command line")
    prefix = text[2:].split("=")[0].split("?")[0]
    return Command(text, f"{prefix}:" if prefix.startswith(("+", "^")) else None, timeout)


# ---- response parsers ----------------------------------------------------------------------


def _body(line: str, prefix: str) -> list[str]:
    if not line.startswith(prefix):
        raise AtParseError(f"expected {prefix!r}: {line!r}")
    return split_fields(line[len(prefix):])


def _num(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError as err:
        raise AtParseError(f"bad {what}: {text!r}") from err


def parse_cmgs(line: str) -> int:
    """`+CMGS: <mr>` → the TP-MR actually used (§2.4)."""
    return _num(_body(line, "+CMGS:")[0], "message reference")


@dataclass(frozen=True)
class StoredSms:
    """One message read from modem storage: `+CMGR`/`+CMGL` header plus its PDU line."""

    index: int
    stat: int | None  # 0 REC UNREAD, 1 REC READ, 2 STO UNSENT, 3 STO SENT; ZTE omits it
    length: int
    pdu: str


def parse_cmgr(lines: list[str], index: int) -> StoredSms | None:
    """`+CMGR: <stat>,[<alpha>],<length>` then the PDU; None for an empty slot (no lines)."""
    if not lines:
        return None
    fields = _body(lines[0], "+CMGR:")
    if len(lines) < 2:
        raise AtParseError(f"+CMGR without a PDU line: {lines[0]!r}")
    stat = _num(fields[0], "stat") if fields[0] else None
    return StoredSms(index, stat, _num(fields[-1], "length"), lines[1])


def parse_cmgl(lines: list[str]) -> list[StoredSms]:
    """`+CMGL: <index>,<stat>,[<alpha>],<length>` + PDU line, per entry."""
    out: list[StoredSms] = []
    i = 0
    while i < len(lines):
        fields = _body(lines[i], "+CMGL:")
        if i + 1 >= len(lines) or lines[i + 1].startswith("+CMGL:"):
            raise AtParseError(f"+CMGL without a PDU line: {lines[i]!r}")
        stat = _num(fields[1], "stat") if len(fields) > 1 and fields[1] else None
        out.append(StoredSms(_num(fields[0], "index"), stat, _num(fields[-1], "length"),
                             lines[i + 1]))
        i += 2
    return out


@dataclass(frozen=True)
class OperatorInfo:
    mode: int
    name: str | None = None
    act: int | None = None


def parse_cops(line: str) -> OperatorInfo:
    """`+COPS: 0,0,"<operator>",7` or `+COPS: 0` (not registered)."""
    fields = _body(line, "+COPS:")
    mode = _num(fields[0], "mode")
    name = fields[2] if len(fields) > 2 and fields[2] else None
    act = _num(fields[3], "AcT") if len(fields) > 3 and fields[3] else None
    return OperatorInfo(mode, name, act)


def parse_cfun(line: str) -> int:
    """`+CFUN: 1`. ZTE answers `AT+CFUN?` with a range list `(0-1,4-7),(0-1)` → -1."""
    text = _body(line, "+CFUN:")[0]
    return int(text) if text.isdigit() else -1


def parse_csca(line: str) -> str | None:
    """`+CSCA: "+15550000001",145`; empty → None (sending will fail with CMS 330)."""
    fields = _body(line, "+CSCA:")
    return fields[0] or None
