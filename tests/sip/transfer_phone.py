"""A pjsua2 desk phone that can transfer with Replaces (RFC 3891), driven over stdin.

baresip 1.0 knows no Replaces; pjsua does all three roles of an attended transfer: the
transferor's REFER whose Refer-To carries the consultation call's dialog (``xferReplaces``),
the transferee's INVITE with that ``Replaces`` header, and the target swapping the
consultation call for the transferee's (``onCallReplaced``) and hanging the former up.

Run as its own process (one pjsua2 Endpoint per process), with the phones' test helper's
``start_endpoint``: ``--register HOST:PORT --user U --password P --domain D`` (without
``--register``, an account that neither registers nor authenticates). It answers
whatever calls it. One JSON command per stdin line: ``{"op": "call", "uri": U}`` (and
``"headers": {NAME: VALUE}``),
``{"op": "hold", "call": N}``, ``{"op": "xfer", "call": N, "uri": U}`` (a blind transfer:
REFER to U), ``{"op": "xfer_replaces", "call": N, "dest": M}`` (transfer
call N to the other party of call M), ``{"op": "hangup", "call": N}``, ``{"op": "quit"}``.
One JSON event per stdout line: ``ready`` (SIP port), ``registered`` (code), ``state`` (call, state,
code, remote), ``transfer`` (code, reason, final), ``replaced`` (call, by).
"""

from __future__ import annotations

import argparse
import gc
import json
import queue
import sys
import threading
import time
from typing import Any

import pjsua2 as pj

from tests.media.phone import say, start_endpoint


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self, phone: Phone) -> None:
        super().__init__()
        self.phone = phone
        self.registered = 0

    def onRegState(self, prm: Any) -> None:
        self.registered = prm.code
        say(event="registered", code=prm.code)

    def onIncomingCall(self, prm: Any) -> None:
        call = self.phone.new_call(prm.callId)
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)


class Call(pj.Call):  # type: ignore[misc]
    def __init__(self, phone: Phone, index: int, call_id: int = -1) -> None:
        if call_id >= 0:
            super().__init__(phone.acc, call_id)
        else:
            super().__init__(phone.acc)
        self.phone = phone
        self.index = index

    def onCallState(self, prm: Any) -> None:
        ci = self.getInfo()
        say(event="state", call=self.index, state=ci.stateText, code=ci.lastStatusCode,
            remote=ci.remoteUri, local=ci.localUri, call_id=ci.callIdString)
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.phone.gone.append(self)

    def onCallMediaState(self, prm: Any) -> None:
        pass  # null audio: the signalling is what is under test

    def onCallTransferRequest(self, prm: Any) -> None:
        # The transferee: accept (202) and place the new call on a Call of our own.
        prm.newCall = self.phone.new_call()

    def onCallTransferStatus(self, prm: Any) -> None:
        # The transferor: the NOTIFYs' sipfrag. Once the target answered, hang up.
        say(event="transfer", call=self.index, code=prm.statusCode, reason=prm.reason,
            final=prm.finalNotify)
        if prm.finalNotify:
            prm.cont = False
            if prm.statusCode // 100 == 2:
                self.hangup(pj.CallOpParam())

    def onCallReplaced(self, prm: Any) -> None:
        # The target: the transferee's INVITE replaces this (consultation) call.
        new = self.phone.new_call(prm.newCallId)
        prm.newCall = new
        say(event="replaced", call=self.index, by=new.index)


class Phone:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.calls: list[Call] = []
        self.gone: list[Call] = []
        self.commands: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def new_call(self, call_id: int = -1) -> Call:
        call = Call(self, len(self.calls), call_id)
        self.calls.append(call)
        return call

    def start(self) -> None:
        a = self.args
        self.ep, tid = start_endpoint()
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{a.user}@{a.domain}"
        if a.register:
            acfg.regConfig.registrarUri = f"sip:{a.register}"
            acfg.regConfig.timeoutSec = 300
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", a.user, 0,
                                                            a.password))
        acfg.mediaConfig.transportConfig.port = a.rtp_port
        acfg.mediaConfig.transportConfig.portRange = 100
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        self.acc = Account(self)
        self.acc.create(acfg, True)
        end = time.monotonic() + 10
        while a.register and self.acc.registered == 0 and time.monotonic() < end:
            self.ep.libHandleEvents(10)
        threading.Thread(target=self._read, daemon=True).start()
        say(event="ready", port=int(self.ep.transportGetInfo(tid).localName.rsplit(":", 1)[1]))

    def _read(self) -> None:  # stdin -> commands; only the main thread touches pjsua
        for line in sys.stdin:
            if line.strip():
                self.commands.put(json.loads(line))
        self.commands.put({"op": "quit"})

    def run(self) -> None:
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
            while not self.commands.empty():
                cmd = self.commands.get()
                if cmd["op"] == "quit":
                    return
                try:
                    self._do(cmd)
                except pj.Error as err:
                    say(event="error", op=cmd["op"], reason=err.reason)

    def _do(self, cmd: dict[str, Any]) -> None:
        op = pj.CallOpParam(True)
        if cmd["op"] == "call":
            for name, value in cmd.get("headers", {}).items():
                header = pj.SipHeader()
                header.hName, header.hValue = name, value
                op.txOption.headers.append(header)
            self.new_call().makeCall(cmd["uri"], op)
        elif cmd["op"] == "hold":
            self.calls[cmd["call"]].setHold(op)
        elif cmd["op"] == "xfer":
            self.calls[cmd["call"]].xfer(cmd["uri"], op)
        elif cmd["op"] == "xfer_replaces":
            self.calls[cmd["call"]].xferReplaces(self.calls[cmd["dest"]], op)
        elif cmd["op"] == "hangup":
            self.calls[cmd["call"]].hangup(op)

    def stop(self) -> None:
        self.ep.hangupAllCalls()
        end = time.monotonic() + 1
        while time.monotonic() < end:
            self.ep.libHandleEvents(10)
        self.calls.clear()
        self.gone.clear()
        self.acc.shutdown()
        del self.acc
        gc.collect()
        self.ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
        say(event="done")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtp-port", type=int, default=31000)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--register", default="", help="HOST:PORT of the appliance (else none)")
    ap.add_argument("--user", default="phone")
    ap.add_argument("--password", default="")
    ap.add_argument("--domain", default="127.0.0.1")
    phone = Phone(ap.parse_args())
    phone.start()
    phone.run()
    phone.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
