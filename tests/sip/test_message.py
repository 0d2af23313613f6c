"""parse_message ↔ bytes(msg) on captured and hand-written messages, valid and broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.sip.errors import SipParseError
from appliance.sip.message import (
    MAX_MESSAGE,
    Request,
    Response,
    error_response,
    make_response,
    max_forwards_status,
    parse_message,
    stamp_received,
    unsupported_extensions,
)

DATA = Path(__file__).parents[1] / "data" / "sip"
VALID = sorted(p.name for p in DATA.glob("*.msg") if not p.name.startswith("bad-"))
BROKEN = sorted(p.name for p in DATA.glob("bad-*.msg"))
# Not byte-exact by design: leading CRLFs are dropped, bytes past Content-Length ignored.
NORMALISED = {"leading_crlf.msg", "trailing_bytes.msg"}


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parse_request(name: str) -> Request:
    msg = parse_message(load(name))
    assert isinstance(msg, Request)
    return msg


def test_corpus_is_crlf() -> None:
    for name in VALID:
        data = load(name)
        head = data.split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in head.replace(b"\r\n", b""), name


@pytest.mark.parametrize("name", VALID)
def test_valid_messages_round_trip(name: str) -> None:
    raw = load(name)
    msg = parse_message(raw)
    out = bytes(msg)
    if name not in NORMALISED:
        assert out == raw
    again = parse_message(out)
    assert [(h.name, h.value) for h in again.headers] == [(h.name, h.value) for h in msg.headers]
    assert again.body == msg.body
    assert again.start_line() == msg.start_line()


@pytest.mark.parametrize("name", BROKEN)
def test_broken_messages_give_their_status(name: str) -> None:
    expected = int(name.split("-")[1])
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    assert info.value.status == expected


def test_oversized_message_is_513() -> None:
    data = load("register.msg") + b"x" * MAX_MESSAGE
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == 513


def test_torture_folding_and_whitespace() -> None:
    msg = parse_request("torture_wsinv.msg")
    assert msg.get("max-forwards") == "0068"
    assert msg.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert msg.get("subject") == ""
    assert msg.cseq.number == 9 and msg.cseq.method == "INVITE"
    assert [v.sent_by for v in msg.vias] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.from_.display == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    # No angle brackets: ";tag" belongs to the header (RFC 3261 §20.10).
    assert msg.to.uri == "sip:vivekg@chair-dnrc.example.com"
    assert msg.to.tag == "1918181833n"
    assert len(msg.body) == 150


def test_compact_forms_are_mapped_and_kept_on_the_wire() -> None:
    msg = parse_request("compact.msg")
    assert msg.call_id == "compact-1@192.0.2.12"
    assert msg.get("Content-Length") == "5" and msg.body == b"hello"
    assert msg.get("supported") == "replaces"
    assert msg.get("subject") == "compact forms everywhere"
    assert msg.get("contact") == msg.get("m")
    assert msg.top_via is not None and msg.top_via.branch == "z9hG4bKcompact1"
    assert b"\r\nv: SIP/2.0/UDP" in bytes(msg)


def test_multiple_vias_in_one_line_and_repeated_lines() -> None:
    msg = parse_request("multi_via.msg")
    vias = msg.vias
    assert [v.transport for v in vias] == ["UDP", "TCP", "UDP"]
    assert vias[1].received == "198.51.100.8"
    assert vias[2].rport == 5060
    assert msg.values("record-route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]


def test_proxy_edits_keep_untouched_headers_byte_identical() -> None:
    raw = load("unknown_headers.msg")
    msg = parse_request("unknown_headers.msg")
    msg.prepend("via", "SIP/2.0/UDP 203.0.113.1;branch=z9hG4bKours")
    msg.set("Max-Forwards", "69")
    out = bytes(msg)
    for line in (
        b"X-Leg-Id:   CA0123456789abcdef0123456789abcdef  ",
        b"x-LOWER-case-Name: keep ; my ;; spacing,,",
        b'P-Asserted-Identity: "Front Desk" <sip:100@pbx.example.com>',
        b"Subscription-State: active;expires=3600",
    ):
        assert b"\r\n" + line + b"\r\n" in raw
        assert b"\r\n" + line + b"\r\n" in out
    assert out.index(b"Via: SIP/2.0/UDP 203.0.113.1") < out.index(b"Via: SIP/2.0/UDP 192.0.2.1")
    assert b"Max-Forwards: 69\r\n" in out and b"Max-Forwards: 70" not in out


def test_pop_first_value_splits_comma_lists() -> None:
    msg = parse_request("multi_via.msg")
    assert msg.pop_first_value("via") == "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKproxy2"
    assert [v.branch for v in msg.vias] == ["z9hG4bKproxy1", "z9hG4bKuac"]
    assert msg.pop_first_value("route") == "<sip:203.0.113.5;lr>"
    assert msg.pop_first_value("route") == "<sip:198.51.100.7;lr;transport=tcp>"
    assert msg.pop_first_value("route") is None
    assert "route" not in msg
    # The second Via line was never touched.
    assert b"Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKuac;rport=5060" in bytes(msg)


def test_header_helpers() -> None:
    msg = Request(method="OPTIONS", uri="sip:x")
    msg.add("X-A", "1")
    msg.add("x-a", "2")
    msg.add("v", "SIP/2.0/UDP h;branch=z9hG4bK1")
    assert msg.get_all("X-a") == ["1", "2"]
    msg.prepend("X-A", "0")
    assert msg.get_all("x-a") == ["0", "1", "2"]
    msg.set("x-a", "only")
    assert msg.get_all("x-a") == ["only"] and msg.headers[0].name == "x-a"
    assert msg.remove("X-A") == 1 and msg.remove("X-A") == 0
    assert b"\r\nVia: SIP/2.0/UDP h" in bytes(msg)  # compact name written in full


def test_content_length_is_recomputed() -> None:
    msg = parse_request("invite_sdp.msg")
    msg.body = b"v=0\r\n"
    out = bytes(msg)
    assert b"Content-Length: 5\r\n" in out and out.endswith(b"\r\n\r\nv=0\r\n")
    fresh = Request(method="OPTIONS", uri="sip:x")
    assert bytes(fresh) == b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def test_datagram_body_rules() -> None:
    trailing = parse_request("trailing_bytes.msg")
    assert trailing.body == b"ping"
    raw = load("compact.msg").replace(b"l: 5\r\n", b"")
    assert parse_message(raw).body == b"hello"  # no Content-Length: body runs to the end


def test_bare_lf_is_tolerated() -> None:
    raw = load("register.msg").replace(b"\r\n", b"\n")
    msg = parse_message(raw)
    assert isinstance(msg, Request) and msg.call_id == "4f9a2c1e-77d1-4e1b-9d3e-0b82aabbcc01"


def test_responses() -> None:
    msg = parse_message(load("response_200_register.msg"))
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (200, "OK")
    assert len(msg.values("contact")) == 2
    assert len(parse_message(load("response_401.msg")).get_all("www-authenticate")) == 2
    for bad, status in ((b"SIP/2.0 99 Odd", 400), (b"SIP/3.0 200 OK", 505), (b"SIP/2.0", 400)):
        with pytest.raises(SipParseError) as info:
            parse_message(bad + b"\r\n" + load("response_401.msg").partition(b"\r\n")[2])
        assert info.value.status == status


def test_make_response_copies_the_dialog_headers() -> None:
    req = parse_request("multi_via.msg")
    resp = make_response(req, 200, to_tag="ignored")
    assert [h.name for h in resp.headers] == ["via", "via", "from", "to", "call-id", "cseq"]
    assert resp.to.tag == "def"  # an existing tag is kept
    reg = parse_request("register.msg")
    ok = make_response(reg, 401, to_tag="t1")
    assert ok.reason == "Unauthorized" and ok.to.tag == "t1"
    assert ok.to.display == "Desk 1001"
    assert make_response(reg, 100, to_tag="t1").to.tag is None
    assert bytes(ok).startswith(b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 192.0.2.10:5060")


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("bad-505-version.msg", 505),
        ("bad-416-scheme.msg", 416),
        ("bad-400-missing-max-forwards.msg", 400),
        ("bad-400-cseq-too-big.msg", 400),
        ("bad-400-unterminated-quote.msg", 400),
    ],
)
def test_error_response_answers_partly_parsed_requests(name: str, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    resp = error_response(info.value, to_tag="x1")
    assert resp is not None and resp.status == status
    assert resp.top_via is not None and resp.top_via.branch == "z9hG4bKbad"
    assert resp.call_id == "bad-1@192.0.2.66"
    # The peer's own header values are echoed, even broken ones, so it can match the reply.
    assert bytes(resp).startswith(f"SIP/2.0 {status} ".encode())


def test_error_response_gives_up_without_a_way_back() -> None:
    for name in ("bad-400-missing-via.msg", "bad-400-via-garbage.msg", "bad-400-empty-method.msg"):
        with pytest.raises(SipParseError) as info:
            parse_message(load(name))
        assert error_response(info.value) is None
    ack = load("bad-505-version.msg").replace(b"OPTIONS sip", b"ACK sip")
    with pytest.raises(SipParseError) as info:
        parse_message(ack)
    assert error_response(info.value) is None


def test_max_forwards_and_require_helpers() -> None:
    req = parse_request("register.msg")
    assert max_forwards_status(req) is None
    req.set("max-forwards", "0")
    assert max_forwards_status(req) == 483
    req.add("Require", "100rel, timer")
    req.add("Proxy-Require", "sec-agree")
    assert unsupported_extensions(req, ["timer"], proxy=False) == ["100rel"]
    assert unsupported_extensions(req, ["timer"], proxy=True) == ["sec-agree"]


def test_stamp_received_rewrites_only_the_top_via() -> None:
    req = parse_request("multi_via.msg")
    top = stamp_received(req, "198.51.100.99", 40000)
    assert top.received == "198.51.100.99" and top.rport == 40000
    vias = req.vias
    assert vias[0].response_target() == ("198.51.100.99", 40000)
    assert [v.branch for v in vias] == ["z9hG4bKproxy2", "z9hG4bKproxy1", "z9hG4bKuac"]
    plain = parse_request("escaped_quotes.msg")  # no rport asked, sent-by == source
    stamp_received(plain, "192.0.2.10", 5060, force_rport=False)
    assert plain.top_via is not None and plain.top_via.received is None
    assert plain.top_via.response_target() == ("192.0.2.10", 5060)
    stamp_received(plain, "203.0.113.1", 6000, force_rport=False)
    assert plain.top_via is not None and plain.top_via.response_target() == ("203.0.113.1", 5060)
