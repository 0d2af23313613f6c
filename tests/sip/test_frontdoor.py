"""The front door's dispatch: OPTIONS, 420/483/501/481, budgets, the proxy slot, transactions."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from appliance.sip.guard import Guard
from appliance.sip.message import Request, Response, parse_message
from appliance.sip.wire import Incoming
from tests.sip.test_registrar import PHONE, Harness, answer, register, user


class FakeProxy:
    def __init__(self) -> None:
        self.seen: list[Incoming] = []
        self.closed: list[str] = []

    async def handle(self, incoming: Incoming) -> None:
        self.seen.append(incoming)

    def connection_closed(self, connection_id: str) -> None:
        self.closed.append(connection_id)


def request(method: str, uri: str = "sip:pbx.example.com", *, extra: tuple[str, ...] = (),
            max_forwards: int = 70, branch: str | None = None, cseq: int = 1,
            to_tag: str | None = None) -> Request:
    to = "<sip:bob@pbx.example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{branch or secrets.token_hex(6)};rport",
        f"Max-Forwards: {max_forwards}",
        "From: <sip:alice@pbx.example.com>;tag=a1",
        f"To: {to}",
        "Call-ID: fd-1",
        f"CSeq: {cseq} {method}",
        *extra,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


async def test_options_to_the_server_is_200_with_allow_and_accept() -> None:
    h = Harness()
    ok = await h.send(request("OPTIONS"))
    assert ok is not None and ok.status == 200
    assert ok.get("allow") == "REGISTER, OPTIONS"
    assert ok.get("accept") == "application/sdp"
    assert ok.get("server") is None and ok.get("user-agent") is None  # nothing to fingerprint
    assert ok.to.tag


async def test_options_with_max_forwards_zero_is_still_answered() -> None:
    h = Harness()
    ok = await h.send(request("OPTIONS", max_forwards=0))
    assert ok is not None and ok.status == 200


async def test_unknown_require_is_420_with_unsupported() -> None:
    h = Harness()
    for method in ("OPTIONS", "REGISTER"):
        bad = await h.send(request(method, extra=("Require: 100rel, foo",)))
        assert bad is not None and bad.status == 420
        assert bad.get("unsupported") == "100rel, foo"


async def test_unknown_proxy_require_is_420_for_proxied_requests() -> None:
    h = Harness()
    bad = await h.send(request("INVITE", "sip:bob@pbx.example.com",
                               extra=("Proxy-Require: sec-agree",)))
    assert bad is not None and bad.status == 420 and bad.get("unsupported") == "sec-agree"


async def test_without_a_proxy_requests_get_501_and_acks_are_absorbed() -> None:
    h = Harness()
    invite = request("INVITE", "sip:bob@pbx.example.com", branch="inv1")
    refused = await h.send(invite)
    assert refused is not None and refused.status == 501
    assert refused.get("allow") == "REGISTER, OPTIONS"
    # The ACK for our 501 matches our INVITE transaction: absorbed, no reply.
    ack = request("ACK", "sip:bob@pbx.example.com", branch="inv1", to_tag=refused.to.tag)
    assert await h.send(ack) is None
    assert h.door.transactions == 1  # Confirmed until Timer I
    for method in ("MESSAGE", "SUBSCRIBE", "BYE"):
        reply = await h.send(request(method, "sip:bob@pbx.example.com"))
        assert reply is not None and reply.status == 501


async def test_cancel_unmatched_is_481_and_matched_is_200() -> None:
    h = Harness()
    assert (await h.send(request("CANCEL", "sip:bob@pbx.example.com"))).status == 481  # type: ignore[union-attr]
    await h.send(request("INVITE", "sip:bob@pbx.example.com", branch="inv2"))
    ok = await h.send(request("CANCEL", "sip:bob@pbx.example.com", branch="inv2"))
    assert ok is not None and ok.status == 200


async def test_max_forwards_zero_is_483_for_proxied_requests() -> None:
    h = Harness()
    proxy = FakeProxy()
    h.door.proxy = proxy
    reply = await h.send(request("INVITE", "sip:bob@pbx.example.com", max_forwards=0))
    assert reply is not None and reply.status == 483
    assert proxy.seen == []


async def test_the_proxy_gets_what_the_registrar_does_not_handle() -> None:
    h = Harness(user("alice"))
    proxy = FakeProxy()
    h.door.proxy = proxy
    assert await h.send(request("INVITE", "sip:bob@pbx.example.com")) is None
    assert await h.send(request("ACK", "sip:bob@pbx.example.com")) is None
    assert await h.send(request("CANCEL", "sip:bob@pbx.example.com")) is None
    assert await h.send(request("OPTIONS", "sip:bob@pbx.example.com")) is None  # for a user
    assert [i.message.method for i in proxy.seen if isinstance(i.message, Request)] == \
        ["INVITE", "ACK", "CANCEL", "OPTIONS"]
    response = parse_message(
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r1\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n")
    assert isinstance(response, Response)
    assert await h.send(response) is None  # type: ignore[arg-type]
    assert isinstance(proxy.seen[-1].message, Response)
    # REGISTER and OPTIONS to the server stay with us.
    assert (await h.send(register("alice"))).status == 401  # type: ignore[union-attr]
    ok = await h.send(request("OPTIONS"))
    assert ok is not None and "INVITE" in (ok.get("allow") or "")
    assert len(proxy.seen) == 5
    h.door.connection_closed("tcp-3")
    assert proxy.closed == ["tcp-3"]


async def test_responses_without_a_proxy_are_dropped() -> None:
    h = Harness()
    response = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r1\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n")
    assert await h.send(response) is None  # type: ignore[arg-type]


async def test_unauthenticated_budget_answers_503_and_spares_registered_sources() -> None:
    h = Harness(user("alice"), guard=Guard(unauthenticated_per_minute=4))
    scanner = ("198.51.100.9", 5060)
    for _ in range(4):
        ok = await h.send(request("OPTIONS"), source=scanner)
        assert ok is not None and ok.status == 200
    refused = await h.send(request("OPTIONS"), source=scanner)
    assert refused is not None and refused.status == 503 and refused.get("retry-after") == "60"
    h.clock.now += 15  # a quarter of a minute refills one token
    assert (await h.send(request("OPTIONS"), source=scanner)).status == 200  # type: ignore[union-attr]
    # A phone spends two tokens to register, then is exempt.
    assert (await h.registered("alice")).status == 200
    for _ in range(10):
        ok = await h.send(request("OPTIONS"), source=PHONE)
        assert ok is not None and ok.status == 200


async def test_a_media_workers_socket_spends_no_unauthenticated_budget() -> None:
    """Each bridged call's legs and BYEs come from a worker's socket on 127.0.0.1: charged
    to the address's budget, they were answered 503 past ~30 calls a minute. Another port
    on 127.0.0.1 keeps the budget."""
    h = Harness(user("alice"), guard=Guard(unauthenticated_per_minute=4))
    worker, other = ("127.0.0.1", 5071), ("127.0.0.1", 40000)
    h.guard.spared = lambda ip, port: (ip, port) == worker
    for n in range(20):
        ok = await h.send(request("OPTIONS", branch=f"w{n}"), source=worker)
        assert ok is not None and ok.status == 200, n
    statuses = [(await h.send(request("OPTIONS", branch=f"o{n}"), source=other)).status  # type: ignore[union-attr]
                for n in range(5)]
    assert statuses == [200, 200, 200, 200, 503]


async def test_a_register_from_a_providers_address_is_403_within_the_budget() -> None:
    """Providers never register to us: a REGISTER from a provider's address (TCP here, the
    general path, and UDP's quick path) gets 403 without a challenge or a digest check, and
    spends the unauthenticated budget (503 past it) where its other requests go on."""
    h = Harness(user("alice"), guard=Guard(unauthenticated_per_minute=3))
    provider = ("198.51.100.7", 5060)
    h.guard.exempt = lambda ip: ip == provider[0]
    refused = await h.send(register("alice"), source=provider, transport="tcp",
                           connection_id="tcp-1")
    assert refused is not None and refused.status == 403
    assert refused.get("www-authenticate") is None
    quick = h.door.quick(bytes(register("alice", call_id="q1")), provider)
    assert quick is not None and quick.startswith(b"SIP/2.0 403 ")
    ok = await h.send(request("OPTIONS"), source=provider)
    assert ok is not None and ok.status == 200  # the last token
    assert h.door.quick(bytes(register("alice", call_id="q2")), provider) is None  # general:
    over = await h.send(register("alice", call_id="q2"), source=provider)
    assert over is not None and over.status == 503
    ok = await h.send(request("OPTIONS", branch="again"), source=provider)
    assert ok is not None and ok.status == 200  # past its budget: still the provider's


async def test_retransmitted_options_gets_the_same_response() -> None:
    h = Harness()
    first = await h.send(request("OPTIONS", branch="same"))
    again = await h.send(request("OPTIONS", branch="same"))
    assert first is not None and again is not None and bytes(first) == bytes(again)


async def test_tcp_transactions_end_at_once() -> None:
    h = Harness()
    await h.send(request("OPTIONS"), transport="tcp", connection_id="tcp-1")
    assert h.door.transactions == 0
    await h.send(request("OPTIONS"))
    assert h.door.transactions == 1  # UDP: Timer J keeps it to absorb retransmissions


async def test_udp_non_2xx_to_invite_is_retransmitted_until_acked() -> None:
    h = Harness()
    invite = request("INVITE", "sip:bob@pbx.example.com", branch="g1")
    try:
        first = await h.send(invite)
        assert first is not None and first.status == 501
        await asyncio.sleep(0.7)  # Timer G fires after T1 = 0.5 s
        resent = [m for m, _ in h.sender.sent if isinstance(m, Response) and m.status == 501]
        assert len(resent) >= 2
        ack = request("ACK", "sip:bob@pbx.example.com", branch="g1", to_tag=first.to.tag)
        await h.send(ack)
        count = len(h.sender.sent)
        await asyncio.sleep(1.2)
        assert len(h.sender.sent) == count  # no more after the ACK
    finally:
        h.door.close()


async def test_wrong_password_over_the_door_is_403_then_registered_with_the_right_one() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    bad = await h.send(register("alice", cseq=2, auth=answer(challenge, "alice", password="x")))
    assert bad is not None and bad.status == 403
    ok = await h.registered("alice", call_id="again")
    assert ok.status == 200


async def test_a_failing_registrar_leaves_no_transaction_behind() -> None:
    # The transaction opened before the registrar awaits has no timer in Trying: were it
    # left there, it would absorb the phone's retransmissions unanswered and stay for ever.
    h = Harness()

    async def broken(login: str) -> None:
        raise RuntimeError("store gone")

    h.directory.user = broken  # type: ignore[method-assign]
    reg = register(branch="broken")
    with pytest.raises(RuntimeError):
        await h.send(reg)
    assert h.door.transactions == 1  # it lingers only to answer retransmissions: Timer J
    [(answer_, _)] = h.sender.sent
    assert isinstance(answer_, Response) and answer_.status == 500
    again = await h.send(register(branch="broken"))
    assert again is not None and bytes(again) == bytes(answer_)
    h.door.close()

