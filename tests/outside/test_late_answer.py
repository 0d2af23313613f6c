"""A provider that answers only after the line was given up: the media worker CANCELled its
leg while the provider had sent nothing (so the proxy could not pass the CANCEL on yet, RFC
3261 §9.1, and gave the worker a 487 at once); the provider's 180 and 200 come later. The
200 can reach no transaction at the worker any more, so the proxy ACKs it and hangs up with
a BYE: the callee does not talk into silence, nor is the call billed until the provider's
own ACK timeout. A real appliance with one media worker, a gateway whose provider is a bare
UDP socket, and a test phone speaking SIP over UDP."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

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
from appliance.services import calls as calls_module
from appliance.sip.message import Request, parse_message
from tests.conftest import ADMIN_SID, Api, free_port
from tests.sms.sipua import Phone

pytest.importorskip("pjsua2")

PW = "Pbx-edge-7"
_RTP_BASE = 45000 + (os.getpid() % 50) * 100
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class Provider(asyncio.DatagramProtocol):
    """The provider's SIP address: records every request, answers only when told to."""

    def __init__(self) -> None:
        self.got: list[tuple[Request, tuple[str, int]]] = []
        self.arrived = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Request):
            self.got.append((message, addr))
            self.arrived.set()

    def requests(self, method: str) -> list[tuple[Request, tuple[str, int]]]:
        return [(r, a) for r, a in self.got if r.method == method]

    async def wait_for(self, method: str, count: int = 1, seconds: float = 10.0
                       ) -> list[tuple[Request, tuple[str, int]]]:
        async with asyncio.timeout(seconds):
            while len(self.requests(method)) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.requests(method)

    def answer(self, request: Request, addr: tuple[str, int], status: int, reason: str, *,
               tag: str, contact: str = "", body: str = "") -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("via", "record-route", "from", "call-id", "cseq"):
            lines += [f"{name.title()}: {v}" for v in request.get_all(name)]
        lines.append(f"To: {request.get('to')};tag={tag}")
        if contact:
            lines.append(f"Contact: <{contact}>")
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        assert self.transport is not None
        self.transport.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), addr)


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[Appliance, Api, Provider, int]]:
    provider = Provider()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: provider, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                  domain="pbx.example.com"),
                    media=MediaConfig(workers=1, rtp_ports=(_RTP_BASE, _RTP_BASE + 99)),
                    outbound=OutboundConfig(routes=(
                        OutboundRoute("+1555", ("gateway:provider",)),)))
    appliance = Appliance(config)
    await appliance.start()
    password = (config.data_dir / "admin-password").read_text().strip()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                      password, config.data_dir)
            status, body, _ = await api.post(
                f"Accounts/{ADMIN_SID}/Management/Gateways.json",
                {"FriendlyName": "provider", "UserName": "office", "Password": "Trunk-pass-1",
                 "Proxy": f"127.0.0.1:{port}", "Register": "false", "TTL": "600"})
            assert status == 200, body
            yield appliance, api, provider, port
    finally:
        await appliance.stop()
        transport.close()


async def test_a_2xx_after_the_line_was_given_up_is_acked_and_hung_up(
        line: tuple[Appliance, Api, Provider, int], monkeypatch: pytest.MonkeyPatch) -> None:
    appliance, api, provider, port = line
    monkeypatch.setattr(calls_module, "SETUP_SECONDS", 2.0)  # not 15 s in a test
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": "desk", "Password": PW})
    assert status == 200, body
    listen = appliance.config.sip.listen
    desk = await Phone("desk", PW, (listen.host, listen.port)).start()
    try:
        assert await desk.register() == 200
        host = f"{listen.host}:{listen.port}"
        uri = f"sip:+15551230000@{host}"
        call = asyncio.create_task(desk.request(
            "INVITE", uri, uri, ["Content-Type: application/sdp",
                                 f"Contact: <sip:desk@127.0.0.1:{desk.port}>"], SDP))
        [(invite, proxy), *_] = await provider.wait_for("INVITE")
        # The provider drops the INVITE: the line is given up (the worker CANCELs, the
        # proxy holds the CANCEL back), and the phone gets its final.
        final = await asyncio.wait_for(call, 15)
        assert final.status >= 300
        assert provider.requests("CANCEL") == []
        # Now the provider rings and answers (before the INVITE's Timer B).
        tag = "prov" + secrets.token_hex(3)
        contact = f"sip:prov@127.0.0.1:{port}"
        provider.answer(invite, proxy, 180, "Ringing", tag=tag)
        [(cancel, _)] = await provider.wait_for("CANCEL")
        provider.answer(cancel, proxy, 200, "OK", tag=tag)
        provider.answer(invite, proxy, 200, "OK", tag=tag, contact=contact, body=SDP)
        [(ack, _)] = await provider.wait_for("ACK", seconds=5)
        assert ack.uri == contact  # the 2xx's ACK: to its Contact, in its dialog
        assert ack.call_id == invite.call_id and ack.to.tag == tag
        assert (ack.cseq.number, ack.cseq.method) == (invite.cseq.number, "ACK")
        [(bye, _)] = await provider.wait_for("BYE", seconds=5)
        assert bye.uri == contact and bye.call_id == invite.call_id and bye.to.tag == tag
        assert bye.from_.tag == invite.from_.tag and bye.cseq.number > invite.cseq.number
        assert provider.got.index((bye, proxy)) > provider.got.index((ack, proxy))
        provider.answer(bye, proxy, 200, "OK", tag=tag)
        # The 200 again (as if our ACK were lost): ACKed again, not a second BYE.
        provider.answer(invite, proxy, 200, "OK", tag=tag, contact=contact, body=SDP)
        await provider.wait_for("ACK", 2, seconds=5)
        await asyncio.sleep(1.0)
        assert len(provider.requests("BYE")) == 1
        # The line stays unanswered in the CDRs: nobody talked.
        _, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
        calls = json.loads(body)["calls"]
        assert sorted((c["direction"], c["status"]) for c in calls) == [
            ("inbound", "failed"), ("outbound-dial", "no-answer")]
    finally:
        desk.close()
