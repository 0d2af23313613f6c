"""A suspended account is cut off from the outside lines (docs/api.md, after "Roles"): a
provider's call to its DIDs runs no app and is answered as one to an unknown number, a call
to its Clients runs none of their apps, an app of its already running dials no number, and
its calls in progress are hung up when it is suspended. A real appliance with one media
worker; sipp or a bare UDP socket plays the provider (the `outside` fixture)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_SID, Api, free_port
from tests.outside.test_outbound_roles import Provider
from tests.outside.test_outside_lines import (  # noqa: F401 - outside: a fixture, found by name
    DID,
    PASSWORD,
    finished,
    gateway,
    outside,
    registered_provider,
)

SUB_EMAIL = "tenant@example.com"
SUB_PASSWORD = "Tenant-Acct-pass-9"
NOT_ACTIVE = 20005  # Notification: a call or message of an account that is not active


async def tenant(api: Api) -> tuple[str, Api]:
    """A sub-account with a Client kiddesk (the test phones' password), and its API."""
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": SUB_EMAIL,
                                                       "Password": SUB_PASSWORD})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    sub = api.as_user(SUB_EMAIL, SUB_PASSWORD)
    status, body, _ = await sub.post(f"Accounts/{sid}/Clients.json",
                                     {"Login": "kiddesk", "Password": PASSWORD})
    assert status == 200, body
    return sid, sub


async def suspend(api: Api, sid: str) -> None:
    status, body, _ = await api.post(f"Accounts/{sid}.json", {"Status": "suspended"})
    assert status == 200 and json.loads(body)["status"] == "suspended", body


async def notes_of(api: Api, sid: str, within: float = 10.0) -> list[dict[str, Any]]:
    """The account's Notifications once there is one (read by the administrator: the
    account itself is refused)."""
    async with asyncio.timeout(within):
        while True:
            status, body, _ = await api.get(f"Accounts/{sid}/Notifications.json")
            assert status == 200, body
            notes: list[dict[str, Any]] = json.loads(body)["notifications"]
            if notes:
                return notes
            await asyncio.sleep(0.05)


async def tree_cdrs(api: Api, count: int, within: float = 10.0) -> list[dict[str, Any]]:
    """The CDRs of every account once COUNT of them exist and none is live."""
    async with asyncio.timeout(within):
        while True:
            _, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json",
                                       params={"SubAccounts": "true"})
            calls: list[dict[str, Any]] = json.loads(body)["calls"]
            if len(calls) >= count and all(c["status"] not in (
                    "queued", "ringing", "in-progress") for c in calls):
                return calls
            await asyncio.sleep(0.1)


async def test_a_provider_call_to_a_suspended_accounts_did_is_refused_as_an_unknown_one(
        outside: Any, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    # Before: the DID's app was fetched and run (its <Dial><Number> went out by the
    # gateway), and a client: DID rang the Client's phones.
    appliance, api, rcml, _, run_sipp = outside
    rcml.docs["/did"] = "<Response><Dial><Number>+15551234567</Number></Dial></Response>"
    sid, sub = await tenant(api)
    for number, url in ((DID, f"{rcml.base}/did"), ("+15550004321", "client:kiddesk")):
        status, body, _ = await sub.post(f"Accounts/{sid}/IncomingPhoneNumbers.json",
                                         {"PhoneNumber": number, "VoiceUrl": url})
        assert status == 200, body
    port = await registered_provider(api, run_sipp)
    await suspend(api, sid)
    sip = appliance.config.sip.listen
    for number in (DID, "+15550004321", "+15550009999"):  # the last one is no DID
        trace = tmp_path / f"refused-{number}.log"
        call = run_sipp("provider-uac-refused.xml", port, f"{sip.host}:{sip.port}",
                        "-s", number, "-trace_msg", "-message_file", str(trace))
        assert await finished(call) == 0, call.stderr.read() if call.stderr else ""
        # Word for word what an unknown number gets: nothing tells the DID exists.
        assert "SIP/2.0 404 Not Found" in trace.read_text(), trace.read_text()
    assert rcml.got == []
    notes = await notes_of(api, sid)
    assert {n["error_code"] for n in notes} == {NOT_ACTIVE}, notes
    assert all("suspended" in n["message_text"] for n in notes), notes
    assert {DID, "+15550004321"} <= {w for n in notes for w in n["message_text"].split()}
    assert await tree_cdrs(api, 0) == []  # no CDR, as for an unknown number


async def test_a_call_to_a_client_of_a_suspended_account_runs_none_of_its_apps(
        outside: Any) -> None:  # noqa: F811 - the fixture
    # Before: a call to kiddesk (a Client with a VoiceUrl) ran its app after the suspension.
    appliance, api, rcml, phone, _ = outside
    rcml.docs["/kid"] = '<Response><Pause length="5"/></Response>'
    sid, sub = await tenant(api)
    _, body, _ = await sub.get(f"Accounts/{sid}/Clients.json")
    [kid] = [c for c in json.loads(body) if c["login"] == "kiddesk"]
    status, body, _ = await sub.post(f"Accounts/{sid}/Clients/{kid['sid']}.json",
                                     {"VoiceUrl": f"{rcml.base}/kid"})
    assert status == 200, body
    await suspend(api, sid)
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:kiddesk@{sip.host}:{sip.port}",
                        "--timeout", "10")
    await alice.finish()
    # What a call to a Client whose phones may not register gets: 480.
    assert any(e.get("state") == "DISCONNECTED" and e.get("code") == 480
               for e in alice.events), alice.events
    assert rcml.got == []


@pytest.mark.parametrize("cut_off", ["role", "status"])
async def test_an_app_of_an_account_that_may_not_call_out_dials_no_number(
        outside: Any, cut_off: str) -> None:  # noqa: F811 - the fixture
    """<Dial><Number> costs money on the account's behalf, as POST /Calls does: an account
    whose role lacks Create:Calls, or that stopped being active while its app ran, places
    no call out (here the status is changed in the database, so that the call is not hung
    up first, as a suspension through the API does)."""
    # Before: the <Dial><Number> reached the provider either way.
    appliance, api, rcml, phone, _ = outside
    provider = Provider()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: provider, local_addr=("127.0.0.1", 0))
    try:
        await gateway(api, "provider", transport.get_extra_info("sockname")[1],
                      register=False)
        rcml.docs["/app"] = ('<Response><Pause length="2"/><Dial timeout="3">'
                             "<Number>+15551234567</Number></Dial></Response>")
        sid, sub = await tenant(api)
        status, body, _ = await sub.post(f"Accounts/{sid}/IncomingPhoneNumbers.json",
                                         {"PhoneNumber": DID, "VoiceUrl": f"{rcml.base}/app"})
        assert status == 200, body
        database = appliance.config.data_dir / "appliance.db"
        if cut_off == "role":  # as an older version left it (the API refuses such a role)
            with sqlite3.connect(database) as db:
                db.execute("UPDATE accounts SET role = 'Nobody' WHERE sid = ?", (sid,))
            await appliance.accounts.load()
        sip = appliance.config.sip.listen
        kid = await phone("--user", "kiddesk", "--call", f"sip:{DID}@{sip.host}:{sip.port}",
                          "--timeout", "15")
        await rcml.wait("/app")
        if cut_off == "status":
            with sqlite3.connect(database) as db:
                db.execute("UPDATE accounts SET status = 'suspended' WHERE sid = ?", (sid,))
            await appliance.accounts.load()
        await kid.finish()
        assert provider.got == []  # nothing went out
        notes = await notes_of(api, sid)
        want = NOT_ACTIVE if cut_off == "status" else 13214
        assert [n["error_code"] for n in notes] == [want], notes
        assert "+15551234567" in notes[0]["message_text"], notes
    finally:
        transport.close()


async def test_suspending_an_account_hangs_up_its_call_out(
        outside: Any) -> None:  # noqa: F811 - the fixture
    """A desk phone's call out through a gateway goes on costing money: suspending its
    account hangs it up (the provider gets a BYE), as POST /Calls/{sid} Status=completed
    would."""
    # Before: the call went on until the phone hung up, 20 s later.
    appliance, api, _, phone, run_sipp = outside
    port = free_port()
    provider = run_sipp("provider-uas.xml", port)
    await gateway(api, "provider", port, register=False)
    sid, _ = await tenant(api)
    await asyncio.sleep(0.3)
    sip = appliance.config.sip.listen
    kid = await phone("--user", "kiddesk", "--call", f"sip:+15551234567@{sip.host}:{sip.port}",
                      "--hold", "20", "--timeout", "30")
    await kid.wait(lambda e: e.get("state") == "CONFIRMED")
    await suspend(api, sid)
    async with asyncio.timeout(8):  # not the 20 s the phone would hold it
        await kid.wait(lambda e: e.get("state") == "DISCONNECTED", 8)
        assert await finished(provider, 8) == 0, (
            provider.stderr.read() if provider.stderr else "")
    calls = await tree_cdrs(api, 2)
    assert sorted((c["direction"], c["status"]) for c in calls) == [
        ("inbound", "completed"), ("outbound-dial", "completed")], calls



async def test_post_calls_status_completed_hangs_up_a_phones_call_out(
        outside: Any) -> None:  # noqa: F811 - the fixture
    """The same hang-up through the API: the B2BUA's leg to the phone is answered by its
    events alone (no app ran), and the worker refuses to reject an answered leg."""
    # Before: 200, and the call went on.
    appliance, api, _, phone, run_sipp = outside
    port = free_port()
    provider = run_sipp("provider-uas.xml", port)
    await gateway(api, "provider", port, register=False)
    await asyncio.sleep(0.3)
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:+15551234567@{sip.host}:{sip.port}",
                        "--hold", "20", "--timeout", "30")
    await alice.wait(lambda e: e.get("state") == "CONFIRMED")
    _, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
    [call] = [c for c in json.loads(body)["calls"] if c["direction"] == "inbound"]
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls/{call['sid']}.json",
                                     {"Status": "completed"})
    assert status == 200, body
    await alice.wait(lambda e: e.get("state") == "DISCONNECTED", 8)
    assert await finished(provider, 8) == 0, provider.stderr.read() if provider.stderr else ""
