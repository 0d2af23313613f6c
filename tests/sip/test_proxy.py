"""The stateful proxy's signalling (RFC 3261 §16) against fake phones and a fake clock:
challenge, forwarding edits, refusals, forking, CANCEL, Timer C, loose routing, budgets."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.models import CallRecord
from appliance.sip.bindings import Origin
from appliance.sip.forwarding import REAP_AFTER, TIMER_C
from appliance.sip.headers import DigestCredentials, NameAddr
from appliance.sip.message import Request, Response
from appliance.sip.proxy_ports import Caller, Fork
from appliance.sip.wire import Target
from tests.sip.proxy_harness import (
    LOCAL,
    REALM,
    SDP,
    Harness,
    Phone,
    authorization,
    make_user,
)

ALICE_SRC = ("203.0.113.10", 40000)
BOB_SRC = ("203.0.113.20", 41000)
BOB2_SRC = ("203.0.113.21", 42000)


def setup() -> tuple[Harness, Phone, Phone]:
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC)
    bob = h.phone("bob", "192.168.1.20", BOB_SRC)
    return h, alice, bob


def statuses(h: Harness) -> list[int]:
    return [m.status for m, _ in h.sender.responses()]


# --- challenge and authentication -------------------------------------------------------


async def test_invite_without_credentials_gets_407_sha256_then_md5() -> None:
    h, alice, _ = setup()
    invite = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="c1",
                           from_tag="t1", body=SDP)
    await h.send(alice, invite)
    [(response, target)] = h.sender.take()
    assert isinstance(response, Response) and response.status == 407
    assert target == Target("udp", *ALICE_SRC)
    offers = [DigestCredentials.parse(v) for v in response.get_all("proxy-authenticate")]
    assert [o.algorithm for o in offers] == ["SHA-256", "MD5"]
    assert {o.realm for o in offers} == {REALM}
    assert response.to.tag  # a final response carries a To tag
    # The caller's ACK for the 407 is absorbed by our server transaction.
    ack = alice.request("ACK", invite.uri, to=response.get("to") or "", call_id="c1",
                        from_tag="t1", cseq=1, branch=invite.top_via.branch)  # type: ignore[union-attr]
    await h.send(alice, ack)
    assert h.sender.take() == []


async def test_unknown_user_gets_the_same_challenge_shape() -> None:
    h, alice, _ = setup()
    mallory = Phone("mallory", "192.168.1.66", ("198.51.100.6", 5060))
    invite = mallory.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                             call_id="c2", from_tag="t2", body=SDP)
    await h.send(mallory, invite)
    [(response, _)] = h.sender.take()
    assert isinstance(response, Response) and response.status == 407
    known = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="c3",
                          from_tag="t3", body=SDP)
    await h.send(alice, known)
    [(other, _)] = h.sender.take()
    assert isinstance(other, Response)
    assert [h_.name for h_ in response.headers] == [h_.name for h_ in other.headers]
    def shape(r: Response) -> list[list[str]]:
        return [list(DigestCredentials.parse(v).params) for v in r.get_all("proxy-authenticate")]

    assert shape(response) == shape(other)


async def test_authenticated_invite_is_forwarded_with_our_via_rr_and_max_forwards() -> None:
    h, alice, bob = setup()
    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP, max_forwards=70)
    out = h.sender.take()
    trying = [m for m, t in out if isinstance(m, Response)]
    assert [r.status for r in trying] == [100]
    [(forwarded, target)] = [(m, t) for m, t in out if isinstance(m, Request)]
    assert target == Target("udp", *BOB_SRC)  # bob's NAT address, not his Contact
    assert forwarded.uri == bob.contact  # the Contact stays the Request-URI
    vias = forwarded.vias
    assert (vias[0].host, vias[0].port) == LOCAL and vias[0].transport == "UDP"
    assert vias[0].branch and vias[0].branch.startswith("z9hG4bK")
    assert vias[1].host == "192.168.1.10" and vias[1].received == ALICE_SRC[0]
    assert vias[1].rport == ALICE_SRC[1]
    assert forwarded.get("max-forwards") == "69"
    assert forwarded.get_all("record-route") == ["<sip:10.0.0.1:5060;lr;transport=udp>"]
    assert forwarded.get("proxy-authorization") is None  # consumed
    assert forwarded.body == SDP and forwarded.call_id == sent.call_id


async def test_the_proxys_100_trying_copies_the_timestamp() -> None:
    # RFC 3261 §8.2.6.1: a 100 carries the request's Timestamp (the caller's RTT estimate).
    h, alice, _ = setup()
    uri, to = f"sip:bob@{REALM}", f"<sip:bob@{REALM}>"
    first = alice.request("INVITE", uri, to=to, call_id="ts", from_tag="t", body=SDP)
    await h.send(alice, first)
    [(challenge, _)] = h.sender.responses(407)
    h.sender.take()
    invite = alice.request("INVITE", uri, to=to, call_id="ts", from_tag="t", body=SDP,
                           headers=[("Timestamp", "100.5"), ("Proxy-Authorization",
                                                           authorization(first, challenge,
                                                                         alice))])
    await h.send(alice, invite)
    [(trying, _)] = h.sender.responses(100)
    assert trying.get("timestamp") == "100.5"


async def test_the_proxy_forgets_stale_nonces() -> None:
    h, alice, _ = setup()
    await h.authenticated(alice, "INVITE", "bob", body=SDP, algorithm="MD5")
    proxy = h.proxy
    assert len(proxy._auth.counts) == 1
    proxy.forget_stale_nonces()  # still fresh
    assert len(proxy._auth.counts) == 1
    h.clock.now += proxy.nonces.lifetime + 1
    proxy.forget_stale_nonces()
    assert len(proxy._auth.counts) == 0


async def test_md5_only_phone_is_accepted() -> None:
    h, alice, _ = setup()
    await h.authenticated(alice, "INVITE", "bob", body=SDP, algorithm="MD5")
    assert len(h.sender.requests("INVITE")) == 1


async def test_transport_change_adds_two_record_routes() -> None:
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC)
    bob = h.phone("bob", "192.168.1.20", BOB_SRC, transport="tcp", connection_id="conn-7")
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(forwarded, target)] = h.sender.requests("INVITE")
    assert target == Target("tcp", *BOB_SRC, "conn-7")
    assert forwarded.get_all("record-route") == [
        "<sip:10.0.0.1:5060;lr;transport=tcp>", "<sip:10.0.0.1:5060;lr;transport=udp>"]
    assert forwarded.vias[0].transport == "TCP"
    assert forwarded.uri == bob.contact


async def test_refusals_after_authentication() -> None:
    h, alice, _ = setup()
    h.directory.users["carol"] = make_user("carol")  # known, never registered
    h.directory.users["dave"] = make_user("dave", enabled=False)
    cases = {"nobody": 404, "carol": 480, "dave": 480, "+15551234567": 403}
    for callee, status in cases.items():
        await h.authenticated(alice, "INVITE", callee, body=SDP)
        assert statuses(h) == [status], callee
        h.sender.take()
    assert h.sender.requests() == []
    # A number has no route yet, and the reason says so.
    await h.authenticated(alice, "INVITE", "5551234", body=SDP)
    [(refusal, _)] = h.sender.responses(403)
    assert refusal.reason == "No Outbound Route"


async def test_wrong_password_gets_403_and_no_new_challenge() -> None:
    h, alice, _ = setup()
    invite = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="w1",
                           from_tag="t", body=SDP)
    await h.send(alice, invite)
    [(challenge, _)] = h.sender.responses(407)
    h.sender.take()
    again = alice.request("INVITE", invite.uri, to=f"<sip:bob@{REALM}>", call_id="w1",
                          from_tag="t", body=SDP, headers=[("Proxy-Authorization", authorization(
                              invite, challenge, alice, password="wrong"))])
    await h.send(alice, again)
    assert statuses(h) == [403]


async def test_credentials_for_one_destination_do_not_reach_another() -> None:
    # A digest alice computed for sip:bob@... (caught on its way, say) put on an INVITE to
    # a number: 400, nothing forwarded, and not counted as a wrong password.
    h, alice, _ = setup()
    to_bob = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                           call_id="u1", from_tag="t", body=SDP)
    await h.send(alice, to_bob)
    [(challenge, _)] = h.sender.responses(407)
    h.sender.take()
    for uri in (f"sip:+442071234567@{REALM}", f"sip:bob@{REALM};user=phone", "sip:bob@x"):
        swapped = alice.request("INVITE", uri, to=f"<sip:bob@{REALM}>", call_id="u1",
                                from_tag="t", body=SDP, headers=[(
                                    "Proxy-Authorization",
                                    authorization(to_bob, challenge, alice))])
        await h.send(alice, swapped)
        [(refusal, _)] = h.sender.responses(400)
        assert refusal.reason == "Digest URI Is Not The Request-URI"
        assert h.sender.requests("INVITE") == []
        h.sender.take()
    # The same credentials on the request they were made for still go through.
    same = alice.request("INVITE", to_bob.uri, to=f"<sip:bob@{REALM}>", call_id="u1",
                         from_tag="t", body=SDP, headers=[(
                             "Proxy-Authorization", authorization(to_bob, challenge, alice))])
    await h.send(alice, same)
    assert h.sender.requests("INVITE")


async def test_unregistered_or_disabled_or_impersonating_caller_is_refused() -> None:
    h = Harness()
    h.phone("bob", "192.168.1.20", BOB_SRC)
    ghost = h.phone("ghost", "192.168.1.30", ("203.0.113.30", 5060), register=False)
    await h.authenticated(ghost, "INVITE", "bob", body=SDP)
    [(refusal, _)] = h.sender.responses(403)
    assert refusal.reason == "Caller Not Registered"
    h.sender.take()

    off = h.phone("off", "192.168.1.31", ("203.0.113.31", 5060), user=make_user("off",
                                                                               enabled=False))
    await h.authenticated(off, "INVITE", "bob", body=SDP)
    assert statuses(h) == [403]
    h.sender.take()

    # alice's credentials on a request that claims to come from bob
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC)
    invite = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="i1",
                           from_tag="t", body=SDP, from_user="bob")
    await h.send(alice, invite)
    [(challenge, _)] = h.sender.responses(407)
    h.sender.take()
    forged = alice.request("INVITE", invite.uri, to=f"<sip:bob@{REALM}>", call_id="i1",
                           from_tag="t", body=SDP, from_user="bob", headers=[(
                               "Proxy-Authorization", authorization(invite, challenge, alice))])
    await h.send(alice, forged)
    [(refusal, _)] = h.sender.responses(403)
    assert refusal.reason == "From Does Not Match Credentials"
    assert h.sender.requests("INVITE") == []


async def test_stale_nonce_is_rechallenged_with_stale_true() -> None:
    h, alice, _ = setup()
    invite = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="s1",
                           from_tag="t", body=SDP)
    await h.send(alice, invite)
    [(challenge, _)] = h.sender.responses(407)
    h.sender.take()
    h.clock.now += 3600  # the nonce is long expired
    again = alice.request("INVITE", invite.uri, to=f"<sip:bob@{REALM}>", call_id="s1",
                          from_tag="t", body=SDP, headers=[("Proxy-Authorization", authorization(
                              invite, challenge, alice))])
    await h.send(alice, again)
    [(rechallenge, _)] = h.sender.responses(407)
    assert all("stale=true" in v for v in rechallenge.get_all("proxy-authenticate"))


async def invite_with(h: Harness, alice: Phone, uri: str, route: str) -> list[Request]:
    """ALICE's authenticated INVITE with Request-URI URI and a Route: what was forwarded."""
    to = f"<sip:bob@{REALM}>"
    first = alice.request("INVITE", uri, to=to, call_id="r1", from_tag="t", body=SDP,
                          headers=[("Route", route)])
    await h.send(alice, first)
    [(challenge, _)] = h.sender.responses(407)
    h.sender.take()
    second = alice.request("INVITE", uri, to=to, call_id="r1", from_tag="t", body=SDP, headers=[
        ("Route", route), ("Proxy-Authorization", authorization(first, challenge, alice))])
    await h.send(alice, second)
    return [m for m, _ in h.sender.requests("INVITE")]


async def test_route_preprocessing_pops_our_route_and_undoes_a_strict_router() -> None:
    # §16.4: our own Route entry is popped; a strict router upstream put our address in
    # the Request-URI and the real target in the last Route: the URI is restored from it.
    for uri, route in ((f"sip:bob@{REALM}", "<sip:10.0.0.1:5060;lr>"),
                       ("sip:10.0.0.1:5060;lr", f"<sip:bob@{REALM}>")):
        h, alice, bob = setup()
        [forwarded] = await invite_with(h, alice, uri, route)
        assert forwarded.uri == bob.contact and forwarded.get("route") is None


async def test_max_forwards_zero_gets_483_without_challenge() -> None:
    h, alice, _ = setup()
    invite = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="m0",
                           from_tag="t", body=SDP, max_forwards=0)
    await h.send(alice, invite)
    assert statuses(h) == [483]


async def test_unknown_proxy_require_gets_420_with_unsupported_before_any_challenge() -> None:
    # The front door checks this too; the proxy does on its own (§16.3 step 5) and names
    # the options it lacks.
    h, alice, bob = setup()
    invite = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="pr",
                           from_tag="t", body=SDP, headers=[("Proxy-Require", "sec-agree, foo")])
    await h.send(alice, invite)
    [(refusal, _)] = h.sender.responses()
    assert refusal.status == 420 and refusal.get("unsupported") == "sec-agree, foo"
    assert h.sender.requests() == []


async def test_max_forwards_one_is_forwarded_as_zero() -> None:
    h, alice, _ = setup()
    await h.authenticated(alice, "INVITE", "bob", body=SDP, max_forwards=1)
    [(forwarded, _)] = h.sender.requests("INVITE")
    assert forwarded.get("max-forwards") == "0"


async def test_unsupported_methods_and_stray_in_dialog_requests() -> None:
    h, alice, _ = setup()
    sub = alice.request("SUBSCRIBE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="u1",
                        from_tag="t", headers=[("Event", "presence")])
    await h.send(alice, sub)
    bye = alice.request("BYE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="u2",
                        from_tag="t")
    await h.send(alice, bye)
    in_dialog = alice.request("BYE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>;tag=x",
                              call_id="u3", from_tag="t")
    await h.send(alice, in_dialog)
    assert statuses(h) == [501, 481, 481]


# --- forking, responses, CANCEL ---------------------------------------------------------


async def fork_setup() -> tuple[Harness, Phone, Phone, Phone, Request]:
    h, alice, bob = setup()
    bob2 = Phone("bob", "192.168.1.21", BOB2_SRC)
    h.location.register("bob", [NameAddr.parse(f"<{bob2.contact}>")], expires_header=3600,
                        call_id="reg-bob-2", cseq=1, now=h.clock.now,
                        origin=Origin("udp", BOB2_SRC))
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    return h, alice, bob, bob2, invite


def branch_for(h: Harness, target: tuple[str, int]) -> Request:
    [request] = [m for m, t in h.sender.requests("INVITE") if (t.host, t.port) == target]
    return request


async def test_a_route_to_no_phone_is_answered_480() -> None:
    # A router that finds the callee but none of its phones: the caller gets a final
    # response, and nothing is left in flight.
    h, alice, _ = setup()

    class NoPhones:
        def registered(self, login: str, now: float) -> bool:
            return True

        async def route(self, request: Request, caller: Caller, now: float) -> Fork:
            return Fork(callee="bob", contacts=())

    h.proxy._router = NoPhones()  # type: ignore[assignment]
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    assert [r.status for r, _ in h.sender.responses() if r.status >= 200] == [480]
    assert h.proxy.in_flight == 0 and h.sender.requests("INVITE") == []


async def test_fork_to_two_contacts_200_cancels_the_other() -> None:
    h, alice, bob, bob2, _ = await fork_setup()
    to_bob, to_bob2 = branch_for(h, BOB_SRC), branch_for(h, BOB2_SRC)
    assert to_bob.vias[0].branch != to_bob2.vias[0].branch
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    await h.send(bob2, bob2.answer(to_bob2, 180, to_tag="b2"))
    ringing = h.sender.responses(180)
    assert len(ringing) == 2 and all(t == Target("udp", *ALICE_SRC) for _, t in ringing)
    assert len(ringing[0][0].vias) == 1  # our Via is gone
    h.sender.take()
    await h.send(bob2, bob2.answer(to_bob2, 200, to_tag="b2"))
    [(ok, ok_target)] = h.sender.responses(200)
    assert ok_target == Target("udp", *ALICE_SRC) and ok.to.tag == "b2"
    [(cancel, cancel_target)] = h.sender.requests("CANCEL")
    assert cancel_target == Target("udp", *BOB_SRC)
    assert cancel.uri == to_bob.uri and cancel.vias[0].branch == to_bob.vias[0].branch
    h.sender.take()
    # bob answers the CANCEL and the INVITE (487): the 487 is ACKed by us, not relayed.
    await h.send(bob, bob.answer(cancel, 200))
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b1"))
    assert h.sender.responses() == []
    [(ack, ack_target)] = h.sender.requests("ACK")
    assert ack_target == Target("udp", *BOB_SRC)
    assert h.proxy.in_flight == 0


async def test_cancel_waits_for_a_provisional_before_cancelling_a_branch() -> None:
    h, alice, bob, bob2, _ = await fork_setup()
    to_bob, to_bob2 = branch_for(h, BOB_SRC), branch_for(h, BOB2_SRC)
    h.sender.take()
    await h.send(bob2, bob2.answer(to_bob2, 200, to_tag="b2"))
    assert h.sender.requests("CANCEL") == []  # bob never sent a provisional
    await h.send(bob, bob.answer(to_bob, 100))
    [(cancel, target)] = h.sender.requests("CANCEL")
    assert target == Target("udp", *BOB_SRC)


async def test_a_second_2xx_is_forwarded_too() -> None:
    h, alice, bob, bob2, _ = await fork_setup()
    to_bob, to_bob2 = branch_for(h, BOB_SRC), branch_for(h, BOB2_SRC)
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b1"))
    await h.send(bob2, bob2.answer(to_bob2, 200, to_tag="b2"))
    assert [r.to.tag for r, _ in h.sender.responses(200)] == ["b1", "b2"]


async def test_a_cancel_may_use_the_reserve_kept_for_in_dialog_requests() -> None:
    # With the table full for new requests, the caller can still hang up a ringing call:
    # a CANCEL ends a transaction, like the BYE the reserve is kept for.
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    h.proxy.max_transactions = h.proxy.transactions + 1  # the last one kept in reserve
    h.sender.take()
    message = alice.request("MESSAGE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                            call_id="m", from_tag="t", body=b"hi")
    await h.send(alice, message)
    assert [r.status for r, _ in h.sender.responses()] == [503]  # a new request: refused
    h.sender.take()
    cancel = alice.cancel(invite)
    await h.send(alice, cancel)
    assert [(r.status, r.cseq.method) for r, _ in h.sender.responses()] == [(200, "CANCEL")]
    assert len(h.sender.requests("CANCEL")) == 1


async def test_caller_cancel_gets_200_cancels_branches_and_relays_487() -> None:
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    h.sender.take()
    cancel = alice.cancel(invite)
    await h.send(alice, cancel)
    assert [(r.status, r.cseq.method) for r, _ in h.sender.responses()] == [(200, "CANCEL")]
    [(downstream, target)] = h.sender.requests("CANCEL")
    assert target == Target("udp", *BOB_SRC) and downstream.uri == to_bob.uri
    h.sender.take()
    await h.send(bob, bob.answer(downstream, 200))
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b1"))
    [(relayed, target)] = h.sender.responses(487)
    assert target == Target("udp", *ALICE_SRC) and relayed.cseq.method == "INVITE"
    assert len(relayed.vias) == 1
    # The caller's ACK for the 487 is absorbed.
    h.sender.take()
    ack = alice.request("ACK", invite.uri, to=relayed.get("to") or "", call_id=invite.call_id or "",
                        from_tag="caller-tag", cseq=invite.cseq.number,
                        branch=invite.top_via.branch)  # type: ignore[union-attr]
    await h.send(alice, ack)
    assert h.sender.take() == []


async def test_cancel_before_any_provisional_answers_487_at_once() -> None:
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    h.sender.take()
    cancel = alice.cancel(invite)
    await h.send(alice, cancel)
    assert sorted(statuses(h)) == [200, 487]
    assert h.sender.requests("CANCEL") == []
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))  # late: now it can be cancelled
    assert len(h.sender.requests("CANCEL")) == 1
    assert h.sender.responses() == []


async def test_a_2xx_after_our_own_487_is_acked_and_hung_up_not_forwarded() -> None:
    # The caller has its 487 (made by us: bob had sent nothing, §9.1) when bob answers: the
    # caller's transaction is over, so we end bob's dialog ourselves (ACK, then BYE along
    # its route set: the proxy bob is behind, not our own entry).
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC)
    bob = h.phone("bob", "192.168.1.20", ("192.0.2.99", 5070))  # registered through it
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    h.sender.take()
    await h.send(alice, alice.cancel(invite))
    assert sorted(statuses(h)) == [200, 487]
    h.sender.take()
    theirs = "<sip:192.0.2.99:5070;lr>"
    to_bob.prepend("Record-Route", theirs)  # as a proxy between us and bob would
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    assert len(h.sender.requests("CANCEL")) == 1
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    assert h.sender.responses() == []  # not to alice
    [(ack, ack_target)] = h.sender.requests("ACK")
    [(bye, bye_target)] = h.sender.requests("BYE")
    for request in (ack, bye):
        assert request.uri == bob.contact and request.get_all("route") == [theirs]
        assert request.to.tag == "b1" and request.from_.tag == "caller-tag"
        assert request.call_id == to_bob.call_id
    assert ack_target == bye_target == Target("udp", "192.0.2.99", 5070)
    assert (ack.cseq.number, ack.cseq.method) == (to_bob.cseq.number, "ACK")
    assert (bye.cseq.number, bye.cseq.method) == (to_bob.cseq.number + 1, "BYE")
    assert ack.vias[0].branch != bye.vias[0].branch != to_bob.vias[0].branch
    sent = [m.method for m, _ in h.sender.take() if isinstance(m, Request)]
    assert sent.index("ACK") < sent.index("BYE")
    # A retransmitted 200 is ACKed again; nothing more.
    await h.send(bob, ok)
    assert [m.method for m, _ in h.sender.take() if isinstance(m, Request)] == ["ACK"]
    [cdr] = h.store.calls.values()
    assert cdr.status == "canceled"


async def test_our_hang_up_takes_no_route_a_phone_record_routed_elsewhere() -> None:
    # bob's phone (any Client) answers after the caller's final with a Record-Route of its
    # own naming another host: our ACK and BYE go to bob's phone, without that route set.
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    h.sender.take()
    await h.send(alice, alice.cancel(invite))
    h.sender.take()
    ok = bob.answer(to_bob, 200, to_tag="b1")
    ok.prepend("Record-Route", "<sip:+33123456789@198.51.100.7;lr>")
    await h.send(bob, ok)
    sent = h.sender.requests()
    assert [r.method for r, _ in sent] == ["ACK", "BYE"]
    assert all(t == Target("udp", *BOB_SRC) and r.get("route") is None for r, t in sent)


async def test_cancel_matching_nothing_gets_481() -> None:
    h, alice, _ = setup()
    cancel = alice.request("CANCEL", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                           call_id="nothing", from_tag="t", cseq=1)
    await h.send(alice, cancel)
    assert statuses(h) == [481]


async def test_best_response_prefers_6xx_and_turns_503_into_500() -> None:
    h, alice, bob, bob2, _ = await fork_setup()
    to_bob, to_bob2 = branch_for(h, BOB_SRC), branch_for(h, BOB2_SRC)
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 486, to_tag="b1"))
    assert h.sender.responses() == []  # waits for the other branch
    await h.send(bob2, bob2.answer(to_bob2, 603, to_tag="b2"))
    assert statuses(h) == [603]

    h, alice, bob, bob2, _ = await fork_setup()
    to_bob, to_bob2 = branch_for(h, BOB_SRC), branch_for(h, BOB2_SRC)
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 503, to_tag="b1"))
    await h.send(bob2, bob2.answer(to_bob2, 503, to_tag="b2"))
    assert statuses(h) == [500]


async def test_among_4xx_a_response_the_caller_can_act_on_is_preferred() -> None:
    # RFC 3261 §16.7 step 6: a 401/407/415/420/484 tells the caller how to retry; a 486
    # from the other phone would hide it.
    h, alice, bob, bob2, _ = await fork_setup()
    to_bob, to_bob2 = branch_for(h, BOB_SRC), branch_for(h, BOB2_SRC)
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 486, to_tag="b1"))
    await h.send(bob2, bob2.answer(to_bob2, 484, to_tag="b2"))
    assert statuses(h) == [484]


async def test_challenges_of_every_401_and_407_branch_go_upstream_together() -> None:
    # Two phones of one user each want credentials (RFC 3261 §16.7 step 7): the caller gets
    # one response carrying both challenges, so it can answer both in one retry.
    h, alice, bob, bob2, _ = await fork_setup()
    to_bob, to_bob2 = branch_for(h, BOB_SRC), branch_for(h, BOB2_SRC)
    h.sender.take()
    www = 'Digest realm="bob-phone", nonce="n1", algorithm=MD5'
    proxy_auth = 'Digest realm="bob2-phone", nonce="n2", algorithm=MD5'
    await h.send(bob, bob.answer(to_bob, 401, to_tag="b1",
                                 headers=[("WWW-Authenticate", www)]))
    await h.send(bob2, bob2.answer(to_bob2, 407, to_tag="b2",
                                   headers=[("Proxy-Authenticate", proxy_auth)]))
    [(final, target)] = h.sender.responses()
    assert final.status == 401 and target == Target("udp", *ALICE_SRC)
    assert final.get_all("www-authenticate") == [www]
    assert final.get_all("proxy-authenticate") == [proxy_auth]
    assert len(final.vias) == 1


async def test_6xx_cancels_the_other_branches() -> None:
    h, alice, bob, bob2, _ = await fork_setup()
    to_bob, to_bob2 = branch_for(h, BOB_SRC), branch_for(h, BOB2_SRC)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    h.sender.take()
    await h.send(bob2, bob2.answer(to_bob2, 600, to_tag="b2"))
    [(cancel, target)] = h.sender.requests("CANCEL")
    assert target == Target("udp", *BOB_SRC)
    assert h.sender.responses(600) == []  # sent once bob's branch is over
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b1"))
    assert statuses(h) == [600]


async def test_timer_c_cancels_a_ringing_branch_and_the_caller_gets_408() -> None:
    h, alice, bob = setup()
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    h.sender.take()
    await h.tick(TIMER_C - 1)
    assert h.sender.requests("CANCEL") == []
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))  # a provisional restarts Timer C
    h.sender.take()
    await h.tick(TIMER_C - 1)
    assert h.sender.requests("CANCEL") == []
    await h.tick(2)
    [(cancel, _)] = h.sender.requests("CANCEL")
    h.sender.take()
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b1"))
    assert statuses(h) == [408]


async def test_a_call_answered_after_ringing_for_minutes_can_still_be_hung_up() -> None:
    # RFC 3261 §13.3.1.1: a phone that rings for long sends a 180 every minute to keep
    # Timer C from firing. The call must stay known for as long, or its BYE draws a 481.
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    for _ in range(6):
        await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
        await h.tick(60)
    ok = bob.answer(to_bob, 200, to_tag="b1")
    await h.send(bob, ok)
    h.sender.take()
    bye = alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=b1",
                        call_id=invite.call_id or "", from_tag="caller-tag",
                        headers=[("Route", r) for r in ok.get_all("record-route")])
    await h.send(alice, bye)
    [(_, target)] = h.sender.requests("BYE")
    assert target == Target("udp", *BOB_SRC) and h.sender.responses() == []
    [cdr] = h.store.calls.values()
    assert cdr.status == "completed"


async def test_timer_c_on_a_branch_that_ignores_our_cancel_still_answers_the_caller_408() -> None:
    # The phone rang, then went away: no 487 to our CANCEL. Once the cancelled branch is
    # reaped (64·T1) the caller must still get a final response, not ring forever.
    h, alice, bob = setup()
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    h.sender.take()
    await h.tick(TIMER_C + 1)
    assert len(h.sender.requests("CANCEL")) == 1
    h.sender.take()
    await h.tick(REAP_AFTER + 1)
    [(final, target)] = [(r, t) for r, t in h.sender.responses() if r.status >= 200]
    assert (final.status, final.cseq.method) == (408, "INVITE")
    assert target == Target("udp", *ALICE_SRC)
    assert h.proxy.in_flight == 0


async def test_caller_cancel_of_a_branch_that_never_answers_it_still_ends_in_487() -> None:
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b1"))
    h.sender.take()
    await h.send(alice, alice.cancel(invite))
    assert len(h.sender.requests("CANCEL")) == 1
    h.sender.take()
    await h.tick(REAP_AFTER + 1)
    [(final, target)] = [(r, t) for r, t in h.sender.responses() if r.status >= 200]
    assert (final.status, final.cseq.method) == (487, "INVITE")
    assert target == Target("udp", *ALICE_SRC)
    assert h.proxy.in_flight == 0


async def test_a_request_the_proxy_fails_on_is_answered_500_not_left_in_its_table() -> None:
    # A server transaction has no timer in Proceeding (after its 100) or Trying: left there
    # by an exception it would swallow the caller's retransmissions and stay for ever.
    h, alice, _ = setup()

    async def broken(*args: object) -> Fork:
        raise RuntimeError("router bug")

    h.router.route = broken  # type: ignore[method-assign,assignment]
    for method in ("INVITE", "MESSAGE"):
        try:
            await h.authenticated(alice, method, "bob", body=SDP)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the router's error is not swallowed")
        assert statuses(h) == [500]
        h.sender.take()
    await h.tick(64 * 0.5 + 1)  # Timers H (no ACK in this test) and J
    assert h.proxy.transactions == 0


async def test_a_branch_the_transport_cannot_send_to_counts_as_503() -> None:
    # RFC 3261 §17.1.4 / §16.9: the transport error goes up as a 503 at once (the caller
    # sees 500, §16.7 step 6) instead of Timer B's 408 32 s later.
    h, alice, _ = setup()
    h.sender.failing.add(BOB_SRC)
    for method in ("INVITE", "MESSAGE"):
        await h.authenticated(alice, method, "bob", body=SDP)
        assert [s for s in statuses(h) if s != 100] == [500]
        assert len(h.sender.requests(method)) == 1  # not retransmitted
        h.sender.take()
    await h.tick(1.0)
    assert h.sender.requests() == [] and h.proxy.in_flight == 0


async def test_a_branch_the_transport_fails_to_send_to_later_counts_as_503() -> None:
    # A TCP connect under way when send returns (a phone whose connection went away): its
    # failure comes later, from the loop, and goes up the same way (RFC 3261 §18.4,
    # §17.1.4), not as Timer B's 408 32 s later; the call's CDR ends failed.
    h, alice, _ = setup()
    h.sender.failing_later.add(BOB_SRC)
    for method in ("INVITE", "MESSAGE"):
        await h.authenticated(alice, method, "bob", body=SDP)
        assert [s for s in statuses(h) if s != 100] == []  # nothing known to fail yet
        assert h.sender.fail_later() == 1
        assert h.proxy.get_timer() == float("-inf")  # due now
        await h.tick(0)
        assert [s for s in statuses(h) if s != 100] == [500]
        assert len(h.sender.requests(method)) == 1  # not retransmitted
        h.sender.take()
    [cdr] = h.store.calls.values()
    assert cdr.status == "failed" and cdr.end_time is not None
    [sms] = h.store.sms
    assert (sms.status, sms.error_code) == ("failed", 500)  # the status the caller got
    await h.tick(1.0)
    assert h.sender.requests() == [] and h.proxy.in_flight == 0


async def test_late_send_failures_are_each_reported_though_one_report_raises(
        caplog: pytest.LogCaptureFixture) -> None:
    """The timer pass takes the whole set of branches the transport reported unsent; one
    whose handling raises is logged, and the others still get their 503 (500 to their
    callers) now rather than Timer B's 408."""
    h, alice, _ = setup()
    h.sender.failing_later.add(BOB_SRC)
    for call in ("c1", "c2", "c3"):
        await h.authenticated(alice, "MESSAGE", "bob", call_id=call)
    h.sender.take()
    assert h.sender.fail_later() == 3
    drain, seen = h.proxy._drain, list[Any]()

    async def first_raises(txn: Any, actions: list[Any], now: float) -> None:
        seen.append(txn)
        if len(seen) == 1:
            raise RuntimeError("boom")
        await drain(txn, actions, now)

    h.proxy._drain = first_raises  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="appliance.sip.proxy"):
        await h.tick(0)
    assert "reporting a transport error" in caplog.text
    assert statuses(h) == [500, 500]


async def test_a_silent_branch_times_out_on_timer_b_with_408() -> None:
    h, alice, bob = setup()
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    h.sender.take()
    for _ in range(70):  # Timer A retransmits, then Timer B (32 s) gives up
        await h.tick(0.5)
    retransmits = h.sender.requests("INVITE")
    assert 5 <= len(retransmits) <= 7
    assert set(statuses(h)) == {408}  # the 408, then Timer G retransmits it until ACKed


# --- in-dialog requests ---------------------------------------------------------------------


async def established(h: Harness, alice: Phone, bob: Phone) -> tuple[Request, Request, Response]:
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    ok = bob.answer(to_bob, 200, to_tag="bob-tag")
    await h.send(bob, ok)
    h.sender.take()
    return invite, to_bob, ok


async def test_ack_and_bye_follow_the_route_set_to_the_nat_addresses() -> None:
    h, alice, bob = setup()
    invite, to_bob, ok = await established(h, alice, bob)
    route = ok.get_all("record-route")
    assert route == ["<sip:10.0.0.1:5060;lr;transport=udp>"]
    to = f"<sip:bob@{REALM}>;tag=bob-tag"
    ack = alice.request("ACK", bob.contact, to=to, call_id=invite.call_id or "",
                        from_tag="caller-tag", cseq=invite.cseq.number,
                        headers=[("Route", r) for r in route])
    await h.send(alice, ack)
    [(fwd_ack, target)] = h.sender.requests("ACK")
    assert target == Target("udp", *BOB_SRC)
    assert fwd_ack.uri == bob.contact and fwd_ack.get("route") is None
    assert fwd_ack.get("max-forwards") == "69"
    h.sender.take()
    # bob hangs up: his BYE goes to alice's NAT address, through a transaction.
    bye = bob.request("BYE", alice.contact, to=f"<sip:alice@{REALM}>;tag=caller-tag",
                      call_id=invite.call_id or "", from_tag="bob-tag",
                      headers=[("Route", r) for r in route])
    await h.send(bob, bye)
    [(fwd_bye, target)] = h.sender.requests("BYE")
    assert target == Target("udp", *ALICE_SRC) and fwd_bye.uri == alice.contact
    assert fwd_bye.vias[0].host == LOCAL[0] and fwd_bye.get("route") is None
    h.sender.take()
    await h.send(alice, alice.answer(fwd_bye, 200))
    [(bye_ok, target)] = h.sender.responses(200)
    assert target == Target("udp", *BOB_SRC) and bye_ok.cseq.method == "BYE"


async def test_strict_router_request_uri_is_restored_from_the_last_route() -> None:
    h, alice, bob = setup()
    invite, _, ok = await established(h, alice, bob)
    bye = alice.request("BYE", "sip:10.0.0.1:5060;transport=udp",
                        to=f"<sip:bob@{REALM}>;tag=bob-tag", call_id=invite.call_id or "",
                        from_tag="caller-tag", headers=[("Route", f"<{bob.contact}>")])
    await h.send(alice, bye)
    [(fwd, target)] = h.sender.requests("BYE")
    assert fwd.uri == bob.contact and fwd.get("route") is None
    assert target == Target("udp", *BOB_SRC)


async def test_reinvite_in_dialog_needs_no_challenge() -> None:
    h, alice, bob = setup()
    invite, _, ok = await established(h, alice, bob)
    reinvite = alice.request("INVITE", bob.contact, to=f"<sip:bob@{REALM}>;tag=bob-tag",
                             call_id=invite.call_id or "", from_tag="caller-tag", body=SDP,
                             headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
    await h.send(alice, reinvite)
    [(fwd, target)] = h.sender.requests("INVITE")
    assert target == Target("udp", *BOB_SRC) and fwd.get("record-route") is None
    assert h.sender.responses(407) == []
    h.sender.take()
    await h.send(bob, bob.answer(fwd, 200, to_tag="bob-tag"))
    [(ok2, target)] = h.sender.responses(200)
    assert target == Target("udp", *ALICE_SRC)


async def test_a_reinvite_gets_100_trying_as_soon_as_it_is_forwarded() -> None:
    # As for the first INVITE (sip.md §2.3): the phone stops retransmitting at once,
    # without waiting for the server transaction's own 200 ms timer.
    h, alice, bob = setup()
    invite, _, _ = await established(h, alice, bob)
    reinvite = alice.request("INVITE", bob.contact, to=f"<sip:bob@{REALM}>;tag=bob-tag",
                             call_id=invite.call_id or "", from_tag="caller-tag", body=SDP,
                             headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
    await h.send(alice, reinvite)
    [(trying, target)] = h.sender.responses()
    assert (trying.status, trying.cseq.number) == (100, reinvite.cseq.number)
    assert target == Target("udp", *ALICE_SRC)
    assert len(h.sender.requests("INVITE")) == 1


async def test_the_callees_reinvite_and_its_ack_go_to_the_callers_nat_address() -> None:
    h, alice, bob = setup()
    invite, _, ok = await established(h, alice, bob)
    route = ok.get_all("record-route")
    to_alice = f"<sip:alice@{REALM}>;tag=caller-tag"
    reinvite = bob.request("INVITE", alice.contact, to=to_alice, call_id=invite.call_id or "",
                           from_tag="bob-tag", body=SDP, headers=[("Route", r) for r in route])
    await h.send(bob, reinvite)
    [(fwd, target)] = h.sender.requests("INVITE")
    assert target == Target("udp", *ALICE_SRC) and fwd.uri == alice.contact
    assert fwd.get("route") is None and h.sender.responses(407) == []
    h.sender.take()
    await h.send(alice, alice.answer(fwd, 200, to_tag="caller-tag"))
    [(ok2, target)] = h.sender.responses(200)
    assert target == Target("udp", *BOB_SRC) and ok2.cseq.method == "INVITE"
    h.sender.take()
    ack = bob.request("ACK", alice.contact, to=to_alice, call_id=invite.call_id or "",
                      from_tag="bob-tag", cseq=reinvite.cseq.number,
                      headers=[("Route", r) for r in route])
    await h.send(bob, ack)
    [(fwd_ack, target)] = h.sender.requests("ACK")
    assert target == Target("udp", *ALICE_SRC) and fwd_ack.get("route") is None


async def test_in_dialog_requests_pop_both_record_routes_of_a_transport_change() -> None:
    # RFC 5658: a UDP caller and a TCP callee see our two entries in their route sets; each
    # side's request pops both and goes out on the other side's transport.
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC)
    bob = h.phone("bob", "192.168.1.20", BOB_SRC, transport="tcp", connection_id="conn-7")
    invite, _, ok = await established(h, alice, bob)
    record_route = ok.get_all("record-route")
    assert len(record_route) == 2
    ack = alice.request("ACK", bob.contact, to=f"<sip:bob@{REALM}>;tag=bob-tag",
                        call_id=invite.call_id or "", from_tag="caller-tag",
                        cseq=invite.cseq.number,
                        headers=[("Route", r) for r in reversed(record_route)])
    await h.send(alice, ack)
    [(fwd_ack, target)] = h.sender.requests("ACK")
    assert target == Target("tcp", *BOB_SRC, "conn-7")
    assert fwd_ack.get("route") is None and fwd_ack.vias[0].transport == "TCP"
    h.sender.take()
    bye = bob.request("BYE", alice.contact, to=f"<sip:alice@{REALM}>;tag=caller-tag",
                      call_id=invite.call_id or "", from_tag="bob-tag",
                      headers=[("Route", r) for r in record_route])
    await h.send(bob, bye)
    [(fwd_bye, target)] = h.sender.requests("BYE")
    assert target == Target("udp", *ALICE_SRC)
    assert fwd_bye.get("route") is None and fwd_bye.vias[0].transport == "UDP"
    h.sender.take()
    await h.send(alice, alice.answer(fwd_bye, 200))
    [(_, target)] = h.sender.responses(200)
    assert target == Target("tcp", *BOB_SRC, "conn-7")


async def test_an_in_dialog_request_out_of_hops_gets_483() -> None:
    h, alice, bob = setup()
    invite, _, _ = await established(h, alice, bob)
    bye = alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=bob-tag",
                        call_id=invite.call_id or "", from_tag="caller-tag", max_forwards=0,
                        headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
    await h.send(alice, bye)
    assert statuses(h) == [483] and h.sender.requests() == []


def behind_an_edge_proxy() -> tuple[Harness, Phone, Phone]:
    """alice, and bob registered through an edge proxy at 198.51.100.9:5070 (his binding's
    source): the call's next hop toward bob, which a Route beyond ours may name."""
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC)
    bob = h.phone("bob", "192.168.1.20", ("198.51.100.9", 5070))
    return h, alice, bob


async def test_a_route_beyond_ours_in_a_dialog_is_followed() -> None:
    # A route set with another proxy after us (loose routing, §16.6 step 7): the request
    # goes to that proxy with its Route entry left in place, that proxy being where the
    # call's branch to bob went (any other host is refused: test_in_dialog_parties.py).
    h, alice, bob = behind_an_edge_proxy()
    invite, _, _ = await established(h, alice, bob)
    bye = alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=bob-tag",
                        call_id=invite.call_id or "", from_tag="caller-tag", headers=[
                            ("Route", "<sip:10.0.0.1:5060;lr;transport=udp>"),
                            ("Route", "<sip:198.51.100.9:5070;lr>")])
    await h.send(alice, bye)
    [(fwd, target)] = h.sender.requests("BYE")
    assert target == Target("udp", "198.51.100.9", 5070)
    assert fwd.get_all("route") == ["<sip:198.51.100.9:5070;lr>"] and fwd.uri == bob.contact


async def test_a_strict_router_beyond_ours_gets_the_request_uri_it_expects() -> None:
    # §16.6 step 6: a next hop without ;lr is an RFC 2543 strict router; it routes on the
    # Request-URI, so its own URI goes there and the real target becomes the last Route.
    h, alice, bob = behind_an_edge_proxy()
    invite, _, _ = await established(h, alice, bob)
    bye = alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=bob-tag",
                        call_id=invite.call_id or "", from_tag="caller-tag", headers=[
                            ("Route", "<sip:10.0.0.1:5060;lr;transport=udp>"),
                            ("Route", "<sip:198.51.100.9:5070>"),
                            ("Route", "<sip:198.51.100.10;lr>")])
    await h.send(alice, bye)
    [(fwd, target)] = h.sender.requests("BYE")
    assert target == Target("udp", "198.51.100.9", 5070)
    assert fwd.uri == "sip:198.51.100.9:5070"
    assert fwd.get_all("route") == ["<sip:198.51.100.10;lr>", f"<{bob.contact}>"]


def notify(phone: Phone, invite: Request, *, to_tag: str, state: str, frag: bytes) -> Request:
    """The transferee PHONE's NOTIFY (RFC 3515 §2.4.5) to the callee of INVITE's dialog."""
    request = phone.request("NOTIFY", "sip:bob@192.168.1.20:5060",
                            to=f"<sip:bob@{REALM}>;tag={to_tag}", call_id=invite.call_id or "",
                            from_tag="caller-tag", body=frag,
                            headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>"),
                                     ("Event", "refer"), ("Subscription-State", state)])
    request.set("Content-Type", "message/sipfrag;version=2.0")
    return request


async def test_a_blind_transfer_refer_and_its_notifies_pass_in_the_dialog() -> None:
    # bob transfers alice to carol: his REFER (Referred-By kept, RFC 3892) goes to alice's
    # NAT address; her NOTIFYs go back to his, and neither is challenged.
    h, alice, bob = setup()
    invite, _, _ = await established(h, alice, bob)
    refer = bob.request("REFER", alice.contact, to=f"<sip:alice@{REALM}>;tag=caller-tag",
                        call_id=invite.call_id or "", from_tag="bob-tag",
                        headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>"),
                                 ("Refer-To", f"<sip:carol@{REALM}>"),
                                 ("Referred-By", f"<sip:bob@{REALM}>")])
    await h.send(bob, refer)
    [(fwd, target)] = h.sender.requests("REFER")
    assert target == Target("udp", *ALICE_SRC) and fwd.uri == alice.contact
    assert (fwd.get("refer-to"), fwd.get("referred-by")) == (
        f"<sip:carol@{REALM}>", f"<sip:bob@{REALM}>")
    h.sender.take()
    await h.send(alice, alice.answer(fwd, 202))
    assert [(r.status, t) for r, t in h.sender.responses()] == [(202, Target("udp", *BOB_SRC))]
    h.sender.take()
    await h.send(alice, notify(alice, invite, to_tag="bob-tag", state="active;expires=60",
                               frag=b"SIP/2.0 100 Trying\r\n"))
    [(fwd, target)] = h.sender.requests("NOTIFY")
    assert target == Target("udp", *BOB_SRC) and fwd.body == b"SIP/2.0 100 Trying\r\n"
    assert statuses(h) == []  # no 407, no 481


async def test_a_refer_outside_a_dialog_is_not_implemented() -> None:
    # Only a REFER in a call we proxied is relayed; one outside any (click-to-dial, or a
    # stranger's) is refused before authentication, and sets nobody's phone calling.
    h, alice, _ = setup()
    refer = alice.request("REFER", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="r1",
                          from_tag="t", headers=[("Refer-To", f"<sip:carol@{REALM}>")])
    await h.send(alice, refer)
    assert statuses(h) == [501] and h.sender.requests() == []


async def test_a_refer_subscription_outlives_the_bye_of_its_dialog() -> None:
    # A transferor that hangs up right after the 202 ends the dialog's invite usage only
    # (RFC 5057 §5.2): the REFER's subscription lives on, and the transferee's NOTIFY with
    # the outcome, sent once the target answers (which may take more than the 32 s a call
    # lingers after its BYE), must still reach the transferor, not draw a 481 from us.
    h, alice, bob = setup()
    invite, _, _ = await established(h, alice, bob)

    async def notified(state: str, frag: bytes) -> None:
        await h.send(alice, notify(alice, invite, to_tag="bob-tag", state=state, frag=frag))
        [(fwd, target)] = h.sender.requests("NOTIFY")
        assert target == Target("udp", *BOB_SRC) and fwd.body == frag
        h.sender.take()
        await h.send(bob, bob.answer(fwd, 200))
        assert statuses(h) == [200]
        h.sender.take()

    await notified("active;expires=120", b"SIP/2.0 100 Trying\r\n")
    bye = bob.request("BYE", alice.contact, to=f"<sip:alice@{REALM}>;tag=caller-tag",
                      call_id=invite.call_id or "", from_tag="bob-tag",
                      headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
    await h.send(bob, bye)
    assert h.store.calls and all(r.status == "completed" for r in h.store.calls.values())
    [(fwd_bye, _)] = h.sender.requests("BYE")
    await h.send(alice, alice.answer(fwd_bye, 200))
    h.sender.take()
    await h.tick(45)  # past the 32 s a call lingers after its BYE
    await notified("active;expires=75", b"SIP/2.0 180 Ringing\r\n")
    await h.tick(60)  # the refreshed subscription holds the dialog
    await notified("terminated;reason=noresource", b"SIP/2.0 200 OK\r\n")
    # Once the subscription has run out, the dialog is forgotten as after any BYE.
    for _ in range(10):
        await h.tick(10)
    assert h.proxy.calls == 0
    assert [r.duration for r in h.store.calls.values()] == [0]  # the BYE ended the CDR


async def test_a_subscription_does_not_keep_a_dialog_for_ever() -> None:
    # A NOTIFY's expires is the notifier's to set: a dialog is held for at most an hour past
    # the NOTIFY, however long it says.
    h, alice, bob = setup()
    invite, _, _ = await established(h, alice, bob)
    bye = bob.request("BYE", alice.contact, to=f"<sip:alice@{REALM}>;tag=caller-tag",
                      call_id=invite.call_id or "", from_tag="bob-tag",
                      headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
    await h.send(bob, bye)
    await h.send(alice, notify(alice, invite, to_tag="bob-tag",
                               state="active;expires=999999999", frag=b"SIP/2.0 100 Trying\r\n"))
    await h.tick(3600 + 40)
    assert h.proxy.calls == 0


async def test_a_notify_does_not_hold_a_call_that_was_never_answered() -> None:
    # A REFER needs a confirmed dialog: a NOTIFY into the early dialog of a call that failed
    # (486 here) must not keep it an hour past its 32 s linger (each NOTIFY another hour).
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    await h.send(bob, bob.answer(to_bob, 180, to_tag="bob-tag"))
    await h.send(bob, bob.answer(to_bob, 486, to_tag="bob-tag"))
    assert h.proxy.calls == 1  # lingering
    await h.send(alice, notify(alice, invite, to_tag="bob-tag", state="active;expires=3600",
                               frag=b"SIP/2.0 100 Trying\r\n"))
    await h.tick(120)
    assert h.proxy.calls == 0


async def test_in_dialog_request_for_an_unknown_call_gets_481() -> None:
    h, alice, bob = setup()
    bye = alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=zzz", call_id="unknown",
                        from_tag="t", headers=[("Route", "<sip:10.0.0.1:5060;lr>")])
    await h.send(alice, bye)
    assert statuses(h) == [481]
    assert h.sender.requests() == []


async def test_retransmitted_invite_is_absorbed_and_2xx_retransmission_forwarded() -> None:
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    h.sender.take()
    await h.send(alice, invite)  # retransmission: the last response (100) again, no new branch
    assert h.sender.requests() == [] and statuses(h) == [100]
    h.sender.take()
    ok = bob.answer(to_bob, 200, to_tag="bob-tag")
    await h.send(bob, ok)
    await h.send(bob, ok)  # bob did not get the ACK yet
    assert statuses(h) == [200, 200]


async def test_response_whose_top_via_is_not_ours_is_dropped() -> None:
    h, alice, bob = setup()
    stray = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="x",
                          from_tag="t")
    await h.send(bob, bob.answer(stray, 200, to_tag="b"))
    assert h.sender.sent == []


async def test_a_2xx_with_our_via_but_no_transaction_of_ours_is_not_relayed() -> None:
    # RFC 6026 (updating RFC 3261 §16.7): a response that matches no client transaction is
    # not forwarded. Our Via is public: a forged 200 with it on top and a victim's Via below
    # would otherwise make us send whatever it carries to whoever it names.
    h, alice, bob = setup()
    forged = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>", call_id="x",
                           from_tag="t")
    forged.prepend("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnotours")
    await h.send(bob, bob.answer(forged, 200, to_tag="b"))
    assert h.sender.sent == []


async def test_2xx_retransmissions_reach_the_caller_for_64_t1_after_the_call_is_set_up() -> None:
    # What the stateless relay of 2xx was for: the INVITE branch's Accepted state (Timer M,
    # 64·T1) still forwards the callee's retransmissions while it has no ACK.
    h, alice, bob = setup()
    invite, to_bob, ok = await established(h, alice, bob)
    for _ in range(6):
        await h.tick(5)
        await h.send(bob, ok)
    assert statuses(h) == [200] * 6
    assert {t for _, t in h.sender.responses()} == {Target("udp", *ALICE_SRC)}


async def test_budget_of_requests_in_flight_answers_503() -> None:
    h, alice, bob = setup()
    h.proxy.max_contexts = 1
    await h.authenticated(alice, "INVITE", "bob", body=SDP, from_tag="a")
    h.sender.take()
    await h.authenticated(alice, "INVITE", "bob", body=SDP, from_tag="b")
    assert statuses(h) == [503]


async def test_one_caller_cannot_take_the_whole_budget_of_requests_in_flight() -> None:
    """A DoS test: one Client flooding INVITEs held all 500 proxied requests, and every other
    phone's calls got 503. A caller holds at most a quarter; the others still get through."""
    h, alice, bob = setup()
    carol = h.phone("carol", "192.168.1.30", ("192.168.1.30", 5060))
    h.proxy.max_contexts = 8  # a share of 2
    for n in range(2):
        await h.authenticated(alice, "INVITE", "bob", body=SDP, from_tag=f"a{n}")
        assert statuses(h) == [100]
        h.sender.take()
    await h.authenticated(alice, "INVITE", "bob", body=SDP, from_tag="a2")
    [(refused, _)] = h.sender.responses()
    assert (refused.status, refused.get("Retry-After")) == (503, "5")
    h.sender.take()
    await h.authenticated(carol, "INVITE", "bob", body=SDP, from_tag="c")
    assert statuses(h) == [100]
    assert len(h.sender.requests("INVITE")) == 1  # forwarded to bob


async def test_branches_are_capped() -> None:
    h, alice, bob = setup()
    h.proxy.max_branches = 1
    h.location.register("bob", [NameAddr.parse("<sip:bob@192.168.1.99:5060>")],
                        expires_header=3600, call_id="reg-bob-x", cseq=1, now=h.clock.now)
    await h.authenticated(alice, "INVITE", "bob", body=SDP)
    assert len(h.sender.requests("INVITE")) == 1


async def test_a_refused_call_whose_cdr_insert_fails_is_still_ended(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit of a refused call's CDR fails (a locked database): the call is ended all
    the same, its row written with the next batch, instead of staying live until the stop
    closes it `failed` at the wrong time."""
    h, alice, _ = setup()
    real = h.store.insert_call
    failures = [OSError("database is locked")]

    async def insert_once_failing(record: CallRecord) -> None:
        if failures:
            raise failures.pop()
        await real(record)

    monkeypatch.setattr(h.store, "insert_call", insert_once_failing)
    await h.authenticated(alice, "INVITE", "nobody", body=SDP)
    assert [r.status for r, _ in h.sender.responses() if r.status >= 200] == [404]
    assert h.call_log.live_count() == 0
    await h.call_log.checkpoint()  # the next batch
    [row] = h.store.calls.values()
    assert (row.to, row.status) == ("nobody", "failed") and row.end_time is not None
