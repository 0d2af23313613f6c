"""The quick REGISTER path (``register_view.PlainRegister`` + ``FrontDoor.quick``) answers
exactly what the general path answers, and declines every shape it does not fully read.

Each scenario is played twice, step by step, against two registrars that share users, clock
and nonce secret: once through ``FrontDoor.quick`` (bytes in, bytes out) and once through the
general path (``parse_message``, the transport's Via stamp, ``FrontDoor.handle``). Replies are
compared byte for byte after masking what is random by design (To tags, nonce salts); the
bindings, their published registrations and the Guard's failure counts are compared too.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.services.telephony import SipUser
from appliance.sip import register_view
from appliance.sip.digest import Nonces
from appliance.sip.message import Request, make_response, parse_message, stamp_received
from appliance.sip.register_view import PlainRegister, fields_of
from appliance.sip.registrar import aor_of
from appliance.sip.wire import Incoming
from tests.sip.test_registrar import PASSWORD, REALM, Harness, user

PHONE = ("192.0.2.10", 5062)
SECRET = secrets.token_bytes(32)


@dataclass
class Phone:
    """Builds REGISTER bytes the way desk phones and SIPp write them."""

    login: str
    call_id: str = field(default_factory=lambda: "cid-" + secrets.token_hex(4))
    cseq: int = 0
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    via: str = "SIP/2.0/UDP 192.0.2.10:5062;branch={branch};rport"
    to: str = "<sip:{login}@pbx.example.com>"
    from_: str = "<sip:{login}@pbx.example.com>;tag={tag}"
    contact: str = "<sip:{login}@192.0.2.10:5062>"
    extra: tuple[str, ...] = ("User-Agent: Desk 2.1", "Allow: INVITE, ACK, BYE, CANCEL")

    def register(self, *, auth: str | None = None, expires: int | None = 3600,
                 branch: str | None = None, contact: str | None = None) -> bytes:
        self.cseq += 1
        lines = [
            "REGISTER sip:pbx.example.com SIP/2.0",
            "Via: " + self.via.format(
                branch="z9hG4bK" + (branch or f"{self.call_id[4:]}{self.cseq}")),
            "Max-Forwards: 70",
            "From: " + self.from_.format(login=self.login, tag=self.from_tag),
            "To: " + self.to.format(login=self.login),
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            "Contact: " + (contact or self.contact).format(login=self.login),
            *([f"Expires: {expires}"] if expires is not None else []),
            *([f"Authorization: {auth}"] if auth else []),
            *self.extra,
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def authorization(challenge: bytes, login: str, *, password: str = PASSWORD, nc: int = 1,
                  username: str | None = None, algorithm: str = "MD5") -> str:
    nonce = re.search(rb'nonce="([^"]+)"', challenge)
    assert nonce is not None, challenge
    text = nonce.group(1).decode()

    def h(value: str) -> str:
        data = value.encode()
        return hashlib.sha256(data).hexdigest() if algorithm == "SHA-256" \
            else hashlib.md5(data).hexdigest()  # noqa: S324 - the protocol's hash

    name = username or login
    a1 = h(f"{name}:{REALM}:{password}")
    a2 = h("REGISTER:sip:pbx.example.com")
    response = h(f"{a1}:{text}:{nc:08x}:c0ffee:auth:{a2}")
    return (f'Digest username="{name}", realm="{REALM}", nonce="{text}", '
            f'uri="sip:pbx.example.com", response="{response}", algorithm={algorithm}, '
            f'cnonce="c0ffee", qop=auth, nc={nc:08x}')


class Side:
    """One registrar, driven through one path."""

    def __init__(self, users: list[SipUser], quick: bool) -> None:
        self.h = Harness(*users)
        self.h.registrar.nonces = Nonces(SECRET)
        self.quick = quick
        self.name = "q" if quick else "g"
        self.last = b""

    async def send(self, data: bytes, source: tuple[str, int] = PHONE) -> bytes | None:
        self.last = data
        if self.quick:
            reply = self.h.door.quick(data, source)
            assert reply is not None, f"the quick path declined:\n{data.decode()}"
            return reply
        before = len(self.h.sender.sent)
        request = parse_message(data)
        assert isinstance(request, Request)
        stamp_received(request, source[0], source[1], force_rport=True)
        await self.h.door.handle(Incoming(request, "udp", source, ("127.0.0.1", 5060), None))
        sent = self.h.sender.sent[before:]
        assert len(sent) <= 1
        return bytes(sent[0][0]) if sent else None

    def state(self, login: str) -> Any:
        now = self.h.clock()
        return ([b.to_dict() for b in self.h.location.lookup(login, now)],
                self.h.directory.published.get(login),
                {ip: (r.failures, r.banned_until) for ip, r in self.h.guard._records.items()})


def mask(data: bytes | None) -> bytes | None:
    if data is None:
        return None
    data = re.sub(rb";tag=[0-9a-f]{10}\r\n", b";tag=TAG\r\n", data)
    return re.sub(rb'nonce="[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+"', b'nonce="NONCE"', data)




class Pair:
    """The same scenario on both sides; every reply and state compared."""

    def __init__(self, *users: SipUser) -> None:
        self.quick = Side(list(users), quick=True)
        self.general = Side(list(users), quick=False)
        self.replies: list[bytes] = []

    def advance(self, seconds: float) -> None:
        self.quick.h.clock.now += seconds
        self.general.h.clock.now += seconds

    async def both(self, make: Callable[[Side], bytes], login: str,
                   source: tuple[str, int] = PHONE) -> bytes:
        quick = await self.quick.send(make(self.quick), source)
        general = await self.general.send(make(self.general), source)
        assert mask(quick) == mask(general)
        assert self.quick.state(login) == self.general.state(login)
        assert quick is not None
        self.replies.append(quick)
        return quick

    def close(self) -> None:
        self.quick.h.door.close()
        self.general.h.door.close()


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


async def challenged(pair: Pair, phones: dict[str, Phone], **register: Any
                     ) -> dict[bool, bytes]:
    """Each side's 401 to its phone's first REGISTER (REGISTER keywords), by side.quick;
    the same but for the nonce."""
    challenges: dict[bool, bytes] = {}
    for side in (pair.quick, pair.general):
        reply = await side.send(phones[side.name].register(**register))
        assert reply is not None and status(reply) == 401
        challenges[side.quick] = reply
    assert mask(challenges[True]) == mask(challenges[False])
    return challenges


async def dance(pair: Pair, phones: dict[str, Phone], login: str = "alice", **auth: Any
                ) -> tuple[bytes, bytes]:
    """REGISTER, 401, REGISTER with credentials, on both sides (each phone answers its own
    side's nonce)."""
    challenges = await challenged(pair, phones)
    branch = secrets.token_hex(6)

    def second(side: Side) -> bytes:
        return phones[side.name].register(
            auth=authorization(challenges[side.quick], login, **auth), branch=branch)

    final = await pair.both(second, login)
    return challenges[True], final


def phone_pair(login: str = "alice", **kw: Any) -> dict[str, Phone]:
    call_id = "cid-" + secrets.token_hex(4)
    tag = secrets.token_hex(4)
    return {k: Phone(login, call_id=call_id, from_tag=tag, **kw) for k in ("q", "g")}


# --- the same answers --------------------------------------------------------------------


async def test_challenge_then_200_then_refresh_are_the_same_bytes() -> None:
    pair = Pair(user("alice"))
    phones = phone_pair()
    challenge, final = await dance(pair, phones)
    assert status(challenge) == 401 and status(final) == 200
    assert b"Contact: <sip:alice@192.0.2.10:5062>;expires=3600\r\n" in final
    assert b";rport=5062;received=192.0.2.10\r\n" in final
    pair.advance(30)
    _, again = await dance(pair, phones)
    assert status(again) == 200 and b";expires=3570" not in again
    pair.close()


async def test_unregistering_with_expires_zero_is_the_same() -> None:
    pair = Pair(user("alice"))
    phones = phone_pair()
    await dance(pair, phones)
    assert pair.quick.state("alice")[0]  # registered on both sides (compared in dance)
    challenges = await challenged(pair, phones, expires=0)

    def bye(side: Side) -> bytes:
        return phones[side.name].register(
            auth=authorization(challenges[side.quick], "alice"), expires=0)

    reply = await pair.both(bye, "alice")
    assert status(reply) == 200 and b"Contact:" not in reply
    assert pair.quick.state("alice")[0] == []
    pair.close()


async def test_retransmitted_final_register_gets_the_same_200() -> None:
    pair = Pair(user("alice"))
    _, final = await dance(pair, phone_pair())
    # The phone's last REGISTER again, byte for byte (its 200 was lost): answered from the
    # transaction on the general path, recognised by its nonce, nc and branch on the quick one.
    again = await pair.both(lambda side: side.last, "alice")
    assert mask(again) == mask(final) and status(again) == 200
    pair.close()


async def test_unknown_user_and_wrong_username_are_403() -> None:
    pair = Pair(user("alice"))
    challenge, final = await dance(pair, phone_pair("mallory"), login="mallory")
    assert status(challenge) == 401 and status(final) == 403
    _, final = await dance(pair, phone_pair(), username="bob")
    assert status(final) == 403
    pair.close()


@pytest.mark.parametrize(("enabled", "auth", "expected"), [
    (True, {"password": "not-it"}, 403),
    (False, {}, 403),
    (True, {"algorithm": "SHA-256"}, 200),
], ids=["wrong-password", "disabled-client", "sha256"])
async def test_final_answer_is_the_same(enabled: bool, auth: dict[str, str],
                                        expected: int) -> None:
    pair = Pair(user("alice", enabled=enabled))
    _, final = await dance(pair, phone_pair(), **auth)
    assert status(final) == expected
    pair.close()


async def test_too_brief_expires_is_423_with_min_expires() -> None:
    pair = Pair(user("alice"))
    phones = phone_pair()
    challenges = await challenged(pair, phones, expires=5)
    branch = secrets.token_hex(6)

    def second(side: Side) -> bytes:
        phone = phones[side.name]
        return phone.register(auth=authorization(challenges[side.quick], "alice"),
                              expires=5, branch=branch)

    reply = await pair.both(second, "alice")
    assert status(reply) == 423 and b"Min-Expires: " in reply
    pair.close()


@pytest.mark.parametrize("shape", [
    {"via": "SIP/2.0/UDP 192.0.2.10:5062;rport;branch={branch}"},
    {"via": "SIP/2.0/UDP 192.0.2.10;branch={branch}"},
    {"to": '"Alice Smith" <sip:{login}@pbx.example.com>',
     "from_": '"Alice Smith" <sip:{login}@pbx.example.com>;tag={tag}'},
    {"contact": "<sip:{login}@192.0.2.10:5062;transport=udp>;expires=600"},
    {"contact": "<sip:{login}@192.0.2.10:5062>;q=0.5;+sip.instance=x"},
    {"extra": ()},
], ids=["rport-first", "no-port-no-rport", "display-names", "contact-expires",
        "contact-params", "minimal"])
async def test_other_common_shapes_answer_the_same(shape: dict[str, Any]) -> None:
    pair = Pair(user("alice"))
    challenge, final = await dance(pair, phone_pair(**shape))
    assert status(challenge) == 401 and status(final) == 200
    pair.close()


async def test_stale_nonce_is_rechallenged_with_stale_true() -> None:
    pair = Pair(user("alice"))
    phones = phone_pair()
    challenges = await challenged(pair, phones)
    pair.advance(3600)

    def late(side: Side) -> bytes:
        phone = phones[side.name]
        return phone.register(auth=authorization(challenges[side.quick], "alice"))

    reply = await pair.both(late, "alice")
    assert status(reply) == 401 and b"stale=true" in reply
    pair.close()


async def test_a_nonce_issued_to_another_address_is_rechallenged_the_same_way() -> None:
    # A spoofer fetches its challenges at its own address and answers them with the phone's
    # address as source: right or wrong password, fresh or expired, both paths give the same
    # fresh 401 (not stale), bind nothing and count no failure (compared in both()).
    pair = Pair(user("alice"))
    phones = phone_pair()
    elsewhere = ("192.0.2.66", 5062)
    challenges: dict[bool, bytes] = {}
    for side in (pair.quick, pair.general):
        reply = await side.send(phones[side.name].register(), elsewhere)
        assert reply is not None and status(reply) == 401
        challenges[side.quick] = reply
    for later in (0, 3600):
        pair.advance(later)
        for auth in ({}, {"password": "not-it"}):
            def answer(side: Side, auth: dict[str, str] = auth) -> bytes:
                return phones[side.name].register(
                    auth=authorization(challenges[side.quick], "alice", **auth))

            reply = await pair.both(answer, "alice")
            assert status(reply) == 401 and b"stale" not in reply, reply
    assert pair.quick.state("alice")[0] == []
    assert not any(r.failures for r in pair.quick.h.guard._records.values())
    pair.close()


async def test_replayed_nc_with_a_new_branch_is_401_stale_and_403_if_wrong() -> None:
    # Right password: a fresh 401 stale=true, no failure; wrong password: a counted 403
    # (the guard's records are compared in both()).
    pair = Pair(user("alice"))
    phones = phone_pair()
    challenges = await challenged(pair, phones)

    def answer(side: Side, password: str = PASSWORD) -> bytes:
        phone = phones[side.name]
        return phone.register(auth=authorization(challenges[side.quick], "alice",
                                                 password=password))

    assert status(await pair.both(answer, "alice")) == 200
    replay = await pair.both(answer, "alice")
    assert status(replay) == 401 and b"stale=true" in replay
    assert not any(r.failures for r in pair.quick.h.guard._records.values())
    wrong = await pair.both(lambda side: answer(side, "not-it"), "alice")
    assert status(wrong) == 403
    assert any(r.failures for r in pair.quick.h.guard._records.values())
    pair.close()


async def test_garbled_credentials_and_unknown_algorithm_are_400() -> None:
    pair = Pair(user("alice"))
    phones = phone_pair()
    for auth in ("Digest username=", f'Digest username="alice", realm="{REALM}", '
                 'nonce="x", uri="sip:pbx.example.com", response="00", algorithm=MD7'):
        def send(side: Side, auth: str = auth) -> bytes:
            return phones[side.name].register(auth=auth)
        reply = await pair.both(send, "alice")
        assert status(reply) in (400, 401)
    pair.close()


# --- everything else takes the general path ----------------------------------------------

PLAIN = Phone("alice", call_id="cid-1", from_tag="f1").register()


def edited(old: bytes, new: bytes) -> bytes:
    assert old in PLAIN
    return PLAIN.replace(old, new, 1)


@pytest.mark.parametrize("data", [
    edited(b"Via: SIP/2.0/UDP", b"v: SIP/2.0/UDP"),                      # compact form
    edited(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nRequire: gruu\r\n"),
    edited(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nRoute: <sip:p1;lr>\r\n"),
    edited(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nX-Custom: 1\r\n"),
    edited(b"Max-Forwards: 70\r\n", b""),                                   # missing
    edited(b"Max-Forwards: 70", b"Max-Forwards: seventy"),
    edited(b"Contact: <sip:alice@192.0.2.10:5062>",
           b"Contact: <sip:alice@192.0.2.10:5062>, <sip:alice@192.0.2.10:5064>"),
    edited(b"Contact: <sip:alice@192.0.2.10:5062>",
           b"Contact: <sip:alice@192.0.2.10:5062>\r\nContact: <sip:alice@192.0.2.10:5064>"),
    edited(b"Contact: <sip:alice@192.0.2.10:5062>", b"Contact: *"),
    edited(b"Contact: <sip:alice@192.0.2.10:5062>", b"Contact: sip:alice@192.0.2.10:5062"),
    edited(b"To: <sip:alice@pbx.example.com>", b"To: <sip:alice@pbx.example.com>;tag=x"),
    edited(b"To: <sip:alice@pbx.example.com>", b"To: <sip:al%69ce@pbx.example.com>"),
    edited(b"To: <sip:alice@pbx.example.com>", b'To: "Al\\"ice" <sip:alice@pbx.example.com>'),
    edited(b"To: <sip:alice@pbx.example.com>", b"To: <sips:alice@pbx.example.com>"),
    edited(b"To: <sip:alice@pbx.example.com>", b"To: \"\xc3\x89va\" <sip:alice@pbx.example.com>"),
    edited(b"SIP/2.0/UDP", b"SIP/2.0/TCP"),
    edited(b"SIP/2.0/UDP", b"SIP/2.0/udp"),
    edited(b"SIP/2.0/UDP 192.0.2.10:5062", b"SIP/2.0/UDP [2001:db8::1]:5062"),
    edited(b"SIP/2.0/UDP 192.0.2.10:5062", b"SIP/2.0/UDP phone.example.com:5062"),
    edited(b"SIP/2.0/UDP 192.0.2.10:5062", b"SIP/2.0/UDP 224.0.1.75:5062"),
    edited(b"SIP/2.0/UDP 192.0.2.10:5062", b"SIP/2.0/UDP 192.0.2.10:70000"),
    edited(b";rport", b";rport=5062"),
    edited(b";rport", b";received=10.0.0.1"),
    edited(b"branch=z9hG4bK", b"branch=old"),
    edited(b"Max-Forwards: 70\r\n",
           b"Max-Forwards: 70\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n"),
    edited(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE"),
    edited(b"CSeq: 1 REGISTER", b"CSeq: 99999999999 REGISTER"),
    edited(b"CSeq: 1 REGISTER", b"CSeq: 1  REGISTER"),
    edited(b"CSeq: 1 REGISTER", b"CSeq: +1 REGISTER"),
    edited(b"Call-ID: cid-1", b"Call-ID: cid 1"),
    edited(b"Call-ID: cid-1", b"Call-ID: cid-\x7f"),
    edited(b"REGISTER sip:pbx.example.com", b"REGISTER sip:pbx.example.com?Route=x"),
    edited(b"REGISTER sip:pbx.example.com", b"REGISTER sip:"),
    edited(b"Call-ID: cid-1", b"Call-ID: cid-1\r\nCall-ID: cid-2"),
    edited(b"Expires: 3600", b"Expires: soon"),
    edited(b"Content-Length: 0", b"Content-Length: 4"),
    edited(b"Content-Length: 0\r\n\r\n", b"Content-Length: 0\r\n\r\nbody"),
    edited(b"\r\nMax-Forwards", b"\r\n Max-Forwards"),                         # folding
    edited(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n"),                   # bare LF
    edited(b"REGISTER sip:pbx.example.com SIP/2.0", b"REGISTER sip:pbx.example.com SIP/3.0"),
    edited(b"REGISTER sip:pbx.example.com", b"REGISTER tel:+15551234"),
], ids=lambda data: "")
def test_other_shapes_are_left_to_the_general_path(data: bytes) -> None:
    assert PlainRegister.parse(data, PHONE) is None


def test_tos_and_contacts_read_before_are_kept_within_a_bound() -> None:
    for n in range(register_view.MAX_KEPT + 10):
        data = edited(b"Contact: <sip:alice@192.0.2.10:5062>",
                      f"Contact: <sip:alice@192.0.2.10:{n + 1}>".encode())
        data = data.replace(b"To: <sip:alice@", f"To: <sip:a{n}@".encode())
        view = PlainRegister.parse(data, PHONE)
        assert view is not None and view.fields.login == f"a{n}"
    assert 0 < len(register_view._TO_LOGINS) <= register_view.MAX_KEPT
    assert 0 < len(register_view._CONTACTS) <= register_view.MAX_KEPT
    # Values seen before are read as they were the first time.
    view = PlainRegister.parse(PLAIN, PHONE)
    assert view is not None and view.fields.login == "alice"
    assert PlainRegister.parse(PLAIN, PHONE) is not None
    assert PlainRegister.parse(edited(b"To: <sip:alice@pbx.example.com>",
                                      b"To: <sip:alice@pbx.example.com>;tag=x"), PHONE) is None


def test_the_plain_shape_is_read() -> None:
    view = PlainRegister.parse(PLAIN, PHONE)
    assert view is not None
    assert view.fields.login == "alice" and view.fields.cseq == 1
    assert view.fields.contacts == ("<sip:alice@192.0.2.10:5062>",)
    assert view.fields.user_agent == "Desk 2.1"


async def test_a_register_the_general_path_holds_a_transaction_for_is_not_answered_quick(
) -> None:
    side = Side([user("alice")], quick=False)
    await side.send(PLAIN)  # the general path: 401, kept in a server transaction
    assert side.h.door.transactions == 1
    assert side.h.door.quick(PLAIN, PHONE) is None  # its retransmission: the transaction's
    side.h.door.close()


async def test_a_client_not_in_the_directory_cache_is_left_to_the_general_path() -> None:
    side = Side([user("alice")], quick=True)
    side.h.directory.cached_user = lambda login: (False, None)  # type: ignore[method-assign]
    assert side.h.door.quick(PLAIN, PHONE) is None
    side.h.door.close()


async def test_a_source_over_its_unauthenticated_budget_is_left_to_the_general_path() -> None:
    side = Side([user("alice")], quick=True)
    guard = side.h.guard
    while guard.allow_unauthenticated(PHONE[0], side.h.clock()):
        pass
    assert side.h.door.quick(PLAIN, PHONE) is None
    side.quick = False
    reply = await side.send(PLAIN)  # where the general path answers 503 and logs it
    assert reply is not None and status(reply) == 503
    side.h.door.close()


# --- fuzzed: whatever the quick reader accepts, it reads as the general parser does ------

SEEDS = [
    PLAIN,
    Phone("bob", via="SIP/2.0/UDP 10.1.2.3;rport;branch={branch}",
          to='"Bob B" <sip:{login}@pbx.example.com>', extra=()).register(expires=None),
    Phone("carol", contact="<sip:{login}@10.0.0.7:5070;transport=udp>;expires=120").register(
        auth='Digest username="carol", realm="pbx.example.com", nonce="1.2.3", '
             'uri="sip:pbx.example.com", response="00", qop=auth, nc=00000001, cnonce="x"'),
]
MUTATIONS = [b"\r\n", b"\r\n ", b":", b";", b",", b'"', b"<", b">", b" ", b"\t", b"\x00",
             b"\xff", b"%", b"=", b"/", b"Via: ", b"Contact: ", b"l: 0", b"tag=", b"rport",
             b"branch=z9hG4bK", b"SIP/2.0/UDP ", b"Expires: ", b"0"]


@st.composite
def mutated_register(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            data[pos:pos] = draw(st.sampled_from(MUTATIONS) | st.binary(min_size=1, max_size=3))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(min_value=1, max_value=8))]
        elif pos < len(data):
            data[pos] = draw(st.integers(min_value=0, max_value=255))
    return bytes(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_register())
def test_what_the_quick_reader_accepts_the_general_parser_reads_alike(data: bytes) -> None:
    view = PlainRegister.parse(data, PHONE)  # never raises: a view or None
    if view is None:
        return
    request = parse_message(data)  # accepted by the quick reader: valid for the general one
    assert isinstance(request, Request) and request.method == "REGISTER"
    login = aor_of(request.to.uri)
    assert fields_of(request, login) == view.fields
    stamp_received(request, *PHONE, force_rport=True)
    general = bytes(make_response(request, 401, to_tag="T"))
    assert view.reply(401, [], to_tag="T") == general


async def test_a_digest_uri_other_than_the_request_uri_is_400_on_both_paths() -> None:
    pair = Pair(user("alice"))
    phones = phone_pair()
    challenges = await challenged(pair, phones)

    def send(side: Side) -> bytes:
        auth = authorization(challenges[side.quick], "alice")
        return phones[side.name].register(auth=auth.replace(
            'uri="sip:pbx.example.com"', 'uri="sip:other.example.com"'))

    assert status(await pair.both(send, "alice")) == 400
    pair.close()


@pytest.mark.parametrize("contact", ["<sip:{login}@192.0.2.10:5062>;expires=5",
                                     "<sip:{login}@192.0.2.10:5062>;q=7"],
                         ids=["423", "400"])
async def test_a_retransmitted_refused_register_is_refused_again(contact: str) -> None:
    # The quick path keeps no transaction: it must not take the retransmission of an
    # authenticated REGISTER it refused for one it applied (a 200 would tell the phone it
    # is registered while it is not).
    pair = Pair(user("alice"))
    phones = phone_pair(contact=contact)
    _, refused = await dance(pair, phones)
    assert status(refused) in (400, 423)
    again = await pair.both(lambda side: side.last, "alice")
    assert mask(again) == mask(refused)
    assert pair.quick.state("alice")[0] == []
    pair.close()
