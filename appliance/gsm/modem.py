"""The asyncio modem driver (modem.md §0 decisions 2, 3, 7, 10).

I/O (L1) together with `channel.py`, which owns the serial port (pyserial-asyncio-fast) and the
per-exchange timeouts; this module decides what to send and when. All parsing is in `at`,
`urc` and `pdu` (sans-I/O); the value types are in `state`.

Theory of operation:

* `run()` is the supervisor: open the port by its stable path, run the init sequence
  (modem.md §2.3), then serve (URC worker, signal/registration poll, storage sweep) until the
  port is lost, a command times out, or the modem reboots (unsolicited `RDY`). A timeout climbs
  the recovery ladder (§2.11): `AT` ping → re-open → `AT+CFUN=0/1` → `AT+CFUN=1,1` → down
  (slow retries). A lost port is re-opened by the same path with back-off, so a device that
  re-enumerates under another `ttyUSBn` is found again through its by-id link. A failed init
  (refused, or timed out and laddered) is retried after a pause that doubles up to
  `reopen_max_delay`, never at once.
* One command in flight (`AtChannel.lock`); the parser is told which command that is, so URCs that
  interleave are classified by grammar, never by timing (style.md §5 habit 1).
* Receive is store-and-forward (§2.5): `+CMTI` → `AT+CMGR` → `on_sms_received(pdu, index)`,
  which returns only after a durable commit → `AT+CMGD`. A full `AT+CMGL=4` sweep runs at init
  (so after every reconnect and reboot) and every `sweep_interval`. If the callback fails, the
  message stays on the modem and the next sweep offers it again: the callback must be
  idempotent (modem.md §2.5 keys on storage, index and PDU hash).
* A wrong PIN is remembered and never sent again by the driver itself (§2.10: 3 tries → PUK);
  only an explicit `enter_pin()` tries another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from appliance.errors import StoreBusy
from appliance.gsm import at
from appliance.gsm.channel import AtChannel
from appliance.gsm.errors import (
    CmeError,
    CmsError,
    CommandError,
    ModemError,
    ModemTimeout,
    ModemUnavailable,
    PduError,
    SmsSendError,
)
from appliance.gsm.pdu import (
    DeliveryOutcome,
    Submit,
    SubmitPdu,
    decode_sms_pdu,
    decode_status_report,
)
from appliance.gsm.state import (
    CallDtmfReceived,
    CallStateChanged,
    DeliveryReported,
    IncomingCall,
    ModemEvent,
    ModemSettings,
    ModemState,
    ModemStateChanged,
    Phase,
    SmsCallback,
    UrcReceived,
    UssdReceived,
    VoiceAudio,
)
from appliance.gsm.urc import (
    CallEnded,
    CallEntry,
    CallerId,
    DtmfTone,
    IncomingSms,
    MalformedUrc,
    ModemReady,
    Notice,
    RegDomain,
    Registration,
    Ring,
    SignalQuality,
    SimState,
    SimStatus,
    SmsDelivered,
    StatusReportDelivered,
    StatusReportStored,
    StorageFull,
    UnknownUrc,
    UrcValue,
    UssdResponse,
    parse_cpin,
    parse_csq,
    parse_registration,
)
from appliance.gsm.voice import Voice

__all__ = ["CallDtmfReceived", "CallStateChanged", "IncomingCall", "Modem", "VoiceAudio"]

logger = logging.getLogger(__name__)


# What the SIM and the network said (state fields), unknown again once the port is lost or
# the modem is down; the next init repopulates them. The device's identity stays.
_NO_RADIO: dict[str, object] = {"sim": None, "operator": None, "registration": None,
                                "signal": None, "smsc": None}


@dataclass(frozen=True)
class _SentPart:
    tag: str | None
    part: int
    recipient: str


class Modem:
    def __init__(
        self, settings: ModemSettings, *, on_sms_received: SmsCallback,
        on_event: Callable[[ModemEvent], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_sms = on_sms_received
        self._on_event = on_event
        self._state = ModemState()
        self._changed = asyncio.Event()
        self._channel = AtChannel(self._on_urc, self._trouble_set,
                                  prompt_timeout=settings.prompt_timeout,
                                  timeout_scale=settings.timeout_scale)
        self._receive_lock = asyncio.Lock()  # a CMTI read never races a sweep
        self._urcs: asyncio.Queue[UrcValue] = asyncio.Queue(maxsize=1000)
        self._trouble = asyncio.Event()  # a command timed out
        self._reinit = asyncio.Event()  # unsolicited RDY, or a PIN was accepted
        self._rejected_pin: str | None = None
        self._sent: dict[int, _SentPart] = {}  # by TP-MR, which wraps at 256
        self._ussd_waiter: asyncio.Future[UssdResponse] | None = None
        self._ussd_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._voice = Voice(self._channel, self._emit, poll_interval=settings.clcc_interval,
                            pcm_delay=settings.pcm_delay * settings.timeout_scale)

    # ---- public surface ---------------------------------------------------------------------

    @property
    def state(self) -> ModemState:
        return self._state

    async def __aenter__(self) -> Modem:
        self._task = asyncio.create_task(self.run(), name=f"modem {self.settings.path}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for(self, predicate: Callable[[ModemState], bool]) -> ModemState:
        """Wait until the state satisfies `predicate` (wrap it in `asyncio.timeout`)."""
        while not predicate(self._state):
            await self._changed.wait()
        return self._state

    async def send_sms(self, parts: Sequence[SubmitPdu], *, tag: str | None = None) -> list[int]:
        """Send the parts back to back (one AT+CMGS each) and return their TP-MRs."""
        self._require(Phase.READY)
        references: list[int] = []
        async with self._channel.lock:  # no other command may touch the SIM meanwhile (§2.4)
            if len(parts) > 1:
                with contextlib.suppress(CommandError, CmeError, CmsError):
                    await self._channel.run_locked(at.Command("AT+CMMS=2"))  # keep the link up
            for i, part in enumerate(parts):
                try:
                    lines = await self._channel.run_locked(at.send_pdu(part.tpdu_length), part.hex)
                    mr = at.parse_cmgs(next(x for x in lines if x.startswith("+CMGS:")))
                except StopIteration:
                    raise SmsSendError(references, i, ModemError("no +CMGS reference")) from None
                except ModemError as err:
                    raise SmsSendError(references, i, err) from err
                references.append(mr)
                self._sent[mr] = _SentPart(tag, i, _destination(part))
        logger.info("> SMS %s sent as %d part(s), MR %s", tag or "", len(parts), references)
        return references

    async def ussd(self, request: str) -> UssdResponse:
        """`AT+CUSD=1,…`; the answer is the last `+CUSD` that carries text (§2.7)."""
        self._require(Phase.READY)
        async with self._ussd_lock:
            waiter: asyncio.Future[UssdResponse] = asyncio.get_running_loop().create_future()
            self._ussd_waiter = waiter
            try:
                await self._channel.run(at.ussd(request))
                async with asyncio.timeout(self.settings.ussd_timeout
                                           * self.settings.timeout_scale):
                    return await waiter
            except TimeoutError:
                raise ModemTimeout("no USSD answer") from None
            finally:
                self._ussd_waiter = None

    async def sweep(self) -> int:
        """Read every stored message (AT+CMGL=4), hand each over, then delete it."""
        count = 0
        async with self._receive_lock:
            for stored in at.parse_cmgl(await self._channel.run(at.LIST_ALL)):
                if stored.stat in (2, 3):
                    continue  # STO UNSENT / STO SENT: not a received message
                if await self._hand_over(stored.pdu, stored.index):
                    count += 1
        return count

    async def enter_pin(self, pin: str) -> SimState:
        """An operator's explicit PIN attempt (the driver never retries one by itself)."""
        self.settings = replace(self.settings, pin=pin)
        self._rejected_pin = None
        state = await self._unlock_sim()
        if state is SimState.READY:
            self._reinit.set()
        return state

    # ---- voice calls (modem.md §2.8, §2.9; the work is in gsm.voice) -------------------------

    @property
    def voice_audio(self) -> VoiceAudio:
        """How call audio reaches the host; UNSUPPORTED: dial/answer need audio=False."""
        return self._voice.audio

    @property
    def calls(self) -> dict[int, CallEntry]:
        """The calls as AT+CLCC listed them last, by call id."""
        return self._voice.calls

    async def dial(self, number: str, *, audio: bool = True) -> int:
        """A voice call (`ATD<number>;`); the modem's call id. With `audio`, the PCM stream is
        armed first (VoiceAudioUnsupported on modems without one). Progress and the end come
        as `CallStateChanged` events."""
        self._require(Phase.READY)
        return await self._voice.dial(number, audio=audio)

    async def answer(self, *, audio: bool = True) -> None:
        """Answer the ringing call (`ATA`), arming the PCM stream first when `audio`."""
        self._require(Phase.READY)
        await self._voice.answer(audio=audio)

    async def hangup(self) -> None:
        """Hang up / reject every call (`AT+CHUP`, falling back to `ATH`)."""
        self._require(Phase.READY)
        await self._voice.hangup()

    @property
    def dtmf_urc(self) -> bool:
        """The modem reports DTMF it hears in the call itself (+RXDTMF / +QTONEDET)."""
        return self._voice.dtmf_urc

    async def reject_waiting(self) -> None:
        """Refuse a waiting (second) call busy with `AT+CHLD=0`; the active call goes on."""
        self._require(Phase.READY)
        await self._voice.reject_waiting()

    async def send_dtmf(self, digits: str) -> None:
        """Send DTMF into the active call (`AT+VTS=<d>` per digit)."""
        self._require(Phase.READY)
        await self._voice.send_dtmf(digits)

    async def list_calls(self) -> list[CallEntry]:
        """AT+CLCC now, applied (events for every change)."""
        self._require(Phase.READY)
        return await self._voice.reconcile()

    async def command(self, text: str, seconds: float = 10.0) -> list[str]:
        """A raw diagnostic command (`appliance modem at …`): the information lines."""
        return await self._channel.run(at.raw(text, seconds))

    # ---- supervisor -------------------------------------------------------------------------

    async def run(self) -> None:
        """Open, initialise, serve, recover; forever (until cancelled)."""
        delay = self.settings.reopen_delay
        failures = 0  # init attempts in a row that failed with the port still open
        try:
            while True:
                if not self._channel.is_open:
                    if not await self._open():
                        self._set(phase=Phase.DOWN)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.settings.reopen_max_delay)
                        continue
                    delay = self.settings.reopen_delay
                outcome = await self._initialise_and_serve()
                if outcome == "init failed":
                    failures += 1
                    await self._init_retry(failures)
                    continue
                failures = 0
                if outcome == "lost":
                    # The SIM, network and signal are unknown now, and nothing can be sent:
                    # not `ready` (with no SIM) until the port is back and initialised.
                    self._set(phase=Phase.DOWN, **_NO_RADIO)
                    await self._channel.close()
                    await asyncio.sleep(self.settings.reopen_delay)
                elif outcome == "trouble":
                    await self._recover()
        finally:
            await self._voice.close()
            await self._channel.close()
            self._set(phase=Phase.CLOSED)

    async def _initialise_and_serve(self) -> str:
        try:
            await self._initialise()
        except ModemUnavailable:
            return "lost"
        except ModemError as err:
            self._set(last_error=f"init failed: {err}")
            lost = self._channel.lost
            return "lost" if lost is None or lost.is_set() else "init failed"
        return await self._serve()

    async def _init_retry(self, failures: int) -> None:
        """After an init the modem refused (`+CMS ERROR: 314` SIM busy, common for a while
        after it boots) or timed out in: the ladder if it stopped answering, then a pause
        that doubles up to `reopen_max_delay`, as for an absent device (§2.11, §2.12: back
        off and retry). Retrying at once would flood it, and the log, with init sequences.
        An unsolicited RDY or the port's loss ends the pause early."""
        s = self.settings
        pause = min(s.reopen_delay * 2 ** min(failures - 1, 16), s.reopen_max_delay)
        logger.warning("x %s; attempt %d, next in %.1f s", self._state.last_error, failures,
                       pause)
        if self._trouble.is_set():  # a command timed out: the modem may be wedged
            await self._recover()
        lost = self._channel.lost
        if lost is None:
            return  # closed by the ladder; run() re-opens it
        waits = [asyncio.create_task(lost.wait()), asyncio.create_task(self._reinit.wait())]
        try:
            await asyncio.wait(waits, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if lost.is_set():
            self._set(phase=Phase.DOWN, **_NO_RADIO)
            await self._channel.close()

    async def _serve(self) -> str:
        lost = self._channel.lost
        if lost is None:
            return "lost"
        tasks = [asyncio.create_task(self._urc_worker(), name="modem urcs")]
        if self._state.phase is Phase.READY:
            tasks.append(asyncio.create_task(self._every(self.settings.poll_interval,
                                                         self._poll), name="modem poll"))
            tasks.append(asyncio.create_task(self._every(self.settings.sweep_interval,
                                                         self.sweep), name="modem sweep"))
        waits = {
            "lost": asyncio.create_task(lost.wait()),
            "trouble": asyncio.create_task(self._trouble.wait()),
            "reinit": asyncio.create_task(self._reinit.wait()),
        }
        try:
            done, _ = await asyncio.wait(waits.values(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, *waits.values()]:
                task.cancel()
            await asyncio.gather(*tasks, *waits.values(), return_exceptions=True)
        outcome = next(name for name, task in waits.items() if task in done)
        logger.info("- serve ended: %s", outcome)
        return outcome

    async def _recover(self) -> None:
        """The ladder of modem.md §2.11, one rung per failure, reset by a working ping."""
        s = self.settings
        self._set(phase=Phase.RECOVERING, recovery_rung=1)
        if await self._ping():
            return
        self._set(recovery_rung=2)  # close and re-open the port
        await self._channel.close()
        await asyncio.sleep(s.reopen_delay)
        if await self._open() and await self._ping():
            return
        self._set(recovery_rung=3)  # radio cycle: "lost the towers" (HA#71162)
        with contextlib.suppress(ModemError):
            await self._channel.run(at.set_fun(0), report=False)
            await self._channel.run(at.set_fun(1), report=False)
        if self._channel.is_open and await self._ping():
            return
        self._set(recovery_rung=4)  # full reboot; expect the tty to re-enumerate
        with contextlib.suppress(ModemError):
            await self._channel.run(at.set_fun(1, reset=True), report=False)
        await self._channel.close()
        await asyncio.sleep(s.reopen_delay)
        if await self._open() and await self._ping():
            return
        self._set(phase=Phase.DOWN, recovery_rung=5, last_error="modem not responding")
        await self._channel.close()
        await asyncio.sleep(s.reopen_max_delay)

    async def _ping(self) -> bool:
        for _ in range(self.settings.ping_tries):
            try:
                await self._channel.run(at.Command("AT", timeout=self.settings.ping_timeout),
                                report=False, scale=False)
                return True
            except ModemUnavailable:
                return False
            except ModemError:
                continue
        return False

    # ---- init sequence (modem.md §2.3; every step idempotent) -------------------------------

    async def _initialise(self) -> None:
        self._trouble.clear()
        self._reinit.clear()
        self._set(phase=Phase.INITIALISING)
        if not await self._ping():
            raise ModemTimeout("no answer to AT")
        await self._channel.run(at.ECHO_OFF)
        await self._channel.run(at.VERBOSE_ERRORS)
        manufacturer = await self._optional_text(at.MANUFACTURER)
        self._set(manufacturer=manufacturer, model=await self._optional_text(at.MODEL),
                  imei=await self._optional_text(at.IMEI))
        if await self._unlock_sim() is not SimState.READY:
            self._set(phase=Phase.SIM_LOCKED)
            return
        fun = await self._optional(at.FUN_STATUS)
        if fun and at.parse_cfun(fun[0]) in (0, 4):
            await self._channel.run(at.set_fun(1))
        await self._channel.run(at.set_registration_urcs("+CREG:"))
        for domain in ("+CGREG:", "+CEREG:"):  # LTE modems report SMS registration on CEREG
            await self._optional(at.set_registration_urcs(domain))
        await self._channel.run(at.OPERATOR_FORMAT)
        await self._poll()
        await self._channel.run(at.PDU_MODE)
        await self._optional(at.set_charset("GSM"))
        if await self._optional(at.set_storage(self.settings.storage)) is None:
            await self._channel.run(at.set_storage("SM"))
        smsc = await self._optional(at.SMSC)
        self._set(smsc=at.parse_csca(smsc[0]) if smsc else None)
        if await self._optional(at.set_indications("2,1,0,2,0")) is None:
            await self._channel.run(at.set_indications("2,1,0,1,0"))  # +CDS direct (§2.3 fallback)
        await self._optional(at.Command("AT+CLIP=1"))
        await self._voice.setup(manufacturer)
        if (manufacturer or "").lower().startswith("huawei"):
            await self._optional(at.Command("AT^USSDMODE=0"))  # text USSD (§2.7)
        await self.sweep()  # what arrived while we were away (§2.5)
        self._set(phase=Phase.READY, recovery_rung=0, last_error=None)
        logger.info("- modem ready: %s %s", self._state.manufacturer, self._state.model)

    async def _unlock_sim(self) -> SimState:
        try:
            lines = await self._channel.run(at.PIN_STATUS)
            state = at_state = parse_cpin(lines[0]) if lines else SimState.UNKNOWN
        except CmeError as err:
            state = SimState.NOT_INSERTED if err.code == 10 else SimState.UNKNOWN
            self._set(sim=state, last_error=str(err))
            return state
        pin = self.settings.pin
        if at_state is SimState.SIM_PIN and pin and pin != self._rejected_pin:
            try:
                await self._channel.run(at.enter_pin(pin))
            except (CmeError, CommandError) as err:
                self._rejected_pin = pin  # never again by ourselves: 3 tries → PUK
                self._set(sim=state, last_error=f"PIN rejected: {err}")
                logger.error("x SIM PIN rejected; not retrying it")
                return state
            state = await self._wait_sim_ready()
        elif at_state is SimState.SIM_PIN:
            self._set(last_error="SIM PIN required" if not pin else "PIN rejected before")
        self._set(sim=state)
        return state

    async def _wait_sim_ready(self) -> SimState:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.sim_ready_timeout * self.settings.timeout_scale
        state = SimState.UNKNOWN
        while loop.time() < deadline:
            with contextlib.suppress(CmeError):  # 14 SIM busy while it initialises
                lines = await self._channel.run(at.PIN_STATUS)
                state = parse_cpin(lines[0]) if lines else state
                if state is SimState.READY:
                    break
            await asyncio.sleep(0.2)
        return state

    async def _poll(self) -> None:
        for domain in (RegDomain.CS, RegDomain.EPS):
            lines = await self._optional(at.query_registration(domain.value))
            if lines:
                self._registration(parse_registration(lines[0]))
        cops = await self._optional(at.OPERATOR)
        csq = await self._optional(at.SIGNAL)
        self._set(operator=at.parse_cops(cops[0]).name if cops else self._state.operator,
                  signal=parse_csq(csq[0]) if csq else self._state.signal)

    def _registration(self, reg: Registration) -> None:
        # CS and EPS both count: an LTE-only modem may say "not registered" on CREG (§2.10).
        current = self._state.registration
        if reg.status is None:
            return
        if reg.status.registered or current is None or not current.registered:
            self._set(registration=reg.status)

    # ---- URCs -------------------------------------------------------------------------------

    def _on_urc(self, value: UrcValue) -> None:
        if isinstance(value, ModemReady):
            logger.warning("- unsolicited RDY: the modem rebooted; re-running init")
            self._reinit.set()
        elif isinstance(value, Registration):
            self._registration(value)
        elif isinstance(value, SignalQuality):
            self._set(signal=value)
        elif isinstance(value, SimStatus):
            self._set(sim=value.state)
            if value.state is SimState.READY and self._state.phase is Phase.SIM_LOCKED:
                self._reinit.set()  # unlocked by someone else (or a late READY after our PIN)
        elif isinstance(value, UssdResponse):
            self._on_ussd(value)
        elif isinstance(value, IncomingSms | StatusReportStored | SmsDelivered
                        | StatusReportDelivered | StorageFull):
            try:
                self._urcs.put_nowait(value)
            except asyncio.QueueFull:
                logger.error("x URC queue full; dropping %s (the sweep will catch up)", value)
        elif isinstance(value, Ring | CallerId | CallEntry | CallEnded | DtmfTone):
            self._voice.on_urc(value)
            self._emit(UrcReceived(value))  # the raw URC too, as before the typed events
        elif isinstance(value, Notice | UnknownUrc | MalformedUrc):
            logger.debug("< ignored %s", value)
        else:
            self._emit(UrcReceived(value))

    def _on_ussd(self, value: UssdResponse) -> None:
        waiter = self._ussd_waiter
        # Mode 2/3 notices ("Initiating Release") may precede the real answer (§2.7).
        if waiter is not None and not waiter.done() and value.mode in (0, 1, 4, 5):
            waiter.set_result(value)
        elif waiter is None:
            self._emit(UssdReceived(value))

    async def _urc_worker(self) -> None:
        while True:
            value = await self._urcs.get()
            try:
                await self._handle_urc(value)
            except (ModemError, PduError) as err:
                logger.warning("x handling %s failed: %s", value, err)

    async def _handle_urc(self, value: UrcValue) -> None:
        if isinstance(value, IncomingSms):
            if value.index < 0:
                logger.warning("x %s cannot be read (SIM7000); the sweep will retry", value)
                return
            async with self._receive_lock:
                lines = await self._channel.run(at.read_sms(value.index))
                stored = at.parse_cmgr(lines, value.index)
                if stored is not None:
                    await self._hand_over(stored.pdu, value.index)
        elif isinstance(value, SmsDelivered):
            await self._hand_over(value.pdu, None)
        elif isinstance(value, StorageFull):
            await self.sweep()
        elif isinstance(value, StatusReportDelivered):
            self._report(value.pdu)
        elif isinstance(value, StatusReportStored):
            # SR memory: select it, read, delete, restore the storage (§2.6).
            async with self._channel.lock:
                await self._channel.run_locked(at.Command('AT+CPMS="SR"', "+CPMS:"))
                try:
                    lines = await self._channel.run_locked(at.read_sms(value.index))
                    await self._channel.run_locked(at.delete_sms(value.index))
                finally:
                    await self._channel.run_locked(at.set_storage(self.settings.storage))
            stored = at.parse_cmgr(lines, value.index)
            if stored is not None:
                self._report(stored.pdu)

    async def _hand_over(self, pdu: str, index: int | None) -> bool:
        """The store-and-forward step: callback (durable commit) first, delete second."""
        try:
            await self._on_sms(pdu, index)
        except StoreBusy as err:  # the database's fault, logged by the store once a minute
            logger.warning("x SMS %s not stored, it stays on the modem: %s", index, err)
            return False
        except Exception:  # the app's failure must not stop the receive loop (§2.5)
            logger.exception("x on_sms_received failed; message %s stays on the modem", index)
            return False
        if index is not None:
            await self._channel.run(at.delete_sms(index))
        return True

    def _report(self, pdu: str) -> None:
        try:
            report = decode_status_report(pdu)
        except PduError as err:
            logger.warning("x undecodable status report: %s", err)
            return
        sent = self._sent.get(report.mr)
        if sent is not None and _digits(sent.recipient)[-8:] != _digits(report.recipient)[-8:]:
            sent = None
        if sent is not None and report.outcome is not DeliveryOutcome.PENDING:
            del self._sent[report.mr]
        self._emit(DeliveryReported(report.mr, report.recipient, report.status, report.outcome,
                                    sent.tag if sent else None, sent.part if sent else None))

    async def _open(self) -> bool:
        try:
            await self._channel.open(self.settings.path, self.settings.baudrate)
        except OSError as err:  # serial.SerialException is an OSError
            logger.warning("x cannot open %s: %s", self.settings.path, err)
            self._set(last_error=f"cannot open port: {err}")
            return False
        return True

    def _trouble_set(self) -> None:
        self._trouble.set()

    async def _optional(self, command: at.Command) -> list[str] | None:
        """A step some modems do not support: their refusal is not a failure."""
        try:
            return await self._channel.run(command)
        except (CommandError, CmeError, CmsError) as err:
            logger.debug("- %s not supported: %s", command.text, err)
            return None

    async def _optional_text(self, command: at.Command) -> str | None:
        lines = await self._optional(command)
        return " ".join(lines).strip() or None if lines else None

    async def _every(self, interval: float, job: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except ModemError as err:
                logger.warning("x periodic %s failed: %s", getattr(job, "__name__", job), err)

    # ---- state ------------------------------------------------------------------------------

    def _require(self, phase: Phase) -> None:
        if self._state.phase is not phase or not self._channel.is_open:
            raise ModemUnavailable(f"modem is {self._state.phase.value}")

    def _set(self, **changes: object) -> None:
        if changes.get("phase") is Phase.DOWN:
            changes.update(_NO_RADIO)  # absent or dead: nothing it last said holds any more
        new = replace(self._state, **changes)  # type: ignore[arg-type]
        if new == self._state:
            return
        if new.phase is not self._state.phase:
            logger.info("- modem %s -> %s", self._state.phase.value, new.phase.value)
        self._state = new
        self._changed.set()
        self._changed = asyncio.Event()
        self._emit(ModemStateChanged(new))

    def _emit(self, event: ModemEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)


def _destination(part: SubmitPdu) -> str:
    try:
        decoded = decode_sms_pdu(part.hex)
    except PduError:
        return ""
    return decoded.destination if isinstance(decoded, Submit) else ""


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())
