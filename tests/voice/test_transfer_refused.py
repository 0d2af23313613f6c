"""A transfer inside a call whose other side is a media worker (an app call) is refused.

A call to an application is bridged by the worker, which never carries out a REFER (docs/voice.md
"Transfers"): the phone's REFER gets 403, the app's call goes on, the worker stays up (no
restart) and takes the next call. Before, pjsua's default accepted the REFER (202), dialled
the Refer-To from the worker's own socket on a call it did not track, and the worker often
died (SIGSEGV in _pjsua2.so), with every call on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN_SID
from tests.voice.test_voice_apps import _RTP_BASE, DOMAIN, NUMBER, PASSWORD, Handset

ROOT = Path(__file__).resolve().parents[2]


async def command(phone: Handset, **cmd: Any) -> None:
    assert phone.proc.stdin is not None
    phone.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
    await phone.proc.stdin.drain()


def state(call: int, name: str) -> Any:
    return lambda e: e["event"] == "state" and e["call"] == call and e["state"] == name


async def test_refer_in_an_app_call_is_refused_and_the_call_goes_on(voice: Any) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = ('<Response><Pause length="4"/><Redirect>{base}/after</Redirect>'
                           '</Response>')
    rcml.docs["/after"] = '<Response><Pause length="20"/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/start"})
    assert status == 200, body
    sip = appliance.config.sip.listen
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sip.transfer_phone", "--register",
        f"{sip.host}:{sip.port}", "--user", "alice", "--password", PASSWORD,
        "--domain", DOMAIN, "--rtp-port", str(_RTP_BASE + 300), "--timeout", "40",
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    alice = Handset(proc)
    try:
        await alice.wait(lambda e: e["event"] == "ready")
        assert {"event": "registered", "code": 200} in alice.events
        await command(alice, op="call", uri=f"sip:{NUMBER}@{sip.host}:{sip.port}")
        await alice.wait(state(0, "CONFIRMED"), 10)
        await rcml.wait("/start")
        # A blind transfer of the app's call to bob, through the front door.
        await command(alice, op="xfer", call=0, uri=f"sip:bob@{sip.host}:{sip.port}")
        await alice.wait(lambda e: e["event"] == "transfer" and e["final"], 10)
        # Answered by the proxy: the REFER never reached the worker.
        codes = [(e["code"], e["reason"]) for e in alice.events if e["event"] == "transfer"]
        assert codes == [(403, "Transfer Not Supported")], codes
        # The app's call goes on: its <Redirect> after the <Pause> is fetched, the phone's
        # call is still up, and the worker never went down.
        await rcml.wait("/after", 10)
        assert not any(state(0, "DISCONNECTED")(e) for e in alice.events), alice.events
        assert appliance.supervisor is not None
        assert [(h.up, h.restarts) for h in appliance.supervisor.workers.values()] == [
            (True, 0)]
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
        assert [(c["from"], c["status"]) for c in json.loads(body)["calls"]] == [
            ("alice", "in-progress")], body
        # The worker takes another call meanwhile, and nobody was dialled for the REFER.
        bob = await phone("--user", "bob", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                          "--hold", "1", "--timeout", "15")
        await bob.finish()
        assert any(e["event"] == "state" and e["state"] == "CONFIRMED" for e in bob.events)
        await command(alice, op="hangup", call=0)
        await alice.wait(state(0, "DISCONNECTED"), 10)
        assert [(h.up, h.restarts) for h in appliance.supervisor.workers.values()] == [
            (True, 0)]
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
        calls = json.loads(body)["calls"]
        assert sorted((c["from"], c["to"], c["status"]) for c in calls) == [
            ("alice", NUMBER, "completed"), ("bob", NUMBER, "completed")], body
    finally:
        with contextlib.suppress(Exception):
            await command(alice, op="quit")
        try:
            await alice.finish(seconds=10)
        except (TimeoutError, AssertionError):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
