"""/Accounts/{A}/Registrations (OURS): live SIP registrations of the account's Clients."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import yaml

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from appliance.sip.bindings import Binding
from appliance.sip.message import Request, Response, parse_message
from tests.conftest import ADMIN_SID, Api, free_port
from tests.sip.test_registrar import answer, register
from tests.sip.test_tcp_idle import register_over
from tests.sip.test_transport import tcp

PW = "Pbx-edge-7"
BASE = f"Accounts/{ADMIN_SID}/Registrations"


async def make_client(api: Api, login: str, account: str = ADMIN_SID) -> str:
    status, body, _ = await api.post(f"Accounts/{account}/Clients.json",
                                     {"Login": login, "Password": PW})
    assert status == 200, body
    return str(json.loads(body)["sid"])


async def sip_register(appliance: Appliance, login: str, expires: int | None = None, *,
                       local_port: int = 0, first_cseq: int = 1,
                       user_agent: bytes = b"Test Phone 1.0") -> Response:
    """REGISTER over real UDP, answering the challenge with a digest computed in the test.
    LOCAL_PORT (0: any) is the phone's port and contact; FIRST_CSEQ lets the same phone
    (Call-ID) register again; USER_AGENT is sent as it is, in any encoding."""
    loop = asyncio.get_running_loop()
    port = appliance.config.sip.listen.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", local_port))
        sock.setblocking(False)
        contact = f"<sip:{login}@127.0.0.1:{sock.getsockname()[1]}>"
        reply: Response | None = None
        for cseq in (first_cseq, first_cseq + 1):
            auth = answer(reply, login) if reply is not None else None
            request = register(login, call_id=f"api-{login}", cseq=cseq, contacts=(contact,),
                               auth=auth, expires=expires)
            wire = bytes(request).replace(b"User-Agent: Test Phone 1.0\r\n",
                                          b"User-Agent: " + user_agent + b"\r\n")
            await loop.sock_sendto(sock, wire, ("127.0.0.1", port))
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
    assert list(reg) == ["login", "client_sid", "account_sid", "contact", "transport", "source",
                         "user_agent", "expires", "date_expires"]
    assert reg["login"] == "alice" and reg["client_sid"] == sid
    assert reg["contact"].startswith("sip:alice@127.0.0.1:") and reg["transport"] == "udp"
    assert reg["user_agent"] == "Test Phone 1.0" and 3590 <= reg["expires"] <= 3600
    assert reg["date_expires"].endswith("+0000")
    status, body, _ = await api.get(BASE)
    item = ET.fromstring(body).find("Registrations/Registration")
    assert item is not None
    assert [c.tag for c in item] == ["Login", "ClientSid", "AccountSid", "Contact", "Transport",
                                     "Source", "UserAgent", "Expires", "DateExpires"]
    assert item.findtext("Login") == "alice"
    health = await appliance.health()
    assert health[1]["sip"] == "up" and health[1]["sip_registered_phones"] == 1
    assert "1 phones registered" in appliance.status_line()


async def test_a_user_agent_in_latin_1_or_with_control_characters_is_listed(
        api: Api, appliance: Appliance) -> None:
    # A phone's bytes that are no UTF-8 show as "?", as in a CDR; the list of every other
    # phone of the account is not lost with them (it was a 500 in both formats).
    await make_client(api, "latin")
    await make_client(api, "ctl")
    await make_client(api, "plain")
    assert (await sip_register(appliance, "latin",
                               user_agent="Téléphone".encode("latin-1"))).status == 200
    assert (await sip_register(appliance, "ctl", user_agent=b"ctl\x01\x0bX")).status == 200
    assert (await sip_register(appliance, "plain")).status == 200
    status, body, _ = await api.get(f"{BASE}.json")
    assert status == 200, body
    agents = {r["login"]: r["user_agent"] for r in json.loads(body)}
    # JSON escapes control characters; XML 1.0 cannot carry them at all.
    assert agents == {"latin": "T?l?phone", "ctl": "ctl\x01\x0bX", "plain": "Test Phone 1.0"}
    status, body, _ = await api.get(BASE)
    assert status == 200, body
    root = ET.fromstring(body)  # well-formed
    agents = {r.findtext("Login"): r.findtext("UserAgent")
              for r in root.iterfind("Registrations/Registration")}
    assert agents == {"latin": "T?l?phone", "ctl": "ctl??X", "plain": "Test Phone 1.0"}


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
    appliance.sip_directory.set_bindings("old", [Binding(
        aor="old", uri="sip:old@192.0.2.1", expires_at=time.time() - 5, call_id="c", cseq=1,
        transport="udp", source=("192.0.2.1", 5060))])
    status, body, _ = await api.get(f"{BASE}.json")
    assert json.loads(body) == []


async def test_method_not_allowed(api: Api) -> None:
    status, _, headers = await api.post(f"{BASE}.json", {"x": "y"})
    assert status == 405 and headers["Allow"] == "GET, HEAD"  # type: ignore[index]


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


# --- the audit: what an office admin and a security reviewer see ------------------------------


async def sip_invite(appliance: Appliance, login: str, callee: str) -> int:
    """An INVITE from LOGIN's phone to CALLEE, answering the proxy's 407 with LOGIN's
    password: the final status (100 Trying skipped)."""
    loop = asyncio.get_running_loop()
    port = appliance.config.sip.listen.port
    uri = f"sip:{callee}@pbx.example.com"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        here = f"127.0.0.1:{sock.getsockname()[1]}"
        auth: str | None = None
        for cseq in (1, 2):
            lines = [f"INVITE {uri} SIP/2.0",
                     f"Via: SIP/2.0/UDP {here};branch=z9hG4bKinv{cseq}{login};rport",
                     "Max-Forwards: 70", f"From: <sip:{login}@pbx.example.com>;tag=inv{login}",
                     f"To: <{uri}>", f"Call-ID: inv-{login}", f"CSeq: {cseq} INVITE",
                     f"Contact: <sip:{login}@{here}>",
                     *([f"Proxy-Authorization: {auth}"] if auth else []),
                     "Content-Length: 0"]
            await loop.sock_sendto(sock, ("\r\n".join(lines) + "\r\n\r\n").encode(),
                                   ("127.0.0.1", port))
            while True:
                async with asyncio.timeout(2):
                    reply = parse_message(await loop.sock_recv(sock, 65535))
                assert isinstance(reply, Response)
                if reply.status >= 200:
                    break
            if reply.status != 407 or auth is not None:
                return reply.status
            auth = proxy_answer(reply, login, uri)
    raise AssertionError("unreachable")


def proxy_answer(challenge: Response, login: str, uri: str) -> str:
    values = [v for v in challenge.get_all("proxy-authenticate") if "MD5" in v]
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', values[0]))
    realm, nonce = params["realm"], params["nonce"]

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - SIP digest

    response = md5(f"{md5(f'{login}:{realm}:{PW}')}:{nonce}:00000001:c0ffee:auth:"
                   f"{md5(f'INVITE:{uri}')}")
    return (f'Digest username="{login}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, cnonce="c0ffee", qop=auth, nc=00000001')


def free_udp_port() -> int:
    return free_port()


async def listed(api: Api, path: str = f"{BASE}.json") -> list[dict[str, object]]:
    status, body, _ = await api.get(path)
    assert status == 200, body
    return list(json.loads(body))


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait (at most a second) for CONDITION: a provisioning change drops bindings in a
    task of its own, right after the API has answered."""
    for _ in range(100):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_authentication_and_the_account_tree(api: Api, appliance: Appliance) -> None:
    await make_client(api, "alice")
    assert (await sip_register(appliance, "alice")).status == 200
    for path in (BASE, f"{BASE}.json"):
        status, body, headers = await api.get(path, auth=False)
        assert status == 401 and body == ""
        assert headers["WWW-Authenticate"] == 'Basic realm="Restcomm realm"'  # type: ignore[index]
        status, _, _ = await api.as_user(ADMIN_SID, "Wrong-password-9").get(path)
        assert status == 401
    status, body, _ = await api.get(f"Accounts/AC{'0' * 32}/Registrations.json")
    assert status == 404  # D1: a well-formed but unknown account
    status, body, _ = await api.get("Accounts/junk/Registrations.json")
    assert status == 404
    # Two sibling sub-accounts: each sees its own Clients' phones only.
    subs = []
    for email in ("one@example.com", "two@example.com"):
        status, body, _ = await api.post("Accounts.json", {"EmailAddress": email,
                                                           "Password": PW})
        assert status == 200
        subs.append(json.loads(body)["sid"])
    await make_client(api, "worker", subs[1])
    assert (await sip_register(appliance, "worker")).status == 200
    one = api.as_user("one@example.com", PW)
    status, _, _ = await one.get(f"Accounts/{subs[1]}/Registrations.json")
    assert status == 403  # a sibling's URL: outside the tree
    assert await listed(one, f"Accounts/{subs[0]}/Registrations.json") == []
    # The auth token works as the secret too, and the email as the user.
    token = hashlib.md5(PW.encode()).hexdigest()  # noqa: S324 - Restcomm's auth token
    two = api.as_user("two@example.com", token)
    assert [r["login"] for r in await listed(two, f"Accounts/{subs[1]}/Registrations.json")
            ] == ["worker"]


async def test_formats_follow_the_suffix_then_accept(api: Api, appliance: Appliance) -> None:
    await make_client(api, "alice")
    assert (await sip_register(appliance, "alice")).status == 200
    status, body, headers = await api.get(BASE, headers={"Accept": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")  # type: ignore[index]
    assert [r["login"] for r in json.loads(body)] == ["alice"]
    status, body, headers = await api.get(BASE, headers={"Accept": "*/*"})
    assert headers["Content-Type"].startswith("application/xml")  # type: ignore[index]
    assert not body.startswith("<?xml")
    root = ET.fromstring(body)
    assert root.tag == "RestcommResponse" and [c.tag for c in root] == ["Registrations"]
    assert [c.tag for c in root[0]] == ["Registration"]
    assert root.findtext("Registrations/Registration/AccountSid") == ADMIN_SID
    status, body, _ = await api.get(f"{BASE}.json", prefix="/api")
    assert status == 200 and [r["login"] for r in json.loads(body)] == ["alice"]


async def test_entry_fields_and_a_refresh_is_listed_once(api: Api, appliance: Appliance
                                                        ) -> None:
    sid = await make_client(api, "alice")
    phone = free_udp_port()
    for n in range(3):  # the phone refreshes its binding: still one entry
        assert (await sip_register(appliance, "alice", expires=1800, local_port=phone,
                                   first_cseq=1 + 2 * n)).status == 200
    regs = await listed(api)
    assert len(regs) == 1
    reg = regs[0]
    assert list(reg) == ["login", "client_sid", "account_sid", "contact", "transport",
                         "source", "user_agent", "expires", "date_expires"]
    assert reg["client_sid"] == sid and reg["account_sid"] == ADMIN_SID
    assert str(reg["source"]).startswith("127.0.0.1:") and 1790 <= int(str(reg["expires"]))
    # The date format of date_created (api-behaviour.md §1.5): day not zero-padded, +0000.
    expected = datetime.now(UTC) + timedelta(seconds=int(str(reg["expires"])))
    parsed = datetime.strptime(str(reg["date_expires"]), "%a, %d %b %Y %H:%M:%S %z")
    assert abs((parsed - expected).total_seconds()) <= 2
    assert re.fullmatch(r"[A-Z][a-z]{2}, [1-9]\d? [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000",
                        str(reg["date_expires"]))
    assert (await sip_register(appliance, "alice", expires=0, local_port=phone,
                               first_cseq=7)).status == 200  # unregister
    assert await listed(api) == []


async def test_filters_by_login_transport_and_sub_accounts(api: Api, appliance: Appliance
                                                          ) -> None:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                       "Password": PW})
    sub_sid = json.loads(body)["sid"]
    await make_client(api, "alice")
    await make_client(api, "bob")
    await make_client(api, "worker", sub_sid)
    for login in ("alice", "bob", "worker"):
        assert (await sip_register(appliance, login)).status == 200
    assert [r["login"] for r in await listed(api)] == ["alice", "bob"]
    assert [r["login"] for r in await listed(api, f"{BASE}.json?Login=bob")] == ["bob"]
    assert await listed(api, f"{BASE}.json?Login=worker") == []  # not this account's
    assert await listed(api, f"{BASE}.json?Login=nobody") == []
    assert len(await listed(api, f"{BASE}.json?Transport=UDP")) == 2
    assert await listed(api, f"{BASE}.json?Transport=tcp") == []
    everyone = await listed(api, f"{BASE}.json?SubAccounts=true")
    assert [(r["login"], r["account_sid"]) for r in everyone] == [
        ("alice", ADMIN_SID), ("bob", ADMIN_SID), ("worker", sub_sid)]
    assert [r["login"] for r in await listed(
        api, f"{BASE}.json?SubAccounts=true&Login=worker")] == ["worker"]
    # Unpaged like /Clients: paging parameters change nothing.
    assert len(await listed(api, f"{BASE}.json?Page=7&PageSize=1")) == 2
    sub = api.as_user("sub@example.com", PW)
    assert [r["login"] for r in await listed(
        sub, f"Accounts/{sub_sid}/Registrations.json?SubAccounts=true")] == ["worker"]


async def test_methods_and_no_single_registration(api: Api) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        status, _, headers = await api.request(method, f"{BASE}.json")
        assert status == 405 and headers["Allow"] == "GET, HEAD"  # type: ignore[index]
    status, body, _ = await api.request("HEAD", f"{BASE}.json")
    assert status == 200 and body == ""  # as /Clients: GET without the body
    status, _, _ = await api.get(f"{BASE}/RG{'0' * 32}.json")
    assert status == 404  # no single-registration resource


async def test_a_deleted_client_loses_its_registration_and_cannot_call(
        api: Api, appliance: Appliance) -> None:
    sid = await make_client(api, "alice")
    await make_client(api, "bob")
    assert (await sip_register(appliance, "alice")).status == 200
    assert (await sip_register(appliance, "bob")).status == 200
    status, _, _ = await api.request("DELETE", f"Accounts/{ADMIN_SID}/Clients/{sid}")
    assert status == 200

    async def gone() -> bool:
        return len(appliance.location.lookup("alice", appliance.wall_clock())) == 0
    await until(gone)
    assert [r["login"] for r in await listed(api)] == ["bob"]
    assert (await appliance.health())[1]["sip_registered_phones"] == 1
    # The deleted Client's phone still knows its password: the proxy refuses it...
    assert await sip_invite(appliance, "alice", "bob") == 403
    # ...and its old binding does not come back to life for a new Client of the same login.
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "new@example.com",
                                                       "Password": PW})
    new_account = json.loads(body)["sid"]
    await make_client(api, "alice", new_account)
    assert await listed(api, f"Accounts/{new_account}/Registrations.json") == []
    assert await sip_invite(appliance, "bob", "alice") == 480  # not registered
    await appliance.registrar.flush()
    assert [b["aor"] for b in await appliance.store.load_bindings(appliance.wall_clock())
            ] == ["bob"]


async def test_a_deleted_clients_tcp_connection_is_no_longer_trusted(
        api: Api, appliance: Appliance) -> None:
    """Deleted through the API, a Client's phone registered over TCP loses the long idle
    timeout of its connection (from then on the short one, 60 s, as a stranger's), while
    another phone keeps its own."""
    sid = await make_client(api, "alice")
    await make_client(api, "bob")
    port = appliance.config.sip.listen.port
    async with tcp(port) as alice, tcp(port) as bob:
        assert await register_over(*alice, login="alice") == 200
        assert await register_over(*bob, login="bob", call_id="bob-reg") == 200
        now = appliance.wall_clock()
        [alice_binding] = appliance.location.lookup("alice", now)
        [bob_binding] = appliance.location.lookup("bob", now)
        alice_conn = appliance.transport.connection(alice_binding.connection_id or "")
        bob_conn = appliance.transport.connection(bob_binding.connection_id or "")
        assert alice_conn is not None and alice_conn.trusted
        assert bob_conn is not None and bob_conn.trusted

        status, _, _ = await api.request("DELETE", f"Accounts/{ADMIN_SID}/Clients/{sid}")
        assert status == 200

        async def distrusted() -> bool:
            return not alice_conn.trusted
        await until(distrusted)
        assert appliance.transport.connection(alice_conn.id) is alice_conn  # not cut at once
        assert bob_conn.trusted


async def test_a_disabled_client_loses_its_registration(api: Api, appliance: Appliance
                                                       ) -> None:
    sid = await make_client(api, "alice")
    await make_client(api, "bob")
    assert (await sip_register(appliance, "alice")).status == 200
    status, _, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients/{sid}.json", {"Status": "0"})
    assert status == 200

    async def gone() -> bool:
        return await listed(api) == []
    await until(gone)
    assert (await appliance.health())[1]["sip_registered_phones"] == 0
    assert (await sip_register(appliance, "alice")).status == 403
    assert (await sip_register(appliance, "bob")).status == 200
    assert await sip_invite(appliance, "bob", "alice") == 480
    # Enabled again, it is listed once its phone registers again.
    status, _, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients/{sid}.json", {"Status": "1"})
    assert [r["login"] for r in await listed(api)] == ["bob"]
    assert (await sip_register(appliance, "alice")).status == 200
    assert [r["login"] for r in await listed(api)] == ["alice", "bob"]


async def test_a_suspended_account_loses_its_phones(api: Api, appliance: Appliance) -> None:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                       "Password": PW})
    sub_sid = json.loads(body)["sid"]
    await make_client(api, "worker", sub_sid)
    assert (await sip_register(appliance, "worker")).status == 200
    status, _, _ = await api.post(f"Accounts/{sub_sid}.json", {"Status": "suspended"})
    assert status == 200

    async def gone() -> bool:
        return await listed(api, f"Accounts/{sub_sid}/Registrations.json") == []
    await until(gone)
    assert (await appliance.health())[1]["sip_registered_phones"] == 0


async def test_health_counts_phones_not_clients(api: Api, appliance: Appliance) -> None:
    await make_client(api, "alice")
    phone = free_udp_port()
    assert (await sip_register(appliance, "alice", local_port=phone)).status == 200
    assert (await sip_register(appliance, "alice", local_port=phone, first_cseq=3)
            ).status == 200  # the same phone: a refresh
    assert (await appliance.health())[1]["sip_registered_phones"] == 1
    appliance.sip_directory.set_bindings("alice", [
        *appliance.location.lookup("alice", time.time()),
        Binding(aor="alice", uri="sip:alice@192.0.2.9", expires_at=time.time() + 60,
                call_id="c", cseq=1, transport="tcp", source=("192.0.2.9", 5060))])
    assert len(await listed(api)) == 2
    assert (await appliance.health())[1]["sip_registered_phones"] == 2
    assert "2 phones registered" in appliance.status_line()


async def test_openapi_describes_the_resource_as_served(api: Api, appliance: Appliance) -> None:
    await make_client(api, "alice")
    assert (await sip_register(appliance, "alice")).status == 200
    async with api.session.get(f"{api.base}/openapi.yaml") as resp:
        spec = yaml.safe_load(await resp.text())
    for prefix in ("/restcomm", "/api"):
        for suffix in ("", ".json"):
            path = spec["paths"][f"{prefix}/2012-04-24/Accounts/{{AccountSid}}/Registrations"
                                 f"{suffix}"]
            assert list(path) == ["parameters", "get"]  # GET only: the rest is 405
            names = {spec["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]["name"]
                     for p in path["get"]["parameters"]}
            assert names == {"Login", "Transport", "SubAccounts"}
    schema = spec["components"]["schemas"]["Registration"]
    [reg] = await listed(api)
    assert list(schema["properties"]) == list(reg)
    assert set(schema["required"]) == set(reg) - {"user_agent"}


async def test_a_saved_binding_of_a_client_gone_meanwhile_is_not_restored(tmp_path: Path
                                                                         ) -> None:
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                  domain="pbx.example.com"),
                    media=MediaConfig(workers=0))
    first = Appliance(config)
    await first.start()
    try:
        password = (config.data_dir / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            admin = Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                        password, config.data_dir)
            sid = await make_client(admin, "alice")
        assert (await sip_register(first, "alice")).status == 200
        await first.registrar.flush()
        # Gone behind the services' back (a database restored from before alice existed).
        await first.store.delete_client(sid)
    finally:
        await first.stop()
    second = Appliance(config)
    await second.start()
    try:
        assert len(second.location) == 0
        assert (await second.health())[1]["sip_registered_phones"] == 0
    finally:
        await second.stop()


async def test_health_shows_a_full_proxy_budget_while_new_calls_get_503(
        api: Api, appliance: Appliance) -> None:
    """While the proxy's budget of requests in flight is full, every new call is refused
    503: /health says so (503, which budget, how full) instead of "up", and is 200 again
    once the call holding the budget has ended."""
    for login in ("alice", "bob", "carol"):
        await make_client(api, login)
    bob_port = free_udp_port()
    assert (await sip_register(appliance, "alice")).status == 200
    assert (await sip_register(appliance, "carol")).status == 200
    assert (await sip_register(appliance, "bob", local_port=bob_port)).status == 200
    appliance.proxy.max_contexts = 1

    async def health() -> tuple[int, dict[str, object]]:
        async with api.session.get(f"{api.base}/health") as resp:
            return resp.status, dict((await resp.json())["components"])

    assert (await health())[0] == 200
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bob:
        bob.bind(("127.0.0.1", bob_port))
        bob.setblocking(False)
        ringing = asyncio.create_task(sip_invite(appliance, "alice", "bob"))
        async with asyncio.timeout(3):
            invite = parse_message(await loop.sock_recv(bob, 65535))
        status, components = await health()
        assert status == 503
        assert components["sip"] == ("overloaded: new requests answered 503; full: "
                                     "proxied requests (1 of 1)")
        assert await sip_invite(appliance, "carol", "bob") == 503
        # Bob's phone is busy: the call ends, and with it the budget's use.
        assert isinstance(invite, Request)
        busy = ["SIP/2.0 486 Busy Here", *(f"{h.name}: {h.value}" for h in invite.headers
                                            if h.name in ("via", "from", "call-id", "cseq")),
                f"To: {invite.get('to')};tag=bob1", "Content-Length: 0"]
        await loop.sock_sendto(bob, ("\r\n".join(busy) + "\r\n\r\n").encode(),
                               ("127.0.0.1", appliance.config.sip.listen.port))
        assert await ringing == 486

    async def recovered() -> bool:  # the CDR is written after the 486 is relayed
        status, components = await health()
        return status == 200 and components["sip"] == "up"
    await until(recovered)
