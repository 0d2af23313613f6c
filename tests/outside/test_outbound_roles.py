"""Account roles on the outside lines: a Client's call to a number costs money on behalf of
its account, so it goes out only when the account's role may create Calls, as POST /Calls
requires (api-behaviour.md §4). A real appliance with one media worker, an outbound route to
a gateway whose provider is a bare UDP socket, and a test phone speaking SIP over UDP."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
from tests.conftest import ADMIN_SID, Api, free_port
from tests.sms.sipua import Phone

pytest.importorskip("pjsua2")

PW = "Pbx-edge-7"
_RTP_BASE = 44000 + (os.getpid() % 50) * 100
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class Provider(asyncio.DatagramProtocol):
    """The provider's SIP address: it records whatever reaches it and answers nothing."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append(data)


@pytest.fixture
async def lines(tmp_path: Path) -> AsyncIterator[tuple[Appliance, Api, Provider]]:
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
            yield appliance, api, provider
    finally:
        await appliance.stop()
        transport.close()


async def test_a_phone_places_no_outside_call_its_account_may_not(
        lines: tuple[Appliance, Api, Provider]) -> None:
    appliance, api, provider = lines
    status, body, _ = await api.post("Accounts.json", {
        "EmailAddress": "nobody@example.com", "Password": "Dev-Acct-pass-9"})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    # A role no permission goes with: this version refuses one through the API (400), an
    # older one stored any string, and such an account must place no call either.
    with sqlite3.connect(appliance.config.data_dir / "appliance.db") as db:
        db.execute("UPDATE accounts SET role = 'Nobody' WHERE sid = ?", (sid,))
    await appliance.accounts.load()
    phones: list[Phone] = []
    try:
        for login in ("nodesk", "nopeer"):
            status, body, _ = await api.post(f"Accounts/{sid}/Clients.json",
                                             {"Login": login, "Password": PW})
            assert status == 200, body
            listen = appliance.config.sip.listen
            phones.append(await Phone(login, PW, (listen.host, listen.port)).start())
            assert await phones[-1].register() == 200
        desk = phones[0]
        host = f"{desk.server[0]}:{desk.server[1]}"
        sdp = ["Content-Type: application/sdp", f"Contact: <sip:nodesk@127.0.0.1:{desk.port}>"]
        uri = f"sip:+15551119999@{host}"
        response: Any = await desk.request("INVITE", uri, uri, sdp, SDP)
        assert (response.status, response.reason) == (
            403, "Missing permission RestComm:Create:Calls")
        await asyncio.sleep(1.0)
        assert provider.got == []  # nothing went out
        # A call between the account's own phones costs nothing: it still rings (and
        # nodesk's phone answers).
        peer = phones[1]
        uri = f"sip:nodesk@{host}"
        response = await peer.request(
            "INVITE", uri, uri, ["Content-Type: application/sdp",
                                 f"Contact: <sip:nopeer@127.0.0.1:{peer.port}>"], SDP)
        assert response.status == 200
    finally:
        for phone in phones:
            phone.close()


async def test_only_a_phone_number_goes_out(lines: tuple[Appliance, Api, Provider]) -> None:
    # The route covers +1555, and the account may call out; but a "*" or "#" after the
    # prefix (a feature code to the provider?), or more than 20 digits, is no phone number
    # (docs/gateways.md), and POST /Calls refuses the same strings.
    appliance, api, provider = lines
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": "desk", "Password": PW})
    assert status == 200, body
    listen = appliance.config.sip.listen
    desk = await Phone("desk", PW, (listen.host, listen.port)).start()
    try:
        assert await desk.register() == 200
        host = f"{desk.server[0]}:{desk.server[1]}"
        headers = ["Content-Type: application/sdp", f"Contact: <sip:desk@127.0.0.1:{desk.port}>"]
        for user in ("+1555*33123456789", "+1555%23123", "+1555" + "1" * 20):
            uri = f"sip:{user}@{host}"
            response: Any = await desk.request("INVITE", uri, uri, headers, SDP)
            assert (response.status, response.reason) == (403, "No Outbound Route"), user
        await asyncio.sleep(0.5)
        assert provider.got == []
    finally:
        desk.close()
