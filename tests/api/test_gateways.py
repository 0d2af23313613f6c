"""Gateways (api-behaviour.md §8.7): super-admin only, Restcomm's validation order."""

from __future__ import annotations

import asyncio
import json

import pytest

from appliance.app import Appliance
from appliance.models import Gateway
from appliance.services.gateways import IPV6_UNSUPPORTED
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
    # Its first REGISTER is due (nobody answers at 127.0.0.1:5099); no error to show yet.
    assert gw["registration_state"] == "registering"
    assert "registration_error" not in gw
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


NAME_TAKEN = ("A gateway named 'mygateway' already exists: FriendlyName must be unique, "
              "as outbound routes and [inbound.sources] name gateways by it")


async def test_a_duplicate_friendly_name_is_409(api: Api) -> None:
    """Routes and [inbound.sources] name gateways by FriendlyName: a second gateway with the
    same name took the route over silently (and /health listed one of the two)."""
    status, body, _ = await api.post(f"{GW}.json", SEED)
    assert status == 200, body
    first = json.loads(body)["sid"]
    status, body, _ = await api.post(f"{GW}.json", {**SEED, "UserName": "other"})
    assert (status, body) == (409, NAME_TAKEN)
    # The default FriendlyName (the UserName) is checked the same way.
    no_name = {k: v for k, v in SEED.items() if k != "FriendlyName"}
    status, body, _ = await api.post(f"{GW}.json", {**no_name, "UserName": "mygateway"})
    assert (status, body) == (409, NAME_TAKEN)

    # Renaming another gateway onto the name is refused, and changes nothing.
    status, body, _ = await api.post(f"{GW}.json", {**SEED, "FriendlyName": "backup"})
    assert status == 200, body
    second = json.loads(body)["sid"]
    status, body, _ = await api.post(f"{GW}/{second}.json", {"FriendlyName": "mygateway"})
    assert (status, body) == (409, NAME_TAKEN)
    _, body, _ = await api.get(f"{GW}.json")
    assert sorted((g["sid"], g["friendly_name"]) for g in json.loads(body)) == sorted(
        [(first, "mygateway"), (second, "backup")])
    # Keeping one's own name, or taking a free one, is fine.
    status, body, _ = await api.post(f"{GW}/{first}.json", {"FriendlyName": "mygateway",
                                                            "TTL": "600"})
    assert status == 200, body
    status, body, _ = await api.post(f"{GW}/{second}.json", {"FriendlyName": "spare"})
    assert status == 200 and json.loads(body)["friendly_name"] == "spare"
    status, body, _ = await api.post(f"{GW}/{second}.json", {"FriendlyName": "backup"})
    assert status == 200


async def test_concurrent_creates_with_one_friendly_name(api: Api) -> None:
    for round_ in range(3):
        name = f"race{round_}"
        answers = await asyncio.gather(*(
            api.post(f"{GW}.json", {**SEED, "FriendlyName": name, "UserName": f"u{i}"})
            for i in range(5)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200] + [409] * 4, answers
        assert {body for status, body, _ in answers if status == 409} == {
            NAME_TAKEN.replace("'mygateway'", repr(name))}
    _, body, _ = await api.get(f"{GW}.json")
    assert sorted(g["friendly_name"] for g in json.loads(body)) == ["race0", "race1", "race2"]


async def test_racing_past_the_check_gives_the_same_409(api: Api, appliance: Appliance,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests that both passed the service's check: the database's unique index
    decides, and the loser gets what a later duplicate gets."""
    status, body, _ = await api.post(f"{GW}.json", SEED)
    assert status == 200, body
    status, body, _ = await api.post(f"{GW}.json", {**SEED, "FriendlyName": "backup"})
    second = json.loads(body)["sid"]
    store = appliance.gateways._store  # noqa: SLF001
    real_all = store.all

    async def before_the_first(*_: object) -> list[Gateway]:
        return [g for g in await real_all() if g.friendly_name != "mygateway"]

    monkeypatch.setattr(store, "all", before_the_first)
    status, body, _ = await api.post(f"{GW}.json", {**SEED, "UserName": "other"})
    assert (status, body) == (409, NAME_TAKEN)
    status, body, _ = await api.post(f"{GW}/{second}.json", {"FriendlyName": "mygateway"})
    assert (status, body) == (409, NAME_TAKEN)
    monkeypatch.undo()
    assert len(await store.all()) == 2  # the rename did not replace the other gateway


async def test_an_ipv6_proxy_is_400(api: Api) -> None:
    """`Proxy=[::1]:45070` was accepted and could never register (`cannot resolve`): the trunk
    registers over [sip] listen's one UDP socket, IPv4 by default."""
    for proxy in ("[::1]:45070", "[2001:db8::1]", "sip:[::1]:5060"):
        status, body, _ = await api.post(f"{GW}.json", {**SEED, "Proxy": proxy})
        assert (status, body) == (400, IPV6_UNSUPPORTED), proxy
    status, body, _ = await api.post(f"{GW}.json", SEED)
    sid = json.loads(body)["sid"]
    status, body, _ = await api.post(f"{GW}/{sid}.json", {"Proxy": "[::1]:45070"})
    assert (status, body) == (400, IPV6_UNSUPPORTED)
    _, body, _ = await api.get(f"{GW}/{sid}.json")
    assert json.loads(body)["proxy"] == SEED["Proxy"]
