"""Failed API logins are logged and limited per source address."""

from __future__ import annotations

import logging

import pytest

from appliance.app import Appliance
from appliance.services.login_guard import MAX_FAILURES
from tests.conftest import ADMIN_SID, Api


async def test_a_password_guesser_is_logged_then_refused_even_with_the_right_password(
        api: Api, appliance: Appliance, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    guesser = api.as_user(ADMIN_SID, "Wrong-guess-1")
    for _ in range(MAX_FAILURES - 1):
        assert (await guesser.get("Accounts.json"))[0] == 401
    # Below the limit, the right password works and the guesses are on record.
    assert (await api.get("Accounts.json"))[0] == 200
    warnings = [r.getMessage() for r in caplog.records if r.name.endswith("login_guard")]
    assert warnings == [f"x API: failed login for {ADMIN_SID!r} from 127.0.0.1"]  # throttled
    # A success clears that login's count: the ban needs MAX_FAILURES guesses again.
    for _ in range(MAX_FAILURES):
        await guesser.get("Accounts.json")
    status, body, headers = await api.get("Accounts.json")  # the right one, from there
    assert status == 429, body
    assert body.startswith("Too many failed logins from 127.0.0.1: try again in ")
    assert 0 < int(headers["Retry-After"]) <= 300  # type: ignore[index]
    assert any("127.0.0.1 banned for 300 s after 10 failed logins" in r.getMessage()
               for r in caplog.records)
    # No credentials at all is not a guess (curl asks first), and is refused as usual.
    status, _, _ = await api.get("Accounts.json", auth=False)
    assert status in (401, 429)


async def test_guesses_at_another_login_are_not_wiped_by_the_admins_success(
        api: Api, appliance: Appliance) -> None:
    other = api.as_user("someone@example.com", "Wrong-guess-2")
    for _ in range(MAX_FAILURES - 1):
        assert (await other.get("Accounts.json"))[0] == 401
    assert (await api.get("Accounts.json"))[0] == 200
    assert (await other.get("Accounts.json"))[0] == 401  # the tenth: the ban starts
    assert (await api.get("Accounts.json"))[0] == 429


async def test_a_banned_source_gets_no_cached_answer(api: Api, appliance: Appliance) -> None:
    """The API caches GET answers per Authorization header: a banned guesser whose guess is
    right must not get the cached 200 (it would learn the password)."""
    path = f"Accounts/{ADMIN_SID}/Clients.json"
    assert (await api.get(path))[0] == 200
    assert (await api.get(path))[0] == 200  # now answered from the cache
    guesser = api.as_user(ADMIN_SID, "Wrong-guess-3")
    for _ in range(MAX_FAILURES):
        await guesser.get(path)
    assert (await api.get(path))[0] == 429
