"""A fake GSM modem on a pty, speaking AT the way the transcripts in modem.md §4.3 do.

`FakeModem()` opens a pty pair; the driver under test opens `fake.path` (the slave, or the
symlink `link` that plays the role of `/dev/serial/by-id/...`). A thread serves the master side:
it echoes until `ATE0`, frames replies with `\\r\\n`, sends the `> ` prompt of `AT+CMGS` without a
line end and takes the PDU up to Ctrl-Z, keeps an SMS store (+CMTI / +CDSI indications), and
answers the setup and status commands of the init sequence (modem.md §2.3).

Fault injection (modem.md §4.2): `fail_next_send(500)`; `hang()` (answer nothing until the
port is re-opened or the modem reboots; a re-open shows as EIO on the master while no slave fd
is open, so the port must stay closed for a moment, as it does across a USB re-enumeration);
`hang_at("AT+CMGS")` (the same, from the next such command on; "CMGS": once a PDU was taken);
`unplug_at("AT+CMGS")` (the device vanishes when that command arrives);
`reboot()` (unsolicited RDY; all volatile state reset, echo back on); a SIM PIN with an attempt
counter; URCs interleaved inside the next response; `unplug()`/`replug()` (the tty disappears
and comes back, possibly under another name).

Voice (modem.md §2.8, §2.9): `ATD<n>;` answers OK at once, then the call goes dialing →
alerting → active as `AT+CLCC` shows (or BUSY / NO ANSWER, per `dial_outcome`); `inject_call()`
rings (RING + `+CLIP`) until `ATA` or `AT+CHUP`/`ATH`; `remote_hangup()` ends the call with
`NO CARRIER` (or `VOICE CALL: END`, or nothing, as the SIM7600 with ^DSCI); `AT+VTS` digits are
recorded in `dtmf_sent`; `emit_dtmf()` sends the vendor's receive-DTMF URC (`dtmf_urc=False`:
a modem without one); a call injected while another is up waits (`+CCWA`) until `AT+CHLD=0`. Quectel
`AT+QPCMV=1,0` (before ATD/ATA) or SIMCom `AT+CPCMREG=1` (once active) switches the second pty
(`pcm_path`) on: while a call is active it carries `tone_hz` as 8 kHz S16LE mono, one 320-byte
frame every 20 ms, and records what the host writes in `pcm_received`.

Test-side methods may be called from the event-loop thread; writes to the master are locked.
"""

from __future__ import annotations

import array
import contextlib
import errno
import math
import os
import re
import select
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CTRL_Z, ESC = 0x1A, 0x1B

# Commands a PIN-locked SIM still answers; everything else gets +CME ERROR: 11 (python-gsmmodem
# fakemodems.py does the same).
_PIN_FREE = re.compile(r"^AT(E[01]|Z|\+CMEE=\d|\+CGMI|\+CGMM|\+CGMR|\+CGSN|\+CPIN.*|\+CFUN.*)?$")


@dataclass
class Stored:
    stat: int  # 0 REC UNREAD, 1 REC READ
    pdu: str


PCM_RATE = 8000
PCM_FRAME = 320  # bytes: 20 ms of 8 kHz S16LE mono (modem.md §2.9)
_PCM_KEEP = PCM_RATE * 2 * 60  # at most a minute of received audio


@dataclass
class FakeCall:
    id: int
    incoming: bool
    stat: int  # +CLCC stat: 0 active, 2 dialing, 3 alerting, 4 incoming
    number: str


@dataclass
class FakeState:
    """Everything a reboot resets (settings live in RAM on a real modem)."""

    echo: bool = True
    cmee: int = 0
    cmgf: int = 1
    cnmi: str = "0,0,0,0,0"
    reg_n: dict[str, int] = field(default_factory=lambda: {"CREG": 0, "CGREG": 0, "CEREG": 0})
    fun: int = 1
    read_mem: str = "ME"
    sim_ready: bool = True


class FakeModem:
    def __init__(
        self, *, pin: str | None = None, link: Path | None = None,
        status_reports: str = "cdsi", ussd_reply: str = "Your balance is 5.00",
        manufacturer: str = "Quectel", model: str = "EC25", tone_hz: float = 700.0,
        answer_after: float = 0.3, dial_outcome: str = "answer", dtmf_urc: bool = True,
    ) -> None:
        self.pin = pin
        self.link = link
        self.status_reports = status_reports  # "cdsi" (stored, ds=2) or "cds" (direct, ds=1)
        self.ussd_reply = ussd_reply
        self.manufacturer, self.model = manufacturer, model
        self.state = FakeState(sim_ready=pin is None)
        self.store: dict[int, Stored] = {}  # "ME"/"SM" (one store is enough for tests)
        self.sr_store: dict[int, Stored] = {}
        self.capacity = 25
        self.commands: list[str] = []  # every command line received, in order
        self.command_times: list[float] = []  # time.monotonic() when each command arrived
        self.sent: list[str] = []  # PDUs submitted with AT+CMGS
        self.pin_attempts: list[str] = []
        self.next_mr = 1
        self.hung = False
        self.clears_on: str | None = None
        self._hang_at: str | None = None
        self.reopens = 0
        self.reboots = 0
        self._fail_next_send: int | None = None
        self._slow: dict[str, float] = {}  # command prefix -> seconds before the answer
        self._refuse: dict[str, str] = {}  # command prefix -> the final result it gets
        self._fail_after = 0
        self._fail_times = 0
        self._unplug_at: str | None = None
        self._unplug_after = 0
        self._interleave: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pcm_thread: threading.Thread | None = None
        self.master = -1
        self.path = ""
        # Voice.
        self.tone_hz = tone_hz
        self.answer_after = answer_after  # seconds from ATD to the far end answering
        self.dial_outcome = dial_outcome  # "answer", "busy", "no-answer" or "rejected"
        self.dtmf_urc = dtmf_urc  # False: AT+QTONEDET=1 / AT+DDET=1 answer ERROR
        self.calls: dict[int, FakeCall] = {}
        self.dialled: list[str] = []
        self.dtmf_sent: list[str] = []
        self.refused_waiting: list[str] = []  # numbers of waiting calls AT+CHLD=0 refused
        self.audio_on = False  # QPCMV=1,0 / CPCMREG=1
        self.pcm_frames_sent = 0
        self.pcm_received = bytearray()
        self._ringing: threading.Event | None = None
        self._tone = _tone_second(tone_hz)
        self._tone_pos = 0
        self._digits = b""  # one-shot downlink audio that pre-empts the tone
        self._open_pty()
        self.pcm_master, self.pcm_path = _open_raw_pty()
        os.set_blocking(self.pcm_master, False)

    # ---- lifecycle ------------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline: bytes pass through as on a USB tty
        self.path = os.ttyname(slave)
        os.close(slave)  # so the master sees EIO whenever the driver has the port closed
        self.master = master
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.path)

    def start(self) -> FakeModem:
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="fake-modem", daemon=True)
        self._thread.start()
        if self._pcm_thread is None:
            self._pcm_thread = threading.Thread(target=self._serve_pcm, name="fake-modem-pcm",
                                                daemon=True)
            self._pcm_thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        if self._pcm_thread is not None:
            self._pcm_thread.join(2)
            self._pcm_thread = None

    def __enter__(self) -> FakeModem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.close_pcm()

    def close_pcm(self) -> None:
        if self.pcm_master >= 0:
            os.close(self.pcm_master)
            self.pcm_master = -1

    def unplug(self) -> None:
        """The USB device disappears: the tty and its by-id link vanish."""
        self.close()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def replug(self) -> None:
        """Re-enumeration: a new tty (another name), the link points at it, fresh boot state."""
        self.state = FakeState(sim_ready=self.pin is None)
        self.hung, self.clears_on = False, None
        self._open_pty()
        self.start()

    # ---- test controls --------------------------------------------------------------------

    def emit(self, *lines: str) -> None:
        """Unsolicited lines, now."""
        self._write("".join(f"\r\n{line}\r\n" for line in lines))

    def interleave_next(self, *lines: str) -> None:
        """URCs to slip between the lines of the next response (or before the prompt)."""
        self._interleave.extend(lines)

    def deliver_sms(self, pdu: str, *, notify: bool = True) -> int:
        """An SMS arrives and is stored; +CMTI follows when CNMI asks for it."""
        index = self._free_index(self.store)
        self.store[index] = Stored(0, pdu)
        if notify and self.state.cnmi.split(",")[1:2] == ["1"]:
            self.emit(f'+CMTI: "ME",{index}')
        return index

    def deliver_status_report(self, pdu: str) -> None:
        if self.status_reports == "cds":
            self.emit(f"+CDS: {_tpdu_length(pdu)}", pdu)
            return
        index = self._free_index(self.sr_store)
        self.sr_store[index] = Stored(0, pdu)
        self.emit(f'+CDSI: "SR",{index}')

    def fail_next_send(self, code: int = 500, *, after: int = 0, times: int = 1) -> None:
        """Answer +CMS ERROR <code> to a send, after `after` more sends succeed; `times` sends
        in a row (the retries of the same part, say) get it."""
        self._fail_next_send = code
        self._fail_after = after
        self._fail_times = times

    def slow_next(self, prefix: str, seconds: float) -> None:
        """Answer the next command starting with PREFIX (e.g. "AT+CMGD", or "CMGS" for the
        +CMGS result after the PDU was taken) only after SECONDS: a busy modem, and the window
        in which a test can kill the host."""
        self._slow[prefix.upper()] = seconds

    def refuse(self, prefix: str, final: str | None) -> None:
        """Answer FINAL (e.g. "+CMS ERROR: 314", SIM busy for a while after a boot) to every
        command starting with PREFIX, until called again with None."""
        if final is None:
            self._refuse.pop(prefix.upper(), None)
        else:
            self._refuse[prefix.upper()] = final

    def _pause_for(self, key: str) -> None:
        for prefix in list(self._slow):
            if key.startswith(prefix):
                time.sleep(self._slow.pop(prefix))
                return

    def hang(self, clears_on: str | None = None) -> None:
        """Stop answering until the port is re-opened or the modem reboots (Huawei CMGL hang).

        With CLEARS_ON (e.g. "AT+CFUN=0"), a re-open does not help: every line is ignored
        until one starts with CLEARS_ON, which is then answered normally (a firmware stuck
        until its radio is cycled, or until a full reset)."""
        self.hung = True
        self.clears_on = clears_on.upper() if clears_on else None

    def hang_at(self, prefix: str) -> None:
        """Answer normally until a command starting with PREFIX (e.g. "AT+CMGS"), then hang as
        `hang()` does from that command on, that one included (no echo, no `> ` prompt).
        "CMGS" hangs after the next PDU was taken, before its +CMGS result."""
        self._hang_at = prefix.upper()

    def reboot(self) -> None:
        """Unsolicited reboot: RDY and the Quectel boot URCs; volatile settings reset."""
        self.reboots += 1
        self.state = FakeState(sim_ready=self.pin is None)
        self.calls.clear()
        self.audio_on = False
        self.hung = False
        sim = "READY" if self.pin is None else "SIM PIN"
        self.emit("RDY", "+CFUN: 1", f"+CPIN: {sim}", "+QUSIM: 1", "+QIND: SMS DONE")

    # ---- voice test controls ----------------------------------------------------------------

    def inject_call(self, number: str = "+15557654321", *, ring_every: float = 1.0) -> int:
        """An incoming call: RING and +CLIP now and every RING_EVERY s until it is answered or
        gone (an empty NUMBER is a withheld caller). While another call is up it is a waiting
        call instead (+CLCC stat 5): `+CCWA: "<number>",145,1` every RING_EVERY s, until
        `AT+CHLD=0` refuses it (recorded in `refused_waiting`)."""
        waiting = any(c.stat in (0, 2, 3) for c in self.calls.values())
        call = FakeCall(self._free_call_id(), True, 5 if waiting else 4, number)
        self.calls[call.id] = call
        stop = threading.Event()
        if not waiting:
            self._ringing = stop
        toa = 145 if number.startswith("+") else 129

        def ring() -> None:
            while not stop.is_set() and self.calls.get(call.id) is call and call.stat in (4, 5):
                if call.stat == 5:
                    self.emit(f'+CCWA: "{number}",{toa},1')
                else:
                    self.emit("RING", f'+CLIP: "{number}",{toa},,,,0')
                stop.wait(ring_every)

        threading.Thread(target=ring, name="fake-modem-ring", daemon=True).start()
        return call.id

    def connect_call(self, number: str = "+15557654321") -> int:
        """Test shortcut: an active call with the PCM stream on, no AT needed."""
        call = FakeCall(self._free_call_id(), True, 0, number)
        self.calls[call.id] = call
        self.audio_on = True
        return call.id

    def remote_hangup(self, urc: str | None = "NO CARRIER") -> None:
        """The far end hangs up; URC None: no end URC at all (SIM7600 with ^DSCI)."""
        self.calls.clear()
        self._audio_off_if_idle()
        if urc:
            self.emit(urc)

    def emit_dtmf(self, digit: str) -> None:
        """The modem detected a digit in the downlink: the vendor's URC."""
        if self.manufacturer.lower().startswith("simcom"):
            self.emit(f"+RXDTMF: {digit}")
        else:
            self.emit(f"+QTONEDET: {ord(digit)}")

    def play_digits(self, digits: str, *, ms: int = 80, gap_ms: int = 80) -> None:
        """Put DTMF DIGITS into the downlink audio (once), then go back to the tone."""
        self._digits = _dtmf_audio(digits, ms, gap_ms)

    @property
    def streaming(self) -> bool:
        return self.audio_on and any(c.stat == 0 for c in list(self.calls.values()))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # ---- the serving thread -----------------------------------------------------------------

    def _write(self, text: str) -> None:
        with self._lock:
            if self.master >= 0:
                with contextlib.suppress(OSError):
                    os.write(self.master, text.encode())

    def _serve(self) -> None:
        buf = bytearray()
        prompt_for: int | None = None  # TPDU length while collecting a PDU after "> "
        closed = True
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError as err:
                if err.errno != errno.EIO:
                    return
                closed = True  # no slave fd open: the driver closed the port
                time.sleep(0.005)
                continue
            if closed:
                closed = False
                self.reopens += 1
                if self.hung and self.clears_on is None:
                    self.hung = False  # a re-open (DTR drop / re-enumeration) clears the hang
                buf.clear()
                prompt_for = None
            if self.hung and self.clears_on is None:
                continue
            buf += data
            while buf:
                if prompt_for is not None:
                    end = next((i for i, b in enumerate(buf) if b in (CTRL_Z, ESC)), -1)
                    if end < 0:
                        break
                    pdu, terminator = buf[:end].decode().strip(), buf[end]
                    del buf[:end + 1]
                    prompt_for = None
                    if terminator == CTRL_Z:
                        self._submit(pdu)
                    continue
                end = buf.find(b"\r")
                if end < 0:
                    break
                line = buf[:end].decode(errors="replace").strip()
                del buf[:end + 1]
                if not line:
                    continue
                prompt_for = self._command(line)

    def _reply(self, lines: list[str], final: str = "OK") -> None:
        out = []
        for i, line in enumerate(lines):
            out.append(line)
            if i == 0 and self._interleave:
                out += self._interleave
                self._interleave = []
        if self._interleave:
            out = self._interleave + out
            self._interleave = []
        self._write("".join(f"\r\n{line}\r\n" for line in out) + f"\r\n{final}\r\n")

    def _error(self, kind: str, code: int) -> None:
        self._reply([], f"+{kind} ERROR: {code}" if self.state.cmee else "ERROR")

    def unplug_at(self, prefix: str, *, after: int = 0) -> None:
        """`unplug()` as soon as a command starting with PREFIX arrives (unanswered), once
        `after` more such commands were served."""
        self._unplug_at = prefix.upper()
        self._unplug_after = after

    def _command(self, line: str) -> int | None:
        if self._unplug_at is not None and line.upper().startswith(self._unplug_at) \
                and self._unplug_after > 0:
            self._unplug_after -= 1
        elif self._unplug_at is not None and line.upper().startswith(self._unplug_at):
            self._unplug_at = None
            self.commands.append(line)
            self.command_times.append(time.monotonic())
            threading.Thread(target=self.unplug, daemon=True).start()  # it joins this thread
            self.hung, self.clears_on = True, "(unplugged)"  # nothing more until the replug
            return None
        if self._hang_at is not None and line.upper().startswith(self._hang_at):
            self._hang_at = None
            self.hung, self.clears_on = True, None
            self.commands.append(line)  # it reached the modem, which then froze
            self.command_times.append(time.monotonic())
            return None
        if self.hung:
            if self.clears_on is None or not line.upper().startswith(self.clears_on):
                return None  # stuck: not even an echo
            self.hung, self.clears_on = False, None
        self.commands.append(line)
        self.command_times.append(time.monotonic())
        if self.state.echo:
            self._write(line + "\r")
        cmd = line.upper()
        self._pause_for(cmd)
        if not cmd.startswith("AT"):
            self._reply([], "ERROR")
            return None
        if not self.state.sim_ready and not _PIN_FREE.match(cmd):
            self._error("CME", 11)
            return None
        refusal = next((v for k, v in list(self._refuse.items()) if cmd.startswith(k)), None)
        if refusal is not None:
            self._reply([], refusal)
            return None
        return self._dispatch(cmd, line)

    def _dispatch(self, cmd: str, line: str) -> int | None:  # noqa: C901 - a command table
        st = self.state
        if cmd in ("AT", "ATZ"):
            self._reply([])
        elif cmd in ("ATE0", "ATE1"):
            st.echo = cmd == "ATE1"
            self._reply([])
        elif m := re.fullmatch(r"AT\+CMEE=(\d)", cmd):
            st.cmee = int(m[1])
            self._reply([])
        elif cmd == "AT+CGMI":
            self._reply([self.manufacturer])
        elif cmd == "AT+CGMM":
            self._reply([self.model])
        elif cmd == "AT+CGMR":
            self._reply(["EC25EFAR06A06M4G"])
        elif cmd == "AT+CGSN":
            self._reply(["867962040000001"])
        elif cmd == "AT+CIMI":
            self._reply(["234150000000001"])
        elif cmd == "AT+CPIN?":
            self._reply(["+CPIN: READY" if st.sim_ready else "+CPIN: SIM PIN"])
        elif m := re.fullmatch(r'AT\+CPIN="?(\d+)"?', cmd):
            self._enter_pin(m[1])
        elif cmd == "AT+CFUN?":
            self._reply([f"+CFUN: {st.fun}"])
        elif cmd == "AT+CFUN=1,1":
            self._reply([])
            self.reboot()
        elif m := re.fullmatch(r"AT\+CFUN=(\d)", cmd):
            st.fun = int(m[1])
            self._reply([])
        elif m := re.fullmatch(r"AT\+(CREG|CGREG|CEREG)=(\d)", cmd):
            st.reg_n[m[1]] = int(m[2])
            self._reply([])
        elif m := re.fullmatch(r"AT\+(CREG|CGREG|CEREG)\?", cmd):
            n = st.reg_n[m[1]]
            cell = ',"4CA","81DE445",7' if n == 2 else ""
            self._reply([f"+{m[1]}: {n},1{cell}"])
        elif cmd == "AT+COPS?":
            self._reply(['+COPS: 0,0,"Fake Telecom",7'])
        elif cmd == "AT+CSQ":
            self._reply(["+CSQ: 21,99"])
        elif m := re.fullmatch(r"AT\+CMGF=(\d)", cmd):
            st.cmgf = int(m[1])
            self._reply([])
        elif m := re.fullmatch(r'AT\+CPMS="(\w+)".*', cmd):
            st.read_mem = m[1]
            used = len(self.sr_store if m[1] == "SR" else self.store)
            self._reply([f"+CPMS: {used},{self.capacity},{used},{self.capacity},"
                         f"{used},{self.capacity}"])
        elif cmd == "AT+CSCA?":
            self._reply(['+CSCA: "+15550000001",145'])
        elif m := re.fullmatch(r"AT\+CNMI=([\d,]+)", cmd):
            st.cnmi = m[1]
            self._reply([])
        elif m := re.fullmatch(r"AT\+CMGS=(\d+)", cmd):
            self._write("".join(f"\r\n{u}\r\n" for u in self._interleave) + "\r\n> ")
            self._interleave = []
            return int(m[1])
        elif m := re.fullmatch(r"AT\+CMGR=(\d+)", cmd):
            store = self.sr_store if st.read_mem == "SR" else self.store
            entry = store.get(int(m[1]))
            if entry is None:
                self._reply([])
            else:
                self._reply([f"+CMGR: {entry.stat},,{_tpdu_length(entry.pdu)}", entry.pdu])
                entry.stat = 1
        elif cmd == "AT+CMGL=4":
            lines = []
            for index, entry in sorted(self.store.items()):
                lines += [f"+CMGL: {index},{entry.stat},,{_tpdu_length(entry.pdu)}", entry.pdu]
            self._reply(lines)
        elif m := re.fullmatch(r"AT\+CMGD=(\d+)(,0)?", cmd):
            store = self.sr_store if st.read_mem == "SR" else self.store
            store.pop(int(m[1]), None)
            self._reply([])
        elif m := re.fullmatch(r'AT\+CUSD=1,"([^"]*)"(,\d+)?', line.upper()):
            self._reply([])
            self.emit(f'+CUSD: 0,"{self.ussd_reply}",15')
        elif re.fullmatch(r"AT\+(CSCS=.*|CSMS=\d|CLIP=\d|CMMS=\d|CUSD=[02]|COPS=3,0|CRC=\d)", cmd):
            self._reply([])
        elif not self._voice(cmd):
            self._reply([], "ERROR")
        return None

    # ---- voice --------------------------------------------------------------------------------

    def _voice(self, cmd: str) -> bool:  # noqa: C901 - a command table
        simcom = self.manufacturer.lower().startswith("simcom")
        if m := re.fullmatch(r"ATD([+0-9*#]+);", cmd):
            if any(c.stat in (0, 2, 3) for c in self.calls.values()):
                self._reply([], "NO CARRIER")  # one call at a time in this fake
                return True
            self.dialled.append(m[1])
            if self.dial_outcome == "rejected":  # refused before the call was ever listed
                self._reply([])
                self.emit("NO CARRIER")
                return True
            call = FakeCall(self._free_call_id(), False, 2, m[1])
            self.calls[call.id] = call
            self._reply([])  # most modems: OK at once (modem.md §2.8)
            threading.Thread(target=self._progress, args=(call,), daemon=True).start()
        elif cmd == "ATA":
            ringing = [c for c in self.calls.values() if c.incoming and c.stat == 4]
            if not ringing:
                self._reply([], "NO CARRIER")
                return True
            ringing[0].stat = 0
            if self._ringing is not None:
                self._ringing.set()
            self._reply([])
            if simcom:
                self.emit("VOICE CALL: BEGIN")
        elif cmd in ("AT+CHUP", "ATH", "ATH0"):
            if self._ringing is not None:
                self._ringing.set()
            had = bool(self.calls)
            self.calls.clear()
            self._audio_off_if_idle()
            self._reply([])
            if had and simcom:
                self.emit("VOICE CALL: END: 000017")
        elif cmd == "AT+CHLD=0":
            waiting = [c for c in self.calls.values() if c.stat == 5]
            for c in waiting:  # UDUB: the waiting caller hears busy; the active call goes on
                del self.calls[c.id]
                self.refused_waiting.append(c.number)
            self._reply([])
        elif cmd == "AT+CLCC":
            self._reply([f'+CLCC: {c.id},{int(c.incoming)},{c.stat},0,0,"{c.number}",'
                         f'{145 if c.number.startswith("+") else 129}'
                         for c in sorted(self.calls.values(), key=lambda c: c.id)])
        elif m := re.fullmatch(r'AT\+VTS=("?)([0-9A-D*#]+)\1', cmd):
            if not any(c.stat == 0 for c in self.calls.values()):
                self._error("CME", 3)  # operation not allowed: no active call
                return True
            self.dtmf_sent.append(m[2])
            self._reply([])
        elif cmd == "AT+QPCMV=0" and not simcom:
            self.audio_on = False
            self._reply([])
        elif cmd == "AT+QPCMV=1,0" and not simcom:
            self.audio_on = True
            self._reply([])
        elif cmd == "AT+QPCMV?" and not simcom:
            self._reply([f"+QPCMV: {int(self.audio_on)},0"])
        elif cmd in ("AT+CPCMREG=0", "AT+CPCMREG=0,0") and simcom:
            self.audio_on = False
            self._reply([])
        elif cmd == "AT+CPCMREG=1" and simcom:
            if not any(c.stat == 0 for c in self.calls.values()):
                self._reply([], "ERROR")  # works only once the call is connected (§2.9)
                return True
            self.audio_on = True
            self._reply([])
        elif cmd in ("AT+CVHU=0", "AT+CLCC=1"):
            self._reply([])
        elif (cmd == "AT+DDET=1" and simcom) or (cmd == "AT+QTONEDET=1" and not simcom):
            self._reply([], "OK" if self.dtmf_urc else "ERROR")
        else:
            return False
        return True

    def _progress(self, call: FakeCall) -> None:
        """Dialing → alerting → active (or BUSY / NO ANSWER), as the far end does."""
        time.sleep(self.answer_after / 3)
        if self.calls.get(call.id) is not call:
            return
        call.stat = 3
        time.sleep(self.answer_after * 2 / 3)
        if self.calls.get(call.id) is not call:
            return
        if self.dial_outcome == "answer":
            call.stat = 0
            if self.manufacturer.lower().startswith("simcom"):
                self.emit("VOICE CALL: BEGIN")
            return
        del self.calls[call.id]
        self._audio_off_if_idle()
        self.emit("BUSY" if self.dial_outcome == "busy" else "NO ANSWER")

    def _audio_off_if_idle(self) -> None:
        if not self.calls and self.manufacturer.lower().startswith("simcom"):
            self.audio_on = False  # SIMCom: the PCM registration ends with the call

    def _free_call_id(self) -> int:
        call_id = 1
        while call_id in self.calls:
            call_id += 1
        return call_id

    def _serve_pcm(self) -> None:
        """One 320-byte tone frame per 20 ms tick while streaming; take whatever the host
        wrote. Nothing is written while no one has the PCM tty open (EIO on the master)."""
        tick = time.monotonic()
        while not self._stop.is_set() and self.pcm_master >= 0:
            tick += 0.02
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                tick = time.monotonic()  # fell behind (a loaded test host): no burst
            opened = True
            try:
                data = os.read(self.pcm_master, 65536)
                if self.streaming:
                    self.pcm_received += data
                    del self.pcm_received[:-_PCM_KEEP]
            except BlockingIOError:
                pass
            except OSError:
                opened = False  # EIO: the slave is closed
            if opened and self.streaming:
                if self._digits:
                    frame, self._digits = self._digits[:PCM_FRAME], self._digits[PCM_FRAME:]
                    frame = frame.ljust(PCM_FRAME, b"\0")
                else:
                    frame = self._tone[self._tone_pos:self._tone_pos + PCM_FRAME]
                    self._tone_pos = (self._tone_pos + PCM_FRAME) % len(self._tone)
                with contextlib.suppress(OSError):
                    os.write(self.pcm_master, frame)
                    self.pcm_frames_sent += 1

    def _enter_pin(self, pin: str) -> None:
        if self.state.sim_ready or self.pin is None:
            self._reply([], "ERROR")  # SIM800: no PIN set → ERROR (modem.md §4.3)
            return
        self.pin_attempts.append(pin)
        if pin != self.pin:
            self._error("CME", 16)  # incorrect password
            return
        self.state.sim_ready = True
        self._reply([])
        self.emit("+CPIN: READY", "+QIND: SMS DONE")

    def _submit(self, pdu: str) -> None:
        if self._fail_next_send is not None and self._fail_after > 0:
            self._fail_after -= 1
        elif self._fail_next_send is not None:
            code = self._fail_next_send
            self._fail_times -= 1
            if self._fail_times <= 0:
                self._fail_next_send = None
            self._error("CMS", code)
            return
        self.sent.append(pdu)  # the modem has it now, whatever happens to the host
        if self._hang_at == "CMGS":
            self._hang_at = None
            self.hung, self.clears_on = True, None
            return
        self._pause_for("CMGS")
        mr = self.next_mr
        self.next_mr = (self.next_mr + 1) % 256
        self._reply([f"+CMGS: {mr}"])

    @staticmethod
    def _free_index(store: dict[int, Stored]) -> int:
        index = 0
        while index in store:
            index += 1
        return index


def _open_raw_pty() -> tuple[int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    return master, path


def _tone_second(freq: float, amplitude: float = 0.5) -> bytes:
    """One second of a sine at FREQ, S16LE (an integer frequency loops without a click)."""
    samples = array.array("h", (int(amplitude * 32767 * math.sin(2 * math.pi * freq * i
                                                                  / PCM_RATE))
                                for i in range(PCM_RATE)))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


_DTMF_ROWS, _DTMF_COLS = (697, 770, 852, 941), (1209, 1336, 1477, 1633)
_DTMF_KEYS = ("123A", "456B", "789C", "*0#D")


def _dtmf_audio(digits: str, ms: int, gap_ms: int) -> bytes:
    out = array.array("h")
    for digit in digits:
        r = next(i for i, keys in enumerate(_DTMF_KEYS) if digit in keys)
        c = _DTMF_KEYS[r].index(digit)
        out.extend(int(8000 * (math.sin(2 * math.pi * _DTMF_ROWS[r] * i / PCM_RATE)
                               + math.sin(2 * math.pi * _DTMF_COLS[c] * i / PCM_RATE)))
                   for i in range(PCM_RATE * ms // 1000))
        out.extend([0] * (PCM_RATE * gap_ms // 1000))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def _tpdu_length(pdu: str) -> int:
    """The `<length>` of +CMGR/+CMGL/+CDS: TPDU octets, without the SCA (TS 27.005 §3.1)."""
    return len(pdu) // 2 - 1 - int(pdu[:2], 16)
