"""THE pjsua2 thread of a media worker (sip.md §1.4). The only module that imports pjsua2.

One dedicated thread calls ``libCreate()`` and is the only caller of pj APIs: ``threadCnt=0``
and ``mainThreadOnly=True`` make every SIP callback run inside its ``libHandleEvents()``.
asyncio reaches it through ``submit()`` (a SimpleQueue of ``(command, future)`` drained after
each ``libHandleEvents``); it answers through ``concurrent.futures.Future`` results and the
thread-safe ``emit`` callable. No pj type leaves this module.

Object lifetimes (sip.md §1.3 #5): every pj object lives in a dict owned by this thread and
dies on it; a Call is dropped after DISCONNECTED but *outside* its callback (``_dead``);
teardown hangs up, reaps, destroys players/recorders/calls/accounts, ``gc.collect()`` and
only then ``libDestroy()``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pjsua2 as pj

from appliance.media import protocol as p
from appliance.media.dtmf import DtmfDetector
from appliance.media.worker.legs import (
    Leg,
    WorkerSettings,
    new_leg_id,
    wav_closed,
    wav_seconds,
    x_headers,
)
from appliance.media.worker.pcm_port import PcmPort
from appliance.media.worker.pcm_tty import PcmLink, PcmTty

logger = logging.getLogger(__name__)

_POLL_MS = 10  # libHandleEvents wait: bounds command latency at ~10 ms
_TEARDOWN_S = 3.0  # how long shutdown waits for BYEs to complete
_MAX_CRED_ACCOUNTS = 4  # PJSUA_MAX_ACC is 8: the default account plus a few credential sets
_WAV_CLOSE_S = 1.0  # longest wait for pjmedia to finalise a recording's WAV header
# Silence watch of <Record timeout>. pjsua2 names levels from the device's side: on a call's
# AudioMedia, getTxLevel() is what the far end sends into the bridge (pjsua's rx_level; the
# pjsua2 getRxLevel() is what we send it). The value is pjmedia's average of the last frame
# on a u-law scale, rescaled to 0-100 (0 = digital silence, 5 ~ an average of 100 of 32767,
# 10 ~ 300, 19 ~ 1000). Above VOICE_LEVEL counts as voice: a quiet line's noise stays under
# it, speech and tones are far above.
_VOICE_LEVEL = 10
_LEVEL_EVERY_S = 0.05  # how often the level is read while recording (a frame is 20 ms)
_NO_TRANSFER = 403  # our answer to a REFER or an INVITE with Replaces on a worker's call

Sink = Callable[[p.Event], None]


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, worker: PjWorker, acc: Any, leg: str, call_id: int = -1) -> None:
        if call_id >= 0:
            super().__init__(acc, call_id)
        else:
            super().__init__(acc)
        self.worker = worker
        self.leg = leg

    def onCallState(self, prm: Any) -> None:
        self.worker._pj_on_state(self)

    def onCallMediaState(self, prm: Any) -> None:
        self.worker._pj_on_media(self)

    def onCallTransferRequest(self, prm: Any) -> None:
        # pjsua's default accepts a REFER (202) and dials its Refer-To on a call no Leg
        # tracks, from this socket, past the front door's routes and budgets (and it took
        # the worker down): a call on a worker is bridged here, never transferred
        # (docs/voice.md). The proxy refuses a REFER toward a worker before it gets here
        # (sip.in_dialog): this is for one that gets here anyway.
        prm.statusCode = _NO_TRANSFER
        logger.info("x REFER on leg %s to %s refused %d", self.leg, prm.dstUri, _NO_TRANSFER)

    def onCallReplaceRequest(self, prm: Any) -> None:
        # An INVITE with Replaces naming this call: pjsua's default answers it and hangs
        # this one up, on a call onIncomingCall never sees. Refused for the same reason.
        prm.statusCode = _NO_TRANSFER
        logger.info("x INVITE replacing leg %s refused %d", self.leg, _NO_TRANSFER)

    def onDtmfDigit(self, prm: Any) -> None:
        # May run on the media thread: only the thread-safe sink is touched.
        method = "rfc2833" if prm.method == pj.PJSUA_DTMF_METHOD_RFC2833 else "sip-info"
        self.worker.emit(p.DtmfEvent(leg=self.leg, digit=str(prm.digit), method=method))


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, worker: PjWorker) -> None:
        super().__init__()
        self.worker = worker

    def onIncomingCall(self, prm: Any) -> None:
        self.worker._pj_on_incoming(self, prm)


class _Player(pj.AudioMediaPlayer):  # type: ignore[misc]
    def __init__(self, worker: PjWorker, leg: str, token: int) -> None:
        super().__init__()
        self.worker = worker
        self.leg = leg
        self.token = token

    def onEof2(self) -> None:
        # Runs on the conference clock thread: hand the fact to the pj thread, touch nothing.
        self.worker._inbox.put(("eof", self.leg, self.token))


class _Refused(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.code = code
        self.detail = detail


class PjWorker:
    def __init__(self, settings: WorkerSettings, emit: Sink) -> None:
        self.settings = settings
        self.emit = emit
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pjsua", daemon=True)
        self._started = threading.Event()
        self._init_error: BaseException | None = None
        self._beat = time.monotonic()
        self._calls = 0
        self._stopping = False
        self._shutdown_futs: list[tuple[int, concurrent.futures.Future[p.Reply]]] = []
        # Everything below is owned by the pj thread.
        self._ep: Any = None
        self._acc: Any = None
        self._cred_accs: dict[tuple[str, str, str], Any] = {}
        self._legs: dict[str, Leg] = {}
        self._dead: list[str] = []
        self._rooms: dict[str, set[str]] = {}
        self._tokens = 0
        self._closing: list[tuple[float, str, str, float, str]] = []

    # ------------------------------------------------------------------ any thread

    def start(self, timeout: float = 10.0) -> None:
        """Start the pj thread and wait until the endpoint is up (or raise why not)."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("pjsua did not start in time")
        if self._init_error is not None:
            raise RuntimeError(f"pjsua failed to start: {self._init_error}")

    def submit(self, cmd: p.Command) -> concurrent.futures.Future[p.Reply]:
        fut: concurrent.futures.Future[p.Reply] = concurrent.futures.Future()
        if not self._thread.is_alive():
            fut.set_result(p.Reply(re=cmd.id, ok=False, error="stopped"))
        else:
            self._inbox.put(("cmd", cmd, fut))
        return fut

    def heartbeat_age(self) -> float:
        return max(0.0, time.monotonic() - self._beat)

    @property
    def calls(self) -> int:
        return self._calls

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            self._pj_init()
        except BaseException as err:  # noqa: BLE001 - reported to start() verbatim
            self._init_error = err
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stopping:
                self._ep.libHandleEvents(_POLL_MS)
                self._beat = time.monotonic()
                self._pj_drain()
                self._pj_reap()
                self._pj_timers()
        except Exception:
            logger.exception("x pj loop failed")
        finally:
            self._pj_destroy()

    def _pj_init(self) -> None:
        s = self.settings
        _pjlib_log_level(s.log_level)
        ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        # One slot above our cap, so a call beyond it reaches onIncomingCall and gets our 503
        # (pjsua's own refusal is 486). The PyPI wheel clamps this to 4 (sip.md §1.3 #1).
        cfg.uaConfig.maxCalls = s.max_calls + 1
        # No User-Agent (pjsua adds none when this is empty): the legs we place reach the
        # provider through the trunk and our answers reach phones, and svmap must not
        # learn from them what we run (sip.md §3, "Hygiene").
        cfg.uaConfig.userAgent = ""
        cfg.logConfig.level = s.log_level
        cfg.logConfig.consoleLevel = s.log_level
        cfg.logConfig.msgLogging = 0
        med = cfg.medConfig
        med.clockRate = 8000  # telephony rate end to end: no resampling in the bridge
        med.sndClockRate = 8000
        med.channelCount = 1
        med.noVad = True  # keep RTP flowing in silence; some gateways hang up otherwise
        med.ecTailLen = 0  # no sound card, no echo to cancel
        ep.libInit(cfg)
        _openssl_digest_fix()
        tcfg = pj.TransportConfig()
        tcfg.port = s.sip_port
        tcfg.boundAddress = "127.0.0.1"  # signalling only from the front door on loopback
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        ep.libStart()
        ep.audDevManager().setNullDev()
        for info in ep.codecEnum2():
            name = str(info.codecId)
            prio = 255 if name.startswith("PCMU/") else 254 if name.startswith("PCMA/") else 0
            ep.codecSetPriority(name, prio)
        self._ep = ep
        self._acc = self._pj_account(f"w{s.worker}", None)

    def _pj_account(self, user: str, creds: tuple[str, str] | None,
                    proxy: str | None = None) -> Any:
        s = self.settings
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{user}@127.0.0.1:{s.sip_port}"
        mt = acfg.mediaConfig.transportConfig
        mt.port = s.rtp_ports[0]
        mt.portRange = s.rtp_ports[1] - s.rtp_ports[0]
        # sip.md §1.3 #6: pjsua binds RTP to 0.0.0.0:4000+ unless told; two workers collide.
        mt.boundAddress = s.public_address or "127.0.0.1"
        if s.public_address:
            mt.publicAddress = s.public_address
        acfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_DISABLED
        if proxy:
            acfg.sipConfig.proxies.append(proxy)  # the front door, for legs to a gateway
        if creds is not None:
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", creds[0], 0,
                                                            creds[1]))
        acc = _Account(self)
        acc.create(acfg, creds is None and not proxy)
        return acc

    def _pj_drain(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "eof":
                self._pj_on_eof(item[1], item[2])
                continue
            cmd, fut = item[1], item[2]
            try:
                reply = self._pj_execute(cmd)
            except _Refused as err:
                reply = p.Reply(re=cmd.id, ok=False, error=err.code, detail=err.detail)
            except Exception as err:
                logger.exception("x %s failed", cmd.OP)
                reply = p.Reply(re=cmd.id, ok=False, error="pj-error", detail=_text(err))
            if reply is not None:
                fut.set_result(reply)
            else:
                self._shutdown_futs.append((cmd.id, fut))

    def _pj_timers(self) -> None:
        now = time.monotonic()
        for item in list(self._closing):
            deadline, leg_id, file, elapsed, reason = item
            if wav_closed(file) or now >= deadline:
                self._closing.remove(item)
                self.emit(p.RecordDone(leg=leg_id, file=file, reason=reason,
                                       duration=round(wav_seconds(file, elapsed), 3)))
        for leg in list(self._legs.values()):
            if leg.recorder is not None and now >= leg.rec_deadline:
                self._pj_finish_record(leg, "max-seconds")
            elif leg.recorder is not None and leg.rec_silence > 0:
                self._pj_silence_watch(leg, now)
            if leg.ring_deadline and not leg.answered and now >= leg.ring_deadline:
                leg.ring_deadline = 0.0
                leg.end_code, leg.end_reason = 408, "Request Timeout"
                self._pj_hangup(leg, 0)

    def _pj_silence_watch(self, leg: Leg, now: float) -> None:
        """End LEG's recording once its far end has been quiet for ``rec_silence`` s."""
        if now - leg.rec_checked < _LEVEL_EVERY_S:
            return
        leg.rec_checked = now
        if leg.media is not None and leg.id not in self._dead:
            try:
                level = int(leg.media.getTxLevel())  # the far end's level (see above)
            except pj.Error:
                level = 0
            if level > _VOICE_LEVEL:
                leg.rec_heard = now
        if now - leg.rec_heard >= leg.rec_silence:
            self._pj_finish_record(leg, "silence")

    # ------------------------------------------------------------------ callbacks

    def _pj_on_incoming(self, acc: Any, prm: Any) -> None:
        headers = x_headers(str(prm.rdata.wholeMsg))
        leg_id = headers.get("X-Leg-Id", "")
        if not p.valid_leg(leg_id) or leg_id in self._legs:
            leg_id = new_leg_id()
        call = _Call(self, acc, leg_id, prm.callId)
        leg = Leg(leg_id, call, outgoing=False)
        self._legs[leg_id] = leg
        if self._count() > self.settings.max_calls:
            leg.refused = True
            op = pj.CallOpParam()
            op.statusCode = 503
            call.answer(op)
            self.emit(p.ErrorEvent(code="no-slot", leg=leg_id,
                                   detail=f"refused an INVITE with 503: {self._calls} calls"))
            return
        ci = call.getInfo()
        self._calls = self._count()
        self.emit(p.LegEvent(leg=leg_id, state="incoming", from_uri=str(ci.remoteUri),
                             to_uri=str(ci.localUri), call_id=str(ci.callIdString),
                             headers=headers))

    def _pj_on_state(self, call: _Call) -> None:
        leg = self._legs.get(call.leg)
        if leg is None:
            return
        ci = call.getInfo()
        state, code = ci.state, int(ci.lastStatusCode)
        if leg.refused:
            if state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self._dead.append(leg.id)
            return
        if state == pj.PJSIP_INV_STATE_EARLY and leg.outgoing and not leg.ringing:
            leg.ringing = True
            self.emit(p.LegEvent(leg=leg.id, state="ringing", code=code,
                                 reason=str(ci.lastReason)))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED and not leg.answered:
            leg.answered = True
            leg.ring_deadline = 0.0
            self.emit(p.LegEvent(leg=leg.id, state="answered", code=200))
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            code = leg.end_code or code
            reason = leg.end_reason or str(ci.lastReason)
            self.emit(p.LegEvent(leg=leg.id, state="ended", code=code, reason=reason))
            self._dead.append(leg.id)  # dropped outside this callback (sip.md §1.3 #5)

    def _pj_on_media(self, call: _Call) -> None:
        leg = self._legs.get(call.leg)
        if leg is None or leg.refused:
            return
        ci = call.getInfo()
        for mi in ci.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                leg.media = call.getAudioMedia(mi.index)
                break
        if leg.media is not None:
            pending, leg.pending = leg.pending, []
            for fn in pending:
                fn()

    def _pj_on_eof(self, leg_id: str, token: int) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.player is None or leg.player.token != token:
            return  # a player already stopped or replaced
        if leg.loops_left == 1:
            self._pj_finish_play(leg, interrupted=False)
        elif leg.loops_left > 1:
            leg.loops_left -= 1  # the player rewinds by itself (no PJMEDIA_FILE_NO_LOOP)

    # ------------------------------------------------------------------ commands

    def _pj_execute(self, cmd: p.Command) -> p.Reply | None:
        ok = p.Reply(re=cmd.id, ok=True)
        if isinstance(cmd, p.Ping):
            return dataclasses.replace(ok, heartbeat_age=self.heartbeat_age())
        if isinstance(cmd, p.Shutdown):
            self._stopping = True
            return None  # answered once teardown is complete
        if isinstance(cmd, p.Dial):
            self._pj_dial(cmd)
            return ok
        leg = self._legs.get(getattr(cmd, "leg", ""))
        if leg is None or leg.refused or leg.id in self._dead:
            raise _Refused("no-such-leg", getattr(cmd, "leg", ""))
        if isinstance(cmd, p.Answer | p.Reject):
            if leg.outgoing or leg.answered:
                raise _Refused("bad-state", "only an unanswered incoming leg")
            op = pj.CallOpParam()
            op.statusCode = cmd.code
            if isinstance(cmd, p.Answer):
                leg.call.answer(op)
            else:
                leg.call.hangup(op)
        elif isinstance(cmd, p.Hangup):
            self._pj_hangup(leg, 0)
        elif isinstance(cmd, p.Play):
            self._pj_play(leg, cmd)
        elif isinstance(cmd, p.Stop):
            if leg.player is not None:
                self._pj_finish_play(leg, interrupted=True)
        elif isinstance(cmd, p.RecordStart):
            self._pj_record(leg, cmd)
        elif isinstance(cmd, p.RecordStop):
            if leg.recorder is not None:
                self._pj_finish_record(leg, "stopped")
        elif isinstance(cmd, p.SendDtmf):
            digits = cmd.digits
            self._pj_when_media(leg, lambda: leg.call.dialDtmf(digits))
        elif isinstance(cmd, p.Bridge | p.Unbridge):
            other = self._legs.get(cmd.other)
            if other is None or other.refused:
                raise _Refused("no-such-leg", cmd.other)
            if isinstance(cmd, p.Bridge):
                self._pj_connect(leg, other)
            else:
                self._pj_disconnect(leg, other)
        elif isinstance(cmd, p.ConfJoin):
            self._pj_conf_leave(leg)
            members = self._rooms.setdefault(cmd.room, set())
            for m in members:
                self._pj_conf_link(leg, self._legs[m])
            members.add(leg.id)
            leg.room = cmd.room
        elif isinstance(cmd, p.ConfLeave):
            self._pj_conf_leave(leg)
        elif isinstance(cmd, p.ConfMute):
            self._pj_conf_mute(leg, cmd.muted)
        elif isinstance(cmd, p.PcmAttach):
            self._pj_pcm_attach(leg, cmd)
        elif isinstance(cmd, p.PcmDetach):
            self._pj_pcm_detach(leg)
        else:
            raise _Refused("unknown-op", cmd.OP)
        return ok

    def _count(self) -> int:
        return sum(1 for leg in self._legs.values() if not leg.refused)

    def _pj_dial(self, cmd: p.Dial) -> None:
        if cmd.leg in self._legs:
            raise _Refused("leg-exists", cmd.leg)
        if self._count() >= self.settings.max_calls:
            raise _Refused("no-slot", f"{self._count()} of {self.settings.max_calls} calls")
        acc = self._acc
        if cmd.username is not None or cmd.proxy is not None:
            key = (cmd.username or f"w{self.settings.worker}", cmd.password or "",
                   cmd.proxy or "")
            acc = self._cred_accs.get(key)
            if acc is None:
                if len(self._cred_accs) >= _MAX_CRED_ACCOUNTS:
                    raise _Refused("too-many-credentials")
                acc = self._cred_accs[key] = self._pj_account(
                    key[0], (key[0], key[1]) if cmd.username is not None else None, cmd.proxy)
        leg = Leg(cmd.leg, _Call(self, acc, cmd.leg), outgoing=True,
                   ring_deadline=time.monotonic() + cmd.timeout)
        self._legs[leg.id] = leg  # before makeCall: it may call back synchronously
        op = pj.CallOpParam(True)
        for name, value in {"X-Leg-Id": cmd.leg, **cmd.headers}.items():
            h = pj.SipHeader()
            h.hName, h.hValue = name, value
            op.txOption.headers.append(h)
        if cmd.from_uri:
            # pjsua's per-call From (pjsua_msg_data.local_uri, pjsip >= 2.13): the account
            # (credentials, proxy, Contact) stays shared, no Account per caller ID. In <>:
            # pjsip writes a user's %3B and %3F back as ";" and "?" (RFC 3261 allows them),
            # and a bare From would end at them (a caller ID's ";tag=x" a second tag).
            op.txOption.localUri = f"<{cmd.from_uri}>"
        try:
            leg.call.makeCall(cmd.uri, op)
        except pj.Error as err:
            del self._legs[leg.id]
            leg.call = None
            raise _Refused("dial-failed", _text(err)) from None
        self._calls = self._count()

    def _pj_hangup(self, leg: Leg, code: int) -> None:
        op = pj.CallOpParam()
        op.statusCode = code
        with contextlib.suppress(pj.Error):  # already disconnecting
            leg.call.hangup(op)

    def _pj_when_media(self, leg: Leg, fn: Callable[[], None]) -> None:
        if leg.media is not None:
            fn()
        else:
            leg.pending.append(fn)

    def _pj_play(self, leg: Leg, cmd: p.Play) -> None:
        if not os.path.isfile(cmd.file):
            raise _Refused("bad-file", cmd.file)
        if leg.player is not None:
            self._pj_finish_play(leg, interrupted=True)
        self._tokens += 1
        player = _Player(self, leg.id, self._tokens)
        try:
            player.createPlayer(cmd.file, pj.PJMEDIA_FILE_NO_LOOP if cmd.loop == 1 else 0)
        except pj.Error as err:
            raise _Refused("bad-file", _text(err)) from None
        leg.player, leg.play_file, leg.loops_left = player, cmd.file, cmd.loop
        leg.play_tag = cmd.tag

        def transmit() -> None:
            if leg.player is player:
                player.startTransmit(leg.media)

        self._pj_when_media(leg, transmit)

    def _pj_finish_play(self, leg: Leg, *, interrupted: bool) -> None:
        player, leg.player = leg.player, None
        if leg.media is not None and leg.id not in self._dead:
            with contextlib.suppress(pj.Error):
                player.stopTransmit(leg.media)
        del player  # destroyed here, on the pj thread
        self.emit(p.PlayDone(leg=leg.id, file=leg.play_file, interrupted=interrupted,
                             tag=leg.play_tag))

    def _pj_record(self, leg: Leg, cmd: p.RecordStart) -> None:
        if leg.recorder is not None:
            raise _Refused("busy", "already recording")
        recorder = pj.AudioMediaRecorder()
        try:
            recorder.createRecorder(cmd.file)
        except pj.Error as err:
            raise _Refused("bad-file", _text(err)) from None
        now = time.monotonic()
        leg.recorder, leg.rec_file = recorder, cmd.file
        leg.rec_started, leg.rec_deadline = now, now + cmd.max_seconds
        leg.rec_silence, leg.rec_heard, leg.rec_checked = cmd.silence_seconds, now, now

        def transmit() -> None:
            if leg.recorder is recorder:
                leg.media.startTransmit(recorder)

        self._pj_when_media(leg, transmit)

    def _pj_finish_record(self, leg: Leg, reason: str) -> None:
        recorder, leg.recorder = leg.recorder, None
        if leg.media is not None and leg.id not in self._dead:
            with contextlib.suppress(pj.Error):
                leg.media.stopTransmit(recorder)
        del recorder
        # pjmedia 2.15 removes conference ports asynchronously, on the clock thread: the WAV
        # header is final only a frame or two later, so record_done waits for it.
        now = time.monotonic()
        self._closing.append((now + _WAV_CLOSE_S, leg.id, leg.rec_file, now - leg.rec_started,
                              reason))

    def _pj_connect(self, a: Leg, b: Leg, *, bridge: bool = True) -> None:
        if bridge:
            a.bridged.add(b.id)
            b.bridged.add(a.id)

        def both() -> None:
            if a.id in self._legs and b.id in self._legs and a.media is not None:
                a.media.startTransmit(b.media)
                b.media.startTransmit(a.media)

        self._pj_when_media(a, lambda: self._pj_when_media(b, both))

    def _pj_disconnect(self, a: Leg, b: Leg) -> None:
        a.bridged.discard(b.id)
        b.bridged.discard(a.id)
        if a.media is not None and b.media is not None:
            with contextlib.suppress(pj.Error):
                a.media.stopTransmit(b.media)
                b.media.stopTransmit(a.media)

    def _pj_pcm_attach(self, leg: Leg, cmd: p.PcmAttach) -> None:
        """The leg's audio ⇄ a modem's PCM tty (modem.md §2.9, sip.md §1.3.1)."""
        if leg.pcm is not None:
            self._pj_pcm_detach(leg)
        try:
            device = PcmTty(cmd.device)
        except OSError as err:
            raise _Refused("bad-device", f"{cmd.device}: {err}") from None
        self._tokens += 1
        port = PcmPort()
        try:
            port.create(f"pcm-{leg.id}-{self._tokens}")  # port names must be unique
        except pj.Error as err:
            device.close()
            raise _Refused("pj-error", _text(err)) from None
        leg_id, emit = leg.id, self.emit
        on_frame = None
        if cmd.dtmf:
            detector = DtmfDetector()

            def on_frame(frame: bytes) -> None:  # the link's thread: only the sink is touched
                for digit in detector.feed(frame):
                    emit(p.DtmfEvent(leg=leg_id, digit=digit, method="inband"))

        def on_lost(detail: str) -> None:
            emit(p.ErrorEvent(code="pcm-lost", leg=leg_id, detail=detail))

        link = PcmLink(device, port.downlink, port.uplink, on_frame=on_frame, on_lost=on_lost,
                       name=f"pcm-{leg_id}"[:15])
        leg.pcm, leg.pcm_link = port, link.start()

        def transmit() -> None:
            if leg.pcm is port and leg.media is not None:
                port.startTransmit(leg.media)
                leg.media.startTransmit(port)

        self._pj_when_media(leg, transmit)

    def _pj_pcm_detach(self, leg: Leg) -> None:
        port, link = leg.pcm, leg.pcm_link
        leg.pcm = leg.pcm_link = None
        if link is not None:
            link.stop()
        if port is not None and leg.media is not None and leg.id not in self._dead:
            with contextlib.suppress(pj.Error):
                port.stopTransmit(leg.media)
                leg.media.stopTransmit(port)
        del port  # destroyed here, on the pj thread

    def _pj_conf_link(self, a: Leg, b: Leg) -> None:
        """Room members hear each other: a full mesh of one-way links, none from a muted leg."""

        def link() -> None:
            if a.id in self._legs and b.id in self._legs and a.media is not None:
                if not a.muted:
                    a.media.startTransmit(b.media)
                if not b.muted:
                    b.media.startTransmit(a.media)

        self._pj_when_media(a, lambda: self._pj_when_media(b, link))

    def _pj_conf_mute(self, leg: Leg, muted: bool) -> None:
        if leg.muted == muted:
            return
        leg.muted = muted
        if leg.room is None:
            return
        for m in self._rooms.get(leg.room, set()) - {leg.id}:
            other = self._legs[m]

            def apply(other: Leg = other) -> None:
                if leg.id not in self._legs or other.id not in self._legs:
                    return
                if leg.room != other.room or leg.muted != muted:
                    return  # changed again meanwhile
                if muted:
                    with contextlib.suppress(pj.Error):
                        leg.media.stopTransmit(other.media)
                else:
                    leg.media.startTransmit(other.media)

            def when_both(apply: Callable[[], None] = apply, other: Leg = other) -> None:
                self._pj_when_media(other, apply)

            self._pj_when_media(leg, when_both)

    def _pj_conf_leave(self, leg: Leg) -> None:
        if leg.room is None:
            return
        members = self._rooms.get(leg.room, set())
        members.discard(leg.id)
        if leg.id not in self._dead and leg.media is not None:
            for m in members:
                other = self._legs[m].media
                if other is None:
                    continue
                # One direction at a time: a muted leg's way out was never connected.
                with contextlib.suppress(pj.Error):
                    leg.media.stopTransmit(other)
                with contextlib.suppress(pj.Error):
                    other.stopTransmit(leg.media)
        if not members:
            self._rooms.pop(leg.room, None)
        leg.room = None

    # ------------------------------------------------------------------ lifetimes

    def _pj_reap(self) -> None:
        dead, self._dead = self._dead, []
        for leg_id in dead:
            leg = self._legs.get(leg_id)
            if leg is None:
                continue
            self._dead.append(leg_id)  # marks it: no stopTransmit on its vanished ports
            if leg.player is not None:
                self._pj_finish_play(leg, interrupted=True)
            if leg.recorder is not None:
                self._pj_finish_record(leg, "hangup")
            if leg.pcm is not None:
                self._pj_pcm_detach(leg)
            self._pj_conf_leave(leg)
            for other in list(leg.bridged):
                if other in self._legs:
                    self._legs[other].bridged.discard(leg_id)
            leg.pending.clear()
            leg.media = None
            leg.call = None  # the Call object dies here, outside its own callback
            del self._legs[leg_id]
            self._dead.remove(leg_id)
        self._calls = self._count()

    def _pj_destroy(self) -> None:
        ep = self._ep
        if ep is not None:
            with contextlib.suppress(pj.Error):
                ep.hangupAllCalls()
            deadline = time.monotonic() + _TEARDOWN_S
            while self._legs and time.monotonic() < deadline:
                ep.libHandleEvents(_POLL_MS)
                self._pj_reap()
            deadline = time.monotonic() + _WAV_CLOSE_S
            while self._closing and time.monotonic() < deadline:
                ep.libHandleEvents(_POLL_MS)
                self._pj_timers()
            for leg in self._legs.values():
                if leg.pcm_link is not None:
                    leg.pcm_link.stop()
                leg.player = leg.recorder = leg.media = leg.call = None
                leg.pcm = leg.pcm_link = None
            self._legs.clear()
            self._pj_refuse_inbox()
            for acc in [self._acc, *self._cred_accs.values()]:
                if acc is not None:
                    with contextlib.suppress(pj.Error):
                        acc.shutdown()
            self._acc = None
            self._cred_accs.clear()
            gc.collect()  # no pj object may be freed later, on another thread
            # Calls are already hung up and their BYEs answered above; without NO_NETWORK
            # pjsua_destroy sleeps a full second for transactions that no longer exist.
            ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
            self._ep = None
        self._beat = time.monotonic()
        self._pj_refuse_inbox()
        for id_, fut in self._shutdown_futs:
            fut.set_result(p.Reply(re=id_, ok=True))
        logger.info("- pjsua destroyed")

    def _pj_refuse_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "cmd":
                item[2].set_result(p.Reply(re=item[1].id, ok=False, error="stopped"))


def _openssl_digest_fix() -> None:
    """sip.md §1.3 #2: the wheel's OpenSSL 1.0.2 registers no MD5 until told to."""
    libs = Path(pj.__file__).resolve().parent.parent / "pjsua2_python.libs"
    for path in sorted(libs.glob("libcrypto-*.so*")):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(str(path)).OpenSSL_add_all_digests()
            return


def _pjlib_log_level(level: int) -> None:
    """libCreate() logs at level 4 before any LogConfig applies: lower pjlib's level first."""
    with contextlib.suppress(OSError, AttributeError, StopIteration):
        so = next(Path(pj.__file__).resolve().parent.glob("_pjsua2*.so"))
        ctypes.CDLL(str(so)).pj_log_set_level(level)


def _text(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return str(reason) if reason else str(err)
