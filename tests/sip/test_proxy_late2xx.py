"""A callee's 2xx to an INVITE branch the proxy has already given up on: the caller has its
final response, so we end the callee's dialog ourselves (ACK, then BYE) instead of letting
it talk into silence; a re-INVITE's 2xx is only ACKed, its call goes on."""

from __future__ import annotations

from appliance.sip.message import Request
from tests.sip.proxy_harness import REALM, SDP, Harness, Phone

ALICE_SRC = ("203.0.113.10", 40000)
BOB_SRC = ("203.0.113.20", 41000)


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


def cdr_status(h: Harness) -> str:
    [cdr] = h.store.calls.values()
    return cdr.status


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
