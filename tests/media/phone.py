"""A pjsua2 test phone, run as its own process (one pjsua2 Endpoint per process).

With ``--register`` it also registers with digest before calling or answering.

``--register HOST:PORT --user U --password P --domain D``: the account is ``sip:U@D``,
registers at HOST:PORT (``registered`` event with the code) and answers 401/407 challenges.

It calls a SIP URI (``--call``, ``--calls N`` parallel calls) or answers whatever calls it
(``--answer``); plays a tone into each call (``--tone HZ``), records what it hears
(``--record PATH``, one file per call: ``PATH`` for call 0, ``PATH.N`` for the others),
sends RFC 2833 digits (``--dtmf``), hangs up after ``--hold`` seconds of answered audio.
``--tone-seconds S`` stops the tone after S seconds (silence after it). ``--answer-after S``
rings (180) and answers S seconds later; a negative S rings until the caller gives up.
One JSON object per line on stdout: ``ready`` (sip port), ``state`` (call, state, code),
``dtmf`` (digit), ``done``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

import pjsua2 as pj


def say(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def start_endpoint(sip_port: int = 0) -> tuple[pj.Endpoint, int]:
    """A started pjsua2 Endpoint as the test phones use one: driven from this thread
    (``libHandleEvents``), silent, 8 kHz mono without VAD or echo canceller, a null sound
    device, PCMU only, UDP on 127.0.0.1:SIP_PORT (0: any free port). Returns the Endpoint
    and its transport's id. Also used by bench/gsm_phone.py."""
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    cfg.medConfig.channelCount = 1
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0
    ep.libInit(cfg)
    transport = pj.TransportConfig()
    transport.port = sip_port
    transport.boundAddress = "127.0.0.1"
    tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    ep.libStart()
    ep.audDevManager().setNullDev()
    for info in ep.codecEnum2():
        ep.codecSetPriority(info.codecId, 255 if info.codecId.startswith("PCMU/") else 0)
    return ep, tid


class Phone:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.calls: list[PhoneCall] = []
        self.gone: list[PhoneCall] = []
        self.gone_any = False

    def start(self) -> None:
        a = self.args
        ep, tid = start_endpoint(a.sip_port)
        self.ep = ep
        acfg = pj.AccountConfig()
        port = ep.transportGetInfo(tid).localName.rsplit(":", 1)[1]
        acfg.idUri = f"sip:phone@127.0.0.1:{port}"
        if a.register:
            acfg.idUri = f"sip:{a.user}@{a.domain}"
            acfg.regConfig.registrarUri = f"sip:{a.register}"
            acfg.regConfig.timeoutSec = 300
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", a.user, 0,
                                                            a.password))
        acfg.mediaConfig.transportConfig.port = a.rtp_port
        acfg.mediaConfig.transportConfig.portRange = 200
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        self.acc = PhoneAccount(self)
        self.acc.create(acfg, not a.register)
        if a.register:
            end = time.monotonic() + 10
            while not self.acc.registered and time.monotonic() < end:
                ep.libHandleEvents(10)
        say(event="ready", port=int(port))

    def run(self) -> None:
        a = self.args
        if a.call:
            for i in range(a.calls):
                call = PhoneCall(self, self.acc, i)
                op = pj.CallOpParam(True)
                for text in a.header:
                    name, _, value = text.partition(":")
                    h = pj.SipHeader()
                    h.hName, h.hValue = name, value.replace("{i}", str(i))
                    op.txOption.headers.append(h)
                self.calls.append(call)
                try:
                    call.makeCall(a.call, op)
                except pj.Error as err:
                    say(event="state", call=i, state="FAILED", code=0, reason=err.reason)
        deadline = time.monotonic() + a.timeout
        while time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
            now = time.monotonic()
            for call in list(self.calls):
                call.tick(now)
            self.gone_any = self.gone_any or bool(self.gone)
            self.gone.clear()  # drop disconnected calls outside their callbacks
            if (a.call or a.once) and not self.calls and self.gone_any:
                break
        # The caller runs stop(): this frame's `call` variables must be gone before
        # libDestroy, or the Call dies afterwards and pjsua asserts (sip.md §1.3 #5).

    def stop(self) -> None:
        if self.args.register:
            self.acc.setRegistration(False)
            end = time.monotonic() + 1
            while time.monotonic() < end and self.acc.registered == 200:
                self.ep.libHandleEvents(10)
        self.ep.hangupAllCalls()
        end = time.monotonic() + 2
        while self.calls and time.monotonic() < end:
            self.ep.libHandleEvents(10)
        for call in self.calls:
            call.release()
        self.calls.clear()
        self.gone.clear()
        self.acc.shutdown()
        del self.acc
        gc.collect()
        self.ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)  # BYEs are done; skip a 1 s sleep
        say(event="done")


class PhoneAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, phone: Phone) -> None:
        super().__init__()
        self.phone = phone
        self.registered = 0

    def onRegState(self, prm: Any) -> None:
        self.registered = prm.code
        say(event="registered", code=prm.code)

    def onIncomingCall(self, prm: Any) -> None:
        i = len(self.phone.calls)
        call = PhoneCall(self.phone, self, i, prm.callId)
        self.phone.calls.append(call)
        say(event="incoming", call=i, remote=call.getInfo().remoteUri)
        op = pj.CallOpParam()
        delay = self.phone.args.answer_after
        op.statusCode = 180 if delay else 200
        call.answer(op)
        if delay > 0:
            call.answer_at = time.monotonic() + delay


class PhoneCall(pj.Call):  # type: ignore[misc]
    def __init__(self, phone: Phone, acc: Any, index: int, call_id: int = -1) -> None:
        if call_id >= 0:
            super().__init__(acc, call_id)
        else:
            super().__init__(acc)
        self.phone = phone
        self.index = index
        self.answered_at = 0.0
        self.answer_at = 0.0  # --answer-after: when to send the 200
        self.dtmf_sent = False
        self.tone: Any = None
        self.recorder: Any = None

    def onCallState(self, prm: Any) -> None:
        ci = self.getInfo()
        say(event="state", call=self.index, state=ci.stateText, code=ci.lastStatusCode)
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.answered_at = time.monotonic()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.release()
            if self in self.phone.calls:
                self.phone.calls.remove(self)
                self.phone.gone.append(self)

    def onCallMediaState(self, prm: Any) -> None:
        ci = self.getInfo()
        for mi in ci.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                am = self.getAudioMedia(mi.index)
                a = self.phone.args
                if a.tone and self.tone is None:
                    self.tone = pj.ToneGenerator()
                    self.tone.createToneGenerator(8000, 1)
                    td = pj.ToneDesc()
                    on_ms = int(a.tone_seconds * 1000) if a.tone_seconds else 10000
                    td.freq1, td.freq2, td.on_msec, td.off_msec = a.tone, 0, on_ms, 0
                    td.volume = 0
                    tv = pj.ToneDescVector()
                    tv.append(td)
                    self.tone.play(tv, not a.tone_seconds)
                    self.tone.startTransmit(am)
                if a.record and self.recorder is None:
                    self.recorder = pj.AudioMediaRecorder()
                    path = a.record if self.index == 0 else f"{a.record}.{self.index}"
                    self.recorder.createRecorder(path)
                    am.startTransmit(self.recorder)

    def onDtmfDigit(self, prm: Any) -> None:
        say(event="dtmf", call=self.index, digit=prm.digit)

    def tick(self, now: float) -> None:
        a = self.phone.args
        if self.answer_at and now >= self.answer_at:
            self.answer_at = 0.0
            op = pj.CallOpParam()
            op.statusCode = 200
            self.answer(op)
        if not self.answered_at:
            return
        if a.dtmf and not self.dtmf_sent and now - self.answered_at >= a.dtmf_delay:
            self.dtmf_sent = True
            self.dialDtmf(a.dtmf)
        if a.hold and now - self.answered_at >= a.hold:
            self.answered_at = 0.0
            self.hangup(pj.CallOpParam())

    def release(self) -> None:
        self.tone = None
        self.recorder = None  # closing the recorder writes the WAV header


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sip-port", type=int, default=0)
    ap.add_argument("--rtp-port", type=int, default=30000)
    ap.add_argument("--call", default="")
    ap.add_argument("--calls", type=int, default=1)
    ap.add_argument("--answer", action="store_true")
    ap.add_argument("--once", action="store_true", help="with --answer: exit after one call")
    ap.add_argument("--header", action="append", default=[], help="Name:value; {i} = index")
    ap.add_argument("--tone", type=int, default=0)
    ap.add_argument("--tone-seconds", type=float, default=0.0, help="then silence")
    ap.add_argument("--answer-after", type=float, default=0.0,
                    help="ring, answer after N s (negative: never)")
    ap.add_argument("--record", default="")
    ap.add_argument("--dtmf", default="")
    ap.add_argument("--dtmf-delay", type=float, default=0.5)
    ap.add_argument("--hold", type=float, default=0.0, help="hang up after N s answered")
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--register", default="", help="HOST:PORT of the registrar")
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    ap.add_argument("--domain", default="")
    phone = Phone(ap.parse_args())
    phone.start()
    phone.run()
    phone.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
