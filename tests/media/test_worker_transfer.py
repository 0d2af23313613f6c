"""A worker never carries out a transfer: a REFER in its call, or an INVITE with Replaces
naming its call, is answered 403 and the call goes on (docs/voice.md "Transfers").

pjsua's default accepted the REFER (202) and dialled its Refer-To from the worker's own
socket on a call the worker did not track (and the worker often crashed), and answered an
INVITE with Replaces on a call ``onIncomingCall`` never saw. The phone is
``tests/sip/transfer_phone.py``, calling the worker directly.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.media import protocol as p
from tests.media.conftest import Phone, Worker, free_udp_port, rtp_slice

pytest.importorskip("pjsua2")

ROOT = Path(__file__).resolve().parents[2]


async def transfer_phone() -> Phone:
    lo, _ = rtp_slice(100)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sip.transfer_phone", "--rtp-port", str(lo),
        "--timeout", "30", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    phone = Phone(proc)
    await phone.events.wait_for(lambda e: e["event"] == "ready", 10)
    return phone


async def command(phone: Phone, **cmd: Any) -> None:
    assert phone.proc.stdin is not None
    phone.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
    await phone.proc.stdin.drain()


def state(call: int, name: str) -> Any:
    return lambda e: e["event"] == "state" and e["call"] == call and e["state"] == name


async def answered_call(worker: Worker, phone: Phone, call: int) -> tuple[str, dict[str, Any]]:
    """Phone's call CALL to the worker, answered: (its leg, the phone's CONFIRMED state)."""
    await command(phone, op="call", uri=worker.uri)
    leg = (await worker.events.wait_for(
        lambda e: isinstance(e, p.LegEvent) and e.state == "incoming"
        and not worker.events.of(p.LegEvent, leg=e.leg, state="answered"))).leg
    await worker.cmd(p.Answer(leg=leg))
    await worker.leg("answered", leg)
    confirmed = await phone.events.wait_for(state(call, "CONFIRMED"))
    return leg, confirmed


async def test_a_refer_is_refused_and_the_call_goes_on(worker: Worker) -> None:
    phone = await transfer_phone()
    try:
        leg, _ = await answered_call(worker, phone, 0)
        # Nobody listens there: the old worker's INVITE to it went unanswered.
        await command(phone, op="xfer", call=0, uri=f"sip:bob@127.0.0.1:{free_udp_port()}")
        final = await phone.events.wait_for(lambda e: e["event"] == "transfer" and e["final"])
        assert (final["code"], final["reason"]) == (403, "Forbidden")
        await asyncio.sleep(1.0)
        # No other leg, the call still up; the fixture checks the worker exits cleanly.
        assert {e.leg for e in worker.events.of(p.LegEvent)} == {leg}
        assert not worker.events.of(p.LegEvent, state="ended")
        assert (await worker.cmd(p.Ping())).ok
        await worker.cmd(p.Hangup(leg=leg))
        await worker.leg("ended", leg)
    finally:
        await command(phone, op="quit")
        await phone.finish()


async def test_an_invite_replacing_a_call_is_refused(worker: Worker) -> None:
    # alice talks to the worker (call 0) and to bob (call 1), then transfers bob to the
    # worker's call: bob INVITEs the worker with Replaces naming alice's call.
    alice, bob = await transfer_phone(), await transfer_phone()
    try:
        leg, _ = await answered_call(worker, alice, 0)
        bob_port = (await bob.events.wait_for(lambda e: e["event"] == "ready"))["port"]
        await command(alice, op="call", uri=f"sip:bob@127.0.0.1:{bob_port}")
        await alice.events.wait_for(state(1, "CONFIRMED"))
        await command(alice, op="xfer_replaces", call=1, dest=0)
        # bob's INVITE is refused, which bob's NOTIFY tells alice.
        await bob.events.wait_for(lambda e: state(1, "DISCONNECTED")(e) and e["code"] == 403)
        final = await alice.events.wait_for(lambda e: e["event"] == "transfer" and e["final"])
        assert final["code"] == 403, final
        await asyncio.sleep(1.0)
        # alice's call with the worker goes on; the worker saw no other leg.
        assert {e.leg for e in worker.events.of(p.LegEvent)} == {leg}
        assert not worker.events.of(p.LegEvent, state="ended")
        assert not any(state(0, "DISCONNECTED")(e) for e in alice.events.items)
        await worker.cmd(p.Hangup(leg=leg))
        await worker.leg("ended", leg)
    finally:
        for phone in (alice, bob):
            await command(phone, op="quit")
        for phone in (alice, bob):
            await phone.finish()
