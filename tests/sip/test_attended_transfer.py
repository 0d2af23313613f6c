"""Attended transfer (RFC 5589 §7: REFER with Replaces, RFC 3891) between Clients through the
running appliance, with pjsua2 phones (``transfer_phone.py``: baresip 1.0 has no Replaces).

alice calls bob; bob puts her on hold and calls carol (the consultation); then bob transfers
alice to carol: his REFER, in the alice–bob dialog, names carol with the consultation
dialog in a ``Replaces`` header of its Refer-To; alice's phone calls carol with that
``Replaces`` (a new call, challenged 407 and accepted), carol's phone swaps the consultation
call for alice's and hangs the former up, and alice's NOTIFY "200 OK" tells bob, who hangs
up. Checked by what each phone shows and by the Calls API. Bounded: every wait has a limit;
the test takes a few seconds; skipped without pjsua2.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_SID, Api
from tests.sip.test_baresip_transfer import Recorder, calls_when
from tests.sip.test_proxy_calls import PASSWORD, attach_proxy, create_client
from tests.voice.test_voice_apps import Handset

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pjsua2") is None,
                                reason="pjsua2 is not installed")

ROOT = Path(__file__).resolve().parents[2]
_RTP_BASE = 46000 + (os.getpid() % 50) * 300  # 100 ports a phone; concurrent runs apart


async def command(phone: Handset, **cmd: Any) -> None:
    assert phone.proc.stdin is not None
    phone.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
    await phone.proc.stdin.drain()


def state(call: int, name: str, remote: str = "") -> Any:
    """A predicate for Handset.wait: call CALL reached state NAME (with REMOTE's login)."""
    return lambda e: (e["event"] == "state" and e["call"] == call and e["state"] == name
                      and f"sip:{remote}@" in e["remote"])


@contextlib.asynccontextmanager
async def pjsua_phones(appliance: Any, logins: tuple[str, ...]) -> AsyncIterator[
        tuple[Api, dict[str, Handset], tuple[str, int], Recorder]]:
    """The proxy attached (behind a Recorder), a Client per login and its pjsua2 phone
    registered (each answers whatever calls it): (api, phones, SIP address, recorder)."""
    proxy, task = attach_proxy(appliance)
    recorder = Recorder(appliance.frontdoor.proxy)
    appliance.frontdoor.proxy = recorder
    password = (appliance.config.data_dir / "admin-password").read_text().strip()
    listen = appliance.config.api.listen
    session = aiohttp.ClientSession()
    api = Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
              appliance.config.data_dir)
    host, port = appliance.transport.address
    phones: dict[str, Handset] = {}
    try:
        for n, login in enumerate(logins):
            await create_client(api, login)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.sip.transfer_phone", "--register",
                f"{host}:{port}", "--user", login, "--password", PASSWORD,
                "--domain", f"{host}:{port}", "--rtp-port", str(_RTP_BASE + 100 * n),
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            phones[login] = Handset(proc)
            await phones[login].wait(lambda e: e["event"] == "ready")
            assert {"event": "registered", "code": 200} in phones[login].events, login
        yield api, phones, (host, port), recorder
    finally:
        for phone in phones.values():
            with contextlib.suppress(Exception):
                await command(phone, op="quit")
        for phone in phones.values():
            try:
                await phone.finish(seconds=10)
            except (TimeoutError, AssertionError):
                if phone.proc.returncode is None:
                    phone.proc.kill()
                await phone.proc.wait()
        await session.close()
        appliance.frontdoor.proxy = recorder.proxy
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_bob_transfers_alice_to_carol_after_talking_to_her(appliance: Any) -> None:
    async with pjsua_phones(appliance, ("alice", "bob", "carol")) as (
            api, phones, (host, port), recorder):
        alice, bob, carol = phones["alice"], phones["bob"], phones["carol"]
        # Calls are numbered per phone: alice 0 (to bob), 1 (to carol, the transfer);
        # bob 0 (from alice), 1 (to carol, the consultation); carol 0 (bob's), 1 (alice's).
        await command(alice, op="call", uri=f"sip:bob@{host}:{port}")
        await alice.wait(state(0, "CONFIRMED", "bob"), 10)
        await bob.wait(state(0, "CONFIRMED", "alice"), 10)
        await command(bob, op="hold", call=0)
        await command(bob, op="call", uri=f"sip:carol@{host}:{port}")
        await bob.wait(state(1, "CONFIRMED", "carol"), 10)
        await carol.wait(state(0, "CONFIRMED", "bob"), 10)
        await calls_when(api, lambda r: r == [("alice", "bob", "in-progress"),
                                              ("bob", "carol", "in-progress")])
        await command(bob, op="xfer_replaces", call=0, dest=1)
        # carol's phone swaps bob's call for alice's and hangs bob's up; alice talks to carol.
        await carol.wait(lambda e: e == {"event": "replaced", "call": 0, "by": 1}, 10)
        await carol.wait(state(1, "CONFIRMED", "alice"), 10)
        await carol.wait(state(0, "DISCONNECTED", "bob"), 10)
        await alice.wait(state(1, "CONFIRMED", "carol"), 10)
        # bob's phone learns from the NOTIFY that it worked, and hangs up alice's call.
        await bob.wait(lambda e: e["event"] == "transfer" and e["final"], 10)
        assert [e["code"] for e in bob.events if e["event"] == "transfer" and e["final"]] \
            == [200]
        await bob.wait(state(0, "DISCONNECTED", "alice"), 10)
        await bob.wait(state(1, "DISCONNECTED", "carol"), 10)
        await alice.wait(state(0, "DISCONNECTED", "bob"), 10)
        await calls_when(api, lambda r: r == [("alice", "bob", "completed"),
                                              ("alice", "carol", "in-progress"),
                                              ("bob", "carol", "completed")])
        await command(alice, op="hangup", call=1)
        await carol.wait(state(1, "DISCONNECTED", "alice"), 10)
        await calls_when(api, lambda r: r == [("alice", "bob", "completed"),
                                              ("alice", "carol", "completed"),
                                              ("bob", "carol", "completed")])
        # On the wire: bob's REFER names the consultation dialog in its Refer-To; alice's
        # INVITE to carol carries it as Replaces (and bob as Referred-By), challenged once.
        consultation = next(r for r in recorder.requests("INVITE")
                            if r.uri.startswith("sip:carol@") and r.from_.tag
                            and "bob" in r.from_.uri)
        [refer] = recorder.requests("REFER")
        assert "Replaces=" in (refer.get("refer-to") or "")
        assert consultation.call_id in (refer.get("refer-to") or "")
        replacing = [r for r in recorder.requests("INVITE") if r.get("replaces")]
        assert [r.get("proxy-authorization") is None for r in replacing] == [True, False]
        assert all((r.get("replaces") or "").startswith(f"{consultation.call_id};")
                   and "replaces" in (r.get("require") or "")
                   and "bob@" in (r.get("referred-by") or "") for r in replacing)
        assert [r.status for r in recorder.responses("REFER")] == [202]
