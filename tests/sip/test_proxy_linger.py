"""What a finished call leaves behind in the proxy while its transactions linger (64·T1): only
compact state, which still answers every retransmission as the full state did."""

from __future__ import annotations

import gc
from dataclasses import dataclass

from appliance.sip.forwarding import Branch, Context
from appliance.sip.message import Request, Response
from appliance.sip.transaction import State
from appliance.sip.wire import Target
from tests.sip.proxy_harness import REALM, SDP, Harness, Phone, authorization

ALICE_SRC = ("203.0.113.10", 40000)
BOB_SRC = ("203.0.113.20", 41000)
ROUTE = ("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")


@dataclass
class Call:
    challenged: Request  # the first INVITE, answered 407
    challenge: Response
    invite: Request  # the INVITE with credentials
    to_bob: Request  # as forwarded to bob


def setup() -> tuple[Harness, Phone, Phone]:
    h = Harness()
    return h, h.phone("alice", "192.168.1.10", ALICE_SRC), h.phone("bob", "192.168.1.20", BOB_SRC)


async def start(h: Harness, alice: Phone) -> Call:
    """INVITE -> 407 -> ACK, INVITE with credentials -> forwarded to bob."""
    uri = f"sip:bob@{REALM}"
    challenged = alice.request("INVITE", uri, to=f"<{uri}>", call_id="linger-1",
                               from_tag="a1", body=SDP)
    await h.send(alice, challenged)
    [(challenge, _)] = h.sender.responses(407)
    await h.send(alice, alice.request("ACK", uri, to=challenge.get("to") or "",
                                      call_id="linger-1", from_tag="a1",
                                      cseq=challenged.cseq.number,
                                      branch=challenged.top_via.branch))  # type: ignore[union-attr]
    assert h.sender.requests("ACK") == []  # the ACK for the 407 is absorbed
    invite = alice.request("INVITE", uri, to=f"<{uri}>", call_id="linger-1", from_tag="a1",
                           body=SDP, headers=[("Proxy-Authorization",
                                               authorization(challenged, challenge, alice))])
    h.sender.take()
    await h.send(alice, invite)
    [(to_bob, _)] = h.sender.requests("INVITE")
    h.sender.take()
    return Call(challenged, challenge, invite, to_bob)


def sent(h: Harness) -> list[tuple[bytes, Target]]:
    return [(bytes(m), t) for m, t in h.sender.take()]


async def test_a_finished_call_keeps_compact_state_that_still_answers_retransmissions() -> None:
    h, alice, bob = setup()
    call = await start(h, alice)
    await h.send(bob, bob.answer(call.to_bob, 180, to_tag="b1"))
    ok = bob.answer(call.to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    [(ok_fwd, _)] = h.sender.responses(200)
    first_ok = bytes(ok_fwd)
    to = f"<sip:bob@{REALM}>;tag=b1"
    await h.send(alice, alice.request("ACK", bob.contact, to=to, call_id="linger-1",
                                      from_tag="a1", cseq=call.invite.cseq.number,
                                      headers=[ROUTE]))
    bye = alice.request("BYE", bob.contact, to=to, call_id="linger-1", from_tag="a1",
                        headers=[ROUTE])
    await h.send(alice, bye)
    [(bye_fwd, _)] = h.sender.requests("BYE")
    bye_ok = bob.answer(bye_fwd, 200)
    h.sender.take()
    await h.send(bob, bye_ok)
    [(bye_ok_fwd, _)] = h.sender.responses(200)
    first_bye_ok = bytes(bye_ok_fwd)
    h.sender.take()

    # Nothing of the requests is left but the INVITE branch's route back for late 2xx.
    proxy = h.proxy
    assert proxy.in_flight == 0 and proxy._branches == {} and len(proxy._late) == 1
    assert proxy.transactions == 5
    for txn in proxy._table:
        assert txn.request.headers == [] and txn.request.body == b""
        assert txn.state in (State.ACCEPTED, State.COMPLETED, State.CONFIRMED)

    # bob did not get the ACK: his 200 again goes to alice, the same bytes.
    await h.send(bob, ok)
    assert sent(h) == [(first_ok, Target("udp", *ALICE_SRC))]
    # alice did not get the 200 for her BYE: the same bytes again, nothing to bob.
    await h.send(alice, bye)
    assert sent(h) == [(first_bye_ok, Target("udp", *ALICE_SRC))]
    # bob retransmits his 200 for the BYE: absorbed.
    await h.send(bob, bye_ok)
    assert sent(h) == []
    # A late retransmission of the challenged INVITE gets the same 407; its ACK is absorbed.
    await h.send(alice, call.challenged)
    assert sent(h) == [(bytes(call.challenge), Target("udp", *ALICE_SRC))]
    await h.send(alice, alice.request("ACK", call.challenged.uri,
                                      to=call.challenge.get("to") or "", call_id="linger-1",
                                      from_tag="a1", cseq=call.challenged.cseq.number,
                                      branch=call.challenged.top_via.branch))  # type: ignore[union-attr]
    assert sent(h) == []
    # The authenticated INVITE again: absorbed by its server transaction in Accepted.
    await h.send(alice, call.invite)
    assert sent(h) == []

    for _ in range(4):  # Timers K, I (T4), then J, L, M and the call (64·T1)
        await h.tick(10)
    assert (proxy.transactions, proxy.calls, len(proxy._late)) == (0, 0, 0)


async def test_a_finished_request_is_freed_at_once_not_left_to_the_collector() -> None:
    # A request's Context and its Branches refer to each other; left as a cycle once the
    # request is over, they and the messages they hold would wait for the collector, which
    # under load runs seconds apart (bench/README.md, "SIP benchmark", fifth round).
    h, alice, bob = setup()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
    try:
        call = await start(h, alice)
        await h.send(bob, bob.answer(call.to_bob, 180, to_tag="b1"))
        await h.send(bob, bob.answer(call.to_bob, 200, to_tag="b1"))
        to = f"<sip:bob@{REALM}>;tag=b1"
        await h.send(alice, alice.request("ACK", bob.contact, to=to, call_id="linger-1",
                                          from_tag="a1", cseq=call.invite.cseq.number,
                                          headers=[ROUTE]))
        await h.send(alice, alice.request("BYE", bob.contact, to=to, call_id="linger-1",
                                          from_tag="a1", headers=[ROUTE]))
        [(bye_fwd, _)] = h.sender.requests("BYE")
        await h.send(bob, bob.answer(bye_fwd, 200))
        assert h.proxy.in_flight == 0 and h.proxy._branches == {}
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, Context | Branch)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


async def test_a_refused_call_still_acks_a_retransmitted_final_and_absorbs_the_callers_ack(
) -> None:
    h, alice, bob = setup()
    call = await start(h, alice)
    busy = bob.answer(call.to_bob, 486, to_tag="b1")
    await h.send(bob, busy)
    [(busy_fwd, _)] = h.sender.responses(486)
    [(ack_to_bob, target)] = h.sender.requests("ACK")
    assert target == Target("udp", *BOB_SRC)
    first_ack, first_busy = bytes(ack_to_bob), bytes(busy_fwd)
    h.sender.take()
    assert h.proxy.in_flight == 0 and h.proxy._branches == {} and h.proxy._late == {}

    # bob did not get our ACK: his 486 again is ACKed again, the same bytes; alice sees nothing.
    await h.send(bob, busy)
    assert sent(h) == [(first_ack, Target("udp", *BOB_SRC))]
    # alice's INVITE again: the same 486; her ACK for it is absorbed, not forwarded.
    await h.send(alice, call.invite)
    assert sent(h) == [(first_busy, Target("udp", *ALICE_SRC))]
    await h.send(alice, alice.request("ACK", call.invite.uri, to=busy_fwd.get("to") or "",
                                      call_id="linger-1", from_tag="a1",
                                      cseq=call.invite.cseq.number,
                                      branch=call.invite.top_via.branch))  # type: ignore[union-attr]
    assert sent(h) == []


async def test_a_late_2xx_on_a_branch_notes_its_dialog() -> None:
    # A 2xx with a new To tag (the callee's side forked) after the request is over still
    # reaches the caller and opens its dialog: in-dialog requests for it are routed.
    h, alice, bob = setup()
    call = await start(h, alice)
    await h.send(bob, bob.answer(call.to_bob, 200, to_tag="b1"))
    h.sender.take()
    assert h.proxy._branches == {} and len(h.proxy._late) == 1
    await h.send(bob, bob.answer(call.to_bob, 200, to_tag="b2"))
    [(late, target)] = h.sender.responses(200)
    assert late.to.tag == "b2" and target == Target("udp", *ALICE_SRC)
    h.sender.take()
    await h.send(alice, alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=b2",
                                      call_id="linger-1", from_tag="a1", headers=[ROUTE]))
    [(_, target)] = h.sender.requests("BYE")
    assert target == Target("udp", *BOB_SRC)


async def test_a_peer_has_one_target_for_all_its_transactions() -> None:
    h, alice, bob = setup()
    await start(h, alice)
    servers = list(h.proxy._table.servers.values())
    assert len(servers) == 2 and servers[0].peer is servers[1].peer


async def whole_call(h: Harness, alice: Phone, bob: Phone, n: int) -> str:
    """One INVITE -> 407 -> ACK, INVITE -> 180 -> 200 -> ACK, BYE -> 200 call (call-ID N):
    "completed", or which request was refused and with what ("INVITE 503", "BYE 503")."""
    uri, call_id, tag = f"sip:bob@{REALM}", f"cap-{n}", f"a{n}"

    def refused(method: str) -> str:
        return f"{method} {' '.join(str(r.status) for r, _ in h.sender.responses())}"

    h.sender.take()
    first = alice.request("INVITE", uri, to=f"<{uri}>", call_id=call_id, from_tag=tag, body=SDP)
    await h.send(alice, first)
    challenges = h.sender.responses(407)
    if not challenges:
        return refused("INVITE")
    challenge = challenges[0][0]
    await h.send(alice, alice.request("ACK", uri, to=challenge.get("to") or "", call_id=call_id,
                                      from_tag=tag, cseq=first.cseq.number,
                                      branch=first.top_via.branch))  # type: ignore[union-attr]
    h.sender.take()
    invite = alice.request("INVITE", uri, to=f"<{uri}>", call_id=call_id, from_tag=tag,
                           body=SDP, headers=[("Proxy-Authorization",
                                               authorization(first, challenge, alice))])
    await h.send(alice, invite)
    forwarded = h.sender.requests("INVITE")
    if not forwarded:
        return refused("INVITE")
    to_bob = forwarded[0][0]
    await h.send(bob, bob.answer(to_bob, 180, to_tag=f"b{n}"))
    await h.send(bob, bob.answer(to_bob, 200, to_tag=f"b{n}"))
    to = f"<{uri}>;tag=b{n}"
    await h.send(alice, alice.request("ACK", bob.contact, to=to, call_id=call_id, from_tag=tag,
                                      cseq=invite.cseq.number, headers=[ROUTE]))
    h.sender.take()
    await h.send(alice, alice.request("BYE", bob.contact, to=to, call_id=call_id, from_tag=tag,
                                      headers=[ROUTE]))
    byes = h.sender.requests("BYE")
    if not byes:
        return refused("BYE")
    await h.send(bob, bob.answer(byes[0][0], 200))
    return "completed"


async def test_finished_calls_fill_the_budget_only_until_their_timers_end() -> None:
    """Lingering transactions count against the transaction budget (503 once it is full) and
    leave it when their last timer fires: then calls go through again. New calls are refused
    first: the last tenth of the budget is kept for in-dialog requests, so a call let in can
    still be hung up."""
    h, alice, bob = setup()
    h.proxy.max_transactions = 12  # 1 of them kept for in-dialog requests
    outcomes = [await whole_call(h, alice, bob, n) for n in range(8)]
    assert outcomes[:2] == ["completed"] * 2, outcomes
    assert "INVITE 503" in outcomes and "BYE 503" not in outcomes, outcomes
    # Checked for each new request; the branches of the last one let in may go past it.
    assert h.proxy.transactions <= 12 + h.proxy.max_branches
    await h.tick(5.1)  # Timers I and K: the challenged INVITEs and the BYEs' client side
    await h.tick(32.1)  # Timers J, L and M: everything else (64·T1)
    assert h.proxy.transactions == 0 and h.proxy.calls == 0
    assert await whole_call(h, alice, bob, 99) == "completed"

