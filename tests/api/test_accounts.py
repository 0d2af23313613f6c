"""Accounts: the 3-level tree, roles, status, password changes (api-behaviour.md §4, §8.1)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from tests.conftest import ADMIN_SID, Api, free_port

PW = "Pbx-edge-7"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


async def create(api: Api, email: str, password: str = PW, **extra: str) -> dict[str, object]:
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": email,
                                                        "Password": password, **extra})
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


async def test_create_sub_account_shape(api: Api) -> None:
    acct = await create(api, "Alice@Example.com", FriendlyName="Alice Co")
    assert acct["sid"] == "AC" + md5("alice@example.com")
    assert acct["sid"] == "ACc160f8cc69a4f0bf2b0362752353d060"
    assert acct["email_address"] == "alice@example.com"
    assert acct["auth_token"] == md5(PW)
    assert acct["status"] == "active" and acct["type"] == "Full"
    assert acct["role"] == "Administrator"  # copied from the parent
    assert list(acct) == ["sid", "organization", "friendly_name", "email_address", "type",
                          "status", "role", "date_created", "date_updated", "auth_token", "uri",
                          "subresource_uris"]
    assert acct["uri"] == f"/2012-04-24/Accounts.json/{acct['sid']}"


async def test_new_account_gets_a_linked_client(api: Api) -> None:
    acct = await create(api, "carol@example.com")
    child = api.as_user("carol@example.com", PW)
    status, body, _ = await child.get(f"Accounts/{acct['sid']}/Clients.json")
    assert status == 200
    clients = json.loads(body)
    assert [c["login"] for c in clients] == ["carol"]


async def test_create_errors_in_restcomm_order(api: Api) -> None:
    cases = [
        ({}, 400, "Email address can not be null."),
        ({"EmailAddress": "x@example.com"}, 400, "Password can not be null."),
        ({"EmailAddress": "not-an-email", "Password": PW}, 400,
         "Provided email address not-an-email is not valid"),
        ({"EmailAddress": "a=b@example.com", "Password": PW}, 400,
         "Login a=b contains invalid character(s) "),
        ({"EmailAddress": "weak@example.com", "Password": "RestComm"}, 400,
         '{"message": "Password too weak"}'),
        ({"EmailAddress": "administrator@company.com", "Password": PW}, 409,
         "The email address used for the new account is already in use."),
        ({"EmailAddress": "bad@example.com", "Password": PW, "Status": "sleepy"}, 400, None),
    ]
    for data, status, text in cases:
        got_status, body, _ = await api.post("Accounts.json", data)
        assert got_status == status, (data, body)
        if text is not None:
            assert body == text


async def test_duplicate_email_is_409(api: Api) -> None:
    await create(api, "dup@example.com")
    status, _, _ = await api.post("Accounts.json", {"EmailAddress": "DUP@example.com",
                                                     "Password": PW})
    assert status == 409


async def test_parallel_creates_of_one_email_answer_as_sequential_ones(api: Api) -> None:
    # Two requests racing between the duplicate check and the insert met the UNIQUE
    # constraint on accounts.email_address: a 500 instead of the duplicate's 409.
    for round_ in range(3):
        answers = await asyncio.gather(*(
            api.post("Accounts.json", {"EmailAddress": f"race{round_}@example.com",
                                       "Password": f"Desk-phone-{i}x"})
            for i in range(10)))
        assert sorted(status for status, _, _ in answers) == [200] + [409] * 9, answers
        assert {body for status, body, _ in answers if status == 409} == {
            "The email address used for the new account is already in use."}


async def test_parallel_accounts_with_one_local_part_share_no_linked_client(api: Api) -> None:
    # Each new account gets a linked Client named by its email's local part, skipped when
    # that login exists: accounts created at once with one local part all succeed, and
    # exactly one of them has the Client.
    answers = await asyncio.gather(*(
        api.post("Accounts.json", {"EmailAddress": f"desk@site{i}.example.com",
                                   "Password": PW}) for i in range(10)))
    assert [status for status, _, _ in answers] == [200] * 10, answers
    logins = []
    for _, body, _ in answers:
        acct = json.loads(body)
        status, clients, _ = await api.get(f"Accounts/{acct['sid']}/Clients.json")
        assert status == 200
        logins += [c["login"] for c in json.loads(clients)]
    assert logins == ["desk"]


async def test_tree_is_three_levels_deep(api: Api) -> None:
    await create(api, "child@example.com")
    child = api.as_user("child@example.com", PW)
    status, body, _ = await child.post("Accounts.json", {"EmailAddress": "grand@example.com",
                                                          "Password": PW})
    assert status == 200, body
    grand = api.as_user("grand@example.com", PW)
    status, body, _ = await grand.post("Accounts.json", {"EmailAddress": "great@example.com",
                                                          "Password": PW})
    assert status == 400
    assert json.loads(body) == {"message": "This account is not allowed to have sub-accounts"}


async def test_list_returns_direct_children_only(api: Api) -> None:
    await create(api, "c1@example.com")
    child = api.as_user("c1@example.com", PW)
    await child.post("Accounts.json", {"EmailAddress": "g1@example.com", "Password": PW})
    status, body, _ = await api.get("Accounts.json")
    assert [a["email_address"] for a in json.loads(body)] == ["c1@example.com"]
    status, body, _ = await api.get("Accounts")
    assert "<Accounts>" in body and "c1@example.com" in body


async def test_children_cannot_touch_parent_or_siblings(api: Api) -> None:
    a = await create(api, "a@example.com")
    b = await create(api, "b@example.com")
    alice = api.as_user("a@example.com", PW)
    for path in (f"Accounts/{ADMIN_SID}", f"Accounts/{b['sid']}",
                 f"Accounts/{ADMIN_SID}/Clients", f"Accounts/{b['sid']}/Clients.json",
                 f"Accounts/{ADMIN_SID}/Calls.json", f"Accounts/{b['sid']}/SMS/Messages"):
        status, _, _ = await alice.get(path)
        assert status == 403, path
    status, _, _ = await alice.post(f"Accounts/{ADMIN_SID}", {"FriendlyName": "mine"})
    assert status == 403
    # The parent reaches into its children's resources.
    status, _, _ = await api.get(f"Accounts/{a['sid']}/Clients.json")
    assert status == 200


async def test_sub_resources_accept_email_or_friendly_name(api: Api) -> None:
    acct = await create(api, "named@example.com", FriendlyName="Named Co")
    for key in ("named@example.com", "Named Co", acct["sid"]):
        status, body, _ = await api.get(f"Accounts/{key}/Clients.json")
        assert status == 200, key


async def test_a_friendly_name_never_captures_another_accounts_sid_or_email(api: Api) -> None:
    """Any account may rename itself: naming itself after the administrator's SID (or
    another account's email) must not route the administrator's own paths to it."""
    mallory = await create(api, "mallory@example.com")
    other = await create(api, "other@example.com")
    as_mallory = api.as_user("mallory@example.com", PW)
    for name in (ADMIN_SID, "other@example.com"):
        status, body, _ = await as_mallory.post(f"Accounts/{mallory['sid']}.json",
                                                {"FriendlyName": name})
        assert status == 200, body
        status, body, _ = await api.post(f"Accounts/{name}/Clients.json",
                                         {"Login": f"desk{len(name)}", "Password": PW})
        assert status == 200, body
        owner = ADMIN_SID if name == ADMIN_SID else other["sid"]
        assert json.loads(body)["account_sid"] == owner
    status, body, _ = await as_mallory.get(f"Accounts/{mallory['sid']}/Clients.json")
    assert [c["login"] for c in json.loads(body)] == ["mallory"]  # only its own linked one


async def test_a_friendly_name_two_accounts_share_is_refused_not_guessed(api: Api) -> None:
    first = await create(api, "first@example.com", FriendlyName="Sales")
    await create(api, "second@example.com", FriendlyName="Sales")
    status, body, _ = await api.get("Accounts/Sales/Clients.json")
    assert status == 400 and "2 accounts are named 'Sales'" in body
    # Within one's own tree the name is unique again.
    status, body, _ = await api.as_user("first@example.com", PW).get(
        "Accounts/Sales/Clients.json")
    assert status == 200 and [c["account_sid"] for c in json.loads(body)] == [first["sid"]]
    # A descendant named like its ancestor takes nothing from it: its own name is its own.
    await create(api, "copycat@example.com", FriendlyName="Default Administrator Account")
    status, body, _ = await api.post("Accounts/Default Administrator Account/Clients.json",
                                     {"Login": "front", "Password": PW})
    assert status == 200 and json.loads(body)["account_sid"] == ADMIN_SID, body


async def test_a_closed_account_takes_no_new_resources(api: Api) -> None:
    gone = await create(api, "gone@example.com")
    status, _, _ = await api.post(f"Accounts/{gone['sid']}", {"Status": "closed"})
    assert status == 200
    base = f"Accounts/{gone['sid']}"
    for path, form in ((f"{base}/Clients.json", {"Login": "ghost", "Password": PW}),
                       (f"{base}/IncomingPhoneNumbers.json", {"PhoneNumber": "+15557770000"}),
                       (f"{base}/Applications.json", {"FriendlyName": "x"}),
                       (f"{base}/SMS/Messages.json", {"From": "a", "To": "+15551230000",
                                                      "Body": "hi"})):
        status, body, _ = await api.post(path, form)
        assert (status, body) == (400, "Account is closed"), path
    status, body, _ = await api.get(f"{base}/Clients.json")  # its history stays readable
    assert status == 200
    # What exists may still be changed (a live call hung up): no such call here, so 404
    status, body, _ = await api.post(f"{base}/Calls/CA{'0' * 32}.json", {"Status": "completed"})
    assert status == 404, body
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": "+15557770000"})
    assert status == 200, body  # the number was never taken by the closed account


async def test_password_change_gives_new_token_and_syncs_client(api: Api) -> None:
    acct = await create(api, "pw@example.com")
    old = api.as_user("pw@example.com", PW)
    old_by_token = api.as_user(acct["sid"], acct["auth_token"])
    # Both work (and are remembered as verified) before the change ...
    assert (await old.get(f"Accounts/{acct['sid']}"))[0] == 200
    assert (await old_by_token.get(f"Accounts/{acct['sid']}"))[0] == 200
    status, body, _ = await api.post(f"Accounts/{acct['sid']}.json", {"Password": "Admin2024!"})
    assert status == 200
    assert json.loads(body)["auth_token"] == md5("Admin2024!")
    # ... and neither works after it.
    assert (await old_by_token.get(f"Accounts/{acct['sid']}"))[0] == 401
    new = api.as_user("pw@example.com", "Admin2024!")
    assert (await old.get(f"Accounts/{acct['sid']}"))[0] == 401
    assert (await new.get(f"Accounts/{acct['sid']}"))[0] == 200
    status, body, _ = await api.post(f"Accounts/{acct['sid']}", {"Password": "office123"})
    assert status == 400 and "weak" in body


async def test_password_change_reaches_the_linked_client_whatever_the_emails_case(
        api: Api, appliance: Appliance) -> None:
    # The linked Client keeps the local part as typed ("John.Smith") while the email is
    # stored lower-cased: a password change looked up "john.smith" and left the phone's
    # login on the old password.
    for email in ("John.Smith@office.example", "mary@office.example"):
        acct = await create(api, email)
        login = email.split("@")[0]
        before = await appliance.store.get_client_by_login(login)
        assert before is not None
        status, body, _ = await api.post(f"Accounts/{acct['sid']}.json",
                                         {"Password": "Rotated-pass-9", "FriendlyName": "New"})
        assert status == 200, body
        after = await appliance.store.get_client_by_login(login)
        assert after is not None and after.sid == before.sid
        assert after.friendly_name == "New"
        assert after.ha1_md5 == md5(f"{login}:{after.realm}:Rotated-pass-9")
        assert after.ha1_md5 != before.ha1_md5


async def test_status_change_is_recursive_and_blocks_login(api: Api) -> None:
    parent = await create(api, "p@example.com")
    p = api.as_user("p@example.com", PW)
    status, body, _ = await p.post("Accounts.json", {"EmailAddress": "k@example.com",
                                                      "Password": PW})
    kid = json.loads(body)
    status, body, _ = await api.post(f"Accounts/{parent['sid']}.json", {"Status": "SUSPENDED"})
    assert status == 200 and json.loads(body)["status"] == "suspended"
    status, body, _ = await api.get(f"Accounts/{kid['sid']}.json")
    assert json.loads(body)["status"] == "suspended"
    status, body, _ = await api.as_user("k@example.com", PW).get(f"Accounts/{kid['sid']}")
    assert status == 403 and body == "Provided Account is not active"
    status, _, _ = await api.post(f"Accounts/{parent['sid']}", {"Status": "bogus"})
    assert status == 400


async def test_closed_account_loses_clients_keeps_nothing_editable(api: Api) -> None:
    acct = await create(api, "close@example.com")
    status, _, _ = await api.post(f"Accounts/{acct['sid']}", {"Status": "closed"})
    assert status == 200
    status, body, _ = await api.get(f"Accounts/{acct['sid']}/Clients.json")
    assert json.loads(body) == []
    status, body, _ = await api.post(f"Accounts/{acct['sid']}", {"FriendlyName": "again"})
    assert status == 400 and body == "Account is closed"


async def test_role_rules(api: Api) -> None:
    await create(api, "dev@example.com", Role="Developer")
    dev = api.as_user("dev@example.com", PW)
    status, body, _ = await dev.get("Accounts/dev@example.com.json")
    assert json.loads(body)["role"] == "Developer"
    sid = json.loads(body)["sid"]
    status, body, _ = await dev.post(f"Accounts/{sid}", {"Role": "Administrator"})
    assert status == 403 and body == "Only Administrator allowed"
    # A Developer may not write notifications or send SMS (Restcomm #1454), but may read them.
    status, _, _ = await dev.get(f"Accounts/{sid}/SMS/Messages.json")
    assert status == 200


async def test_uninitialized_account_may_only_set_its_password(api: Api) -> None:
    acct = await create(api, "new@example.com", Status="uninitialized")
    user = api.as_user("new@example.com", PW)
    status, body, _ = await user.get(f"Accounts/{acct['sid']}/Clients.json")
    assert status == 403 and "password" in body
    status, body, _ = await user.get(f"Accounts/{acct['sid']}.json")
    assert status == 200 and json.loads(body)["status"] == "uninitialized"
    status, body, _ = await user.post(f"Accounts/{acct['sid']}.json", {"Password": "Admin2024!"})
    assert status == 200 and json.loads(body)["status"] == "active"
    status, _, _ = await api.as_user("new@example.com", "Admin2024!").get(
        f"Accounts/{acct['sid']}/Clients.json")
    assert status == 200


async def test_roles_are_administrator_or_developer_in_any_case(api: Api) -> None:
    # "administrator" used to be stored as given and grant nothing: the account was locked out.
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "r@example.com",
                                                       "Password": PW, "Role": "Superuser"})
    assert status == 400 and body == "Role Superuser is not one of Administrator, Developer"
    acct = await create(api, "r@example.com", Role="developer")
    assert acct["role"] == "Developer"
    status, body, _ = await api.post(f"Accounts/{acct['sid']}.json", {"Role": "administrator"})
    assert status == 200 and json.loads(body)["role"] == "Administrator"
    status, body, _ = await api.post(f"Accounts/{acct['sid']}.json", {"Role": "admin"})
    assert status == 400 and body == "Role admin is not one of Administrator, Developer"
    status, body, _ = await api.post(f"Accounts/{acct['sid']}.json", {"Role": ""})
    assert status == 400
    status, body, _ = await api.get(f"Accounts/{acct['sid']}.json")
    assert json.loads(body)["role"] == "Administrator"


async def test_the_top_level_account_keeps_its_role_and_status(api: Api) -> None:
    # Nobody is above it to undo a change: demoted, suspended or closed (which also purged
    # every Client of the tree), the administrator was locked out of the API for good.
    child = await create(api, "kept@example.com")
    me = f"Accounts/{ADMIN_SID}.json"
    for field, value in [("Role", "Developer"), ("Status", "closed"),
                         ("Status", "suspended"), ("Status", "inactive")]:
        status, body, _ = await api.request("PUT", me, data={field: value})
        assert (status, body) == (403, f"The top-level account's {field} cannot be changed")
    status, body, _ = await api.request("PUT", me, data={"Role": "administrator",
                                                          "Status": "Active",
                                                          "FriendlyName": "Main office"})
    assert status == 200, body
    account = json.loads(body)
    assert (account["role"], account["status"], account["friendly_name"]) == (
        "Administrator", "active", "Main office")
    status, body, _ = await api.get(f"Accounts/{child['sid']}/Clients.json")
    assert status == 200 and [c["login"] for c in json.loads(body)] == ["kept"]
    await create(api, "after@example.com")
    # The status of the accounts below it still changes.
    status, body, _ = await api.post(f"Accounts/{child['sid']}.json", {"Status": "suspended"})
    assert status == 200 and json.loads(body)["status"] == "suspended"


async def test_a_closed_account_stays_closed_when_its_parent_changes_status(api: Api) -> None:
    # The recursive status change used to reach closed descendants too: suspending and then
    # re-activating the parent brought a closed grandchild back, able to log in and write.
    parent = await create(api, "cp@example.com")
    p = api.as_user("cp@example.com", PW)
    status, body, _ = await p.post("Accounts.json", {"EmailAddress": "cc@example.com",
                                                      "Password": PW})
    closed = json.loads(body)
    status, body, _ = await p.post("Accounts.json", {"EmailAddress": "co@example.com",
                                                      "Password": PW})
    other = json.loads(body)
    status, _, _ = await p.request("PUT", f"Accounts/{closed['sid']}.json",
                                   data={"Status": "closed"})
    assert status == 200
    for value in ("suspended", "active"):
        status, body, _ = await api.request("PUT", f"Accounts/{parent['sid']}.json",
                                            data={"Status": value})
        assert status == 200 and json.loads(body)["status"] == value
        status, body, _ = await api.get(f"Accounts/{other['sid']}.json")
        assert json.loads(body)["status"] == value  # the rest of the subtree follows
        status, body, _ = await api.get(f"Accounts/{closed['sid']}.json")
        assert json.loads(body)["status"] == "closed"
    c = api.as_user("cc@example.com", PW)
    status, body, _ = await c.get(f"Accounts/{closed['sid']}/Clients.json")
    assert status == 403 and body == "Provided Account is not active"
    status, _, _ = await c.post(f"Accounts/{closed['sid']}/Clients.json",
                                {"Login": "back", "Password": PW})
    assert status == 403
    status, body, _ = await api.get(f"Accounts/{closed['sid']}/Clients.json")
    assert json.loads(body) == []


async def test_roles_an_older_version_stored_in_another_spelling_work_after_the_upgrade(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An older version stored any Role string. After the upgrade "administrator" is the
    Administrator role (its sub-account can create Clients again), and an account with a
    role that grants nothing is named at start."""
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port())),
                    media=MediaConfig(workers=0))

    def admin(session: aiohttp.ClientSession) -> Api:
        password = (config.data_dir / "admin-password").read_text().strip()
        return Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                   password, config.data_dir)

    first = Appliance(config)
    await first.start()
    try:
        async with aiohttp.ClientSession() as session:
            sids = []
            for email in ("lower@example.com", "odd@example.com"):
                status, body, _ = await admin(session).post("Accounts.json", {
                    "EmailAddress": email, "Password": "Sub-acct-pass-9"})
                assert status == 200, body
                sids.append(json.loads(body)["sid"])
    finally:
        await first.stop()
    with sqlite3.connect(config.data_dir / "appliance.db") as db:  # as an older version left it
        db.execute("UPDATE accounts SET role = 'administrator' WHERE sid = ?", (sids[0],))
        db.execute("UPDATE accounts SET role = 'Nobody' WHERE sid = ?", (sids[1],))
        db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm009_role_spelling'")
    caplog.set_level(logging.WARNING)
    second = Appliance(config)
    await second.start()
    try:
        async with aiohttp.ClientSession() as session:
            lower = admin(session).as_user("lower@example.com", "Sub-acct-pass-9")
            status, body, _ = await lower.get(f"Accounts/{sids[0]}.json")
            assert status == 200 and json.loads(body)["role"] == "Administrator", body
            status, body, _ = await lower.post(f"Accounts/{sids[0]}/Clients.json",
                                               {"Login": "desk1", "Password": "Desk-pass-99"})
            assert status == 200, body
        assert f"account {sids[1]} (odd@example.com) has the role 'Nobody'" in caplog.text
        assert sids[0] not in caplog.text
    finally:
        await second.stop()
