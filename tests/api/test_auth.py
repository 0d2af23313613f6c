"""Authentication and the request pipeline (api-behaviour.md §2, §3, §5)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from tests.conftest import ADMIN_SID, Api, basic

WELL_KNOWN_TOKEN = "77f8c12cc7b8f8423e5c38b035249166"  # md5("RestComm")


async def test_admin_password_file_is_private_and_strong(api: Api) -> None:
    path = api.data_dir / "admin-password"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    assert len(api.secret) >= 20


@pytest.mark.parametrize("secret", ["RestComm", WELL_KNOWN_TOKEN, "", "admin"])
async def test_no_well_known_password_works(api: Api, secret: str) -> None:
    status, body, headers = await api.as_user(ADMIN_SID, secret).get(f"Accounts/{ADMIN_SID}")
    assert status == 401
    assert body == ""
    assert headers["WWW-Authenticate"] == 'Basic realm="Restcomm realm"'


async def test_sid_or_email_with_password_or_token(api: Api) -> None:
    token = hashlib.md5(api.secret.encode()).hexdigest()
    for user in (ADMIN_SID, "administrator@company.com", "Administrator@Company.com"):
        for secret in (api.secret, token):
            status, _, _ = await api.as_user(user, secret).get(f"Accounts/{ADMIN_SID}.json")
            assert status == 200, (user, secret)


async def test_friendly_name_is_not_a_login(api: Api) -> None:
    status, _, _ = await api.as_user("Default Administrator Account", api.secret).get(
        f"Accounts/{ADMIN_SID}")
    assert status == 401


@pytest.mark.parametrize("header", ["", "Bearer abc", "Basic !!!notbase64", "Basic " + "eA=="])
async def test_malformed_authorization_is_401(api: Api, header: str) -> None:
    status, _, _ = await api.request("GET", f"Accounts/{ADMIN_SID}", auth=False,
                                     headers={"Authorization": header} if header else {})
    assert status == 401


async def test_both_base_paths_behave_the_same(api: Api) -> None:
    a = await api.get(f"Accounts/{ADMIN_SID}.json", prefix="/restcomm")
    b = await api.get(f"Accounts/{ADMIN_SID}.json", prefix="/api")
    assert a[0] == b[0] == 200
    assert json.loads(a[1]) == json.loads(b[1])


async def test_json_by_suffix_or_accept_xml_by_default(api: Api) -> None:
    status, body, headers = await api.get(f"Accounts/{ADMIN_SID}")
    assert status == 200 and body.startswith("<RestcommResponse>")
    assert "<?xml" not in body
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}",
                                    headers={"Accept": "application/json"})
    assert json.loads(body)["sid"] == ADMIN_SID
    # The suffix may sit on any segment.
    status, body, _ = await api.get(f"Accounts.json/{ADMIN_SID}")
    assert status == 200 and json.loads(body)["sid"] == ADMIN_SID


async def test_logout_needs_no_auth(api: Api) -> None:
    status, _, _ = await api.get("Logout", auth=False)
    assert status == 200


async def test_oversized_body_is_413(api: Api) -> None:
    status, body, _ = await api.request(
        "POST", f"Accounts/{ADMIN_SID}/Clients", auth=True,
        headers={"Content-Length": "10000001", "Content-Type": "application/x-www-form-urlencoded"},
        data=None)
    assert status == 413


async def test_malformed_multipart_is_400_not_500(api: Api) -> None:
    status, _, _ = await api.request(
        "POST", f"Accounts/{ADMIN_SID}/Clients",
        headers={"Content-Type": "multipart/form-data"})
    assert status == 400


async def test_unknown_and_malformed_paths_are_404(api: Api) -> None:
    for path in (f"Accounts/{ADMIN_SID}/Nope", "Accounts/ACffffffffffffffffffffffffffffffff",
                 f"Accounts/{ADMIN_SID}/Clients/junk", f"Accounts/{ADMIN_SID}/Calls/x%00y",
                 "Accounts/not-a-sid/Clients"):
        status, _, _ = await api.get(path)
        assert status == 404, path


async def test_wrong_method_is_405(api: Api) -> None:
    status, _, headers = await api.request("DELETE", f"Accounts/{ADMIN_SID}")
    assert status == 405
    assert "GET" in headers["Allow"]


async def test_head_is_get_without_the_body(api: Api) -> None:
    path = f"Accounts/{ADMIN_SID}/Clients.json"
    status, body, headers = await api.get(path)
    assert status == 200 and body
    status, head_body, head_headers = await api.request("HEAD", path)
    assert status == 200 and head_body == ""
    assert head_headers["Content-Type"] == headers["Content-Type"]  # type: ignore[index]
    assert head_headers["Content-Length"] == str(len(body.encode()))  # type: ignore[index]
    status, _, _ = await api.as_user(ADMIN_SID, "wrong").request("HEAD", path)
    assert status == 401
    status, _, headers = await api.request("DELETE", f"Accounts/{ADMIN_SID}")
    assert status == 405 and headers["Allow"] == "GET, HEAD, POST, PUT"  # type: ignore[index]


async def test_xml_suffix_asks_for_xml(api: Api) -> None:
    # The API docs' "Responses": `Calls.xml` yields XML, as `Calls.json` yields JSON.
    for path in (f"Accounts/{ADMIN_SID}/Calls.xml", f"Accounts/{ADMIN_SID}.xml",
                 f"Accounts/{ADMIN_SID}/Clients.xml"):
        status, body, headers = await api.get(path, headers={"Accept": "application/json"})
        assert status == 200, (path, body)
        assert body.startswith("<RestcommResponse>"), path
        assert "xml" in headers["Content-Type"]  # type: ignore[index]


async def test_basic_header_helper_roundtrip() -> None:
    assert basic("a", "b:c") == "Basic YTpiOmM="


async def test_encoded_slash_does_not_reroute(api: Api) -> None:
    status, _, _ = await api.get(f"Accounts/{ADMIN_SID}%2FClients")
    assert status == 404


async def test_trailing_newline_is_not_a_valid_sid_or_login(api: Api) -> None:
    status, _, _ = await api.get(f"Accounts/{ADMIN_SID}%0A")
    assert status == 404
    status, _, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                  {"Login": "alice\n", "Password": "Pbx-edge-7"})
    assert status == 400
