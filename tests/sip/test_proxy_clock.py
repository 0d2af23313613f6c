"""The proxy across NTP steps of the wall clock: the box has no RTC, so after boot its wall
clock jumps by hours or days, either way. Timers and call deadlines follow the monotonic timer
clock (``Clock.monotonic``), which a step does not move; nonces follow the wall clock."""

from __future__ import annotations

from appliance.sip.digest import NonceStatus
from appliance.sip.forwarding import TIMER_C
from appliance.sip.headers import DigestCredentials
from appliance.sip.message import Request
from tests.sip.proxy_harness import REALM, SDP, Harness, Phone, authorization

ALICE_SRC = ("203.0.113.10", 40000)
BOB_SRC = ("203.0.113.20", 41000)
DAY = 86_400.0
HOUR = 3_600.0


def setup() -> tuple[Harness, Phone, Phone]:
    h = Harness()
    return h, h.phone("alice", "192.168.1.10", ALICE_SRC), h.phone("bob", "192.168.1.20", BOB_SRC)


async def invite(h: Harness, alice: Phone) -> tuple[Request, Request]:
    """ALICE's authenticated INVITE to bob, and the INVITE forwarded to bob's phone."""
    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    h.sender.take()
    return sent, to_bob


async def test_a_call_in_progress_survives_a_wall_clock_step_forward() -> None:
    h, alice, bob = setup()
    sent, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b"))
    h.clock.now += 10  # they talk
    h.clock.step(DAY)  # NTP finds the clock restored at boot a day late
    await h.tick(1)  # the timer task runs: nothing of the call is due
    assert h.proxy.calls == 1
    h.sender.take()
    bye = alice.request("BYE", bob.contact, to=f"<sip:bob@{REALM}>;tag=b",
                        call_id=sent.call_id or "", from_tag="caller-tag",
                        headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])
    await h.send(alice, bye)
    assert h.sender.responses(481) == []
    [(bye_to_bob, target)] = h.sender.requests("BYE")
    assert (target.host, target.port) == BOB_SRC
    await h.send(bob, bob.answer(bye_to_bob, 200))
    assert [r.status for r, _ in h.sender.responses()] == [200]
    [cdr] = h.store.calls.values()
    # Ended by its BYE (CDR times are CallLog's, on the wall clock), not by the idle limit;
    # its Duration is the time that passed (on the timer clock), not the step.
    assert (cdr.status, cdr.end_time) == ("completed", h.clock.datetime())
    assert cdr.duration == 11


async def test_a_pending_invites_timers_fire_on_time_after_a_wall_clock_step_back() -> None:
    h, alice, _ = setup()
    await invite(h, alice)  # bob's phone never answers
    h.clock.step(-HOUR)  # NTP steps the clock back an hour
    await h.tick(0.5)  # Timer A: the INVITE is sent again to bob
    assert len(h.sender.requests("INVITE")) == 1
    for _ in range(62):  # up to 31.5 s after the INVITE: still trying
        await h.tick(0.5)
    assert h.sender.responses(408) == []
    await h.tick(1)  # Timer B (64·T1 = 32 s): bob is unreachable, alice gets a 408
    assert len(h.sender.responses(408)) == 1
    [cdr] = h.store.calls.values()
    assert cdr.status == "no-answer"


async def test_timer_c_fires_on_time_after_a_wall_clock_step_back() -> None:
    h, alice, bob = setup()
    _, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    h.clock.step(-HOUR)
    await h.tick(TIMER_C - 1)
    assert h.sender.requests("CANCEL") == []
    await h.tick(2)  # Timer C: the ringing branch is cancelled
    [(_, target)] = h.sender.requests("CANCEL")
    assert (target.host, target.port) == BOB_SRC


async def test_nonces_follow_the_wall_clock() -> None:
    h, alice, _ = setup()
    first = alice.request("INVITE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                          call_id="n1", from_tag="t", body=SDP)
    await h.send(alice, first)
    [(challenge, _)] = h.sender.responses(407)
    h.sender.take()
    # Checked across restarts and shared with the registrar: stamped with the wall clock.
    nonce = DigestCredentials.parse(challenge.get("proxy-authenticate") or "").nonce or ""
    assert h.proxy.nonces.check(nonce, h.clock.now, alice.source[0]) is NonceStatus.VALID
    h.clock.step(h.proxy.nonces.lifetime + 1)  # no time passes, but the wall clock says so
    again = alice.request("INVITE", first.uri, to=f"<sip:bob@{REALM}>", call_id="n1",
                          from_tag="t", body=SDP, headers=[(
                              "Proxy-Authorization", authorization(first, challenge, alice))])
    await h.send(alice, again)
    [(rechallenge, _)] = h.sender.responses(407)
    assert all("stale=true" in v for v in rechallenge.get_all("proxy-authenticate"))
    assert h.sender.requests("INVITE") == []
