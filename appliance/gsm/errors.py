"""Errors of the GSM package: one base (`ModemError`), device codes kept as data.

`+CME ERROR` (3GPP TS 27.007 §9.2) and `+CMS ERROR` (TS 27.005 §3.2.5) codes are mapped to
names so an API error and a log line can say *why* a command failed (modem.md §1.3 #6: the
opaque `ERROR` / `+CMS ERROR: 500` complaint). Codes we have no name for keep the raw number.
"""

from __future__ import annotations

from appliance.errors import ApplianceError

# TS 27.007 §9.2.1 / modem.md §2.11. Only the codes seen in the field; others print as a number.
CME_NAMES: dict[int, str] = {
    0: "phone failure",
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    100: "unknown",
    515: "device busy",
}

# TS 27.005 §3.2.5 / modem.md §2.4 and §2.11.
CMS_NAMES: dict[int, str] = {
    38: "network out of order",
    42: "congestion",
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    316: "SIM PUK required",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    500: "unknown error",
}

# Text-form `+CME ERROR: SIM PIN required` (AT+CMEE=2, or modems that ignore CMEE=1) back to a code.
_CME_BY_NAME = {name.lower(): code for code, name in CME_NAMES.items()}
_CMS_BY_NAME = {name.lower(): code for code, name in CMS_NAMES.items()}


class ModemError(ApplianceError):
    """Base of every error raised by `appliance.gsm`; 503 because the modem is a backend."""

    status = 503
    # Set by the AT channel when a prompting command (AT+CMGS) fails: whether the PDU bytes
    # had been handed to the port by then. A timeout or a lost port *after* that leaves the
    # message in doubt (the modem may have sent it); *before* it nothing can have been sent.
    pdu_written = False


class ModemTimeout(ModemError):
    """A command got no final result in time (this triggers the recovery ladder)."""


class ModemUnavailable(ModemError):
    """The port is not open or the modem is not initialised."""


class AtParseError(ModemError):
    """A response line does not have the shape its command promises."""


class CommandError(ModemError):
    """A command ended with a failure result that carries no code: `ERROR`, `NO CARRIER`, …"""

    def __init__(self, result: str, command: str = "") -> None:
        super().__init__(f"{command or 'command'}: {result}")
        self.result = result
        self.command = command


class CmeError(ModemError):
    """`+CME ERROR: <n>` (equipment/SIM/network). `code` is None for an unknown text form."""

    def __init__(self, code: int | None, text: str = "", command: str = "") -> None:
        self.code = code
        self.text = text or (CME_NAMES.get(code, f"CME error {code}") if code is not None else "")
        super().__init__(f"{command or 'command'}: +CME ERROR {code}: {self.text}")
        self.command = command

    @classmethod
    def parse(cls, arg: str, command: str = "") -> CmeError:
        """Build from the text after `+CME ERROR:`, numeric or verbose."""
        arg = arg.strip()
        if arg.isdigit():
            return cls(int(arg), command=command)
        return cls(_CME_BY_NAME.get(arg.lower()), arg, command)


class CmsError(ModemError):
    """`+CMS ERROR: <n>` (SMS service). `code` is None for an unknown text form."""

    def __init__(self, code: int | None, text: str = "", command: str = "") -> None:
        self.code = code
        self.text = text or (CMS_NAMES.get(code, f"CMS error {code}") if code is not None else "")
        super().__init__(f"{command or 'command'}: +CMS ERROR {code}: {self.text}")
        self.command = command

    @classmethod
    def parse(cls, arg: str, command: str = "") -> CmsError:
        """Build from the text after `+CMS ERROR:`, numeric or verbose."""
        arg = arg.strip()
        if arg.isdigit():
            return cls(int(arg), command=command)
        return cls(_CMS_BY_NAME.get(arg.lower()), arg, command)


class PduError(ModemError):
    """A PDU is malformed (decode) or a message cannot be encoded; never IndexError/ValueError."""

    status = 400


class SmsSendError(ModemError):
    """A send failed at part `failed_part`; `references` holds the MRs of the parts that did go
    out, so a multipart message is reported as partially sent, never as a success (§2.4)."""

    def __init__(self, references: list[int], failed_part: int, cause: ModemError) -> None:
        super().__init__(f"SMS part {failed_part + 1} failed: {cause}")
        self.references = references
        self.failed_part = failed_part
        self.cause = cause
        self.code = cause.code if isinstance(cause, CmeError | CmsError) else None
