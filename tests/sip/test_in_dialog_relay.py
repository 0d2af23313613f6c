"""No relay through a call (sip.md "No toll fraud"), against a running appliance: scripted
UDP phones on loopback addresses of their own (alice 127.0.0.5, bob 127.0.0.6, a stranger
127.0.0.3) and two bare UDP sockets that stand for a provider the office pays for (a
call-only gateway's address) and any other host. alice calls bob (a Client: free, no route,
no permission); within that call neither phone, nor a stranger who learnt its Call-ID and
tags, gets the appliance to send a request to the provider or to any other host; the call
itself goes on and ends as usual. The proxy's rules, case by case, are in
tests/sip/test_in_dialog_parties.py; a stranger riding a provider's call to a DID, in
tests/outside/test_stranger_relay.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from pathlib import Path

from appliance.app import Appliance
from appliance.sip.message import Request, Response, parse_message
from tests.conftest import ADMIN_SID, Api
from tests.sip.test_attacker import PASSWORD, challenge_answer, running

DOMAIN = "pbx.example.com"
NUMBER = "+33123456789"  # no route covers it: it must never reach the provider
SDP = ("v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
QUIET = 0.8  # how long a socket that must receive nothing is watched


class Sock:
    """A bare UDP socket on loopback: a host that must hear nothing, or a phone's."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()

    async def recv(self, wait: float) -> Request | Response | None:
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while (left := end - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    data = await loop.sock_recv(self.sock, 65535)
            except TimeoutError:
                return None
            if data.strip():  # not a keep-alive
                return parse_message(data)
        return None

    async def heard(self, wait: float = QUIET) -> list[str]:
        """The start lines of the requests that arrived within WAIT (a phone also gets the
        retransmissions of the final responses it does not ACK)."""
        got = []
        while (message := await self.recv(wait)) is not None:
            if isinstance(message, Request):
                got.append(message.start_line())
            wait = 0.1
        return got


class UdpPhone(Sock):
    """A Client's phone: registers, places and answers calls, sends what it is told to."""

    def __init__(self, app: Appliance, login: str, host: str) -> None:
        super().__init__(host)
        self.login = login
        self.server = (app.config.sip.listen.host, app.config.sip.listen.port)
        self.contact = f"sip:{login}@{host}:{self.port}"

    def send(self, data: bytes | Request | Response) -> None:
        self.sock.sendto(data if isinstance(data, bytes) else bytes(data), self.server)

    def build(self, method: str, uri: str, *, call_id: str, from_tag: str, to: str,
              cseq: int, from_user: str | None = None, routes: tuple[str, ...] = (),
              extra: tuple[str, ...] = (), body: str = "", branch: str = "") -> bytes:
        branch = branch or f"z9hG4bK{secrets.token_hex(8)}"
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{from_user or self.login}@{DOMAIN}>;tag={from_tag}", f"To: {to}",
                 f"Call-ID: {call_id}", f"CSeq: {cseq} {method}", f"Contact: <{self.contact}>",
                 *(f"Route: {r}" for r in routes), *extra]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def final(self, call_id: str, method: str, wait: float = 3.0) -> Response:
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while (left := end - loop.time()) > 0:
            message = await self.recv(left)
            if isinstance(message, Response) and message.call_id == call_id and \
                    message.status >= 200 and message.cseq.method == method:
                return message
        raise AssertionError(f"no final response to {method} {call_id}")

    async def request(self, method: str, wait: float = 3.0) -> Request:
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while (left := end - loop.time()) > 0:
            message = await self.recv(left)
            if isinstance(message, Request) and message.method == method:
                return message
        raise AssertionError(f"no {method} arrived at {self.login}'s phone")

    async def authenticated(self, method: str, uri: str, *, to: str, call_id: str,
                            from_tag: str, body: str = "") -> None:
        """Send METHOD, answer its challenge and send it again (CSeq 2), with credentials."""
        branch = f"z9hG4bK{secrets.token_hex(8)}"
        self.send(self.build(method, uri, call_id=call_id, from_tag=from_tag, to=to, cseq=1,
                             body=body, branch=branch))
        challenge = await self.final(call_id, method)
        assert challenge.status in (401, 407), challenge.start_line()
        if method == "INVITE":  # the ACK of a non-2xx is the INVITE's transaction's
            self.send(self.build("ACK", uri, call_id=call_id, from_tag=from_tag, cseq=1,
                                 to=challenge.get("to") or to, branch=branch))
        name, value = challenge_answer(bytes(challenge), self.login, method, uri)
        self.send(self.build(method, uri, call_id=call_id, from_tag=from_tag, to=to, cseq=2,
                             body=body, extra=(f"{name}: {value}",)))

    async def register(self) -> None:
        uri = f"sip:{DOMAIN}"
        to = f"<sip:{self.login}@{DOMAIN}>"
        call_id = secrets.token_hex(8)
        await self.authenticated("REGISTER", uri, to=to, call_id=call_id,
                                 from_tag=secrets.token_hex(4))
        ok = await self.final(call_id, "REGISTER")
        assert ok.status == 200, ok.start_line()

    def answer(self, request: Request, status: int, to_tag: str) -> None:
        lines = [f"SIP/2.0 {status} {'OK' if status == 200 else 'Ringing'}",
                 *(f"Via: {v}" for v in request.get_all("via")),
                 f"From: {request.get('from')}", f"To: {request.get('to')};tag={to_tag}"
                 if request.to.tag is None else f"To: {request.get('to')}",
                 f"Call-ID: {request.call_id}", f"CSeq: {request.get('cseq')}",
                 *(f"Record-Route: {r}" for r in request.get_all("record-route")),
                 f"Contact: <{self.contact}>"]
        body = SDP.format(host=self.host) if status == 200 and request.method == "INVITE" else ""
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n" + body).encode())


class Call:
    """alice's call to bob, answered: its dialog as each side knows it."""

    def __init__(self, call_id: str, alice_tag: str, bob_tag: str, route: list[str],
                 alice: UdpPhone, bob: UdpPhone) -> None:
        self.call_id, self.alice_tag, self.bob_tag = call_id, alice_tag, bob_tag
        self.route = route  # alice's route set: our Record-Route
        self.alice, self.bob = alice, bob
        self.cseq = 10

    def from_alice(self, phone: UdpPhone, method: str, uri: str = "",
                   routes: tuple[str, ...] = ()) -> bytes:
        self.cseq += 1
        return phone.build(method, uri or self.bob.contact, call_id=self.call_id,
                           from_tag=self.alice_tag, from_user="alice",
                           to=f"<sip:bob@{DOMAIN}>;tag={self.bob_tag}", cseq=self.cseq,
                           routes=(*self.route, *routes),
                           body=SDP.format(host=phone.host) if method == "INVITE" else "")

    def from_bob(self, phone: UdpPhone, method: str, uri: str = "",
                 routes: tuple[str, ...] = ()) -> bytes:
        self.cseq += 1
        return phone.build(method, uri or self.alice.contact, call_id=self.call_id,
                           from_tag=self.bob_tag, from_user="bob",
                           to=f"<sip:alice@{DOMAIN}>;tag={self.alice_tag}", cseq=self.cseq,
                           routes=(*self.route, *routes),
                           body=SDP.format(host=phone.host) if method == "INVITE" else "")


async def clients_and_provider(app: Appliance, api: Api) -> tuple[UdpPhone, UdpPhone, Sock]:
    """Clients alice and bob registered from their phones, and the provider: a call-only
    gateway's address (a socket that records what reaches it)."""
    provider = Sock("127.0.0.1")
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Management/Gateways.json", {
        "FriendlyName": "provider", "UserName": "office", "Password": "Trunk-pass-1",
        "Proxy": f"127.0.0.1:{provider.port}", "Register": "false", "TTL": "600"})
    assert status == 200, body
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": "bob", "Password": PASSWORD})
    assert status == 200, body
    alice, bob = UdpPhone(app, "alice", "127.0.0.5"), UdpPhone(app, "bob", "127.0.0.6")
    await alice.register()
    await bob.register()
    return alice, bob, provider


async def answered_call(alice: UdpPhone, bob: UdpPhone) -> Call:
    call_id, alice_tag = secrets.token_hex(8), secrets.token_hex(4)
    uri = f"sip:bob@{DOMAIN}"
    await alice.authenticated("INVITE", uri, to=f"<{uri}>", call_id=call_id, from_tag=alice_tag,
                              body=SDP.format(host=alice.host))
    invite = await bob.request("INVITE")
    bob.answer(invite, 200, "bobtag")
    ok = await alice.final(call_id, "INVITE")
    assert ok.status == 200, ok.start_line()
    call = Call(call_id, alice_tag, "bobtag", ok.get_all("record-route")[::-1], alice, bob)
    alice.send(alice.build("ACK", bob.contact, call_id=call_id, from_tag=alice_tag, cseq=2,
                           to=ok.get("to") or "", routes=tuple(call.route)))
    assert (await bob.request("ACK")).call_id == call_id
    return call


async def test_a_client_in_a_call_reaches_neither_the_provider_nor_any_host(
        tmp_path: Path) -> None:
    async with running(tmp_path) as (app, api):
        alice, bob, provider = await clients_and_provider(app, api)
        elsewhere = Sock("127.0.0.7")  # any host: the open relay
        try:
            call = await answered_call(alice, bob)
            for target in (provider, elsewhere):
                hop = f"{target.host}:{target.port}"
                for phone, build in ((alice, call.from_alice), (bob, call.from_bob)):
                    phone.send(build(phone, "INVITE", f"sip:{NUMBER}@{hop}",
                                     (f"<sip:{hop};lr>",)))
                    assert await target.heard() == []  # no relay
                    refused = await phone.final(call.call_id, "INVITE")
                    assert (refused.status, refused.reason) == (
                        403, "No Route To A Foreign Proxy"), refused.start_line()
            assert await bob.heard(0.1) == [] and await alice.heard(0.1) == []
            # The call itself goes on: a re-INVITE by its route set reaches bob, his BYE
            # reaches alice, and the call is on record as any.
            alice.send(call.from_alice(alice, "INVITE"))
            reinvite = await bob.request("INVITE")
            assert reinvite.call_id == call.call_id
            bob.send(call.from_bob(bob, "BYE"))
            assert (await alice.request("BYE")).call_id == call.call_id
            status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
            assert status == 200
            assert [(c["from"], c["to"]) for c in json.loads(body)["calls"]] == [("alice", "bob")]
        finally:
            for sock in (alice, bob, provider, elsewhere):
                sock.close()


async def test_a_stranger_who_knows_a_calls_tags_reaches_nobody(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, api):
        alice, bob, provider = await clients_and_provider(app, api)
        stranger = UdpPhone(app, "mallory", "127.0.0.3")  # no Client, no password
        try:
            call = await answered_call(alice, bob)
            hop = f"{provider.host}:{provider.port}"
            for request in (call.from_alice(stranger, "INVITE", f"sip:{NUMBER}@{hop}",
                                            (f"<sip:{hop};lr>",)),
                            call.from_alice(stranger, "BYE"),
                            call.from_bob(stranger, "REFER")):
                stranger.send(request)
                assert await provider.heard(0.3) == []  # no relay
                method = request.split(b" ", 1)[0].decode()
                refused = await stranger.final(call.call_id, method)
                assert (refused.status, refused.reason) == (403, "Not A Party To This Call")
            assert await alice.heard(0.1) == [] and await bob.heard(0.1) == []
        finally:
            for sock in (alice, bob, provider, stranger):
                sock.close()


async def test_a_made_up_to_tag_in_a_ringing_call_reaches_nobody(tmp_path: Path) -> None:
    """The reported shape: alice's INVITE to bob rings (bob never answers); her INVITE with
    its Call-ID and From tag, any To tag and a Route to the provider is no dialog: 481."""
    async with running(tmp_path) as (app, api):
        alice, bob, provider = await clients_and_provider(app, api)
        try:
            call_id, tag, uri = secrets.token_hex(8), secrets.token_hex(4), f"sip:bob@{DOMAIN}"
            await alice.authenticated("INVITE", uri, to=f"<{uri}>", call_id=call_id,
                                      from_tag=tag, body=SDP.format(host=alice.host))
            invite = await bob.request("INVITE")
            bob.answer(invite, 180, "bobtag")
            await asyncio.sleep(0.2)
            hop = f"{provider.host}:{provider.port}"
            alice.send(alice.build(
                "INVITE", f"sip:{NUMBER}@{hop}", call_id=call_id, from_tag=tag, cseq=3,
                to=f"<sip:{NUMBER}@{hop}>;tag=anything", routes=(f"<sip:{hop};lr>",),
                body=SDP.format(host=alice.host)))
            assert await provider.heard() == []  # no relay
            refused = await alice.final(call_id, "INVITE")
            assert refused.status == 481 and refused.cseq.number == 3, refused.start_line()
        finally:
            for sock in (alice, bob, provider):
                sock.close()
