"""Bytes that are not UTF-8 (docs/sip.md "Malformed messages").

The parser keeps such a byte as a lone surrogate so that it goes out unchanged; where the
grammar allows only tokens, hosts and digits and the value is a key (Request-URI, Call-ID,
CSeq, Via, From/To tags) or a digest parameter, it makes the request a 400 before any
transaction is opened; in free text (display names, the From/To/Contact URIs, Subject, ...)
it is kept and forwarded byte-identical. And whatever fails while a request is handled, its
server transaction does not stay in the table.
"""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path

import pytest

from appliance.sip import frontdoor, proxy
from appliance.sip.errors import SipParseError
from appliance.sip.message import Request, error_response, parse_message
from tests.sip import test_registrar as reg
from tests.sip.proxy_harness import REALM, Harness, authorization
from tests.sip.test_attacker import Attacker, challenge_answer, running

INVITE = [
    b"INVITE sip:bob@pbx.example.com SIP/2.0",
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc1;rport",
    b"Via: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKlower",
    b"Max-Forwards: 70",
    b'From: "Al" <sip:alice@pbx.example.com>;tag=a1',
    b"To: <sip:bob@pbx.example.com>",
    b"Call-ID: c1@x",
    b"CSeq: 1 INVITE",
    b"Contact: <sip:alice@192.0.2.10:5060>",
    b"Subject: hi",
    b"Content-Length: 0",
]

# (what, the bytes it replaces) -> its replacement with a byte that is no UTF-8
KEYS = {
    "request-uri": (b"INVITE sip:bob@", b"INVITE sip:b\xffob@"),
    "call-id": (b"Call-ID: c1@x", b"Call-ID: c\xff1@x"),
    "via-branch": (b"branch=z9hG4bKabc1", b"branch=z9hG4bKab\xffc1"),
    "via-param": (b";rport\r\n", b";rport;x=\xff\r\n"),
    "lower-via": (b"branch=z9hG4bKlower", b"branch=z9hG4bKlo\xffwer"),
    "cseq": (b"CSeq: 1 INVITE", b"CSeq: 1\xff INVITE"),
    "from-tag": (b"tag=a1", b"tag=a\xff1"),
    "to-tag": (b"bob@pbx.example.com>\r\n", b"bob@pbx.example.com>;tag=t\xff\r\n"),
}
FREE_TEXT = {
    "display-name": (b'"Al"', b'"A\xffl"'),
    "from-uri": (b"sip:alice@pbx", b"sip:al\xffice@pbx"),
    "contact": (b"sip:alice@192", b"sip:al\xffice@192"),
    "subject": (b"Subject: hi", b"Subject: h\xffi"),
}


def invite(old: bytes = b"", new: bytes = b"") -> bytes:
    data = b"\r\n".join(INVITE) + b"\r\n\r\n"
    assert old in data
    return data.replace(old, new, 1)


@pytest.mark.parametrize("field", sorted(KEYS))
def test_a_key_field_that_is_not_utf8_is_400_echoing_the_bytes(field: str) -> None:
    data = invite(*KEYS[field])
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == 400
    reply = error_response(info.value, to_tag="t1")
    assert reply is not None and reply.status == 400
    # What is echoed goes back as it came, byte for byte.
    wire = bytes(reply)
    for name in (b"Call-ID", b"CSeq", b"Via"):
        line = re.search(rb"\r\n" + name + rb": [^\r]*", data)
        assert line is not None and line.group(0) in wire


@pytest.mark.parametrize("field", sorted(FREE_TEXT))
def test_free_text_that_is_not_utf8_is_kept_byte_identical(field: str) -> None:
    data = invite(*FREE_TEXT[field])
    assert bytes(parse_message(data)) == data


# --- the proxy -----------------------------------------------------------------------------------


async def test_digest_parameters_that_are_not_utf8_are_400_for_the_proxy() -> None:
    for param in ("cnonce", "response", "nonce", "username"):
        h = Harness()
        alice = h.phone("alice", "192.0.2.10", ("192.0.2.10", 5060))
        h.phone("bob", "192.0.2.20", ("192.0.2.20", 5060))
        uri = f"sip:bob@{REALM}"
        first = alice.request("MESSAGE", uri, to=f"<{uri}>", call_id="m1", from_tag="f1",
                              body=b"hi")
        await h.send(alice, first)
        challenge = h.sender.responses(407)[-1][0]
        h.sender.take()
        creds = authorization(first, challenge, alice)
        # The last character: a nonce's tail is its MAC, which was hashed as UTF-8.
        value = re.search(f'{param}="([^"]*)"', creds)
        assert value is not None
        marked = creds.replace(value.group(0), f'{param}="{value.group(1)[:-1]}MARK"')
        second = alice.request("MESSAGE", uri, to=f"<{uri}>", call_id="m1", from_tag="f1",
                               body=b"hi", headers=[("Proxy-Authorization", marked)])
        message = parse_message(bytes(second).replace(b"MARK", b"\xff"))
        assert isinstance(message, Request)
        await h.send(alice, message)
        [(reply, _)] = h.sender.take()
        assert reply.start_line() == "SIP/2.0 400 Bad Proxy-Authorization", param
        await h.tick(33)  # Timer J
        assert h.proxy.transactions == 0


async def test_a_failure_whose_500_fails_too_leaves_no_transaction(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    alice = h.phone("alice", "192.0.2.10", ("192.0.2.10", 5060))
    uri = f"sip:bob@{REALM}"

    async def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("handler bug")

    def no_tag(request: Request) -> str:
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(h.proxy._auth, "authenticate", broken)
    monkeypatch.setattr(proxy, "tag_for", no_tag)
    for n in range(5):
        request = alice.request("INVITE", uri, to=f"<{uri}>", call_id=f"c{n}", from_tag="f")
        with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="handler bug"):
            await h.send(alice, request)
        assert h.proxy.transactions == 0
    assert [r.getMessage() for r in caplog.records] == \
        ["x cannot answer a failed INVITE either (UnicodeEncodeError): dropped"] * 5


async def test_a_lazy_parse_error_is_answered_and_its_transaction_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    alice = h.phone("alice", "192.0.2.10", ("192.0.2.10", 5060))
    uri = f"sip:bob@{REALM}"

    async def unreadable(*args: object, **kw: object) -> None:
        raise SipParseError("a header read late")

    monkeypatch.setattr(h.proxy._auth, "authenticate", unreadable)
    await h.send(alice, alice.request("INVITE", uri, to=f"<{uri}>", call_id="c", from_tag="f"))
    assert [m.start_line() for m, _ in h.sender.take()] == ["SIP/2.0 400 Bad Request"]
    await h.tick(33)  # Timer H: no ACK came
    assert h.proxy.transactions == 0


# --- the registrar -------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["cnonce", "response", "nonce", "username"])
async def test_register_digest_parameters_that_are_not_utf8_are_400_uncounted(
        param: str) -> None:
    h = reg.Harness(reg.user("alice"))
    challenge = await h.send(reg.register("alice"))
    assert challenge is not None and challenge.status == 401
    auth = reg.answer(challenge, "alice")
    value = re.search(f'{param}="([^"]*)"', auth)
    assert value is not None
    auth = auth.replace(value.group(0), f'{param}="{value.group(1)[:-1]}\udcff"')
    bad = await h.send(reg.register("alice", cseq=2, auth=auth))
    assert bad is not None and bad.status == 400
    record = h.guard._records.get(reg.PHONE[0])
    assert record is None or not record.failures  # a broken digest is no wrong password
    ok = await h.send(reg.register("alice", cseq=3, auth=reg.answer(challenge, "alice")))
    assert ok is not None and ok.status == 200
    h.door.close()


async def test_a_failing_registrar_whose_500_fails_too_leaves_no_transaction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = reg.Harness()

    async def broken(login: str) -> None:
        raise RuntimeError("store gone")

    def no_response(*args: object, **kwargs: object) -> None:
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    h.directory.user = broken  # type: ignore[method-assign]
    # The 500 cannot be built (make_response lives in message, which is never compiled).
    monkeypatch.setattr(frontdoor, "make_response", no_response)
    with pytest.raises(RuntimeError, match="store gone"):
        await h.send(reg.register(branch="broken"))
    assert h.door.transactions == 0
    h.door.close()


# --- over UDP against a running appliance --------------------------------------------------------


def _bad(attacker: Attacker, method: str, kind: str) -> bytes:
    """METHOD to alice (through the proxy) with a byte that is no UTF-8 in KIND."""
    token = secrets.token_hex(4).encode()
    data = attacker.request(method, "alice", call_id=f"nu-{token.decode()}")
    if kind == "call-id":
        return data.replace(b"Call-ID: nu-", b"Call-ID: nu\xff-", 1)
    if kind == "branch":
        return data.replace(b"branch=z9hG4bK", b"branch=z9hG4bK\xff", 1)
    if kind == "to-tag":
        return data.replace(b"To: <sip:alice@pbx.example.com>",
                            b"To: <sip:alice@pbx.example.com>;tag=x\xff", 1)
    assert kind == "request-uri"
    return data.replace(b" sip:alice@", b" sip:al\xffice@", 1)


async def test_non_utf8_requests_over_udp_are_400_and_leave_no_transaction(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path) as (app, _):
        port = app.config.sip.listen.port
        attackers = [Attacker(port, f"127.0.4.{n}") for n in range(1, 9)]
        try:
            with caplog.at_level(logging.INFO):
                for attacker in attackers:
                    for method in ("INVITE", "MESSAGE", "OPTIONS", "BYE", "SUBSCRIBE"):
                        for kind in ("call-id", "branch", "to-tag", "request-uri"):
                            data = _bad(attacker, method, kind)
                            reply = await attacker.ask(data)
                            assert reply is not None, (method, kind)
                            assert reply.startswith(b"SIP/2.0 400 "), (method, kind, reply)
            assert app.proxy.transactions == 0
            assert app.frontdoor.transactions == 0
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            # A REGISTER answering our 401 with such a byte in its digest: 400, not 500.
            phone = attackers[0]
            uri = f"sip:127.0.0.1:{port}"
            first = phone.request("REGISTER", None, ruri=uri, call_id="nu-reg")
            challenge = await phone.ask(first)
            assert challenge is not None and challenge.startswith(b"SIP/2.0 401 ")
            name, creds = challenge_answer(challenge, "alice", "REGISTER", uri)
            for param in ("cnonce", "response", "nonce"):
                value = re.search(f'{param}="([^"]*)"', creds)
                assert value is not None
                marked = creds.replace(value.group(0), f'{param}="{value.group(1)}MARK"')
                again = phone.request("REGISTER", None, ruri=uri, call_id="nu-reg", cseq=2,
                                      extra=(f"{name}: {marked}",))
                reply = await phone.ask(again.replace(b"MARK", b"\xff"))
                assert reply is not None and reply.startswith(b"SIP/2.0 400 "), param
            # ...and a caller still gets its challenge, not a 503.
            caller = Attacker(port, "127.0.4.20")
            try:
                reply = await caller.ask(caller.request("INVITE", "alice"))
                assert reply is not None and reply.startswith(b"SIP/2.0 407 ")
            finally:
                caller.close()
        finally:
            for attacker in attackers:
                attacker.close()
