"""/Accounts/{A}/Registrations (OURS): live SIP registrations of the account's Clients."""

from __future__ import annotations

import asyncio
import json
import socket
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from appliance.services.telephony import Registration
from appliance.sip.message import Response, parse_message
from tests.conftest import ADMIN_SID, Api, free_port
from tests.sip.test_registrar import answer, register

PW = "Pbx-edge-7"
BASE = f"Accounts/{ADMIN_SID}/Registrations"


async def make_client(api: Api, login: str, account: str = ADMIN_SID) -> str:
    status, body, _ = await api.post(f"Accounts/{account}/Clients.json",
                                     {"Login": login, "Password": PW})
    assert status == 200, body
    return str(json.loads(body)["sid"])


async def sip_register(appliance: Appliance, login: str, expires: int | None = None
                       ) -> Response:
    """REGISTER over real UDP, answering the challenge with a digest computed in the test."""
    loop = asyncio.get_running_loop()
    port = appliance.config.sip.listen.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        contact = f"<sip:{login}@127.0.0.1:{sock.getsockname()[1]}>"
        reply: Response | None = None
        for cseq in (1, 2):
            auth = answer(reply, login) if reply is not None else None
            request = register(login, call_id=f"api-{login}", cseq=cseq, contacts=(contact,),
                               auth=auth, expires=expires)
            await loop.sock_sendto(sock, bytes(request), ("127.0.0.1", port))
            async with asyncio.timeout(2):
                message = parse_message(await loop.sock_recv(sock, 65535))
            assert isinstance(message, Response)
            reply = message
        assert reply is not None
        return reply


async def test_empty_list(api: Api) -> None:
    status, body, _ = await api.get(f"{BASE}.json")
    assert status == 200 and json.loads(body) == []
    status, body, _ = await api.get(BASE)
    assert status == 200
    root = ET.fromstring(body)
    assert root.tag == "RestcommResponse" and root.find("Registrations") is not None


async def test_a_phone_registered_over_sip_is_listed(api: Api, appliance: Appliance) -> None:
    sid = await make_client(api, "alice")
    await make_client(api, "idle")
    ok = await sip_register(appliance, "alice")
    assert ok.status == 200
    status, body, _ = await api.get(f"{BASE}.json")
    assert status == 200
    regs = json.loads(body)
    assert len(regs) == 1
    reg = regs[0]
    assert list(reg) == ["login", "client_sid", "contact", "transport", "source", "user_agent",
                         "expires", "date_expires"]
    assert reg["login"] == "alice" and reg["client_sid"] == sid
    assert reg["contact"].startswith("sip:alice@127.0.0.1:") and reg["transport"] == "udp"
    assert reg["user_agent"] == "Test Phone 1.0" and 3590 <= reg["expires"] <= 3600
    assert reg["date_expires"].endswith("+0000")
    status, body, _ = await api.get(BASE)
    item = ET.fromstring(body).find("Registrations/Registration")
    assert item is not None
    assert [c.tag for c in item] == ["Login", "ClientSid", "Contact", "Transport", "Source",
                                     "UserAgent", "Expires", "DateExpires"]
    assert item.findtext("Login") == "alice"
    health = await appliance.health()
    assert health[1]["sip"] == "up" and health[1]["sip_registered_phones"] == 1
    assert "1 phones registered" in appliance.status_line()


async def test_only_the_accounts_own_clients_and_the_tree_rule(api: Api,
                                                               appliance: Appliance) -> None:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                       "Password": PW})
    assert status == 200
    sub_sid = json.loads(body)["sid"]
    await make_client(api, "boss")
    await make_client(api, "worker", sub_sid)
    assert (await sip_register(appliance, "boss")).status == 200
    assert (await sip_register(appliance, "worker")).status == 200
    status, body, _ = await api.get(f"{BASE}.json")
    assert [r["login"] for r in json.loads(body)] == ["boss"]
    status, body, _ = await api.get(f"Accounts/{sub_sid}/Registrations.json")
    assert [r["login"] for r in json.loads(body)] == ["worker"]  # the parent sees down
    sub = api.as_user("sub@example.com", PW)
    status, _, _ = await sub.get(f"{BASE}.json")
    assert status == 403  # not up
    status, body, _ = await sub.get(f"Accounts/{sub_sid}/Registrations.json")
    assert status == 200 and [r["login"] for r in json.loads(body)] == ["worker"]


async def test_expired_entries_are_not_shown(api: Api, appliance: Appliance) -> None:
    await make_client(api, "old")
    appliance.sip_directory.set_registrations("old", [Registration(
        login="old", contact="sip:old@192.0.2.1", transport="udp", source="192.0.2.1:5060",
        expires_at=datetime.now(UTC) - timedelta(seconds=5))])
    status, body, _ = await api.get(f"{BASE}.json")
    assert json.loads(body) == []


async def test_method_not_allowed(api: Api) -> None:
    status, _, headers = await api.post(f"{BASE}.json", {"x": "y"})
    assert status == 405 and headers["Allow"] == "GET"  # type: ignore[index]


async def test_a_binding_survives_a_restart_and_then_expires_on_time(tmp_path: Path) -> None:
    # The appliance's clock runs OFFSET from the real one (the API reads the real one).
    offset = [timedelta(seconds=-100)]  # the phone registered 100 s ago...
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                  domain="pbx.example.com"),
                    media=MediaConfig(workers=0))

    async def listed(session: aiohttp.ClientSession) -> list[dict[str, object]]:
        status, body, _ = await admin(session).get(f"{BASE}.json")
        assert status == 200
        return list(json.loads(body))

    def admin(session: aiohttp.ClientSession) -> Api:
        password = (config.data_dir / "admin-password").read_text().strip()
        return Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                   password, config.data_dir)

    def clock() -> datetime:
        return datetime.now(UTC) + offset[0]

    first = Appliance(config, clock=clock)
    await first.start()
    try:
        async with aiohttp.ClientSession() as session:
            await make_client(admin(session), "alice")
        assert (await sip_register(first, "alice", expires=600)).status == 200
    finally:
        await first.stop()
    offset[0] = timedelta(0)  # ...and the appliance was down since
    second = Appliance(config, clock=clock)
    await second.start()
    session = aiohttp.ClientSession()
    try:
        regs = await listed(session)
        assert [(r["login"], r["user_agent"]) for r in regs] == [("alice", "Test Phone 1.0")]
        assert 498 <= int(str(regs[0]["expires"])) <= 500
        assert (await second.health())[1]["sip_registered_phones"] == 1
        offset[0] = timedelta(seconds=501)
        second.registrar._wake.set()  # as its timer would at the expiry time
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not second.sip_directory.registrations():
                break
        assert await listed(session) == []
        assert (await second.health())[1]["sip_registered_phones"] == 0
        assert len(second.location) == 0
    finally:
        await session.close()
        await second.stop()
