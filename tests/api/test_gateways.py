"""Gateways (api-behaviour.md §8.7): super-admin only, Restcomm's validation order."""

from __future__ import annotations

import json

from tests.conftest import ADMIN_SID, Api

GW = f"Accounts/{ADMIN_SID}/Management/Gateways"
SEED = {"FriendlyName": "mygateway", "UserName": "username", "Password": "password",
        "Proxy": "127.0.0.1:5099", "Register": "true", "TTL": "3600"}


async def test_create_list_update_delete(api: Api) -> None:
    status, body, _ = await api.post(f"{GW}.json", SEED)
    assert status == 200, body
    gw = json.loads(body)
    assert list(gw)[:10] == ["sid", "date_created", "date_updated", "friendly_name", "password",
                             "proxy", "register", "user_name", "time_to_live", "uri"]
    assert gw["register"] is True and gw["time_to_live"] == 3600
    assert gw["uri"] == f"/2012-04-24/Management/Gateways/{gw['sid']}.json"
    assert "registration_state" in gw
    status, body, _ = await api.get(GW)
    assert "<Gateways>" in body and "mygateway" in body
    status, body, _ = await api.post(f"{GW}/{gw['sid']}.json",
                                     {"FriendlyName": "MyGatewayNewName",
                                      "UserName": "newUserName", "Register": "false"})
    updated = json.loads(body)
    assert updated["friendly_name"] == "MyGatewayNewName" and updated["register"] is False
    assert updated["user_name"] == "newUserName"
    status, _, _ = await api.request("DELETE", f"{GW}/{gw['sid']}")
    assert status == 200
    status, _, _ = await api.request("DELETE", f"{GW}/{gw['sid']}")
    assert status == 200  # Restcomm: no existence check
    status, _, _ = await api.get(f"{GW}/{gw['sid']}.json")
    assert status == 404


async def test_validation_order(api: Api) -> None:
    cases = [({}, "UserName can not be null."),
             ({"UserName": "u"}, "Password can not be null."),
             ({"UserName": "u", "Password": "p"}, "The Proxy can not be null"),
             ({"UserName": "u", "Password": "p", "Proxy": "h"}, "Register must be true or false"),
             ({"UserName": "u", "Password": "p", "Proxy": "h", "Register": "true"}, None),
             ({**SEED, "TTL": "soon"}, None),
             ({**SEED, "Proxy": "bad host/evil"}, None)]
    for data, text in cases:
        status, body, _ = await api.post(f"{GW}.json", data)
        assert status == 400, (data, body)
        if text:
            assert body == text


async def test_only_the_super_admin(api: Api) -> None:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                        "Password": "Pbx-edge-7"})
    sub = json.loads(body)["sid"]
    other = api.as_user("sub@example.com", "Pbx-edge-7")
    status, _, _ = await other.get(f"Accounts/{sub}/Management/Gateways.json")
    assert status == 403
    status, _, _ = await other.post(f"Accounts/{sub}/Management/Gateways.json", SEED)
    assert status == 403
