"""Clients (api-behaviour.md §8.2) and their digest secrets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from yarl import URL

from appliance.app import Appliance
from tests.conftest import ADMIN_SID, Api, basic

BASE = f"Accounts/{ADMIN_SID}/Clients"
PW = "Pbx-edge-7"
NOT_FORM_ENCODED = ("Parameters must be form-encoded (Content-Type: "
                    "application/x-www-form-urlencoded or multipart/form-data)")


async def make(api: Api, login: str, **extra: str) -> dict[str, str]:
    status, body, _ = await api.post(f"{BASE}.json", {"Login": login, "Password": PW, **extra})
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


async def test_create_shape_and_no_password(api: Api) -> None:
    client = await make(api, "alice")
    assert list(client) == ["sid", "date_created", "date_updated", "account_sid", "api_version",
                            "friendly_name", "login", "password_algorithm", "status",
                            "voice_method", "voice_fallback_method", "uri"]
    assert client["status"] == "1" and client["friendly_name"] == "alice"
    assert client["password_algorithm"] == "MD5"
    assert client["uri"] == f"/2012-04-24/{BASE}/{client['sid']}.json"
    assert "password" not in client
    status, body, _ = await api.get(f"{BASE}/{client['sid']}")
    assert "<Password>" not in body and PW not in body


async def test_xml_shape_matches_restcomm(api: Api) -> None:
    client = await make(api, "xmlbob", VoiceUrl="http://127.0.0.1:9/app.xml")
    status, body, _ = await api.get(f"{BASE}/{client['sid']}")
    root = ET.fromstring(body)
    assert root.tag == "RestcommResponse"
    tags = [child.tag for child in root.find("Client")]  # type: ignore[union-attr]
    assert tags == ["Sid", "DateCreated", "DateUpdated", "AccountSid", "ApiVersion",
                    "FriendlyName", "Login", "Password_Algorithm", "Status", "VoiceUrl",
                    "VoiceMethod", "VoiceFallbackMethod", "Uri"]
    assert body.startswith("<RestcommResponse>\n  <Client>\n    <Sid>")


async def test_ha1_uses_the_sip_realm(api: Api, appliance: Appliance) -> None:
    client = await make(api, "realmuser")
    stored = await appliance.store.get_client(client["sid"])
    assert stored is not None
    assert stored.realm == "pbx.example.com"
    expected = hashlib.md5(f"realmuser:pbx.example.com:{PW}".encode()).hexdigest()
    assert stored.ha1_md5 == expected
    assert stored.ha1_sha256 == hashlib.sha256(
        f"realmuser:pbx.example.com:{PW}".encode()).hexdigest()


def test_documented_ha1_example() -> None:
    assert hashlib.md5(b"alice:pbx.example.com:Pbx-edge-7").hexdigest() == \
        "a3066eabc32ab2a01367eabcced9a251"


async def test_list_update_delete(api: Api) -> None:
    a = await make(api, "one")
    await make(api, "two")
    status, body, _ = await api.get(f"{BASE}.json")
    assert sorted(c["login"] for c in json.loads(body)) == ["one", "two"]
    status, body, _ = await api.get(f"{BASE}/")  # the seeds' trailing-slash form
    assert status == 200 and body.count("<Client>") == 2
    status, body, _ = await api.request("PUT", f"{BASE}/{a['sid']}.json",
                                        data={"Password": "NewPassword-9", "Status": "0",
                                              "VoiceUrl": "http://127.0.0.1:9/x",
                                              "FriendlyName": "Front desk"})
    updated = json.loads(body)
    assert status == 200 and updated["status"] == "0" and updated["friendly_name"] == "Front desk"
    assert updated["voice_url"] == "http://127.0.0.1:9/x"
    status, body, _ = await api.post(f"{BASE}/{a['sid']}.json", {"VoiceUrl": ""})
    assert "voice_url" not in json.loads(body)
    status, body, _ = await api.request("DELETE", f"{BASE}/{a['sid']}")
    assert status == 200 and body == ""
    status, _, _ = await api.request("DELETE", f"{BASE}/{a['sid']}")
    assert status == 404
    status, _, _ = await api.get(f"{BASE}/{a['sid']}")
    assert status == 404


@pytest.mark.parametrize(("data", "status", "text"), [
    ({"Password": PW}, 400, "Login can not be null."),
    ({"Login": "nopw"}, 400, "Password can not be null."),
    ({"Login": "a@b", "Password": PW}, 400, "Login a@b contains invalid character(s)"),
    ({"Login": "a?b", "Password": PW}, 400, "Login a?b contains invalid character(s)"),
    ({"Login": "with space", "Password": PW}, 400, None),
    ({"Login": "weak", "Password": "test"}, 400, '{"message": "Password too weak"}'),
    ({"Login": "badurl", "Password": PW, "VoiceUrl": "ftp://x"}, 400, None),
    ({"Login": "badmethod", "Password": PW, "VoiceMethod": "PATCH"}, 400, None),
    ({"Login": "badapp", "Password": PW, "VoiceApplicationSid": "junk"}, 400, None),
    ({"Login": "x" * 65, "Password": PW}, 400, "Login is longer than 64 characters"),
    ({"Login": "x" * 64 + "@", "Password": PW}, 400, "Login is longer than 64 characters"),
])
async def test_create_validation(api: Api, data: dict[str, str], status: int,
                                 text: str | None) -> None:
    got, body, _ = await api.post(f"{BASE}.json", data)
    assert got == status, body
    if text is not None:
        assert body == text


async def test_duplicate_logins_are_409(api: Api) -> None:
    await make(api, "dupe")
    status, body, _ = await api.post(f"{BASE}.json", {"Login": "dupe", "Password": PW})
    assert status == 409 and body == "A client with the same login already exists in this account."
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "other@example.com",
                                                        "Password": PW})
    other = api.as_user("other@example.com", PW)
    sid = json.loads(body)["sid"]
    status, body, _ = await other.post(f"Accounts/{sid}/Clients.json",
                                       {"Login": "dupe", "Password": PW})
    assert status == 409 and body.startswith("A client with the same name was already created")


async def test_parallel_creates_of_one_login_answer_as_sequential_ones(api: Api) -> None:
    # The duplicate check and the insert are two store calls: requests racing between them
    # reached the UNIQUE constraint on clients.login, a 500. Several rounds, as a race may
    # well be lost once by chance.
    for round_ in range(3):
        login = f"race{round_}"
        answers = await asyncio.gather(*(
            api.post(f"{BASE}.json", {"Login": login, "Password": f"Desk-phone-{i}x"})
            for i in range(10)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200] + [409] * 9, answers
        assert {body for status, body, _ in answers if status == 409} == {
            "A client with the same login already exists in this account."}


async def test_update_with_a_status_other_than_0_or_1_is_400_and_changes_nothing(
        api: Api) -> None:
    # These were 200 with the status unchanged: an admin sending Status=false believed the
    # phone was cut off while it still registered.
    client = await make(api, "statusdesk")
    for value in ("false", "disabled", "7", "-1", "2", "", "true"):
        status, body, _ = await api.post(f"{BASE}/{client['sid']}.json",
                                         {"Status": value, "FriendlyName": "changed"})
        assert status == 400, (value, body)
        assert body == f"Status must be 0 (disabled) or 1 (enabled), not {value!r}"
    status, body, _ = await api.get(f"{BASE}/{client['sid']}.json")
    assert (json.loads(body)["status"], json.loads(body)["friendly_name"]) == ("1",
                                                                               "statusdesk")
    for value, expected in (("0", "0"), (" 1 ", "1"), ("0", "0")):
        status, body, _ = await api.post(f"{BASE}/{client['sid']}.json", {"Status": value})
        assert status == 200 and json.loads(body)["status"] == expected, (value, body)


async def test_create_ignores_a_non_numeric_status_and_refuses_other_numbers(
        api: Api) -> None:
    # api-behaviour.md §8.2: a non-numeric Status on create is silently ignored (enabled),
    # as Restcomm does; a number other than 0 or 1 means nothing and is 400.
    assert (await make(api, "cr-false", Status="false"))["status"] == "1"
    assert (await make(api, "cr-empty", Status=""))["status"] == "1"
    assert (await make(api, "cr-zero", Status="0"))["status"] == "0"
    for value in ("7", "-1", "2"):
        status, body, _ = await api.post(f"{BASE}.json", {"Login": f"cr{value}",
                                                          "Password": PW, "Status": value})
        assert status == 400 and body.startswith("Status must be 0 (disabled) or 1"), body
    status, body, _ = await api.get(f"{BASE}.json")
    assert sorted(c["login"] for c in json.loads(body)) == ["cr-empty", "cr-false", "cr-zero"]


async def test_passwords_with_regex_metacharacters_are_accepted(api: Api) -> None:
    # Restcomm's scoring threw on `? * + ( ) [ \` and called the password too weak;
    # api-behaviour.md §0.4: they score like any other character.
    for i, password in enumerate(("Winter99+", "Tr0ub4dor(x)", "Str0ng+Passw0rd!",
                                  "Correct-horse?", "Xk9#mQ2*vL7z")):
        client = await make(api, f"meta{i}", Password=password)
        status, body, _ = await api.post(f"{BASE}/{client['sid']}.json",
                                         {"Password": password[::-1]})
        assert status == 200, (password, body)
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "meta@example.com",
                                                        "Password": "Tr0ub4dor(x)"})
    assert status == 200, body
    status, body, _ = await api.post(f"Accounts/{json.loads(body)['sid']}.json",
                                     {"Password": "Winter99+"})
    assert status == 200, body


async def test_client_of_another_account_is_403(api: Api) -> None:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "iso@example.com",
                                                        "Password": PW})
    sub_sid = json.loads(body)["sid"]
    mine = await make(api, "adminphone")
    sub = api.as_user("iso@example.com", PW)
    status, _, _ = await sub.get(f"Accounts/{sub_sid}/Clients/{mine['sid']}")
    assert status == 403
    # The admin, addressing the sub-account path, cannot see its own client there either.
    status, _, _ = await api.get(f"Accounts/{sub_sid}/Clients/{mine['sid']}")
    assert status == 403


async def test_control_characters_in_a_friendly_name_keep_the_xml_well_formed(
        api: Api) -> None:
    # XML 1.0 cannot carry them, even escaped: "?" instead (docs/api.md); JSON escapes them.
    client = await make(api, "ctl", FriendlyName="x\x01y\x0bz\x1b\tend")
    assert client["friendly_name"] == "x\x01y\x0bz\x1b\tend"
    for path in (BASE, f"{BASE}/{client['sid']}"):  # the list is a generated serializer
        status, body, _ = await api.get(path)
        assert status == 200, body
        got = ET.fromstring(body).find(".//Client/FriendlyName")  # parses
        assert got is not None and got.text == "x?y?z?\tend", path
    status, body, _ = await api.get(f"{BASE}.json")
    assert [c["friendly_name"] for c in json.loads(body)] == ["x\x01y\x0bz\x1b\tend"]


async def test_a_body_that_is_not_form_encoded_is_400_and_changes_nothing(api: Api) -> None:
    # Its parameters were silently left out: an update said 200 and changed nothing, a create
    # said "Login can not be null.".
    client = await make(api, "shape")
    auth = {"Authorization": basic(api.user, api.secret)}
    form = f"FriendlyName=renamed&Login=other&Password={PW}"
    for content_type, body in (
            ("application/json", json.dumps({"FriendlyName": "renamed", "Login": "other",
                                             "Password": PW})),
            ("text/plain", form), (None, form)):  # a form without its Content-Type too
        headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
        for method, path in (("PUT", f"/{client['sid']}"), ("POST", f"/{client['sid']}.json"),
                             ("POST", ".json")):
            async with api.session.request(method, api.url(BASE + path), data=body.encode(),
                                           headers=headers,
                                           skip_auto_headers=["Content-Type"]) as resp:
                assert resp.status == 400, (content_type, method, path)
                assert await resp.text() == NOT_FORM_ENCODED
    status, listed, _ = await api.get(f"{BASE}.json")
    assert [(c["login"], c["friendly_name"]) for c in json.loads(listed)] == [("shape", "shape")]
    # What is read stays accepted: multipart, a charset, any case, and no body at all (a JSON
    # client's bodiless POST leaves nothing out).
    url = api.url(f"{BASE}/{client['sid']}.json")
    multipart = aiohttp.FormData({"FriendlyName": "multi"}, default_to_multipart=True)
    assert multipart.is_multipart
    async with api.session.post(url, data=multipart(), headers=auth) as resp:
        assert resp.status == 200
        assert json.loads(await resp.text())["friendly_name"] == "multi"
    for content_type in ("application/x-www-form-urlencoded; charset=utf-8",
                         "Application/X-WWW-Form-Urlencoded"):
        async with api.session.post(url, data=b"FriendlyName=renamed",
                                    headers={**auth, "Content-Type": content_type}) as resp:
            assert resp.status == 200
            assert json.loads(await resp.text())["friendly_name"] == "renamed"
    async with api.session.post(url, headers={**auth, "Content-Type": "application/json"}
                                ) as resp:
        assert resp.status == 200


async def test_a_body_in_an_unknown_charset_or_a_false_encoding_is_400_not_500(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    # As curl sends them (-H 'Content-Encoding: gzip' with a plain body): raw bytes on a socket
    url = URL(api.url(f"{BASE}.json"))
    body = f"Login=odd&Password={PW}".encode()
    for extra in ("Content-Encoding: gzip\r\n"  # says gzip, is not
                  "Content-Type: application/x-www-form-urlencoded\r\n",
                  "Content-Type: application/x-www-form-urlencoded; charset=bogus\r\n"):
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(f"POST {url.raw_path} HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: {basic(api.user, api.secret)}\r\n{extra}"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)
        answer = (await asyncio.wait_for(reader.read(), 10)).decode()
        writer.close()
        assert answer.startswith("HTTP/1.1 400 "), (extra, answer)
        assert "\r\n\r\nThe request body could not be parsed: " in answer, answer
    status, listed, _ = await api.get(f"{BASE}.json")
    assert json.loads(listed) == []
    assert "Traceback" not in caplog.text
