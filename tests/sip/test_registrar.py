"""The registrar behind the front door, with a fake Sender, a fake directory and a fake clock.

Digests are computed here with hashlib, independently of ``appliance.sip.digest``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.services.telephony import Registration, SipUser
from appliance.sip.bindings import Binding, Location
from appliance.sip.digest import Algorithm
from appliance.sip.frontdoor import FrontDoor
from appliance.sip.guard import Guard
from appliance.sip.headers import DigestCredentials
from appliance.sip.message import Request, Response, parse_message
from appliance.sip.registrar import Registrar, aor_of
from appliance.sip.wire import Incoming, Target
from appliance.store.db import Store

REALM = "pbx.example.com"
PASSWORD = "Pbx-edge-7"
PHONE = ("192.0.2.10", 5060)
T0 = 1_700_000_000.0


def ha1(login: str, password: str = PASSWORD, realm: str = REALM, sha: bool = False) -> str:
    text = f"{login}:{realm}:{password}".encode()
    return hashlib.sha256(text).hexdigest() if sha else hashlib.md5(text).hexdigest()


def user(login: str, *, enabled: bool = True, realm: str = REALM) -> SipUser:
    return SipUser(login=login, client_sid="CL" + hashlib.md5(login.encode()).hexdigest(),
                   account_sid="AC" + "0" * 32, realm=realm,
                   ha1_md5=ha1(login, realm=realm), ha1_sha256=ha1(login, realm=realm, sha=True),
                   enabled=enabled, voice_url=None, voice_application_sid=None)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FakeDirectory:
    def __init__(self, *users: SipUser) -> None:
        self.users = {u.login: u for u in users}
        self.reported: dict[str, tuple[Binding, ...]] = {}  # the last report of each login

    @property
    def published(self) -> dict[str, list[Registration]]:
        """What the API would show of each login reported (made when read, as
        ``SipDirectory`` makes them: bench/sip_register.py runs with this directory)."""
        return {login: [Registration.of(login, b) for b in bindings]
                for login, bindings in self.reported.items()}

    async def user(self, login: str) -> SipUser | None:
        return self.users.get(login)

    def cached_user(self, login: str) -> tuple[bool, SipUser | None]:
        return True, self.users.get(login)

    def set_bindings(self, login: str, bindings: Sequence[Binding]) -> None:
        self.reported[login] = tuple(bindings)


class FakeStore:
    def __init__(self) -> None:
        self.saved: dict[str, list[dict[str, Any]]] = {}
        self.writes = 0

    async def save_bindings(self, snapshots: dict[str, list[dict[str, Any]]]) -> None:
        self.writes += 1
        self.saved.update(snapshots)

    async def load_bindings(self, now: float) -> list[dict[str, Any]]:
        return [b for items in self.saved.values() for b in items if b["expires_at"] > now]


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[Request | Response, Target]] = []

    def send(self, message: Request | Response, target: Target, data: bytes | None = None) -> None:
        assert data is None or data == bytes(message)
        self.sent.append((message, target))


class Harness:
    def __init__(self, *users: SipUser, store: Any = None, guard: Guard | None = None,
                 algorithms: tuple[Algorithm, ...] = (Algorithm.MD5, Algorithm.SHA256)) -> None:
        self.clock = Clock()
        self.directory = FakeDirectory(*users)
        self.store = store if store is not None else FakeStore()
        self.location = Location()
        self.guard = guard if guard is not None else Guard()
        self.registrar = Registrar(directory=self.directory, location=self.location,
                                   guard=self.guard, store=self.store, clock=self.clock,
                                   realm=lambda: REALM, algorithms=algorithms, timer_cap=0.01)
        self.sender = FakeSender()
        self.door = FrontDoor(registrar=self.registrar, guard=self.guard, clock=self.clock,
                              sender=self.sender)

    async def send(self, request: Request, *, source: tuple[str, int] = PHONE,
                   transport: str = "udp", connection_id: str | None = None) -> Response | None:
        before = len(self.sender.sent)
        await self.door.handle(Incoming(request, transport, source, ("127.0.0.1", 5060),
                                        connection_id))
        await self.registrar.flush()
        new = self.sender.sent[before:]
        assert len(new) <= 1
        if not new:
            return None
        message = new[0][0]
        assert isinstance(message, Response)
        return message

    async def registered(self, login: str = "alice", **kw: Any) -> Response:
        """The whole dance: REGISTER, 401, REGISTER with credentials; returns the final."""
        call_id = kw.pop("call_id", "call-" + secrets.token_hex(4))
        challenge = await self.send(register(login, call_id=call_id, cseq=1, **kw))
        assert challenge is not None and challenge.status == 401
        auth = answer(challenge, login, cseq_uri="sip:pbx.example.com")
        final = await self.send(register(login, call_id=call_id, cseq=2, auth=auth, **kw))
        assert final is not None
        return final


def register(login: str = "alice", *, call_id: str = "call-1", cseq: int = 1,
             contacts: tuple[str, ...] = ("<sip:{login}@192.0.2.10:5060>",),
             expires: int | None = None, auth: str | None = None,
             extra: tuple[str, ...] = (), branch: str | None = None) -> Request:
    lines = [
        "REGISTER sip:pbx.example.com SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{branch or secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{login}@pbx.example.com>;tag=f{secrets.token_hex(3)}",
        f"To: <sip:{login}@pbx.example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *(f"Contact: {c.format(login=login)}" for c in contacts),
        *([f"Expires: {expires}"] if expires is not None else []),
        *([f"Authorization: {auth}"] if auth else []),
        "User-Agent: Test Phone 1.0",
        *extra,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
    assert isinstance(message, Request)
    return message


def challenges(response: Response) -> list[DigestCredentials]:
    return [DigestCredentials.parse(v) for v in response.get_all("www-authenticate")]


def answer(challenge: Response, login: str, *, password: str = PASSWORD,
           algorithm: str = "MD5", nc: int = 1, username: str | None = None,
           cseq_uri: str = "sip:pbx.example.com") -> str:
    """An Authorization value for CHALLENGE's ALGORITHM entry, computed from scratch."""
    chosen = next(c for c in challenges(challenge) if c.algorithm == algorithm)
    realm, nonce = chosen.params["realm"], chosen.params["nonce"]

    def h(text: str) -> str:
        data = text.encode()
        return hashlib.sha256(data).hexdigest() if algorithm == "SHA-256" \
            else hashlib.md5(data).hexdigest()

    name = username or login
    a1 = h(f"{name}:{realm}:{password}")
    a2 = h(f"REGISTER:{cseq_uri}")
    cnonce, nc_text = "0a4f113b", f"{nc:08x}"
    response = h(f"{a1}:{nonce}:{nc_text}:{cnonce}:auth:{a2}")
    return (f'Digest username="{name}", realm="{realm}", nonce="{nonce}", uri="{cseq_uri}", '
            f'response="{response}", algorithm={algorithm}, cnonce="{cnonce}", qop=auth, '
            f"nc={nc_text}")


# --- challenge and authentication ------------------------------------------------------------


async def test_challenge_then_200_with_md5() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None and challenge.status == 401
    offered = challenges(challenge)
    assert [c.algorithm for c in offered] == ["MD5", "SHA-256"]
    assert all(c.realm == REALM and c.params["qop"] == "auth" for c in offered)
    assert challenge.to.tag  # a final response carries our To tag
    ok = await h.send(register("alice", cseq=2, auth=answer(challenge, "alice")))
    assert ok is not None and ok.status == 200, ok
    assert ok.get_all("contact") == ["<sip:alice@192.0.2.10:5060>;expires=3600"]
    assert (ok.get("date") or "").endswith(" GMT")
    assert [b.uri for b in h.location.lookup("alice", h.clock())] == \
        ["sip:alice@192.0.2.10:5060"]
    published = h.directory.published["alice"]
    assert [(r.contact, r.transport, r.source, r.user_agent) for r in published] == \
        [("sip:alice@192.0.2.10:5060", "udp", "192.0.2.10:5060", "Test Phone 1.0")]
    assert h.store.saved["alice"][0]["uri"] == "sip:alice@192.0.2.10:5060"


async def test_sha256_digest_is_accepted() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    ok = await h.send(register("alice", cseq=2,
                               auth=answer(challenge, "alice", algorithm="SHA-256")))
    assert ok is not None and ok.status == 200


async def test_algorithm_order_is_configurable() -> None:
    h = Harness(user("alice"), algorithms=(Algorithm.SHA256, Algorithm.MD5))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    assert [c.algorithm for c in challenges(challenge)] == ["SHA-256", "MD5"]


async def test_stale_nonce_gets_a_fresh_challenge_with_stale_true() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    h.clock.now += 301  # past the 300 s nonce lifetime
    again = await h.send(register("alice", cseq=2, auth=answer(challenge, "alice")))
    assert again is not None and again.status == 401
    assert all(c.params.get("stale") == "true" for c in challenges(again))
    assert h.guard._records.get(PHONE[0]) is None or not h.guard._records[PHONE[0]].failures
    ok = await h.send(register("alice", cseq=3, auth=answer(again, "alice")))
    assert ok is not None and ok.status == 200


async def test_replayed_nc_is_rechallenged_stale_uncounted_and_a_higher_nc_accepted() -> None:
    """A used nc in a new request with the right password (firmware reusing its cached
    credentials, or a LAN sniffer's replay) gets a fresh 401 stale=true and binds nothing;
    it is no failure, however often, so the phone's own address is never banned for it."""
    h = Harness(user("alice"), guard=Guard(max_failures=3))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    auth = answer(challenge, "alice", nc=1)
    ok = await h.send(register("alice", cseq=2, auth=auth))
    assert ok is not None and ok.status == 200
    for cseq in range(3, 9):  # past max_failures
        replay = await h.send(register("alice", cseq=cseq, auth=auth,  # new branch, same nc
                                        contacts=("<sip:alice@203.0.113.66:5060>",)))
        assert replay is not None and replay.status == 401, replay
        assert [c.params.get("stale") for c in challenges(replay)] == ["true", "true"]
    assert not h.guard.is_banned(PHONE[0], h.clock())
    assert PHONE[0] not in h.guard._records or not h.guard._records[PHONE[0]].failures
    assert [b.uri for b in h.location.lookup("alice", h.clock())] == \
        ["sip:alice@192.0.2.10:5060"]  # the replay's Contact was not bound
    ok = await h.send(register("alice", cseq=9, auth=answer(challenge, "alice", nc=2)))
    assert ok is not None and ok.status == 200
    ok = await h.send(register("alice", cseq=10, auth=answer(replay, "alice")))
    assert ok is not None and ok.status == 200  # the stale challenge's nonce serves


async def test_a_wrong_password_with_a_replayed_nc_is_a_counted_403() -> None:
    h = Harness(user("alice"), guard=Guard(max_failures=2))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    ok = await h.send(register("alice", cseq=2, auth=answer(challenge, "alice", nc=1)))
    assert ok is not None and ok.status == 200
    for cseq in (3, 4):
        bad = await h.send(register("alice", cseq=cseq,
                                    auth=answer(challenge, "alice", nc=1, password="guess")))
        assert bad is not None and bad.status == 403
        assert not bad.get_all("www-authenticate")
    assert h.guard.is_banned(PHONE[0], h.clock())


async def test_what_is_kept_about_nonces_goes_once_they_are_stale() -> None:
    h = Harness(*(user(f"u{i}") for i in range(20)))
    for i in range(20):
        assert (await h.registered(f"u{i}")).status == 200
    assert len(h.registrar.counts) == 20 and len(h.registrar._last_accepted) == 20
    h.registrar.forget_stale_nonces()  # nothing stale yet
    assert len(h.registrar.counts) == 20
    h.clock.now += h.registrar.nonces.lifetime + 1
    h.registrar.forget_stale_nonces()
    assert len(h.registrar.counts) == 0 and len(h.registrar._last_accepted) == 0
    assert (await h.registered("u0")).status == 200  # and phones register as before


async def test_udp_retransmission_is_answered_from_the_transaction() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    request = register("alice", cseq=2, auth=answer(challenge, "alice"), branch="retrans1")
    first = await h.send(request)
    again = await h.send(register("alice", cseq=2, auth=answer(challenge, "alice"),
                                  branch="retrans1"))
    assert first is not None and again is not None
    assert again.status == 200 and bytes(again) == bytes(first)  # not a "replay" 403


async def test_retransmission_without_a_transaction_is_not_a_replay() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    auth = answer(challenge, "alice")
    first = await h.send(register("alice", cseq=2, auth=auth, branch="lost200"))
    assert first is not None and first.status == 200
    h.door._table.servers.clear()  # as when the capped table could not keep it
    again = await h.send(register("alice", cseq=2, auth=auth, branch="lost200"))
    assert again is not None and again.status == 200
    replay = await h.send(register("alice", cseq=3, auth=auth, branch="other"))
    assert replay is not None and replay.status == 401  # a new request: stale=true
    assert all(c.params.get("stale") == "true" for c in challenges(replay))


async def test_wrong_password_is_403_without_a_new_challenge() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    bad = await h.send(register("alice", cseq=2,
                                auth=answer(challenge, "alice", password="guess")))
    assert bad is not None and bad.status == 403
    assert not bad.get_all("www-authenticate")
    assert h.guard._records[PHONE[0]].failures  # counted
    assert "alice" not in h.directory.published


async def test_digest_username_must_be_the_aor_user() -> None:
    h = Harness(user("alice"), user("bob"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    # bob's correct password, presented for alice's AoR
    bad = await h.send(register("alice", cseq=2,
                                auth=answer(challenge, "alice", username="bob")))
    assert bad is not None and bad.status == 403


async def test_disabled_client_gets_403_after_a_correct_digest_never_a_challenge() -> None:
    h = Harness(user("alice", enabled=False))
    challenge = await h.send(register("alice"))
    assert challenge is not None and challenge.status == 401  # same as anyone without creds
    refused = await h.send(register("alice", cseq=2, auth=answer(challenge, "alice")))
    assert refused is not None and refused.status == 403
    assert not refused.get_all("www-authenticate")
    assert len(h.location) == 0
    assert not h.guard._records[PHONE[0]].failures  # the password was right


async def test_unknown_user_gets_the_same_challenge_as_a_known_one() -> None:
    h = Harness(user("alice"))
    known = await h.send(register("alice"))
    unknown = await h.send(register("mallory"))
    assert known is not None and unknown is not None
    assert known.status == unknown.status == 401

    def shape(response: Response) -> list[tuple[str, str]]:
        out = []
        for header in response.headers:
            value = header.value
            if header.name == "www-authenticate":
                value = re.sub(r'nonce="[^"]*"', 'nonce="N"', value)
            elif header.name in ("via", "from", "to", "call-id", "cseq"):
                value = "-"  # echoed from each request
            out.append((header.wire_name, value))
        return out

    assert shape(known) == shape(unknown)
    assert known.reason == unknown.reason
    # ...and the unknown user presenting credentials gets the wrong-password 403.
    refused = await h.send(register("mallory", cseq=2, auth=answer(unknown, "mallory")))
    assert refused is not None and refused.status == 403


async def test_challenge_uses_the_realm_stored_for_the_client() -> None:
    h = Harness(user("alice", realm="10.0.0.5"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    assert {c.realm for c in challenges(challenge)} == {"10.0.0.5"}
    ok = await h.send(register("alice", cseq=2, auth=answer(challenge, "alice")))
    assert ok is not None and ok.status == 200


async def test_forged_nonce_is_rechallenged_not_counted() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    auth = answer(challenge, "alice")
    forged = re.sub(r'nonce="[^"]*"', 'nonce="12345.abc.deadbeef"', auth)
    again = await h.send(register("alice", cseq=2, auth=forged))
    assert again is not None and again.status == 401
    assert PHONE[0] not in h.guard._records or not h.guard._records[PHONE[0]].failures


async def test_garbled_credentials_are_400() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    auth = answer(challenge, "alice").replace("qop=auth", "qop=auth-conf")
    bad = await h.send(register("alice", cseq=2, auth=auth))
    assert bad is not None and bad.status == 400


async def test_ban_after_repeated_failures_drops_the_source() -> None:
    h = Harness(user("alice"), guard=Guard(max_failures=3, ban_time=600))
    for attempt in range(3):
        challenge = await h.send(register("alice", cseq=10 * attempt + 1))
        assert challenge is not None and challenge.status == 401
        bad = await h.send(register("alice", cseq=10 * attempt + 2,
                                    auth=answer(challenge, "alice", password=f"guess{attempt}")))
        assert bad is not None and bad.status == 403
    assert h.guard.is_banned(PHONE[0], h.clock())
    assert await h.send(register("alice", cseq=99)) is None  # silently dropped
    other = await h.send(register("alice", cseq=1), source=("192.0.2.77", 5060))
    assert other is not None and other.status == 401  # other sources unaffected
    h.clock.now += 601
    assert (await h.send(register("alice", cseq=100))) is not None


# --- bindings ----------------------------------------------------------------------------------


async def test_interval_too_brief_is_423_with_min_expires() -> None:
    h = Harness(user("alice"))
    short = await h.registered(expires=30)
    assert short.status == 423 and short.get("min-expires") == "60"
    assert len(h.location) == 0


async def test_several_contacts_and_the_200_lists_them_all() -> None:
    h = Harness(user("alice"))
    ok = await h.registered(contacts=("<sip:alice@192.0.2.10:5060>;expires=120",
                                      "<sip:alice@192.0.2.11:5062;transport=tcp>"))
    assert ok.status == 200
    assert sorted(ok.get_all("contact")) == [
        "<sip:alice@192.0.2.10:5060>;expires=120",
        "<sip:alice@192.0.2.11:5062;transport=tcp>;expires=3600"]
    # A second phone registering later: the 200 shows the first one too, expires counting down.
    h.clock.now += 20
    ok = await h.registered(contacts=("<sip:alice@192.0.2.12:5060>",), call_id="other-phone")
    assert sorted(ok.get_all("contact")) == [
        "<sip:alice@192.0.2.10:5060>;expires=100",
        "<sip:alice@192.0.2.11:5062;transport=tcp>;expires=3580",
        "<sip:alice@192.0.2.12:5060>;expires=3600"]
    assert len(h.directory.published["alice"]) == 3


async def test_contact_star_removes_everything() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="c-star")
    assert len(h.location) == 1
    bad = await h.registered(contacts=("*",), call_id="c-star-2")  # no Expires: 0
    assert bad.status == 400
    challenge = await h.send(register("alice", call_id="c-star", cseq=5, contacts=("*",),
                                      expires=0))
    assert challenge is not None
    ok = await h.send(register("alice", call_id="c-star", cseq=6, contacts=("*",), expires=0,
                               auth=answer(challenge, "alice")))
    assert ok is not None and ok.status == 200 and not ok.get_all("contact")
    assert len(h.location) == 0 and h.directory.published["alice"] == []
    assert h.store.saved["alice"] == []


async def test_cseq_must_increase_within_a_call_id() -> None:
    h = Harness(user("alice"))
    ok = await h.registered(call_id="same")  # CSeq 1 (401) then 2 (200)
    assert ok.status == 200
    challenge = await h.send(register("alice", call_id="same", cseq=1))
    assert challenge is not None
    old = await h.send(register("alice", call_id="same", cseq=2,
                                auth=answer(challenge, "alice", nc=1)))
    assert old is not None and old.status == 400  # CSeq 2 is not above the stored 2


async def test_unregister_one_contact_with_expires_zero() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="u1")
    ok = await h.registered(call_id="u1x", contacts=("<sip:alice@192.0.2.10:5060>;expires=0",))
    assert ok.status == 200 and not ok.get_all("contact")
    assert len(h.location) == 0


async def test_a_query_lists_bindings_without_changing_them() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="q1")
    writes = h.store.writes
    ok = await h.registered(call_id="q2", contacts=())
    assert ok.status == 200 and len(ok.get_all("contact")) == 1
    assert h.store.writes == writes


async def test_non_sip_contact_and_bad_expires_are_400() -> None:
    h = Harness(user("alice"))
    assert (await h.registered(contacts=("<mailto:alice@example.com>",))).status == 400
    assert (await h.registered(expires=None, extra=("Expires: soon",))).status == 400


async def test_a_contact_that_is_no_utf8_is_400_and_binds_nothing() -> None:
    """A byte that is no UTF-8 in a Contact (kept as a lone surrogate) is no URI, and such a
    binding could never be stored: its batch's write would fail, every phone's with it."""
    h = Harness(user("alice"))
    raw = b"<sip:b\xffob@10.0.0.5:5060>".decode("utf-8", "surrogateescape")
    assert (await h.registered(contacts=(raw,))).status == 400
    for raw in (b"<sip:bob@10.0.0.5:5060>;foo=\xe9", b'"T\xe9l" <sip:bob@10.0.0.5:5060>',
                b"<sip:bob@10.0.0.5:5060>;\xe9"):
        text = raw.decode("utf-8", "surrogateescape")
        assert (await h.registered(contacts=(text,))).status == 400, raw
    assert not h.directory.published.get("alice")
    assert (await h.registered(contacts=("<sip:zoë@10.0.0.5>",))).status == 200  # UTF-8 is


async def test_to_without_a_user_is_400() -> None:
    h = Harness(user("alice"))
    request = register("alice")
    request.set("To", "<sip:pbx.example.com>")
    response = await h.send(request)
    assert response is not None and response.status == 400


async def test_expiry_removes_bindings_publishes_and_persists() -> None:
    h = Harness(user("alice"))
    await h.registered(expires=60)
    assert h.directory.published["alice"]
    h.clock.now += 59
    assert h.registrar.expire() == []
    h.clock.now += 2
    gone = h.registrar.expire()
    await h.registrar.flush()
    assert [b.aor for b in gone] == ["alice"]
    assert h.directory.published["alice"] == [] and h.store.saved["alice"] == []


async def test_the_timer_task_expires_bindings_on_time() -> None:
    h = Harness(user("alice"))
    await h.registrar.start()
    try:
        await h.registered(expires=60)
        await asyncio.sleep(0.05)
        assert len(h.location) == 1
        h.clock.now += 61
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not len(h.location):
                break
        assert len(h.location) == 0 and h.directory.published["alice"] == []
    finally:
        await h.registrar.stop()


async def test_closed_tcp_connection_drops_its_bindings() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="udp-phone")
    challenge = await h.send(register("alice", call_id="tcp-phone",
                                      contacts=("<sip:alice@192.0.2.10:5070;transport=tcp>",)),
                             transport="tcp", connection_id="tcp-7")
    assert challenge is not None
    ok = await h.send(register("alice", call_id="tcp-phone", cseq=2,
                               contacts=("<sip:alice@192.0.2.10:5070;transport=tcp>",),
                               auth=answer(challenge, "alice")),
                      transport="tcp", connection_id="tcp-7")
    assert ok is not None and len(ok.get_all("contact")) == 2
    h.door.connection_closed("tcp-7")
    await h.registrar.flush()
    assert [b.uri for b in h.location.lookup("alice", h.clock())] == \
        ["sip:alice@192.0.2.10:5060"]
    assert [r.contact for r in h.directory.published["alice"]] == ["sip:alice@192.0.2.10:5060"]


async def test_bindings_survive_a_new_registrar_on_the_same_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "appliance.db")
    await store.open()
    try:
        first = Harness(user("alice"), store=store)
        first.clock.now = __import__("time").time()
        ok = await first.registered(contacts=("<sip:alice@192.0.2.10:5060>;expires=600",))
        assert ok.status == 200
        second = Harness(user("alice"), store=store)
        second.clock.now = first.clock.now + 100
        await second.registrar.start()
        try:
            bindings = second.location.lookup("alice", second.clock())
            assert [(b.uri, b.expires_in(second.clock()), b.source) for b in bindings] == \
                [("sip:alice@192.0.2.10:5060", 500, ("192.0.2.10", 5060))]
            assert [r.contact for r in second.directory.published["alice"]] == \
                ["sip:alice@192.0.2.10:5060"]
            assert second.registrar.is_known_source("192.0.2.10")
        finally:
            await second.registrar.stop()
        third = Harness(user("alice"), store=store)
        third.clock.now = first.clock.now + 601  # expired meanwhile: not restored
        await third.registrar.start()
        await third.registrar.stop()
        assert len(third.location) == 0
    finally:
        await store.close()


async def test_nonce_secret_survives_a_restart() -> None:
    secret = b"k" * 32
    first = Harness(user("alice"))
    await first.registrar.start(nonce_secret=secret)
    await first.registrar.stop()
    challenge = await first.send(register("alice"))
    assert challenge is not None
    second = Harness(user("alice"))
    await second.registrar.start(nonce_secret=secret)
    await second.registrar.stop()
    ok = await second.send(register("alice", cseq=2, auth=answer(challenge, "alice")))
    assert ok is not None and ok.status == 200


@pytest.mark.parametrize(("uri", "aor"), [
    ("sip:alice@pbx.example.com", "alice"),
    ("sips:al%69ce@10.0.0.1:5061;transport=tls", "alice"),
    ("sip:pbx.example.com", None),
    ("tel:+15551234567", None),
    ("garbage", None),
])
def test_aor_of(uri: str, aor: str | None) -> None:
    assert aor_of(uri) == aor


# --- write-behind of bindings ----------------------------------------------------------------


class Registrations:
    """A Harness whose writes are not flushed after each message (as in production)."""

    def __init__(self, *users: SipUser, flush_interval: float = 0.05) -> None:
        self.h = Harness(*users)
        self.h.registrar.flush_interval = flush_interval

    async def register(self, login: str) -> None:
        h = self.h
        await h.door.handle(Incoming(register(login, call_id=f"c-{login}"), "udp", PHONE,
                                     ("127.0.0.1", 5060)))
        challenge = h.sender.sent[-1][0]
        assert isinstance(challenge, Response) and challenge.status == 401
        auth = answer(challenge, login, cseq_uri="sip:pbx.example.com")
        await h.door.handle(Incoming(register(login, call_id=f"c-{login}", cseq=2, auth=auth),
                                     "udp", PHONE, ("127.0.0.1", 5060)))
        assert h.sender.sent[-1][0].status == 200  # type: ignore[union-attr]


async def test_binding_changes_are_written_behind_in_one_batch() -> None:
    r = Registrations(user("alice"), user("bob"))
    await r.register("alice")
    await r.register("bob")
    assert r.h.store.writes == 0  # published at once, written later
    assert r.h.directory.published["alice"] and r.h.directory.published["bob"]
    await asyncio.sleep(0.2)
    assert r.h.store.writes == 1
    assert sorted(r.h.store.saved) == ["alice", "bob"]
    assert r.h.store.saved["bob"][0]["uri"] == "sip:bob@192.0.2.10:5060"


async def test_stop_writes_pending_binding_changes() -> None:
    r = Registrations(user("alice"), flush_interval=60)
    await r.register("alice")
    assert r.h.store.writes == 0
    await r.h.registrar.stop()
    assert r.h.store.writes == 1 and r.h.store.saved["alice"]


async def test_a_failed_write_is_tried_again_with_the_next_one() -> None:
    class FailingOnce(FakeStore):
        async def save_bindings(self, snapshots: dict[str, list[dict[str, Any]]]) -> None:
            if not self.writes:
                self.writes += 1
                raise OSError("disk full")
            await super().save_bindings(snapshots)

    h = Harness(user("alice"), store=FailingOnce())
    await h.registered()  # flush() after each message: the first write fails
    assert "alice" not in h.store.saved
    await h.registrar.flush()
    assert h.store.saved["alice"]


# --- RFC 3261 §10.3 steps 6-8, as a phone sees them --------------------------------------------


def contacts_of(h: Harness) -> list[tuple[str, int]]:
    now = h.clock()
    return sorted((b.uri, b.expires_in(now)) for b in h.location.lookup("alice", now))


async def test_star_with_another_contact_is_400_and_changes_nothing() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="keep")
    bad = await h.registered(call_id="keep-2", contacts=("*", "<sip:alice@192.0.2.99>"),
                             expires=0)
    assert bad.status == 400
    assert contacts_of(h) == [("sip:alice@192.0.2.10:5060", 3600)]


async def test_star_with_the_same_call_id_and_a_cseq_not_higher_fails() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="same")  # stored with CSeq 2
    challenge = await h.send(register("alice", call_id="other", cseq=1, contacts=("*",),
                                      expires=0))
    assert challenge is not None
    # the phone's own Call-ID again, CSeq 2: not above the stored 2 (§10.3 step 6)
    old = await h.send(register("alice", call_id="same", cseq=2, contacts=("*",), expires=0,
                                auth=answer(challenge, "alice", nc=1)))
    assert old is not None and old.status == 400
    assert contacts_of(h) == [("sip:alice@192.0.2.10:5060", 3600)]
    assert h.directory.published["alice"]


async def test_star_with_another_call_id_removes_every_binding() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="p1", contacts=("<sip:alice@192.0.2.10:5060>",))
    await h.registered(call_id="p2", contacts=("<sip:alice@192.0.2.11:5060>",))
    ok = await h.registered(call_id="p3", contacts=("*",), expires=0)
    assert ok.status == 200 and not ok.get_all("contact")
    assert contacts_of(h) == [] and h.directory.published["alice"] == []


async def test_same_call_id_lower_cseq_fails_and_leaves_the_binding_alone() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="c7", expires=600)  # CSeq 2
    h.clock.now += 10
    challenge = await h.send(register("alice", call_id="x", cseq=1))
    assert challenge is not None
    late = await h.send(register("alice", call_id="c7", cseq=1, expires=0,
                                 auth=answer(challenge, "alice")))
    assert late is not None and late.status == 400  # a delayed older REGISTER: not applied
    assert contacts_of(h) == [("sip:alice@192.0.2.10:5060", 590)]


async def test_another_call_id_replaces_the_binding_of_the_same_contact() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="before-reboot", expires=600)
    h.clock.now += 10
    ok = await h.registered(call_id="after-reboot", expires=300)
    assert ok.status == 200
    assert ok.get_all("contact") == ["<sip:alice@192.0.2.10:5060>;expires=300"]
    assert [b.call_id for b in h.location.lookup("alice", h.clock())] == ["after-reboot"]


async def test_too_many_contacts_in_one_register_applies_none_of_them() -> None:
    h = Harness(user("alice"))
    h.location.max_contacts = 3
    await h.registered(call_id="a", contacts=("<sip:alice@10.0.0.1>", "<sip:alice@10.0.0.2>"))
    full = await h.registered(call_id="b", contacts=("<sip:alice@10.0.0.3>",
                                                     "<sip:alice@10.0.0.4>"))
    assert full.status == 503 and not full.get_all("contact")
    assert [uri for uri, _ in contacts_of(h)] == ["sip:alice@10.0.0.1", "sip:alice@10.0.0.2"]
    assert len(h.directory.published["alice"]) == 2
    # Removing one in the same REGISTER makes room: counted after the whole request.
    ok = await h.registered(call_id="c", contacts=("<sip:alice@10.0.0.1>;expires=0",
                                                   "<sip:alice@10.0.0.3>",
                                                   "<sip:alice@10.0.0.4>"))
    assert ok.status == 200 and len(ok.get_all("contact")) == 3


async def test_expires_zero_on_one_contact_among_several() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="m1", contacts=("<sip:alice@10.0.0.1>", "<sip:alice@10.0.0.2>"))
    ok = await h.registered(call_id="m2", contacts=("<sip:alice@10.0.0.1>;expires=0",
                                                    "<sip:alice@10.0.0.3>"), expires=600)
    assert ok.status == 200
    assert sorted(ok.get_all("contact")) == ["<sip:alice@10.0.0.2>;expires=3600",
                                             "<sip:alice@10.0.0.3>;expires=600"]


async def test_contact_expires_beats_the_expires_header() -> None:
    h = Harness(user("alice"))
    ok = await h.registered(contacts=("<sip:alice@10.0.0.1>;expires=120",
                                      "<sip:alice@10.0.0.2>"), expires=600)
    assert sorted(ok.get_all("contact")) == ["<sip:alice@10.0.0.1>;expires=120",
                                             "<sip:alice@10.0.0.2>;expires=600"]
    # ...also when the header alone would be too brief or would unregister
    ok = await h.registered(contacts=("<sip:alice@10.0.0.1>;expires=300",), expires=0)
    assert ok.status == 200 and "<sip:alice@10.0.0.1>;expires=300" in ok.get_all("contact")


async def test_an_expiry_above_the_maximum_is_lowered_and_the_200_says_so() -> None:
    h = Harness(user("alice"))
    ok = await h.registered(expires=86400)
    assert ok.get_all("contact") == ["<sip:alice@192.0.2.10:5060>;expires=3600"]
    ok = await h.registered(contacts=("<sip:alice@10.0.0.1>;expires=4294967295",))
    assert "<sip:alice@10.0.0.1>;expires=3600" in ok.get_all("contact")


async def test_423_names_min_expires_for_a_too_brief_contact_param() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="k")
    short = await h.registered(call_id="k2", contacts=("<sip:alice@10.0.0.1>;expires=10",
                                                       "<sip:alice@10.0.0.2>"))
    assert short.status == 423 and short.get("min-expires") == "60"
    assert [uri for uri, _ in contacts_of(h)] == ["sip:alice@192.0.2.10:5060"]


async def test_a_query_answers_remaining_expires_and_changes_nothing() -> None:
    h = Harness(user("alice"))
    await h.registered(call_id="q1", expires=600)
    h.clock.now += 100
    published = list(h.directory.published["alice"])
    ok = await h.registered(call_id="q1-query", contacts=(), expires=0)  # Expires alone: a query
    assert ok.status == 200
    assert ok.get_all("contact") == ["<sip:alice@192.0.2.10:5060>;expires=500"]
    assert h.directory.published["alice"] == published
    assert contacts_of(h) == [("sip:alice@192.0.2.10:5060", 500)]


async def test_unknown_require_on_register_is_420_before_any_challenge() -> None:
    h = Harness(user("alice"))
    bad = await h.send(register("alice", extra=("Require: sec-agree",)))
    assert bad is not None and bad.status == 420 and bad.get("unsupported") == "sec-agree"
    assert not bad.get_all("www-authenticate")


async def test_credentials_for_another_realm_are_not_ours_a_fresh_challenge() -> None:
    # A Client whose HA1 was made with its own (account's) realm: a phone answering with the
    # appliance realm holds credentials for another realm, which is not a failed password.
    h = Harness(user("alice", realm="branch.example.com"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    assert {c.realm for c in challenges(challenge)} == {"branch.example.com"}
    wrong = answer(challenge, "alice").replace('realm="branch.example.com"', f'realm="{REALM}"')
    again = await h.send(register("alice", cseq=2, auth=wrong))
    assert again is not None and again.status == 401
    assert {c.realm for c in challenges(again)} == {"branch.example.com"}
    assert PHONE[0] not in h.guard._records or not h.guard._records[PHONE[0]].failures
    assert len(h.location) == 0


@pytest.mark.parametrize("drop", ["nc", "cnonce"])
async def test_qop_auth_without_nc_or_cnonce_is_400(drop: str) -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    auth = re.sub(rf',\s*{drop}=("[^"]*"|[^,]*)', "", answer(challenge, "alice"))
    bad = await h.send(register("alice", cseq=2, auth=auth))
    assert bad is not None and bad.status == 400 and len(h.location) == 0


async def test_unknown_digest_algorithm_is_400() -> None:
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    auth = answer(challenge, "alice").replace("algorithm=MD5", "algorithm=SHA-512-256")
    bad = await h.send(register("alice", cseq=2, auth=auth))
    assert bad is not None and bad.status == 400 and len(h.location) == 0


async def test_a_nonce_gone_stale_over_a_restart_is_rechallenged_with_stale_true() -> None:
    secret = b"r" * 32
    first = Harness(user("alice"))
    await first.registrar.start(nonce_secret=secret)
    await first.registrar.stop()
    challenge = await first.send(register("alice"))
    assert challenge is not None
    second = Harness(user("alice"))
    second.clock.now += 400  # the appliance was down longer than a nonce lives
    await second.registrar.start(nonce_secret=secret)
    await second.registrar.stop()
    again = await second.send(register("alice", cseq=2, auth=answer(challenge, "alice")))
    assert again is not None and again.status == 401
    assert [c.params.get("stale") for c in challenges(again)] == ["true", "true"]
    assert PHONE[0] not in second.guard._records or \
        not second.guard._records[PHONE[0]].failures


async def test_a_nonce_of_another_instance_is_a_fresh_challenge_not_a_failure() -> None:
    first = Harness(user("alice"))
    challenge = await first.send(register("alice"))
    assert challenge is not None
    second = Harness(user("alice"))  # another secret: another appliance, or a lost key
    again = await second.send(register("alice", cseq=2, auth=answer(challenge, "alice")))
    assert again is not None and again.status == 401
    assert all("stale" not in c.params for c in challenges(again))
    assert PHONE[0] not in second.guard._records or \
        not second.guard._records[PHONE[0]].failures


async def test_the_200_keeps_each_contacts_q_value() -> None:
    h = Harness(user("alice"))
    ok = await h.registered(contacts=("<sip:alice@10.0.0.1>;q=0.5",
                                      "<sip:alice@10.0.0.2>;q=1.0;+sip.instance=\"<urn:x>\"",
                                      "<sip:alice@10.0.0.3>"))
    assert ok.get_all("contact") == [
        '<sip:alice@10.0.0.2>;+sip.instance="<urn:x>";q=1;expires=3600',
        "<sip:alice@10.0.0.3>;expires=3600",
        "<sip:alice@10.0.0.1>;q=0.5;expires=3600"]
    # ...and in the answer to a later query, which reads the stored bindings
    ok = await h.registered(call_id="query", contacts=())
    assert "<sip:alice@10.0.0.1>;q=0.5;expires=3600" in ok.get_all("contact")


@pytest.mark.parametrize("q", ["nan", "7", "-1", "1.5", "0.1234", "inf"])
async def test_a_q_value_outside_rfc_3261_is_400(q: str) -> None:
    h = Harness(user("alice"))
    bad = await h.registered(contacts=(f"<sip:alice@10.0.0.1>;q={q}",))
    assert bad.status == 400 and len(h.location) == 0


async def test_a_digest_uri_other_than_the_request_uri_is_400() -> None:
    # RFC 7616 §3.4.6 (RFC 2617 §3.2.2.5): the digest covers the resource of the request
    # line; a response computed for another URI is not this request's, right password or not.
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    auth = answer(challenge, "alice", cseq_uri="sip:other.example.com")
    bad = await h.send(register("alice", cseq=2, auth=auth))
    assert bad is not None and bad.status == 400
    assert len(h.location) == 0 and "alice" not in h.directory.published
    assert PHONE[0] not in h.guard._records or not h.guard._records[PHONE[0]].failures


@pytest.mark.parametrize("uri", ["sip:PBX.example.com", "sip:pbx.example.com;transport=UDP",
                                 "sip:pbx.example.com:5060"])
async def test_a_digest_uri_naming_the_request_uri_is_accepted(uri: str) -> None:
    # RFC 3261 §19.1.4 equality, and an absent port taken as 5060 (§19.1.4 would not).
    h = Harness(user("alice"))
    challenge = await h.send(register("alice"))
    assert challenge is not None
    request = register("alice", cseq=2, auth=answer(challenge, "alice", cseq_uri=uri))
    request.uri = "sip:pbx.example.com;transport=udp" if "transport" in uri else request.uri
    ok = await h.send(request)
    assert ok is not None and ok.status == 200


def rfc2069_answer(challenge: Response, login: str, uri: str = "sip:pbx.example.com") -> str:
    """An MD5 Authorization without qop (RFC 2069 style), as some old phones send."""
    nonce = challenges(challenge)[0].params["nonce"]

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    response = md5(f"{md5(f'{login}:{REALM}:{PASSWORD}')}:{nonce}:{md5('REGISTER:' + uri)}")
    return (f'Digest username="{login}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5')


async def test_without_qop_a_nonce_authenticates_one_register_only() -> None:
    # sip.md §2.3 accepts a digest without qop (old phones), which RFC 2617 §3.2.2 would not
    # once qop="auth" was offered. Without nc nothing tells a replay from the phone, and the
    # digest does not cover the Contact: anyone who saw one such REGISTER could bind their
    # own address to the Client for the nonce's lifetime. So each nonce serves one request;
    # the next use is re-challenged with stale=true (the password was right).
    h = Harness(user("alice"))
    challenge = await h.send(register("alice", call_id="old-phone"))
    assert challenge is not None
    auth = rfc2069_answer(challenge, "alice")
    ok = await h.send(register("alice", call_id="old-phone", cseq=2, auth=auth, branch="r1"))
    assert ok is not None and ok.status == 200
    h.door._table.servers.clear()  # its retransmission is still answered alike
    again = await h.send(register("alice", call_id="old-phone", cseq=2, auth=auth, branch="r1"))
    assert again is not None and again.status == 200
    replay = await h.send(register("alice", call_id="attacker", cseq=1, auth=auth,
                                   contacts=("<sip:alice@203.0.113.66:5060>",)))
    assert replay is not None and replay.status == 401
    assert [c.params.get("stale") for c in challenges(replay)] == ["true", "true"]
    assert [b.uri for b in h.location.lookup("alice", h.clock())] == \
        ["sip:alice@192.0.2.10:5060"]
    assert PHONE[0] not in h.guard._records or not h.guard._records[PHONE[0]].failures
    # the old phone itself, refreshing with its cached nonce, answers the new challenge
    refresh = await h.send(register("alice", call_id="old-phone", cseq=4,
                                    auth=rfc2069_answer(replay, "alice")))
    assert refresh is not None and refresh.status == 200


async def test_failed_authentications_and_the_ban_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(user("alice"), guard=Guard(max_failures=3, ban_time=120))
    caplog.set_level("WARNING", logger="appliance.sip.registrar")
    for attempt in range(3):
        challenge = await h.send(register("alice", cseq=10 * attempt + 1))
        assert challenge is not None
        await h.send(register("alice", cseq=10 * attempt + 2,
                              auth=answer(challenge, "alice", password=f"guess{attempt}")))
    messages = [r.getMessage() for r in caplog.records]
    # one line for the failures (svcrack sends hundreds a second), one for the ban
    assert messages == [f"x REGISTER for 'alice' from {PHONE[0]} failed authentication",
                        f"x {PHONE[0]} banned for 120 s after 3 failed authentications"]


async def test_a_success_for_one_client_does_not_reset_failures_for_another() -> None:
    # A cracker holding one Client's password (a phone's config page, a former employee)
    # must not keep its guesses at another Client's under the ban threshold by
    # registering its own Client between them.
    h = Harness(user("alice"), user("mallory"), guard=Guard(max_failures=3, ban_time=600))
    for attempt in range(2):
        challenge = await h.send(register("alice", call_id=f"g{attempt}"))
        assert challenge is not None
        bad = await h.send(register("alice", call_id=f"g{attempt}", cseq=2,
                                    auth=answer(challenge, "alice", password=f"guess{attempt}")))
        assert bad is not None and bad.status == 403
        assert (await h.registered("mallory", call_id=f"m{attempt}")).status == 200
    challenge = await h.send(register("alice", call_id="g2"))
    assert challenge is not None
    await h.send(register("alice", call_id="g2", cseq=2,
                          auth=answer(challenge, "alice", password="guess2")))
    assert h.guard.is_banned(PHONE[0], h.clock())
    assert await h.send(register("alice", call_id="g3")) is None


async def test_a_success_clears_that_clients_own_failures() -> None:
    # A phone that sent a wrong password once (a typo being fixed) is not banned later.
    h = Harness(user("alice"), guard=Guard(max_failures=3, ban_time=600))
    for attempt in range(4):
        challenge = await h.send(register("alice", call_id=f"t{attempt}"))
        assert challenge is not None
        bad = await h.send(register("alice", call_id=f"t{attempt}", cseq=2,
                                    auth=answer(challenge, "alice", password="typo")))
        assert bad is not None and bad.status == 403
        assert (await h.registered("alice", call_id=f"ok{attempt}")).status == 200
    assert not h.guard.is_banned(PHONE[0], h.clock())


async def test_the_to_host_is_not_checked_the_login_is_the_aor() -> None:
    # Deliberately not RFC 3261 §10.3 steps 1 and 5 (Request-URI domain, 404 for an AoR not
    # of it): the appliance serves one organization whose logins are unique, and a 404 would
    # tell svwar which logins exist. The challenge's realm is the Client's stored one.
    h = Harness(user("alice"))
    request = register("alice", call_id="elsewhere")
    request.set("To", "<sip:alice@elsewhere.example.org>")
    challenge = await h.send(request)
    assert challenge is not None and challenge.status == 401
    assert {c.realm for c in challenges(challenge)} == {REALM}
    request = register("alice", call_id="elsewhere", cseq=2, auth=answer(challenge, "alice"))
    request.set("To", "<sip:alice@elsewhere.example.org>")
    ok = await h.send(request)
    assert ok is not None and ok.status == 200 and len(h.location) == 1


async def test_a_tcp_binding_refreshed_over_a_new_connection_outlives_the_old_one() -> None:
    # sip.md §2.3: requests to a TCP phone reuse its own connection; with the connection gone
    # it cannot be reached (a NATed phone accepts nothing else), so the binding goes at once
    # (test_closed_tcp_connection_drops_its_bindings). Registered again over a new
    # connection, it follows that one. Idle connections are kept past MAX_EXPIRES.
    h = Harness(user("alice"))
    contact = ("<sip:alice@192.0.2.10:5070;transport=tcp>",)
    for cseq, conn in ((1, "k1"), (3, "k2")):
        challenge = await h.send(register("alice", call_id="t", cseq=cseq, contacts=contact),
                                 transport="tcp", connection_id=conn)
        assert challenge is not None
        ok = await h.send(register("alice", call_id="t", cseq=cseq + 1, contacts=contact,
                                   auth=answer(challenge, "alice")),
                          transport="tcp", connection_id=conn)
        assert ok is not None and ok.status == 200
    h.door.connection_closed("k1")
    await h.registrar.flush()
    assert [(b.uri, b.connection_id) for b in h.location.lookup("alice", h.clock())] == \
        [("sip:alice@192.0.2.10:5070;transport=tcp", "k2")]
    h.door.connection_closed("k2")
    await h.registrar.flush()
    assert len(h.location) == 0 and h.directory.published["alice"] == []


async def test_the_user_agent_shown_with_a_registration_survives_a_restart() -> None:
    first = Harness(user("alice"))
    await first.registered(extra=())  # User-Agent: Test Phone 1.0
    second = Harness(user("alice"), store=first.store)
    await second.registrar.start()
    await second.registrar.stop()
    assert [(r.contact, r.user_agent) for r in second.directory.published["alice"]] == \
        [("sip:alice@192.0.2.10:5060", "Test Phone 1.0")]


async def test_revoke_drops_the_bindings_of_deleted_and_disabled_clients() -> None:
    h = Harness(user("alice"), user("bob"), user("carol"))
    for login in ("alice", "bob", "carol"):
        await h.registered(login, call_id=f"c-{login}")
    del h.directory.users["alice"]  # deleted
    h.directory.users["bob"] = user("bob", enabled=False)  # disabled
    gone = await h.registrar.revoke()
    await h.registrar.flush()
    assert sorted(b.aor for b in gone) == ["alice", "bob"]
    assert h.directory.published["alice"] == [] and h.directory.published["bob"] == []
    assert h.store.saved["alice"] == [] and h.store.saved["bob"] == []
    assert [b.aor for b in h.location.lookup("carol", h.clock())] == ["carol"]
    assert await h.registrar.revoke() == []  # nothing left to drop


async def test_the_source_of_an_ipv6_phone_keeps_its_port_apart() -> None:
    h = Harness(user("alice"))
    phone = ("2001:db8::10", 5062)
    challenge = await h.send(register("alice"), source=phone)
    assert challenge is not None
    ok = await h.send(register("alice", cseq=2, auth=answer(challenge, "alice")), source=phone)
    assert ok is not None and ok.status == 200
    assert [r.source for r in h.directory.published["alice"]] == ["[2001:db8::10]:5062"]
