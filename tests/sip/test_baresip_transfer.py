"""What an office expects of its desk phones through the appliance: blind transfer and hold.

Real baresip soft phones, registered as Clients of the running appliance, drive the calls
through its proxy over ctrl_tcp (baresip 1.0's menu commands ``transfer <uri>``, ``hold``,
``resume``, ``accept``), and what a user notices is checked: who rings, who talks, whose call
ends, and what the Calls API then shows.

- Blind transfer (RFC 3515): in the alice–bob call, bob sends REFER (``Refer-To: carol``) to
  alice in the dialog; alice's phone answers 202, places a new INVITE to carol (challenged
  407 and accepted like any call of hers) and reports progress in NOTIFYs (``message/sipfrag``)
  to bob in the original dialog; at "SIP/2.0 200 OK" bob's phone hangs up, at a failure
  ("SIP/2.0 480 ...") it shows the transfer failed. baresip 1.0 sends no ``Referred-By`` and
  knows no ``Replaces``, so attended transfer is not played here.
- Hold (RFC 3264 §8.4): a re-INVITE with ``a=sendonly``, answered ``a=recvonly``; resume is a
  re-INVITE with ``a=sendrecv``. Both pass the proxy in the dialog, without a challenge.

Bounded: every wait has a limit; each test takes a few seconds; skipped without baresip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.sip.message import Request, Response
from appliance.sip.wire import Incoming, MessageHandler
from tests.conftest import ADMIN_SID, Api
from tests.sip.test_baresip_tcp import TcpBaresip
from tests.sip.test_proxy_calls import (  # noqa: F401 - md5_appliance is a fixture
    Baresip,
    attach_proxy,
    create_client,
    md5_appliance,
)

pytestmark = pytest.mark.skipif(shutil.which("baresip") is None,
                                reason="baresip is not installed")

RTP_ESTABLISHED = "incoming rtp for 'audio' established"


class Recorder:
    """The front door's proxy slot: notes every message the proxy is handed, then hands it
    on. What the phones sent each other through the proxy is read from here."""

    def __init__(self, proxy: MessageHandler) -> None:
        self.proxy = proxy
        self.messages: list[Request | Response] = []

    async def handle(self, incoming: Incoming) -> None:
        self.messages.append(incoming.message)
        await self.proxy.handle(incoming)

    def connection_closed(self, connection_id: str) -> None:
        self.proxy.connection_closed(connection_id)

    def requests(self, method: str) -> list[Request]:
        return [m for m in self.messages if isinstance(m, Request) and m.method == method]

    def responses(self, method: str) -> list[Response]:
        return [m for m in self.messages
                if isinstance(m, Response) and m.cseq.method == method]


async def until(check: Callable[[], bool], limit: float = 5) -> None:
    async with asyncio.timeout(limit):
        while not check():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def office(appliance: Any, tmp_path: Path, logins: tuple[str, ...], *,
                 answering: tuple[str, ...] = (), phone: type[Baresip] = Baresip,
                 ) -> AsyncIterator[tuple[Api, dict[str, Baresip], tuple[str, int], Recorder]]:
    """The proxy attached (behind a Recorder), a Client per login created through the API and
    its baresip phone registered (those in ANSWERING answer by themselves):
    (api, phones by login, SIP address, recorder)."""
    proxy, task = attach_proxy(appliance)
    recorder = Recorder(appliance.frontdoor.proxy)
    appliance.frontdoor.proxy = recorder
    password = (appliance.config.data_dir / "admin-password").read_text().strip()
    listen = appliance.config.api.listen
    session = aiohttp.ClientSession()
    api = Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
              appliance.config.data_dir)
    server = appliance.transport.address
    phones = {login: phone(tmp_path / login, login, server, auto_answer=login in answering)
              for login in logins}
    try:
        for login in logins:
            await create_client(api, login)
        for each in phones.values():
            await each.start()
        # The REGISTER may beat our ctrl_tcp connection.
        await until(lambda: all(appliance.location.lookup(login, appliance.wall_clock())
                                for login in logins), limit=10)
        yield api, phones, server, recorder
    finally:
        await session.close()
        for each in phones.values():
            await each.stop()
        appliance.frontdoor.proxy = recorder.proxy
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def calls_when(api: Api, done: Callable[[list[tuple[str, str, str]]], bool],
                     limit: float = 5) -> list[dict[str, Any]]:
    """The Calls list once DONE holds for its (from, to, status) rows: a CDR is committed
    just after the signalling that changed it."""
    calls: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(limit):
            while True:
                status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
                assert status == 200, body
                calls = json.loads(body)["calls"]
                if done(rows(calls)):
                    return calls
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"the Calls list stayed {rows(calls)}") from None


def rows(calls: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((c["from"], c["to"], c["status"]) for c in calls)


def log_of(phone: Baresip) -> str:
    return (phone.home / "baresip.log").read_text(errors="replace")


def sdp_direction(message: Request | Response) -> str | None:
    for line in message.body.decode(errors="replace").splitlines():
        if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            return line[2:]
    return None


async def closed_with(phone: Baresip, peer: Baresip) -> None:
    """Wait until PHONE's call with PEER has ended (the transferee sees two calls end)."""
    while True:
        closed = await phone.wait_event("CALL_CLOSED", limit=5)
        if closed["peeruri"].startswith(f"sip:{peer.login}@"):
            return


async def answered_call(caller: Baresip, callee: Baresip, server: tuple[str, int]) -> None:
    await caller.command("dial", f"sip:{callee.login}@{server[0]}:{server[1]}")
    await caller.wait_event("CALL_ESTABLISHED")
    await callee.wait_event("CALL_ESTABLISHED")


async def blind_transfer(transferor: Baresip, transferee: Baresip, target: Baresip,
                         server: tuple[str, int], api: Api, *, params: str = "") -> None:
    """TRANSFEROR, in alice's call to bob with TRANSFEREE, transfers it to TARGET, who picks
    up: what each of the three sees, and the Calls list meanwhile. PARAMS end the Refer-To
    URI (baresip sends the new INVITE over the transport that URI names, UDP by default)."""
    await transferor.command("transfer",
                             f"sip:{target.login}@{server[0]}:{server[1]}{params}")
    ringing = await target.wait_event("CALL_INCOMING", limit=5)  # target's phone rings ...
    assert ringing["peeruri"].startswith(f"sip:{transferee.login}@"), ringing
    await transferee.wait_event("CALL_RINGING", limit=5)  # ... and the transferee hears it
    # Until the target answers, the transferor is still in the call (RFC 3515: the REFER
    # does not end it), and the transferee's new call rings.
    assert not [e for e in transferor.events if e.get("type") == "CALL_CLOSED"]
    await calls_when(api, lambda r: r == sorted([
        ("alice", "bob", "in-progress"), (transferee.login, target.login, "ringing")]))
    await target.command("accept")
    await target.wait_event("CALL_ESTABLISHED", limit=5)
    established = await transferee.wait_event("CALL_ESTABLISHED", limit=5)
    assert established["peeruri"].startswith(f"sip:{target.login}@"), established
    # The NOTIFY "200 OK" reached the transferor in the original dialog: its phone hangs up.
    closed = await transferor.wait_event("CALL_CLOSED", limit=5)
    assert closed["param"] == "Call transfered", closed


async def test_bob_blind_transfers_alice_to_carol(md5_appliance: Any,  # noqa: F811
                                                  tmp_path: Path) -> None:
    appliance = md5_appliance
    async with office(appliance, tmp_path, ("alice", "bob", "carol"),
                      answering=("bob",)) as (api, phones, server, recorder):
        alice, bob, carol = phones["alice"], phones["bob"], phones["carol"]
        await answered_call(alice, bob, server)
        await asyncio.sleep(1)  # the first call lasts a second: its Duration is not 0
        await blind_transfer(bob, alice, carol, server, api)
        await calls_when(api, lambda r: r == [("alice", "bob", "completed"),
                                              ("alice", "carol", "in-progress")])
        await asyncio.sleep(1.5)  # alice and carol talk; the proxy only sees signalling
        await carol.command("hangup")
        await closed_with(alice, carol)
        calls = await calls_when(api, lambda r: r == [("alice", "bob", "completed"),
                                                      ("alice", "carol", "completed")])
        assert all(c["duration"] >= 1 for c in calls), calls
        # On the wire, through the proxy: bob's REFER and alice's 202, her NOTIFYs to bob in
        # the original dialog (the last one "200 OK"), each answered 200 by bob.
        [refer] = recorder.requests("REFER")
        assert refer.get("refer-to") == f"sip:carol@{server[0]}:{server[1]}"
        assert [r.status for r in recorder.responses("REFER")] == [202]
        notifies = recorder.requests("NOTIFY")
        assert {n.call_id for n in notifies} == {refer.call_id}
        assert notifies[-1].body.startswith(b"SIP/2.0 200 OK"), notifies[-1].body
        assert [r.status for r in recorder.responses("NOTIFY")] == [200] * len(notifies)
        # alice's INVITE to carol was challenged (407) and then accepted.
        to_carol = [r for r in recorder.requests("INVITE") if r.uri.startswith("sip:carol@")]
        assert [r.get("proxy-authorization") is None for r in to_carol] == [True, False]
        for each in (alice, bob, carol):
            await each.stop()
        # Media went phone to phone: alice heard bob, then carol; carol heard alice.
        assert log_of(alice).count(RTP_ESTABLISHED) == 2
        assert log_of(carol).count(RTP_ESTABLISHED) == 1


async def test_the_caller_blind_transfers_the_callee_over_tcp(md5_appliance: Any,  # noqa: F811
                                                              tmp_path: Path) -> None:
    """The other direction and transport: alice, who placed the call, transfers bob; bob's
    phone (the callee of the first call) places the new one, over TCP."""
    appliance = md5_appliance
    async with office(appliance, tmp_path, ("alice", "bob", "carol"), answering=("bob",),
                      phone=TcpBaresip) as (api, phones, server, recorder):
        alice, bob, carol = phones["alice"], phones["bob"], phones["carol"]
        await answered_call(alice, bob, server)
        await asyncio.sleep(1)
        await blind_transfer(alice, bob, carol, server, api, params=";transport=tcp")
        await calls_when(api, lambda r: r == [("alice", "bob", "completed"),
                                              ("bob", "carol", "in-progress")])
        await bob.command("hangup")
        await closed_with(carol, bob)
        await calls_when(api, lambda r: r == [("alice", "bob", "completed"),
                                              ("bob", "carol", "completed")])
        # Every message the proxy was handed (REFER, NOTIFYs, INVITEs...) came over TCP.
        assert {m.vias[0].transport for m in recorder.messages} == {"TCP"}


async def test_a_transfer_to_a_phone_that_is_not_registered_fails_at_the_transferor(
        md5_appliance: Any, tmp_path: Path) -> None:  # noqa: F811
    """dave is a Client with no phone registered: alice's INVITE to him gets our 480, her
    NOTIFY says so to bob, whose phone shows the transfer failed. (baresip 1.0's menu then
    hangs up the call with alice: the phone's choice, not ours.)"""
    appliance = md5_appliance
    async with office(appliance, tmp_path, ("alice", "bob"),
                      answering=("bob",)) as (api, phones, server, recorder):
        await create_client(api, "dave")
        alice, bob = phones["alice"], phones["bob"]
        await answered_call(alice, bob, server)
        await bob.command("transfer", f"sip:dave@{server[0]}:{server[1]}")
        failed = await bob.wait_event("TRANSFER_FAILED", limit=5)
        assert failed["param"] == "480 Temporarily Unavailable", failed
        assert recorder.requests("NOTIFY")[-1].body.startswith(b"SIP/2.0 480 ")
        await calls_when(api, lambda r: ("alice", "dave", "no-answer") in r)


async def test_hold_and_resume_keep_one_call(md5_appliance: Any,  # noqa: F811
                                             tmp_path: Path) -> None:
    appliance = md5_appliance
    async with office(appliance, tmp_path, ("alice", "bob"),
                      answering=("bob",)) as (api, phones, server, recorder):
        alice, bob = phones["alice"], phones["bob"]
        await answered_call(alice, bob, server)
        started = time.monotonic()
        [invite] = [r for r in recorder.requests("INVITE")
                    if r.get("proxy-authorization") is not None]
        # alice holds and resumes, then bob does: four re-INVITEs, each way through us.
        for holder, command, offered, answered in [
                (alice, "hold", "sendonly", "recvonly"), (alice, "resume", "sendrecv", "sendrecv"),
                (bob, "hold", "sendonly", "recvonly"), (bob, "resume", "sendrecv", "sendrecv")]:
            before = len(recorder.responses("INVITE"))
            await holder.command(command)
            await until(lambda since=before: any(r.status == 200 for r in
                                                 recorder.responses("INVITE")[since:]))
            reinvite = recorder.requests("INVITE")[-1]
            assert reinvite.call_id == invite.call_id and reinvite.to.tag is not None
            caller_tag = reinvite.from_.tag if holder is alice else reinvite.to.tag
            assert caller_tag == invite.from_.tag, (holder.login, command)
            assert sdp_direction(reinvite) == offered, (holder.login, command)
            [ok] = [r for r in recorder.responses("INVITE")[before:] if r.status == 200]
            assert ok.cseq.number == reinvite.cseq.number and sdp_direction(ok) == answered
            # No challenge, no refusal: a re-INVITE is no new call.
            assert [r.status for r in recorder.responses("INVITE")[before:]
                    if r.status >= 200] == [200]
            await calls_when(api, lambda r: r == [("alice", "bob", "in-progress")])
            await asyncio.sleep(0.5)
        for each in (alice, bob):  # the call stayed up throughout
            assert not [e for e in each.events if e.get("type") == "CALL_CLOSED"], each.login
        await alice.command("hangup")
        await bob.wait_event("CALL_CLOSED", limit=5)
        talked = time.monotonic() - started
        [call] = await calls_when(api, lambda r: r == [("alice", "bob", "completed")])
        assert int(talked) - 1 <= call["duration"] <= talked + 1, (call["duration"], talked)
