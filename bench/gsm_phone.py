"""The SIP end of bench/gsm_audio.py: a pjsua2 phone (its own process: one Endpoint per
process) that registers, calls a number routed out by the modem, and stamps audio.

Its call's audio is a Python AudioMediaPort on the phone's conference bridge:

* towards the appliance (``onFrameRequested``): silence, and every ``--interval`` seconds a
  one-frame (20 ms) 1 kHz burst; the time the bridge took that frame is recorded;
* from the appliance (``onFrameReceived``): the start of each burst the fake modem sent
  (silence before it) is recorded, refined by the sample offset inside the 20 ms frame.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process of the
machine), so the bench can subtract the fake modem's stamps. One JSON object per line on
stdout: ``ready``, ``state``, then ``result`` with ``sent`` and ``heard`` (lists of times).
"""

from __future__ import annotations

import argparse
import array
import gc
import math
import sys
import time
from pathlib import Path
from typing import Any

import pjsua2 as pj

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.media.phone import say, start_endpoint  # noqa: E402

RATE = 8000  # the test phones' Endpoint clock (start_endpoint)
FRAME_SAMPLES = 160
THRESHOLD = 2000  # |sample| above this is a burst (the tone is at half scale, 16384)
QUIET_FRAMES = 5  # a burst starts only after this many quiet frames (100 ms)


def burst_frame() -> bytes:
    samples = array.array("h", (int(16384 * math.sin(2 * math.pi * 1000 * i / RATE))
                                for i in range(FRAME_SAMPLES)))
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


class ProbePort(pj.AudioMediaPort):  # type: ignore[misc]
    def __init__(self, interval: float, offset: float) -> None:
        super().__init__()
        self.interval = interval
        self.next_burst = time.monotonic() + offset
        self.burst = pj.ByteVector(burst_frame())
        self.silence = pj.ByteVector(bytes(FRAME_SAMPLES * 2))
        self.sent: list[float] = []
        self.heard: list[float] = []
        self.quiet = 0
        self.measuring = False
        self.requested = self.received = 0

    def onFrameRequested(self, frame: Any) -> None:
        self.requested += 1
        now = time.monotonic()
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        if self.measuring and now >= self.next_burst:
            self.next_burst += self.interval
            self.sent.append(now)
            frame.buf = self.burst
        else:
            frame.buf = self.silence
        frame.size = FRAME_SAMPLES * 2

    def onFrameReceived(self, frame: Any) -> None:
        self.received += 1
        now = time.monotonic()
        if not self.measuring:
            return
        if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:  # no RTP: the far end's VAD
            self.quiet += 1
            return
        samples = array.array("h", bytes(frame.buf))
        if sys.byteorder != "little":
            samples.byteswap()
        onset = next((i for i, s in enumerate(samples) if abs(s) > THRESHOLD), None)
        if onset is None:
            self.quiet += 1
            return
        if self.quiet >= QUIET_FRAMES:
            # The frame is played from `now` on: its sample ONSET is heard ONSET/8000 later.
            self.heard.append(now + onset / RATE)
        self.quiet = 0


class Call(pj.Call):  # type: ignore[misc]
    def __init__(self, acc: Any, port: ProbePort) -> None:
        super().__init__(acc)
        self.port = port
        self.confirmed_at = 0.0
        self.gone = False

    def onCallState(self, prm: Any) -> None:
        ci = self.getInfo()
        say(event="state", state=ci.stateText, code=ci.lastStatusCode)
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed_at = time.monotonic()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.gone = True


class Account(pj.Account):  # type: ignore[misc]
    registered = 0

    def onRegState(self, prm: Any) -> None:
        self.registered = prm.code


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--register", required=True, help="HOST:PORT of the appliance")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--call", required=True)
    ap.add_argument("--rtp-port", type=int, default=31000)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    ap.add_argument("--settle", type=float, default=2.0, help="unmeasured seconds first")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--offset", type=float, default=0.25)
    a = ap.parse_args()

    ep, _ = start_endpoint()  # RATE is its 8 kHz
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{a.user}@{a.domain}"
    acfg.regConfig.registrarUri = f"sip:{a.register}"
    acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", a.user, 0, a.password))
    acfg.mediaConfig.transportConfig.port = a.rtp_port
    acfg.mediaConfig.transportConfig.portRange = 100
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acc = Account()
    acc.create(acfg, True)
    end = time.monotonic() + 10
    while acc.registered != 200 and time.monotonic() < end:
        ep.libHandleEvents(10)
    say(event="ready", registered=acc.registered)

    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.clockRate = RATE
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = 20000
    port = ProbePort(a.interval, a.offset)
    port.createPort("probe", fmt)
    call = Call(acc, port)
    call.makeCall(a.call, pj.CallOpParam(True))
    end = time.monotonic() + 30 + a.settle + a.seconds
    while time.monotonic() < end and not call.gone:
        ep.libHandleEvents(10)
        now = time.monotonic()
        if call.confirmed_at and not port.measuring and now > call.confirmed_at + a.settle:
            port.next_burst = now + a.offset
            port.measuring = True
            if not port.requested:
                # Connections made inside onCallMediaState did not take with pjsua2 2.15
                # (the port was never asked for frames, nor given any); made here they do.
                am = call.getAudioMedia(-1)
                port.startTransmit(am)
                am.startTransmit(port)
        if port.measuring and now > call.confirmed_at + a.settle + a.seconds:
            port.measuring = False
            call.hangup(pj.CallOpParam())
            call.confirmed_at = float("inf")
    say(event="result", sent=port.sent, heard=port.heard, requested=port.requested,
        received=port.received)
    end = time.monotonic() + 2
    while not call.gone and time.monotonic() < end:
        ep.libHandleEvents(10)
    del call
    port = None
    acc.shutdown()
    del acc
    gc.collect()
    ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
