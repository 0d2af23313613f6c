"""The response cache never serves a body older than a write the caller could have seen."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from appliance.store.db import FOREIGN_POLL
from tests.conftest import ADMIN_SID, Api

BASE = f"Accounts/{ADMIN_SID}/Clients"


async def logins(api: Api) -> list[str]:
    status, body, _ = await api.get(f"{BASE}.json")
    assert status == 200, body
    return [c["login"] for c in json.loads(body)]


async def test_each_write_is_seen_by_the_next_read(api: Api) -> None:
    assert await logins(api) == []
    assert await logins(api) == []  # now cached
    status, body, _ = await api.post(f"{BASE}.json", {"Login": "carol", "Password": "Pbx-edge-7"})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    assert await logins(api) == ["carol"]
    status, _, _ = await api.post(f"{BASE}/{sid}.json", {"FriendlyName": "Carol at reception"})
    assert status == 200
    status, body, _ = await api.get(f"{BASE}.json")
    assert json.loads(body)[0]["friendly_name"] == "Carol at reception"
    status, _, _ = await api.request("DELETE", f"{BASE}/{sid}.json")
    assert status == 200  # Restcomm answers a Client DELETE with 200
    assert await logins(api) == []


async def test_a_write_by_another_process_shows_within_the_poll_interval(api: Api) -> None:
    status, body, _ = await api.post(f"{BASE}.json", {"Login": "dave", "Password": "Pbx-edge-7"})
    assert status == 200, body
    status, body, _ = await api.get(f"{BASE}.json")
    assert json.loads(body)[0]["friendly_name"] == "dave"
    with sqlite3.connect(api.data_dir / "appliance.db") as conn:
        conn.execute("UPDATE clients SET friendly_name = 'Dave (edited offline)'")
    await asyncio.sleep(FOREIGN_POLL * 2)
    status, body, _ = await api.get(f"{BASE}.json")
    assert json.loads(body)[0]["friendly_name"] == "Dave (edited offline)"


async def test_a_cached_answer_is_only_for_the_same_credentials_and_format(api: Api) -> None:
    status, body, _ = await api.post(f"{BASE}.json", {"Login": "erin", "Password": "Pbx-edge-7"})
    assert status == 200, body
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                       "Password": "Sub-acct-Pw-91"})
    assert status == 200, body
    sub = api.as_user("sub@example.com", "Sub-acct-Pw-91")
    for _ in range(2):  # the second round is answered from the cache
        assert await logins(api) == ["erin"]
        status, body, headers = await api.get(BASE, headers={"Accept": "application/xml"})
        assert status == 200 and body.startswith("<RestcommResponse>"), body
        assert headers["Content-Type"] == "application/xml; charset=utf-8"  # type: ignore[index]
        status, body, headers = await api.get(BASE, headers={"Accept": "application/json"})
        assert status == 200 and json.loads(body)[0]["login"] == "erin"
        assert headers["Content-Type"] == "application/json; charset=utf-8"  # type: ignore[index]
        # Another account asking for the same URL gets its own answer: not in its subtree.
        assert (await sub.get(f"{BASE}.json"))[0] == 403
        assert (await api.as_user(ADMIN_SID, "wrong").get(f"{BASE}.json"))[0] == 401


async def test_a_cached_answer_does_not_outlive_a_password_change(api: Api) -> None:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "pw2@example.com",
                                                       "Password": "Sub-acct-Pw-91"})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    sub = api.as_user("pw2@example.com", "Sub-acct-Pw-91")
    for _ in range(2):
        assert (await sub.get(f"Accounts/{sid}/Clients.json"))[0] == 200
    status, _, _ = await api.post(f"Accounts/{sid}.json", {"Password": "New-acct-Pw-73"})
    assert status == 200
    assert (await sub.get(f"Accounts/{sid}/Clients.json"))[0] == 401
