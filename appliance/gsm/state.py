"""Value types of the modem driver: settings, the state snapshot, and the events it emits.

Pure data (L0), split from `modem.py` so services and the API can name these types without
importing the I/O module (style.md §3.1).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from appliance.gsm.pdu import DeliveryOutcome
from appliance.gsm.urc import RegStatus, SignalQuality, SimState, UrcValue, UssdResponse


@dataclass(frozen=True)
class ModemSettings:
    path: str  # a stable path: /dev/serial/by-id/…-if02-port0 (modem.md §2.1)
    baudrate: int = 115200  # ignored by USB CDC ttys; real UARTs need it (§2.1)
    pin: str | None = None
    storage: str = "ME"
    ping_timeout: float = 1.0  # §2.12: 0.5–1 s per try, ≤ 3 tries
    ping_tries: int = 3
    prompt_timeout: float = 5.0  # the `> ` of AT+CMGS (§2.4)
    timeout_scale: float = 1.0  # multiplies every command's own timeout (tests shrink it)
    poll_interval: float = 30.0  # CSQ / CREG / COPS
    sweep_interval: float = 60.0  # AT+CMGL=4 (§2.5)
    reopen_delay: float = 1.0  # pause between close and re-open (USB re-enumeration)
    reopen_max_delay: float = 30.0  # back-off cap while the device is absent
    sim_ready_timeout: float = 20.0  # after a PIN: wait for +CPIN: READY
    ussd_timeout: float = 30.0  # §2.12: 15–30 s
    clcc_interval: float = 0.5  # §2.12: AT+CLCC polling while a call is up, 0.5–1 s
    pcm_delay: float = 1.0  # §2.12: SIM7600 AT+CPCMREG=1 ~1 s after the active state


class Phase(enum.Enum):
    CLOSED = "closed"
    INITIALISING = "initialising"
    READY = "ready"
    SIM_LOCKED = "sim-locked"  # PIN/PUK needed, or a wrong PIN was rejected
    RECOVERING = "recovering"
    DOWN = "down"  # the ladder is exhausted or the device is absent; retrying slowly


@dataclass(frozen=True)
class ModemState:
    """A snapshot for /health and the API; replaced, never mutated. sim, operator,
    registration, signal and smsc are None (unknown) while the port is lost or the phase is
    DOWN; the next init fills them again."""

    phase: Phase = Phase.CLOSED
    sim: SimState | None = None
    operator: str | None = None
    registration: RegStatus | None = None
    signal: SignalQuality | None = None
    manufacturer: str | None = None
    model: str | None = None
    imei: str | None = None
    smsc: str | None = None
    last_error: str | None = None
    recovery_rung: int = 0


@dataclass(frozen=True)
class ModemStateChanged:
    state: ModemState


@dataclass(frozen=True)
class DeliveryReported:
    """A status report matched (or not: tag None) to a part we sent, by TP-MR (§2.6)."""

    mr: int
    recipient: str
    status: int
    outcome: DeliveryOutcome
    tag: str | None
    part: int | None


@dataclass(frozen=True)
class UssdReceived:
    """A network-initiated USSD (nobody was waiting for it)."""

    response: UssdResponse


@dataclass(frozen=True)
class UrcReceived:
    """Any other URC (calls: RING, +CLIP, +CLCC, …) for whoever handles it."""

    value: UrcValue


class CallState(enum.Enum):
    """A modem call's state: `+CLCC` stat 0..5 (TS 27.007 §7.18), plus ENDED."""

    ACTIVE = 0
    HELD = 1
    DIALING = 2
    ALERTING = 3
    INCOMING = 4
    WAITING = 5
    ENDED = -1


class VoiceAudio(enum.Enum):
    """How the call's audio reaches the host (modem.md §2.9)."""

    QUECTEL_USB = "quectel-qpcmv"  # AT+QPCMV=1,0 before ATD/ATA; PCM on USB if01
    SIMCOM_USB = "simcom-cpcmreg"  # AT+CPCMREG=1 once active; PCM on USB if04
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class IncomingCall:
    """A call is ringing (RING/+CRING then +CLIP, or a new incoming +CLCC entry); once per
    call. number: None when withheld or unknown; call_id when the modem has listed it."""

    number: str | None
    call_id: int | None = None


@dataclass(frozen=True)
class CallStateChanged:
    """A call appeared or changed state; ENDED once it is gone (`reason`: the URC that said
    so, or "released" when a later AT+CLCC no longer listed it)."""

    call_id: int
    state: CallState
    incoming: bool
    number: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class CallDtmfReceived:
    """A digit the modem itself detected in the downlink (+RXDTMF / +QTONEDET)."""

    digit: str


ModemEvent = (ModemStateChanged | DeliveryReported | UssdReceived | UrcReceived | IncomingCall
              | CallStateChanged | CallDtmfReceived)
SmsCallback = Callable[[str, "int | None"], Awaitable[None]]
