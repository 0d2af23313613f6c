"""A callee's 2xx to an INVITE branch the proxy has already given up on (RFC 3261 §16.7,
RFC 6026): after our own 487 or 408 to the caller, after Timer B, Timer C or the reaping of a
cancelled branch, after the branch's own non-2xx final. The callee believes it is connected;
nobody will ACK its 200 unless we do, so we end its dialog ourselves (ACK, then BYE) at once
instead of letting it talk into silence until it gives up (64·T1, 32 s). The caller is not
sent the 2xx: its INVITE has its final already, and neither pjsip (our media workers' stack,
and many phones') nor baresip ACK or BYE a 2xx that arrives after it (both checked with a
late 200 from SIPp: they drop it, or pjsip ACKs its 487 again, which the callee ignores).

Only a 2xx to a branch we sent, remembered for a while after its transaction ended, is
acted on: a forged 2xx with our Via on top reaches nobody (test_proxy.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.sip.forwarding import REAP_AFTER, TIMER_C
from appliance.sip.message import Request, Response
from tests.conftest import ADMIN_SID, Api
from tests.sip.proxy_harness import REALM, SDP, Harness, Phone
from tests.sip.test_proxy_calls import (
    SIPP_DIR,
    attach_proxy,
    create_client,
    sipp,
    sipp_args,
    udp_port,
)

ALICE_SRC = ("203.0.113.10", 40000)
BOB_SRC = ("203.0.113.20", 41000)
BOB2_SRC = ("203.0.113.21", 42000)
ENDED_FOR = 64 * 0.5  # 64·T1: how long an ended INVITE branch is remembered


def setup(transport: str = "udp") -> tuple[Harness, Phone, Phone]:
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC)
    bob = h.phone("bob", "192.168.1.20", BOB_SRC, transport=transport,
                  connection_id="c-bob" if transport == "tcp" else None)
    return h, alice, bob


async def call(h: Harness, alice: Phone) -> tuple[Request, Request]:
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    h.sender.take()
    return invite, to_bob


def finals(h: Harness) -> list[int]:
    return [r.status for r, _ in h.sender.responses() if r.status >= 200]


def requests(h: Harness) -> list[str]:
    return [m.method for m, _ in h.sender.sent if isinstance(m, Request)]


def assert_hung_up(h: Harness, bob: Phone, to_bob: Request, ok: Response) -> None:
    """We ACKed OK and then BYEd its dialog, both to bob's phone, and sent the caller
    nothing."""
    assert h.sender.responses() == []  # not to alice
    [(ack, ack_target)] = h.sender.requests("ACK")
    [(bye, bye_target)] = h.sender.requests("BYE")
    assert requests(h) == ["ACK", "BYE"]
    assert ack_target == bye_target == bob.target
    for request in (ack, bye):
        assert request.uri == bob.contact
        assert request.to.tag == ok.to.tag and request.from_.tag == to_bob.from_.tag
        assert request.call_id == to_bob.call_id
    assert (ack.cseq.number, ack.cseq.method) == (to_bob.cseq.number, "ACK")
    assert (bye.cseq.number, bye.cseq.method) == (to_bob.cseq.number + 1, "BYE")
    assert ack.vias[0].branch != to_bob.vias[0].branch  # an ACK for a 2xx is its own
    assert ack.vias[0].host == bye.vias[0].host == to_bob.vias[0].host


def cdr_status(h: Harness) -> str:
    [cdr] = h.store.calls.values()
    return cdr.status


async def test_a_2xx_after_our_487_and_the_branch_s_timer_b_is_acked_and_hung_up() -> None:
    # alice hangs up before bob's phone sent anything: she gets our 487 at once (§9.1: no
    # CANCEL before a provisional), and the branch ends on Timer B. bob answers after that.
    h, alice, bob = setup()
    invite, to_bob = await call(h, alice)
    await h.send(alice, alice.cancel(invite))
    assert finals(h) == [200, 487]
    await h.tick(ENDED_FOR + 1)  # Timer B (the INVITE's retransmissions stop): branch gone
    h.sender.take()
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    assert_hung_up(h, bob, to_bob, ok)
    h.sender.take()
    await h.send(bob, ok)  # bob did not hear our ACK: ACKed again, no second BYE
    assert requests(h) == ["ACK"] and h.sender.responses() == []
    assert cdr_status(h) == "canceled"


async def test_a_2xx_after_timer_b_gave_the_caller_408_is_acked_and_hung_up() -> None:
    h, alice, bob = setup()
    _, to_bob = await call(h, alice)
    for _ in range(33):  # not even a 100 Trying from bob's phone: Timer B, 408 to alice
        await h.tick(1)
    assert set(finals(h)) == {408}
    h.sender.take()
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    assert_hung_up(h, bob, to_bob, ok)
    assert cdr_status(h) == "no-answer"


async def test_a_2xx_after_timer_c_and_a_cancel_left_unanswered_is_acked_and_hung_up() -> None:
    h, alice, bob = setup()
    _, to_bob = await call(h, alice)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    await h.tick(TIMER_C + 1)
    assert len(h.sender.requests("CANCEL")) == 1
    await h.tick(REAP_AFTER + 1)  # bob never answers our CANCEL: the branch is reaped
    assert finals(h) == [408]
    h.sender.take()
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    assert_hung_up(h, bob, to_bob, ok)
    assert cdr_status(h) == "no-answer"


async def test_a_2xx_after_a_cancelled_branch_was_reaped_is_acked_and_hung_up() -> None:
    h, alice, bob = setup()
    invite, to_bob = await call(h, alice)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    await h.send(alice, alice.cancel(invite))
    await h.tick(REAP_AFTER + 1)
    assert finals(h) == [200, 487]
    h.sender.take()
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    assert_hung_up(h, bob, to_bob, ok)
    assert cdr_status(h) == "canceled"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_2xx_after_the_branch_s_own_487_is_acked_and_hung_up(transport: str) -> None:
    # What a proxy or provider behind the branch sends when its callee answered as our
    # CANCEL reached it: its 487, then the callee's 200 (§16.7 step 5: late 2xx are
    # forwarded). Over UDP our branch is still in Completed (Timer D), over TCP it is over.
    h, alice, bob = setup(transport)
    invite, to_bob = await call(h, alice)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    await h.send(alice, alice.cancel(invite))
    [(cancel, _)] = h.sender.requests("CANCEL")
    await h.send(bob, bob.answer(cancel, 200))
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b1"))
    assert finals(h) == [200, 487]
    h.sender.take()
    ok = bob.answer(to_bob, 200, to_tag="b2")
    await h.send(bob, ok)
    assert_hung_up(h, bob, to_bob, ok)
    assert cdr_status(h) == "canceled"


async def test_the_other_phone_of_a_forked_call_answering_after_its_branch_ended() -> None:
    # bob2 answered; bob's phone ignored our CANCEL and answers once its branch is reaped.
    # alice talks to bob2: her call is left alone, bob's dialog is ended by us.
    h, alice, bob = setup()
    bob2 = h.phone("bob", "192.168.1.21", BOB2_SRC)
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [to_bob] = [m for m, t in h.sender.requests("INVITE") if t == bob.target]
    [to_bob2] = [m for m, t in h.sender.requests("INVITE") if t == bob2.target]
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    await h.send(bob2, bob2.answer(to_bob2, 200, to_tag="b2"))
    assert len(h.sender.requests("CANCEL")) == 1
    await h.tick(REAP_AFTER + 1)
    h.sender.take()
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    assert_hung_up(h, bob, to_bob, ok)
    assert cdr_status(h) == "in-progress"
    assert h.proxy.calls == 1


async def test_an_ended_branch_is_remembered_for_64_t1_only() -> None:
    h, alice, bob = setup()
    invite, to_bob = await call(h, alice)
    await h.send(alice, alice.cancel(invite))
    await h.tick(ENDED_FOR + 1)  # Timer B ends the branch ...
    assert len(h.proxy._ended) == 1
    await h.tick(ENDED_FOR + 1)  # ... and 64·T1 later it is forgotten, traffic or not
    assert len(h.proxy._ended) == 0
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b1"))
    assert h.sender.sent == []


async def test_ended_branches_remembered_are_capped_the_oldest_forgotten_first() -> None:
    h, alice, bob = setup()
    h.proxy.max_ended = 2
    branches = []
    for n in range(3):
        invite = await h.authenticated(alice, "INVITE", "bob", body=SDP, call_id=f"c{n}",
                                       from_tag=f"a{n}")
        branches.append(h.sender.requests("INVITE")[-1][0])
        h.sender.take()
        await h.send(alice, alice.cancel(invite))
        await h.tick(1)
    await h.tick(ENDED_FOR)  # every branch ends on its Timer B, a second apart
    assert len(h.proxy._ended) == 2
    h.sender.take()
    await h.send(bob, bob.answer(branches[0], 200, to_tag="b0"))
    assert h.sender.sent == []  # forgotten: dropped as before
    ok = bob.answer(branches[2], 200, to_tag="b2")
    await h.send(bob, ok)
    assert_hung_up(h, bob, branches[2], ok)


async def test_a_2xx_to_an_ended_branch_of_a_re_invite_is_acked_not_hung_up() -> None:
    # A re-INVITE belongs to a call in progress: ending its dialog would hang the call up.
    # Its late 2xx is only ACKed (so the phone does not end the call itself for want of one).
    h, alice, bob = setup()
    invite, to_bob = await call(h, alice)
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    route = [("Route", r) for r in ok.get_all("record-route")]
    await h.send(alice, alice.request("ACK", bob.contact, to=f"<sip:bob@{REALM}>;tag=b1",
                                      call_id=invite.call_id or "", from_tag="caller-tag",
                                      cseq=invite.cseq.number, headers=route))
    await h.tick(ENDED_FOR + 1)  # the INVITE's transactions are over
    h.sender.take()
    reinvite = alice.request("INVITE", bob.contact, to=f"<sip:bob@{REALM}>;tag=b1",
                             call_id=invite.call_id or "", from_tag="caller-tag",
                             headers=route, body=SDP)
    await h.send(alice, reinvite)
    [(to_bob_again, _)] = h.sender.requests("INVITE")
    for _ in range(33):  # bob's phone is silent: Timer B, 408 to alice
        await h.tick(1)
    assert 408 in finals(h)
    h.sender.take()
    await h.send(bob, bob.answer(to_bob_again, 200, to_tag="b1"))
    assert requests(h) == ["ACK"] and h.sender.responses() == []
    assert cdr_status(h) == "in-progress"


async def test_a_2xx_to_a_re_invite_the_caller_cancelled_is_acked_not_hung_up() -> None:
    # The same while the branch is still kept: alice cancels her re-INVITE before bob's
    # phone sent anything (our 487 at once), then bob's phone accepts it.
    h, alice, bob = setup()
    invite, to_bob = await call(h, alice)
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    route = [("Route", r) for r in ok.get_all("record-route")]
    await h.send(alice, alice.request("ACK", bob.contact, to=f"<sip:bob@{REALM}>;tag=b1",
                                      call_id=invite.call_id or "", from_tag="caller-tag",
                                      cseq=invite.cseq.number, headers=route))
    h.sender.take()
    reinvite = alice.request("INVITE", bob.contact, to=f"<sip:bob@{REALM}>;tag=b1",
                             call_id=invite.call_id or "", from_tag="caller-tag",
                             headers=route, body=SDP)
    await h.send(alice, reinvite)
    [(to_bob_again, _)] = h.sender.requests("INVITE")
    await h.send(alice, alice.cancel(reinvite))
    assert 487 in finals(h)
    h.sender.take()
    again = bob.answer(to_bob_again, 200, to_tag="b1")
    await h.send(bob, again)
    assert requests(h) == ["ACK"] and h.sender.responses() == []
    h.sender.take()
    await h.send(bob, again)  # retransmitted: ACKed again
    assert requests(h) == ["ACK"]
    assert cdr_status(h) == "in-progress"


async def test_a_late_2xx_to_a_message_branch_is_ignored() -> None:
    h, alice, bob = setup()
    await h.authenticated(alice, "MESSAGE", "bob", body=b"hi")
    [(to_bob, _)] = h.sender.requests("MESSAGE")
    for _ in range(40):  # Timer F
        await h.tick(1)
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 200, to_tag="m"))
    assert h.sender.sent == []
    assert len(h.proxy._ended) == 0


# --- real peers (SIPp) through the running appliance ---------------------------------------


def received(trace: Path) -> list[str]:
    """The start lines, and To headers, of the messages a sipp -trace_msg file says it got."""
    got = []
    for block in trace.read_text(errors="replace").split("-" * 47 + " ")[1:]:
        lines = block.splitlines()
        if len(lines) > 3 and "message received" in lines[1]:
            to = next((line for line in lines if line.startswith("To:")), "")
            got.append(f"{lines[3]} | {to}")
    return got


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) is not installed")
@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_callee_answering_after_its_487_gets_acked_and_hung_up(
        appliance: Any, api: Api, transport: str, tmp_path: Path) -> None:
    # alice (UDP) hangs up while bob's phone rings; bob's side answers 487, then a 200 (its
    # own callee picked up as the CANCEL arrived). bob must get an ACK and a BYE at once,
    # not retransmit its 200 into silence; alice's call stays canceled. Over UDP our branch
    # is still in Completed then; over TCP it is over (Timer D is 0).
    proxy, task = attach_proxy(appliance)
    try:
        server = appliance.transport.address
        for login in ("alice", "bob"):
            await create_client(api, login)
        alice_port, bob_port = udp_port(), udp_port()
        code, out = await sipp(*sipp_args("register.xml", server, alice_port, "alice"))
        assert code == 0, out
        trace = tmp_path / "bob.msg"
        if transport == "u1":
            code, out = await sipp(*sipp_args("register.xml", server, bob_port, "bob"))
            assert code == 0, out
            bob = sipp_args("proxy-uas-late-200.xml", server, bob_port, "bob")
        else:
            # A TCP binding lives as long as its connection: bob registers, holds the flow
            # open (-d) and answers the INVITE that comes on it with the out-of-call
            # scenario. Its exit code does not tell how that call went: its trace does.
            bob = sipp_args("register.xml", server, bob_port, "bob", None, "-t", "t1",
                            "-d", "8000", "-oocsf", str(SIPP_DIR / "proxy-uas-late-200.xml"),
                            "-nd")
        answering = asyncio.create_task(sipp(*bob, "-trace_msg", "-message_file", str(trace),
                                             limit=40))
        await asyncio.sleep(1.0)
        code, out = await sipp(*sipp_args("proxy-uac-cancel.xml", server, alice_port, "alice",
                                          "bob"), limit=40)
        uas_code, uas_out = await answering
        assert code == 0, out
        assert uas_code == 0, uas_out
        got = received(trace)
        late = [line.split(" | ")[0].split()[0] for line in got if "SIPpTag02" in line]
        assert late == ["ACK", "BYE"], got
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
        assert status == 200, body
        assert [(c["from"], c["to"], c["status"]) for c in json.loads(body)["calls"]] == [
            ("alice", "bob", "canceled")]
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.slow  # 35 s: the callee answers after Timer B (64·T1) has ended its branch
@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) is not installed")
async def test_sipp_callee_answering_after_timer_b_gets_acked_and_hung_up(
        appliance: Any, api: Api, tmp_path: Path) -> None:
    # alice hangs up before bob's phone sent anything (our 487 at once); bob's phone, which
    # never sends a provisional, is picked up 34 s later, when the branch has ended on
    # Timer B. bob must get an ACK and a BYE at once; alice's call stays canceled.
    proxy, task = attach_proxy(appliance)
    try:
        server = appliance.transport.address
        for login in ("alice", "bob"):
            await create_client(api, login)
        alice_port, bob_port = udp_port(), udp_port()
        for login, port in (("alice", alice_port), ("bob", bob_port)):
            code, out = await sipp(*sipp_args("register.xml", server, port, login))
            assert code == 0, out
        trace = tmp_path / "bob.msg"
        bob = sipp_args("proxy-uas-silent-late-200.xml", server, bob_port, "bob")
        bob[bob.index("-timeout") + 1] = "60"
        answering = asyncio.create_task(sipp(*bob, "-trace_msg", "-message_file", str(trace),
                                             limit=70))
        await asyncio.sleep(1.0)
        code, out = await sipp(*sipp_args("proxy-uac-cancel-early.xml", server, alice_port,
                                          "alice", "bob"), limit=40)
        uas_code, uas_out = await answering
        assert code == 0, out
        assert uas_code == 0, uas_out
        got = received(trace)
        late = [line.split(" | ")[0].split()[0] for line in got if "SIPpTag02" in line]
        assert late == ["ACK", "BYE"], got
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
        assert status == 200, body
        assert [(c["from"], c["to"], c["status"]) for c in json.loads(body)["calls"]] == [
            ("alice", "bob", "canceled")]
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
