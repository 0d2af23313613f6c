"""A stranger rides no call out through the appliance (docs/sip.md "No toll fraud"): a real
appliance with one pjsua2 media worker, a gateway registered at a provider played by a UDP
socket on loopback (tests/outside/test_nat_route.py), and a stranger on 127.0.0.3 with no
credentials.

The reported attack: one INVITE from the provider's address (a spoofer's, on a LAN) to a DID
makes a live call whose Call-ID and From tag the stranger chose; then, from its own address,
an INVITE with that Call-ID and From tag, any To tag and a Route naming the provider, to a
number no route covers. It must reach neither the provider nor anyone, and the stranger gets
481 (no such dialog) or 403 (a dialog that is not his). The provider's own requests in the
call, and the worker's by the provider's Record-Route (its edge proxy at another address),
still pass."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
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
from appliance.sip.message import Request, Response, make_response, parse_message
from tests.conftest import ADMIN_SID, Api, free_port
from tests.media.audio import write_tone
from tests.outside.test_nat_route import (
    _RTP_BASE,
    CALLS,
    DID,
    SDP,
    Provider,
    cdrs,
    in_dialog,
    is_final,
    is_request,
    register,
)
from tests.voice.test_voice_apps import Rcml

pytest.importorskip("pjsua2")

NUMBER = "+33123456789"  # no [outbound] route covers it


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


class Stranger:
    """A host of its own (127.0.0.3) with no credentials: sends, and reads its answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.3", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    async def ask(self, data: bytes, to: tuple[str, int], call_id: str, cseq: int
                  ) -> Response | None:
        """The final response to DATA (CALL_ID, CSEQ: not a retransmitted earlier one)."""
        self.sock.sendto(data, to)
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.0
        while (left := end - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    reply = parse_message(await loop.sock_recv(self.sock, 65535))
            except TimeoutError:
                return None
            if isinstance(reply, Response) and reply.call_id == call_id and \
                    reply.cseq.number == cseq and reply.status >= 200:
                return reply
        return None

    def close(self) -> None:
        self.sock.close()


def relayed(provider: Provider) -> list[str]:
    """The start lines of the requests that reached the provider since last asked."""
    got = []
    while not provider.inbox.empty():
        message = provider.inbox.get_nowait()
        if isinstance(message, Request):
            got.append(message.start_line())
    return got


async def test_a_stranger_riding_a_providers_call_to_a_did_reaches_nobody(
        office: tuple[Appliance, Api, Rcml]) -> None:
    appliance, api, rcml = office
    rcml.docs["/did"] = '<Response><Pause length="30"/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": DID, "VoiceUrl": f"{rcml.base}/did"})
    assert status == 200, body
    sip = appliance.config.sip.listen
    provider = Provider(nat=False)
    stranger = Stranger()
    try:
        await register(api, provider)
        # Step 1: an INVITE to the DID from the provider's address, with a Call-ID and From
        # tag the stranger chose (a spoofer on the LAN sends the same packet).
        call_id, tag = f"stranger-{secrets.token_hex(6)}", "st" + secrets.token_hex(4)
        via = f"SIP/2.0/UDP 127.0.0.1:{provider.port}"
        caller = f"<sip:+15559876543@127.0.0.1>;tag={tag}"
        sdp = SDP.format(port=_RTP_BASE + 170)
        invite = (f"INVITE sip:{DID}@{sip.host}:{sip.port} SIP/2.0\r\n"
                  f"Via: {via};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                  f"Max-Forwards: 70\r\nFrom: {caller}\r\nTo: <sip:{DID}@127.0.0.1>\r\n"
                  f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:+15559876543@127.0.0.1:{provider.port}>\r\n"
                  f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
        provider.sock.sendto(invite.encode(), (sip.host, sip.port))
        ok = await provider.next(is_final(call_id, "INVITE"))
        assert isinstance(ok, Response) and ok.status == 200, ok
        await rcml.wait("/did")  # the call is live on the worker
        routes = ok.values("record-route")[::-1]
        worker = NameAddr.parse(ok.values("contact")[0]).uri
        dialog = {"call_id": call_id, "from_": caller, "to": ok.get("to") or "", "via": via}
        provider.sock.sendto(in_dialog("ACK", 1, worker, routes, **dialog), (sip.host, sip.port))
        await asyncio.sleep(0.3)
        relayed(provider)
        # Step 2: from the stranger's own address, with any To tag, then with the real one
        # (as if sniffed): a call to a number no route covers, by a Route to the provider.
        hop = f"127.0.0.1:{provider.port}"
        for cseq, to_tag, expected in ((2, "x1", 481), (3, ok.to.tag, 403)):
            attack = stranger_invite(stranger, call_id, caller, to_tag or "", hop, cseq)
            reply = await stranger.ask(attack, (sip.host, sip.port), call_id, cseq)
            await asyncio.sleep(0.5)
            assert relayed(provider) == []  # the provider heard nothing
            assert reply is not None and reply.status == expected, reply
        # The provider's own BYE still ends the call.
        provider.sock.sendto(in_dialog("BYE", 2, worker, routes, **dialog), (sip.host, sip.port))
        bye_ok = await provider.next(is_final(call_id, "BYE"), seconds=5)
        assert isinstance(bye_ok, Response) and bye_ok.status == 200
        [cdr] = await cdrs(api, 1)
        assert (cdr["to"], cdr["status"]) == (DID, "completed"), cdr
    finally:
        provider.close()
        stranger.close()


def stranger_invite(stranger: Stranger, call_id: str, caller: str, to_tag: str, hop: str,
                    cseq: int) -> bytes:
    sdp = SDP.format(port=_RTP_BASE + 180)
    return (f"INVITE sip:{NUMBER}@{hop} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.3:{stranger.port};branch=z9hG4bK{secrets.token_hex(8)}"
            f";rport\r\nMax-Forwards: 70\r\nFrom: {caller}\r\n"
            f"To: <sip:{NUMBER}@{hop}>;tag={to_tag}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} INVITE\r\n"
            f"Contact: <sip:+15559876543@127.0.0.3:{stranger.port}>\r\n"
            f"Route: <sip:{hop};lr>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}").encode()


async def test_the_workers_requests_follow_the_providers_record_route_to_its_edge(
        office: tuple[Appliance, Api, Rcml]) -> None:
    """A provider whose 200 record-routes its edge proxy at another address than its
    registrar (where our INVITE went): the worker's ACK and BYE by that route set reach the
    edge, which is the call's recorded next hop, and the call ends completed."""
    appliance, api, rcml = office
    rcml.docs["/api"] = '<Response><Pause length="1"/><Hangup/></Response>'
    sip = appliance.config.sip.listen
    provider = Provider(nat=False)
    edge = Provider(nat=False)  # the provider's edge proxy: another socket, another port
    try:
        await register(api, provider)
        status, body, _ = await api.post(f"{CALLS}.json", {
            "From": "+15557654321", "To": "+15551234567", "Url": f"{rcml.base}/api"})
        assert status == 200, body
        invite = await provider.next(is_request("INVITE"))
        assert isinstance(invite, Request)
        call_id = invite.call_id or ""
        ok = make_response(invite, 200, to_tag="callee")
        ok.add("Contact", f"<sip:+15551234567@127.0.0.1:{edge.port}>")
        ok.add("Record-Route", f"<sip:127.0.0.1:{edge.port};lr>")
        for value in invite.values("record-route"):
            ok.add("Record-Route", value)
        ok.set("Content-Type", "application/sdp")
        ok.body = SDP.format(port=_RTP_BASE + 190).encode()
        ok.set("Content-Length", str(len(ok.body)))
        provider.sock.sendto(bytes(ok), (sip.host, sip.port))
        ack = await edge.next(is_request("ACK"))
        assert ack.call_id == call_id
        bye = await edge.next(is_request("BYE"), seconds=10)
        assert isinstance(bye, Request) and bye.call_id == call_id
        edge.sock.sendto(bytes(make_response(bye, 200)), (sip.host, sip.port))
        [cdr] = await cdrs(api, 1)
        assert cdr["status"] == "completed", cdr
    finally:
        provider.close()
        edge.close()
