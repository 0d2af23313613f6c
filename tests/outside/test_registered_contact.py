"""Calls from a registration-based trunk addressed to the Contact we registered (docs/
gateways.md "Calls from the provider to a DID"): ``INVITE sip:<UserName>@<our Contact>``
with the DID in the To. A real appliance registers to providers played by UDP sockets on
loopback (tests/sip/test_trunk_keepalive.py), which then call; no media worker runs, so a
DID without a voice application is answered ``404 No Voice Application`` and an unknown one
``404 Not Found``, which tells how the call was routed."""

from __future__ import annotations

import asyncio
import secrets
import socket
from pathlib import Path

from appliance.app import Appliance
from appliance.sip.message import Response, parse_message
from tests.conftest import ADMIN_SID, Api
from tests.sip.test_trunk_keepalive import Clock, Provider, add_gateway, appliance

DID = "+15557654321"
NUMBERS = f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json"
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


async def call(app: Appliance, sock: socket.socket, user: str, to: str, at: str = ""
               ) -> tuple[int, str]:
    """SOCK sends INVITE sip:USER@<the appliance> (or sip:USER@AT) with To:
    sip:TO@provider.test: the final response's status and reason (ACKed)."""
    sip = app.config.sip.listen
    at = at or f"{sip.host}:{sip.port}"
    host, port = sock.getsockname()
    call_id, branch = secrets.token_hex(8), "z9hG4bK" + secrets.token_hex(8)
    head = (f"SIP/2.0/UDP {host}:{port};branch={branch};rport", "<sip:+15551230000@provider.test>"
            ";tag=p1", f"<sip:{to}@provider.test>", f"{call_id}@provider")
    invite = (f"INVITE sip:{user}@{at} SIP/2.0\r\nVia: {head[0]}\r\n"
              f"Max-Forwards: 70\r\nFrom: {head[1]}\r\nTo: {head[2]}\r\nCall-ID: {head[3]}\r\n"
              f"CSeq: 1 INVITE\r\nContact: <sip:+15551230000@{host}:{port}>\r\n"
              f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}")
    loop = asyncio.get_running_loop()
    sock.sendto(invite.encode(), (sip.host, sip.port))
    async with asyncio.timeout(5):
        while True:
            data = await loop.sock_recv(sock, 65535)
            message = parse_message(data)
            if (isinstance(message, Response) and message.call_id == f"{call_id}@provider"
                    and message.status >= 200):
                break
    ack = (f"ACK sip:{user}@{at} SIP/2.0\r\nVia: {head[0]}\r\n"
           f"Max-Forwards: 70\r\nFrom: {head[1]}\r\nTo: {message.get('To')}\r\n"
           f"Call-ID: {head[3]}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
    sock.sendto(ack.encode(), (sip.host, sip.port))
    return message.status, message.reason


class Calls:
    """The provider's socket taken over for calls (its registrar has done its part)."""

    def __init__(self, provider: Provider) -> None:
        asyncio.get_running_loop().remove_reader(provider.sock.fileno())
        self.sock = provider.sock


async def test_the_did_in_the_to_of_a_call_to_our_registered_contact(tmp_path: Path) -> None:
    clock = Clock()
    office, numeric = Provider(clock), Provider(clock)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stranger.setblocking(False)
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (app, api):
            await number(api, DID)
            await add_gateway(api, office, "office")
            # A trunk whose UserName is itself one of our numbers: that number is the DID.
            await number(api, "+15550001111")
            await add_gateway(api, numeric, "+15550001111")
            provider = Calls(office).sock
            # Before: 404 for every call, unless "office" was added as a number.
            assert await call(app, provider, "office", DID) == (404, "No Voice Application")
            assert await call(app, provider, "office", "+15550009999") == (404, "Not Found")
            # Another Request-URI user is the DID itself, whatever the To.
            assert await call(app, provider, "+15550009999", DID) == (404, "Not Found")
            assert await call(app, provider, "desk", DID) == (404, "Not Found")
            numbered = Calls(numeric).sock
            assert await call(app, numbered, "+15550001111", "+15550009999") == (
                404, "No Voice Application")
            # Not the provider: challenged like anyone (no toll fraud).
            status, _ = await call(app, stranger, "office", DID)
            assert status == 407
    finally:
        stranger.close()
        office.sock.close()
        numeric.sock.close()


async def test_two_accounts_at_one_provider_each_get_their_calls(tmp_path: Path) -> None:
    # Two trunks (accounts) registered at one provider share its address: a call to either
    # account's Contact finds its DID in the To, not only the first account's.
    clock = Clock()
    provider = Provider(clock)
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (app, api):
            await number(api, DID)
            await add_gateway(api, provider, "office")
            await add_gateway(api, provider, "sales")
            sock = Calls(provider).sock
            assert await call(app, sock, "office", DID) == (404, "No Voice Application")
            assert await call(app, sock, "sales", DID) == (404, "No Voice Application")
    finally:
        provider.sock.close()


async def number(api: Api, phone_number: str) -> None:
    status, body, _ = await api.post(NUMBERS, {"PhoneNumber": phone_number})
    assert status == 200, body
