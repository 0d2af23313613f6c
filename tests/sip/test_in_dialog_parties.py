"""An in-dialog request goes only to the other party of the call it belongs to, and only
from one of its parties (sip.md "No toll fraud"): the proxy against fake phones and a fake
clock. A Route beyond ours is followed only when it names the hop the proxy itself recorded
for that side of the call; a stranger who knows a call's Call-ID and tags gets 403, a made-up
tag 481, and nothing is forwarded for either. End to end with scripted UDP phones in
tests/sip/test_in_dialog_relay.py, with a provider and a media worker in
tests/outside/test_stranger_relay.py."""

from __future__ import annotations

import logging

import pytest

from appliance.sip.bindings import Origin
from appliance.sip.headers import NameAddr
from appliance.sip.message import Request, Response
from appliance.sip.proxy_ports import Caller, Contact, Fork
from appliance.sip.wire import Target
from tests.sip.proxy_harness import REALM, SDP, Harness, Phone

ALICE_SRC = ("203.0.113.10", 40000)
BOB_SRC = ("203.0.113.20", 41000)
PROVIDER = ("198.51.100.7", 5060)  # a provider's address: a host the office pays to reach
OUR_ROUTE = "<sip:10.0.0.1:5060;lr;transport=udp>"


def setup() -> tuple[Harness, Phone, Phone]:
    h = Harness()
    return h, h.phone("alice", "192.168.1.10", ALICE_SRC), h.phone("bob", "192.168.1.20", BOB_SRC)


async def established(h: Harness, alice: Phone, bob: Phone) -> Request:
    """alice's call to bob, answered by bob (To tag bob-tag); the sender emptied."""
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    await h.send(bob, bob.answer(to_bob, 200, to_tag="bob-tag"))
    h.sender.take()
    return invite


def from_alice(phone: Phone, invite: Request, method: str, *routes: str, uri: str = "",
               to_tag: str = "bob-tag", from_tag: str = "caller-tag") -> Request:
    """METHOD in alice's dialog with bob, as PHONE sends it (alice, or whoever pretends)."""
    return phone.request(method, uri or "sip:bob@192.168.1.20:5060",
                         to=f"<sip:bob@{REALM}>;tag={to_tag}", call_id=invite.call_id or "",
                         from_tag=from_tag, from_user="alice", body=SDP if method == "INVITE"
                         else b"", headers=[("Route", r) for r in (OUR_ROUTE, *routes)])


def from_bob(phone: Phone, invite: Request, method: str, *routes: str,
             from_tag: str = "bob-tag") -> Request:
    return phone.request(method, "sip:alice@192.168.1.10:5060",
                         to=f"<sip:alice@{REALM}>;tag=caller-tag", call_id=invite.call_id or "",
                         from_tag=from_tag, from_user="bob",
                         headers=[("Route", r) for r in (OUR_ROUTE, *routes)])


def finals(h: Harness) -> list[tuple[int, str]]:
    return [(r.status, r.reason) for r, _ in h.sender.responses() if r.status >= 200]


# --- what a Client in a call cannot do ----------------------------------------------------


@pytest.mark.parametrize("host", ["198.51.100.7", "198.51.100.7:5060", "evil.example.com",
                                  "203.0.113.99:5070"])
async def test_a_route_to_another_host_in_a_call_is_refused_403(host: str) -> None:
    # alice (a registered Client, in a call to bob: free, no route needed) asks the proxy
    # to take her re-INVITE to a provider or any host: a call out on the office's bill, or
    # an open relay. Refused, nothing sent anywhere, bob's call untouched.
    h, alice, bob = setup()
    invite = await established(h, alice, bob)
    attack = from_alice(alice, invite, "INVITE", f"<sip:{host};lr>",
                        uri=f"sip:+33123456789@{host}")
    await h.send(alice, attack)
    assert h.sender.requests() == []
    assert finals(h) == [(403, "No Route To A Foreign Proxy")]
    h.sender.take()
    await h.send(alice, from_alice(alice, invite, "BYE"))  # the call itself goes on
    [(_, target)] = h.sender.requests("BYE")
    assert target == Target("udp", *BOB_SRC)


async def test_the_callee_cannot_route_out_either() -> None:
    h, alice, bob = setup()
    invite = await established(h, alice, bob)
    await h.send(bob, from_bob(bob, invite, "INVITE", f"<sip:{PROVIDER[0]};lr>"))
    assert h.sender.requests() == [] and finals(h) == [(403, "No Route To A Foreign Proxy")]


async def test_a_strict_route_to_another_host_is_refused_too() -> None:
    # A next hop without ;lr (a strict router) would have taken the Request-URI's place.
    h, alice, bob = setup()
    invite = await established(h, alice, bob)
    await h.send(alice, from_alice(alice, invite, "INVITE", f"<sip:+33123456789@{PROVIDER[0]}>"))
    assert h.sender.requests() == [] and finals(h) == [(403, "No Route To A Foreign Proxy")]


async def test_an_ack_with_a_foreign_route_is_dropped() -> None:
    h, alice, bob = setup()
    invite = await established(h, alice, bob)
    ack = from_alice(alice, invite, "ACK", f"<sip:{PROVIDER[0]};lr>")
    await h.send(alice, ack)
    assert h.sender.take() == []


async def test_a_made_up_to_tag_is_no_dialog_481() -> None:
    # The shape of the reported attack: the call's Call-ID and From tag, any To tag, a
    # Route to the provider. The call need not be answered for it to be tried.
    h, alice, _ = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    h.sender.take()
    attack = from_alice(alice, invite, "INVITE", f"<sip:{PROVIDER[0]};lr>",
                        uri=f"sip:+33123456789@{PROVIDER[0]}", to_tag="anything")
    await h.send(alice, attack)
    assert h.sender.requests() == [] and finals(h) == [(481, "Call/Transaction Does Not Exist")]


async def test_a_made_up_from_tag_toward_the_caller_is_no_dialog_481() -> None:
    h, alice, bob = setup()
    invite = await established(h, alice, bob)
    await h.send(bob, from_bob(bob, invite, "INFO", from_tag="not-a-dialog"))
    assert h.sender.requests() == [] and finals(h) == [(481, "Call/Transaction Does Not Exist")]


# --- what a stranger cannot do --------------------------------------------------------------


async def test_a_stranger_with_the_calls_tags_is_refused_403_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # Whoever learnt the Call-ID and both tags (they cross the LAN in clear) sends from
    # elsewhere: neither a BYE (hang-up), a re-INVITE (audio hijack), a REFER (bob's phone
    # would dial the Refer-To with bob's credentials) nor a Route out is forwarded.
    h, alice, bob = setup()
    invite = await established(h, alice, bob)
    mallory = Phone("mallory", "192.168.1.66", ("198.51.100.66", 5060))
    with caplog.at_level(logging.INFO, logger="appliance.sip.proxy"):
        for request in (from_alice(mallory, invite, "BYE"),
                        from_alice(mallory, invite, "INVITE", f"<sip:{PROVIDER[0]};lr>"),
                        from_bob(mallory, invite, "REFER"),
                        from_alice(mallory, invite, "ACK")):
            await h.send(mallory, request)
    assert h.sender.requests() == []
    assert finals(h) == [(403, "Not A Party To This Call")] * 3
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "198.51.100.66" in refused[0].getMessage()
    assert refused[0].levelno == logging.WARNING
    # A minute later the same source is logged again.
    caplog.clear()
    h.sender.take()
    await h.tick(61)
    with caplog.at_level(logging.INFO, logger="appliance.sip.proxy"):
        await h.send(mallory, from_alice(mallory, invite, "BYE"))
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1


async def test_a_phone_whose_nat_mapping_changed_is_still_a_party() -> None:
    # bob's router gave his phone a new port mid-call and the phone registered again from
    # there: his BYE from the new port is his.
    h, alice, bob = setup()
    invite = await established(h, alice, bob)
    moved = Phone("bob", "192.168.1.20", (BOB_SRC[0], 41999))
    h.location.register("bob", [NameAddr.parse(f"<{moved.contact}>")], expires_header=3600,
                        call_id="reg-bob-192.168.1.20", cseq=2, now=h.clock.now,
                        origin=Origin("udp", moved.source))
    await h.send(moved, from_bob(moved, invite, "BYE"))
    [(_, target)] = h.sender.requests("BYE")
    assert target == Target("udp", *ALICE_SRC)


async def test_another_port_of_the_phones_host_is_not_the_phone_over_udp() -> None:
    h, alice, bob = setup()
    invite = await established(h, alice, bob)
    other = Phone("bob", "192.168.1.20", (BOB_SRC[0], 41999))  # not registered from there
    await h.send(other, from_bob(other, invite, "BYE"))
    assert h.sender.requests() == [] and finals(h) == [(403, "Not A Party To This Call")]


async def test_a_tcp_phone_on_a_new_connection_is_still_a_party() -> None:
    # Over TCP a source cannot be spoofed and its port is an ephemeral one: a phone that
    # reconnected (new connection, new port) from its host is the phone.
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC, transport="tcp", connection_id="c1")
    bob = h.phone("bob", "192.168.1.20", BOB_SRC)
    invite = await established(h, alice, bob)
    again = Phone("alice", "192.168.1.10", (ALICE_SRC[0], 40999), transport="tcp",
                  connection_id="c2")
    await h.send(again, from_alice(again, invite, "BYE"))
    [(_, target)] = h.sender.requests("BYE")
    assert target == Target("udp", *BOB_SRC)


# --- a Route beyond ours that is the call's own next hop -------------------------------------


async def test_a_route_naming_the_callees_recorded_address_is_followed() -> None:
    # bob is registered through an edge proxy that record-routed the call: the route set
    # beyond us names it, and it is where bob's branch went.
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC)
    edge = ("198.51.100.9", 5070)
    bob = h.phone("bob", "192.168.1.20", edge)
    invite = await established(h, alice, bob)
    await h.send(alice, from_alice(alice, invite, "BYE", "<sip:198.51.100.9:5070;lr>"))
    [(fwd, target)] = h.sender.requests("BYE")
    assert target == Target("udp", *edge)
    assert fwd.get_all("route") == ["<sip:198.51.100.9:5070;lr>"]


def provider_leg(h: Harness, provider: tuple[str, int]) -> None:
    """Calls from media worker 127.0.0.1:5090 are its legs out to the gateway at PROVIDER
    (as services.calls admits them); PROVIDER is that gateway's address."""
    h.proxy.media_source = lambda host, port: (host, port) == ("127.0.0.1", 5090)
    h.proxy.media_caller = lambda source, _r: Caller(login="", account_sid="AC1", media=True) \
        if source == ("127.0.0.1", 5090) else None
    h.proxy.provider_of = lambda host, port: {"GW1"} if (host, port) in (
        provider, ("198.51.100.8", 5060)) or host == "sip.provider.example" else set()

    async def route(request: Request, caller: Caller, now: float) -> Fork:
        return Fork(callee="+15551234567", cdr_sid="", keep_credentials=True, contacts=(
            Contact("sip:+15551234567@sip.provider.example", Target("udp", *provider)),))

    h.proxy._router.route = route  # type: ignore[method-assign]


async def provider_call(h: Harness, provider: tuple[str, int], *record_route: str
                        ) -> tuple[Phone, Phone, Request, Response]:
    """The worker's call out to the provider, answered with RECORD_ROUTE above ours."""
    worker = Phone("worker", "127.0.0.1", ("127.0.0.1", 5090), port=5090)
    far = Phone("provider", provider[0], provider, port=provider[1])
    invite = worker.request("INVITE", "sip:+15551234567@sip.provider.example",
                            to="<sip:+15551234567@sip.provider.example>", call_id="out-1",
                            from_tag="worker-tag", body=SDP)
    await h.send(worker, invite)
    [(to_provider, _)] = h.sender.requests("INVITE")
    ok = far.answer(to_provider, 200, to_tag="prov-tag")
    for value in record_route[::-1]:  # its own proxies' entries go above ours
        ok.prepend("Record-Route", value)
    await h.send(far, ok)
    h.sender.take()
    return worker, far, invite, ok


async def test_a_providers_record_route_hop_is_followed_from_the_worker() -> None:
    # The provider's 200 names its edge proxy (another address than the one our INVITE
    # went to, as a provider's dispatcher in front of its SBCs does): the worker's BYE by
    # that route set reaches it, and the edge's own BYE comes back to the worker.
    h = Harness()
    provider_leg(h, PROVIDER)
    sbc = "<sip:192.0.2.44:5080;lr>"
    worker, _, invite, ok = await provider_call(h, PROVIDER, sbc)
    assert ok.get_all("record-route")[0] == sbc
    bye = worker.request("BYE", "sip:+15551234567@192.0.2.44:5080",
                         to="<sip:+15551234567@sip.provider.example>;tag=prov-tag",
                         call_id="out-1", from_tag="worker-tag",
                         headers=[("Route", OUR_ROUTE), ("Route", sbc)])
    await h.send(worker, bye)
    [(fwd, target)] = h.sender.requests("BYE")
    assert target == Target("udp", "192.0.2.44", 5080) and fwd.get_all("route") == [sbc]
    h.sender.take()
    edge = Phone("provider", "192.0.2.44", ("192.0.2.44", 5080), port=5080)
    theirs = edge.request("BYE", "sip:worker@127.0.0.1:5090", to="<sip:worker@x>;tag=worker-tag",
                          call_id="out-1", from_tag="prov-tag", headers=[("Route", OUR_ROUTE)])
    await h.send(edge, theirs)
    [(_, target)] = h.sender.requests("BYE")
    assert target == Target("udp", "127.0.0.1", 5090)
    del invite


@pytest.mark.parametrize("route", ["<sip:198.51.100.8;lr>", "<sip:sip.provider.example;lr>"])
async def test_a_route_to_the_same_providers_other_address_or_name_is_followed(
        route: str) -> None:
    h = Harness()
    provider_leg(h, PROVIDER)
    worker, _, _, _ = await provider_call(h, PROVIDER)
    bye = worker.request("BYE", "sip:+15551234567@sip.provider.example",
                         to="<sip:+15551234567@sip.provider.example>;tag=prov-tag",
                         call_id="out-1", from_tag="worker-tag",
                         headers=[("Route", OUR_ROUTE), ("Route", route)])
    await h.send(worker, bye)
    assert [m.method for m, _ in h.sender.requests()] == ["BYE"]


async def test_a_phone_record_routing_a_host_gains_no_route_to_it() -> None:
    # bob's phone (a Client: anyone with a password) answers with a Record-Route of its own
    # naming the provider: alice's requests by that route set are not taken there. Only a
    # gateway's answer on a call out is trusted to name its next hop.
    h, alice, bob = setup()
    invite = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    ok = bob.answer(to_bob, 200, to_tag="bob-tag")
    ok.prepend("Record-Route", f"<sip:{PROVIDER[0]};lr>")
    await h.send(bob, ok)
    h.sender.take()
    await h.send(alice, from_alice(alice, invite, "INVITE", f"<sip:{PROVIDER[0]};lr>",
                                   uri=f"sip:+33123456789@{PROVIDER[0]}"))
    assert h.sender.requests() == [] and finals(h) == [(403, "No Route To A Foreign Proxy")]


async def test_the_worker_leg_to_the_provider_refuses_a_stranger_and_another_host() -> None:
    h = Harness()
    provider_leg(h, PROVIDER)
    worker, far, _, _ = await provider_call(h, PROVIDER)
    stranger = Phone("x", "192.168.1.66", ("192.168.1.66", 5060))
    for who, route in ((stranger, f"<sip:{PROVIDER[0]};lr>"), (worker, "<sip:192.0.2.50;lr>")):
        request = who.request("INVITE", "sip:+33123456789@192.0.2.50",
                              to="<sip:+15551234567@sip.provider.example>;tag=prov-tag",
                              call_id="out-1", from_tag="worker-tag", body=SDP,
                              headers=[("Route", OUR_ROUTE), ("Route", route)])
        await h.send(who, request)
    assert h.sender.requests() == []
    assert [s for s, _ in finals(h)] == [403, 403]
    del far
