"""Voice call control over AT (modem.md §2.8) and the digital voice audio switch (§2.9).

I/O (L1) through the driver's `AtChannel` (one command in flight): `gsm.modem` owns one
`Voice`, forwards the call URCs to `on_urc` and exposes `dial`/`answer`/`hangup`/`send_dtmf`.

Theory of operation:

* The modem's own call list (`AT+CLCC`) is the truth. URCs (RING, +CLIP, +CLCC, NO CARRIER,
  BUSY, `VOICE CALL: END`, `^CEND`) only make us look sooner: each one wakes the poller, which
  lists the calls at once and then every `poll_interval` (§2.12: 0.5–1 s) while any call is
  up. A call the list no longer shows has ended; that also covers the SIM7600 with `^DSCI`,
  which emits no end URC at all (§2.8 "always reconcile with a final AT+CLCC").
* Every listed change becomes a `CallStateChanged`; a new ringing call becomes one
  `IncomingCall` (from +CLIP, or from the list when CLIP is off), once per call.
* Audio (§2.9) per vendor: Quectel `AT+QPCMV=0` then `AT+QPCMV=1,0` *before* ATD/ATA;
  SIMCom `AT+CPCMREG=0` before (stale state), `AT+CPCMREG=1` ~1 s after the call is active;
  both switched off after the last call. Any other modem: `VoiceAudioUnsupported`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from appliance.gsm import at
from appliance.gsm.channel import AtChannel
from appliance.gsm.errors import (
    AtParseError,
    CmeError,
    CmsError,
    CommandError,
    ModemError,
    ModemUnavailable,
)
from appliance.gsm.state import (
    CallDtmfReceived,
    CallState,
    CallStateChanged,
    IncomingCall,
    ModemEvent,
    VoiceAudio,
)
from appliance.gsm.urc import CallEnded, CallEntry, CallerId, DtmfTone, Ring, UrcValue, parse_clcc

logger = logging.getLogger(__name__)

_RINGING = (CallState.INCOMING.value, CallState.WAITING.value)
_SIMCOM_DISCONNECTED = 6  # SIMCom's +CLCC URC (AT+CLCC=1) reports a released call as stat 6
_DIAL_LIST_TRIES = 6  # polls after ATD's OK for the modem to list the new call


class VoiceAudioUnsupported(ModemError):
    """This modem has no digital voice audio over USB that we can drive (§2.9)."""


class CallFailed(ModemError):
    """ATD was accepted but the call never showed in AT+CLCC (busy, rejected at once)."""


def audio_for(manufacturer: str | None) -> VoiceAudio:
    name = (manufacturer or "").lower()
    if name.startswith("quectel"):
        return VoiceAudio.QUECTEL_USB
    if name.startswith("simcom"):
        return VoiceAudio.SIMCOM_USB
    return VoiceAudio.UNSUPPORTED


class Voice:
    def __init__(
        self, channel: AtChannel, emit: Callable[[ModemEvent], None], *,
        poll_interval: float = 0.5, pcm_delay: float = 1.0,
    ) -> None:
        self._channel = channel
        self._emit = emit
        self.poll_interval = poll_interval
        self.pcm_delay = pcm_delay
        self.audio = VoiceAudio.UNSUPPORTED
        self.manufacturer: str | None = None
        self._calls: dict[int, CallEntry] = {}
        self._announced = False  # IncomingCall already sent for the call now ringing
        self._audio_wanted = False  # the host armed PCM for the current call(s)
        self._pcm_on = False
        self.dtmf_urc = False  # the modem reports received DTMF itself (+RXDTMF/+QTONEDET)
        self._end_reason = ""  # the end URC that woke us, for the calls the list dropped
        self._kick = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def calls(self) -> dict[int, CallEntry]:
        """The calls the modem listed last, by call id."""
        return dict(self._calls)

    # ---- set-up and teardown ----------------------------------------------------------------

    async def setup(self, manufacturer: str | None) -> None:
        """Part of the init sequence (so re-run after every reboot); every step optional."""
        self.manufacturer = manufacturer
        self.audio = audio_for(manufacturer)
        self._pcm_on = False
        await self._optional(at.VOICE_HANGUP_MODE)
        self.dtmf_urc = False
        if self.audio is VoiceAudio.SIMCOM_USB:  # +RXDTMF (the SIM7000E lacks it)
            self.dtmf_urc = await self._optional(at.Command("AT+DDET=1")) is not None
        elif self.audio is VoiceAudio.QUECTEL_USB:  # +QTONEDET
            self.dtmf_urc = await self._optional(at.Command("AT+QTONEDET=1")) is not None
        if self._calls:  # after a reboot or re-open: the calls we knew are probably gone
            self._end_reason = "modem restarted"
            with contextlib.suppress(ModemError):
                await self.reconcile()

    async def close(self) -> None:
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None

    # ---- commands ---------------------------------------------------------------------------

    async def dial(self, number: str, *, audio: bool = True) -> int:
        """`ATD<number>;`; returns the modem's call id once AT+CLCC lists the call."""
        command = at.dial(number)  # ValueError before anything is sent
        if audio:
            await self._arm_audio()
        self._audio_wanted = audio
        known = set(self._calls)
        try:
            await self._channel.run(command)
        except ModemError:
            self._after_idle()
            raise
        for _ in range(_DIAL_LIST_TRIES):
            entries = await self.reconcile()
            new = [e for e in entries if not e.incoming and e.call_id not in known]
            if new:
                logger.info("> call %d to %s", new[0].call_id, number)
                return new[0].call_id
            await asyncio.sleep(self.poll_interval)
        self._after_idle()
        raise CallFailed(f"ATD{number}; accepted but no call listed")

    async def answer(self, *, audio: bool = True) -> None:
        """`ATA`, after arming the audio path (§2.8)."""
        if audio:
            await self._arm_audio()
        self._audio_wanted = audio
        try:
            await self._channel.run(at.ANSWER)
        finally:
            await self.reconcile()

    async def hangup(self) -> None:
        """`AT+CHUP` (ATH if refused) ends every call; then a final AT+CLCC (§2.8)."""
        try:
            await self._channel.run(at.HANGUP)
        except (CommandError, CmeError, CmsError):
            await self._channel.run(at.HANGUP_ATH)
        self._end_reason = "hangup"
        await self.reconcile()

    async def reject_waiting(self) -> None:
        """`AT+CHLD=0`: a waiting call is refused busy (UDUB), the active one goes on."""
        self._end_reason = "busy (call waiting refused)"
        await self._channel.run(at.REJECT_WAITING)
        await self.reconcile()

    async def send_dtmf(self, digits: str) -> None:
        """`AT+VTS=<d>` per digit, in order."""
        commands = [at.send_tone(d) for d in digits]  # validate all before sending any
        if not commands:
            raise ValueError("no digits")
        for command in commands:
            await self._channel.run(command)

    async def reconcile(self) -> list[CallEntry]:
        """List the calls (AT+CLCC) and apply the list: changes, new calls, ended calls."""
        lines = await self._channel.run(at.LIST_CALLS)
        entries: list[CallEntry] = []
        for line in lines:
            try:
                entries.append(parse_clcc(line))
            except AtParseError as err:
                logger.warning("x %s", err)
        ids = {e.call_id for e in entries}
        for entry in entries:
            self._update(entry)
        reason, self._end_reason = self._end_reason or "released", ""
        for call_id in [c for c in self._calls if c not in ids]:
            self._end(call_id, reason)
        if not any(e.stat in _RINGING for e in entries):
            self._announced = False
        return entries

    # ---- URCs (called from the channel's data callback, on the loop) -----------------------

    def on_urc(self, value: UrcValue) -> None:
        if isinstance(value, Ring):
            self._wake()
        elif isinstance(value, CallerId):
            if not self._announced:
                self._announced = True
                ringing = [c for c in self._calls.values() if c.stat in _RINGING]
                self._emit(IncomingCall(value.number or None,
                                        ringing[0].call_id if ringing else None))
            self._wake()
        elif isinstance(value, CallEntry):
            if value.stat == _SIMCOM_DISCONNECTED:
                if value.call_id in self._calls:
                    self._end(value.call_id, "released")
            else:
                self._update(value)
            self._wake()
        elif isinstance(value, CallEnded):
            self._end_reason = value.text
            self._wake()
        elif isinstance(value, DtmfTone):
            self._emit(CallDtmfReceived(value.digit))

    # ---- internals --------------------------------------------------------------------------

    def _update(self, entry: CallEntry) -> None:
        old = self._calls.get(entry.call_id)
        if entry.stat not in CallState._value2member_map_:
            return
        state = CallState(entry.stat)
        self._calls[entry.call_id] = entry
        if old is None or old.stat != entry.stat:
            logger.info("- call %d %s", entry.call_id, state.name.lower())
            self._emit(CallStateChanged(entry.call_id, state, entry.incoming,
                                        entry.number or None))
        if entry.incoming and entry.stat in _RINGING and not self._announced:
            self._announced = True
            self._emit(IncomingCall(entry.number or None, entry.call_id))
        if (state is CallState.ACTIVE and self._audio_wanted and not self._pcm_on
                and self.audio is VoiceAudio.SIMCOM_USB):
            self._pcm_on = True  # claimed now; the task sends it after the delay
            self._spawn(self._simcom_pcm_on())
        self._ensure_poller()

    def _end(self, call_id: int, reason: str) -> None:
        entry = self._calls.pop(call_id)
        logger.info("- call %d ended: %s", call_id, reason)
        self._emit(CallStateChanged(call_id, CallState.ENDED, entry.incoming,
                                    entry.number or None, reason))
        if not self._calls:
            self._announced = False
            self._after_idle()

    def _end_all(self, reason: str) -> None:
        for call_id in list(self._calls):
            self._end(call_id, reason)

    def _after_idle(self) -> None:
        """The last call is gone: switch the PCM stream off again (§2.9 'Disable')."""
        self._audio_wanted = False
        if self.audio is VoiceAudio.QUECTEL_USB and self._pcm_on:
            self._pcm_on = False
            self._spawn(self._quiet(at.QUECTEL_PCM_OFF))
        elif self.audio is VoiceAudio.SIMCOM_USB and self._pcm_on:
            self._pcm_on = False
            self._spawn(self._quiet(at.SIMCOM_PCM_OFF))

    async def _arm_audio(self) -> None:
        if self.audio is VoiceAudio.QUECTEL_USB:
            await self._optional(at.QUECTEL_PCM_OFF)  # QPCMV=1,0 fails while UAC mode is on
            await self._channel.run(at.QUECTEL_PCM_ON)
            self._pcm_on = True
        elif self.audio is VoiceAudio.SIMCOM_USB:
            await self._optional(at.SIMCOM_PCM_OFF)  # clear stale state before ATD/ATA
        else:
            raise VoiceAudioUnsupported(
                f"voice audio unsupported on {self.manufacturer or 'this modem'}")

    async def _simcom_pcm_on(self) -> None:
        await asyncio.sleep(self.pcm_delay)  # §2.12: ~1 s after the active state
        if not self._calls:
            self._pcm_on = False
            return
        try:
            await self._channel.run(at.SIMCOM_PCM_ON)
        except ModemError as err:
            self._pcm_on = False
            logger.warning("x voice audio not enabled: %s", err)

    async def _quiet(self, command: at.Command) -> None:
        try:
            await self._channel.run(command)
        except ModemError as err:
            logger.debug("- %s failed: %s", command.text, err)

    async def _optional(self, command: at.Command) -> list[str] | None:
        try:
            return await self._channel.run(command)
        except (CommandError, CmeError, CmsError) as err:
            logger.debug("- %s not supported: %s", command.text, err)
            return None

    def _wake(self) -> None:
        self._kick.set()
        self._ensure_poller()

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="modem calls")

    async def _poll(self) -> None:
        """List the calls now and then every `poll_interval`, while any call is up."""
        while True:
            if not self._kick.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._kick.wait()
            self._kick.clear()
            try:
                await self.reconcile()
            except ModemUnavailable:
                self._end_all("modem lost")
                return
            except ModemError as err:
                logger.warning("x AT+CLCC failed: %s", err)
                continue
            if not self._calls:
                return

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
