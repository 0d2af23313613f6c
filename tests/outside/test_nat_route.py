"""Calls through a gateway whose provider sees us behind NAT (docs/gateways.md "Behind the
office's NAT: the route set of a call"): a real appliance with one pjsua2 media worker
registers to a provider played by a UDP socket on loopback, whose 200 stamps our Via
``received=127.0.0.2;rport=40123`` as a provider sees an office router's public address and
mapped port (tests/sip/test_trunk_nat.py). The provider then takes a call out (``POST
/Calls`` to a number) and places one to a DID, and sends its in-dialog requests as a strict
RFC 3261 provider does: to the route set our Record-Route gave it. Its packets come to our
LAN address, as the router forwards them; what is checked is what the Route headers and our
Via say, and that the calls end by those requests (CDRs ``completed`` long before the apps'
pauses would end them). Without a learned address, the wire is as it always was."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from appliance.app import Appliance
from appliance.config import (
    ApiConfig,
    Config,
    Endpoint,
    MediaConfig,
    OutboundConfig,
    OutboundRoute,
    SipConfig,
)
from appliance.sip.headers import NameAddr
from appliance.sip.message import Request, Response, make_response, parse_message, stamp_received
from appliance.sip.uri import SipUri, parse_uri
from tests.conftest import ADMIN_SID, Api, free_port
from tests.media.audio import write_tone
from tests.voice.test_voice_apps import Rcml

pytest.importorskip("pjsua2")

PUBLIC = ("127.0.0.2", 40123)  # the office router's public address and mapped port
DID = "+15550001234"
CALLS = f"Accounts/{ADMIN_SID}/Calls"
GW = f"Accounts/{ADMIN_SID}/Management/Gateways"
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
_RTP_BASE = 42000 + (os.getpid() % 50) * 200


class Provider:
    """The provider on one UDP socket: its registrar answers every REGISTER 200, the Via
    stamped as seen through the office's NAT (from PUBLIC) when NAT; everything else is
    queued for the test."""

    def __init__(self, *, nat: bool) -> None:
        self.nat = nat
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.registers = 0
        self.inbox: asyncio.Queue[Request | Response] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            if not data.strip():
                continue  # a NAT keep-alive
            message = parse_message(data)
            if isinstance(message, Request) and message.method == "REGISTER":
                self.registers += 1
                stamp_received(message, *(PUBLIC if self.nat else source))
                ok = make_response(message, 200, to_tag="prov")
                contact = NameAddr.parse(message.values("contact")[0])
                ok.add("Contact", f"{contact};expires=600")
                self.sock.sendto(bytes(ok), source)
            else:
                self.inbox.put_nowait(message)

    async def next(self, want: Callable[[Request | Response], bool], seconds: float = 15.0
                   ) -> Request | Response:
        async with asyncio.timeout(seconds):
            while True:
                message = await self.inbox.get()
                if want(message):
                    return message

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


def hops(values: list[str]) -> list[str]:
    """Where each Route or Record-Route entry of VALUES points (pjsua rewrites their
    parameters' order), as host:port, each checked to be a loose router's."""
    uris = [parse_uri(NameAddr.parse(value).uri) for value in values]
    assert all(isinstance(uri, SipUri) and uri.has_param("lr") for uri in uris), values
    return [f"{uri.host}:{uri.port}" for uri in uris if isinstance(uri, SipUri)]


def is_request(method: str) -> Callable[[Request | Response], bool]:
    return lambda m: isinstance(m, Request) and m.method == method


def is_final(call_id: str, method: str) -> Callable[[Request | Response], bool]:
    return lambda m: (isinstance(m, Response) and m.call_id == call_id and m.status >= 200
                      and m.cseq.method == method)


def in_dialog(method: str, cseq: int, uri: str, routes: list[str], *, call_id: str,
              from_: str, to: str, via: str) -> bytes:
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via};branch=z9hG4bK{secrets.token_hex(8)};rport",
             "Max-Forwards: 70", f"From: {from_}", f"To: {to}", f"Call-ID: {call_id}",
             f"CSeq: {cseq} {method}", *(f"Route: {r}" for r in routes), "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
async def office(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[tuple[Appliance, Api, Rcml]]:
    rcml = Rcml(write_tone(tmp_path / "tone.wav", 1000, 1.0))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rcml.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rcml.base = str(server.make_url("")).rstrip("/")
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                  nat_keepalive_interval=0),
                    media=MediaConfig(workers=1, rtp_ports=(_RTP_BASE, _RTP_BASE + 99)),
                    outbound=OutboundConfig(routes=(OutboundRoute("+1555",
                                                                  ("gateway:provider",)),)))
    appliance = Appliance(config)
    await appliance.start()
    password = (config.data_dir / "admin-password").read_text().strip()
    try:
        async with aiohttp.ClientSession() as session:
            yield appliance, Api(session, f"http://127.0.0.1:{config.api.listen.port}",
                                 ADMIN_SID, password, config.data_dir), rcml
    finally:
        await appliance.stop()


async def register(api: Api, provider: Provider) -> None:
    """A gateway registered at PROVIDER: at its public Contact too, behind NAT."""
    status, body, _ = await api.post(f"{GW}.json", {
        "FriendlyName": "provider", "UserName": "office", "Password": "Trunk-pass-1",
        "Proxy": f"127.0.0.1:{provider.port}", "Register": "true", "TTL": "600"})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    async with asyncio.timeout(5):
        while True:
            _, body, _ = await api.get(f"{GW}/{sid}.json")
            if json.loads(body)["registration_state"] == "registered" and \
                    provider.registers == (2 if provider.nat else 1):
                return
            await asyncio.sleep(0.02)


async def cdrs(api: Api, count: int, seconds: float = 8.0) -> list[dict[str, Any]]:
    """The CDRs once COUNT exist and none is live: well before the apps' 30 s pauses end,
    so a call ended by the provider's BYE."""
    async with asyncio.timeout(seconds):
        while True:
            _, body, _ = await api.get(f"{CALLS}.json")
            calls: list[dict[str, Any]] = json.loads(body)["calls"]
            if len(calls) >= count and all(c["status"] not in (
                    "queued", "ringing", "in-progress") for c in calls):
                return calls
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("nat", [True, False], ids=["nat", "no-nat"])
async def test_a_call_out_is_record_routed_at_the_public_address_and_ended_by_its_route(
        office: tuple[Appliance, Api, Rcml], nat: bool) -> None:
    appliance, api, rcml = office
    rcml.docs["/api"] = '<Response><Pause length="30"/></Response>'
    sip = appliance.config.sip.listen
    lan, public = f"127.0.0.1:{sip.port}", f"{PUBLIC[0]}:{PUBLIC[1]}"
    provider = Provider(nat=nat)
    try:
        await register(api, provider)
        status, body, _ = await api.post(f"{CALLS}.json", {
            "From": "+15557654321", "To": "+15551234567", "Url": f"{rcml.base}/api"})
        assert status == 200, body
        invite = await provider.next(is_request("INVITE"))
        assert isinstance(invite, Request)
        via = invite.top_via
        assert via is not None and (via.host, via.port) == ("127.0.0.1", sip.port)
        # The provider reaches us at the public address; the worker, our LAN one. Our Via
        # asks it to answer to the mapped port (RFC 3581). Without NAT: as ever.
        assert hops(invite.values("record-route")) == ([public, lan] if nat else [lan])
        assert via.has_param("rport") is nat
        call_id = invite.call_id or ""
        ok = make_response(invite, 200, to_tag="callee")
        ok.add("Contact", f"<sip:+15551234567@127.0.0.1:{provider.port}>")
        for value in invite.values("record-route"):
            ok.add("Record-Route", value)
        ok.set("Content-Type", "application/sdp")
        ok.body = SDP.format(port=_RTP_BASE + 150).encode()
        ok.set("Content-Length", str(len(ok.body)))
        provider.sock.sendto(bytes(ok), (sip.host, sip.port))
        ack = await provider.next(is_request("ACK"))
        assert ack.call_id == call_id
        await rcml.wait("/api")
        # The provider hangs up by its route set (the Record-Route as it came) to the
        # worker's Contact; the packet comes in through the NAT to our LAN address.
        worker = NameAddr.parse(invite.values("contact")[0]).uri
        provider.sock.sendto(in_dialog(
            "BYE", 2, worker, invite.values("record-route"), call_id=call_id,
            from_=ok.get("to") or "", to=invite.get("from") or "",
            via=f"SIP/2.0/UDP 127.0.0.1:{provider.port}"), (sip.host, sip.port))
        bye_ok = await provider.next(is_final(call_id, "BYE"), seconds=5)
        assert isinstance(bye_ok, Response) and bye_ok.status == 200
        [cdr] = await cdrs(api, 1)
        assert (cdr["direction"], cdr["status"]) == ("outbound-api", "completed"), cdr
    finally:
        provider.close()


@pytest.mark.parametrize("nat", [True, False], ids=["nat", "no-nat"])
async def test_a_call_in_gives_the_provider_a_route_set_at_the_public_address(
        office: tuple[Appliance, Api, Rcml], nat: bool) -> None:
    appliance, api, rcml = office
    rcml.docs["/did"] = '<Response><Pause length="30"/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": DID, "VoiceUrl": f"{rcml.base}/did"})
    assert status == 200, body
    sip = appliance.config.sip.listen
    lan, public = f"127.0.0.1:{sip.port}", f"{PUBLIC[0]}:{PUBLIC[1]}"
    provider = Provider(nat=nat)
    try:
        await register(api, provider)
        call_id = f"{secrets.token_hex(8)}@provider"
        via = f"SIP/2.0/UDP 127.0.0.1:{provider.port}"
        caller = "<sip:+15559876543@provider.test>;tag=caller"
        sdp = SDP.format(port=_RTP_BASE + 160)
        at = f"{PUBLIC[0]}:{PUBLIC[1]}" if nat else f"{sip.host}:{sip.port}"
        invite = (f"INVITE sip:office@{at} SIP/2.0\r\n"
                  f"Via: {via};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                  f"Max-Forwards: 70\r\nFrom: {caller}\r\nTo: <sip:{DID}@provider.test>\r\n"
                  f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:+15559876543@127.0.0.1:{provider.port}>\r\n"
                  f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
        provider.sock.sendto(invite.encode(), (sip.host, sip.port))
        ok = await provider.next(is_final(call_id, "INVITE"))
        assert isinstance(ok, Response) and ok.status == 200, ok
        # The callee's 200 lists the Record-Route as the INVITE went on: the provider's
        # route set is its reverse, which starts at the public address behind NAT.
        record_route = ok.values("record-route")
        assert hops(record_route) == ([lan, public] if nat else [lan])
        routes = record_route[::-1]
        worker = NameAddr.parse(ok.values("contact")[0]).uri
        dialog = {"call_id": call_id, "from_": caller, "to": ok.get("to") or "", "via": via}
        provider.sock.sendto(in_dialog("ACK", 1, worker, routes, **dialog),
                             (sip.host, sip.port))
        await rcml.wait("/did")
        # The ACK reached the worker: it stops retransmitting its 200.
        await asyncio.sleep(1.2)
        while not provider.inbox.empty():
            late = provider.inbox.get_nowait()
            assert not (isinstance(late, Response) and late.cseq.method == "INVITE"), late
        provider.sock.sendto(in_dialog("BYE", 2, worker, routes, **dialog),
                             (sip.host, sip.port))
        bye_ok = await provider.next(is_final(call_id, "BYE"), seconds=5)
        assert isinstance(bye_ok, Response) and bye_ok.status == 200
        [cdr] = await cdrs(api, 1)
        assert (cdr["direction"], cdr["to"], cdr["status"]) == (
            "inbound", DID, "completed"), cdr
    finally:
        provider.close()
