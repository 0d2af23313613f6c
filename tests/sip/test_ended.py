"""sip.ended: the INVITE branches remembered after their transaction ended, with a fake
clock: how long, how many, and what of the INVITE is kept."""

from __future__ import annotations

from appliance.sip.ended import ENDED_FOR, EndedBranches
from appliance.sip.message import Request, parse_message
from appliance.sip.wire import Target

TARGET = Target("udp", "203.0.113.20", 41000)


def invite(n: int) -> Request:
    message = parse_message((
        f"INVITE sip:bob@192.168.1.20 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKours{n}\r\n"
        f"Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bKalice{n};rport\r\n"
        f"Max-Forwards: 69\r\nRecord-Route: <sip:10.0.0.1:5060;lr>\r\n"
        f"From: <sip:alice@pbx.example.com>;tag=a{n}\r\nTo: <sip:bob@pbx.example.com>\r\n"
        f"Call-ID: c{n}\r\nCSeq: 2 INVITE\r\nContact: <sip:alice@192.168.1.10>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n").encode())
    assert isinstance(message, Request)
    return message


def key(n: int) -> tuple[str, ...]:
    return (f"z9hG4bKours{n}", "INVITE")


def test_a_record_keeps_what_an_ack_and_a_bye_copy_until_64_t1_later() -> None:
    ended = EndedBranches()
    record = ended.remember(key(1), invite(1), TARGET, now=100.0)
    assert record is not None and ended.get(key(1), 100.0) is record
    assert record.request.uri == "sip:bob@192.168.1.20" and record.request.body == b""
    assert [h.name for h in record.request.headers] == ["via", "via", "from", "to", "call-id",
                                                        "cseq"]
    assert record.target == TARGET and record.ack is None
    assert ended.get(key(1), 100.0 + ENDED_FOR - 0.1) is record
    assert ended.get(key(1), 100.0 + ENDED_FOR) is None
    assert ended.get(key(2), 100.0) is None


def test_expired_records_go_in_order_and_the_oldest_go_first_past_the_cap() -> None:
    ended = EndedBranches(max_size=2)
    for n in range(3):
        ended.remember(key(n), invite(n), TARGET, now=float(n))
    assert len(ended) == 2 and ended.get(key(0), 2.0) is None
    ended.expire(1.0 + ENDED_FOR)
    assert len(ended) == 1 and ended.get(key(2), 1.0 + ENDED_FOR) is not None
    ended.expire(2.0 + ENDED_FOR)
    assert len(ended) == 0


def test_remembered_again_a_record_keeps_its_ack_and_its_time_starts_over() -> None:
    ended = EndedBranches()
    first = ended.remember(key(1), invite(1), TARGET, now=0.0)
    assert first is not None
    ack = (Request(method="ACK", uri="sip:bob@192.168.1.20"), TARGET)
    first.ack = ack
    ended.remember(key(2), invite(2), TARGET, now=1.0)
    again = ended.remember(key(1), invite(1), TARGET, now=20.0)
    assert again is not None and again.ack is ack
    assert ended.get(key(1), 20.0 + ENDED_FOR - 1) is again
    ended.expire(1.0 + ENDED_FOR)  # key 2 first: it is the older one now
    assert ended.get(key(2), 0.0) is None and ended.get(key(1), 30.0) is again


def test_nothing_is_kept_without_room_or_without_a_via() -> None:
    assert EndedBranches(max_size=0).remember(key(1), invite(1), TARGET, 0.0) is None
    bare = Request(method="INVITE", uri="sip:bob@192.168.1.20")
    ended = EndedBranches()
    assert ended.remember(key(1), bare, TARGET, 0.0) is None and len(ended) == 0
