"""SipDirectory's caches and the calls service's use of them (its AppResolver,
services.call_apps): a plain Client-to-Client call costs no store query beyond its CDR."""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.services.call_apps import AppResolver
from appliance.services.telephony import SipDirectory
from appliance.sip.proxy_ports import Caller

ACCOUNT = "AC" + "1" * 32


class Row:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class CountingStore:
    """The lookups SipDirectory and AppResolver.app_for make, counted."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, str]] = []
        self.clients = {
            login: Row(login=login, sid="CL" + login, account_sid=ACCOUNT, realm="r",
                       ha1_md5="", ha1_sha256="", status=1, voice_url=None,
                       voice_application_sid=None)
            for login in ("alice", "bob")}
        self.numbers: dict[str, Any] = {}

    async def all_clients(self) -> list[Any]:
        self.queries.append(("clients", "*"))
        return list(self.clients.values())

    async def all_accounts(self) -> list[Any]:
        self.queries.append(("accounts", "*"))
        return [Row(sid=ACCOUNT, status="active")]

    async def get_client_by_login(self, login: str) -> Any:
        self.queries.append(("client", login))
        return self.clients.get(login)

    async def get_account(self, sid: str) -> Any:
        self.queries.append(("account", sid))
        return Row(sid=sid, status="active")

    async def find_number(self, number: str) -> Any:
        self.queries.append(("number", number))
        return self.numbers.get(number)


def app_resolver(store: CountingStore, directory: SipDirectory | None) -> AppResolver:
    resolver = AppResolver(store)  # type: ignore[arg-type]
    resolver.directory = directory
    return resolver


async def test_client_to_client_calls_read_the_store_once_then_never() -> None:
    store = CountingStore()
    directory = SipDirectory(store)  # type: ignore[arg-type]
    resolver = app_resolver(store, directory)
    caller = Caller(login="alice", account_sid=ACCOUNT)
    assert await resolver.app_for(caller, "bob") == (None, None)
    first = len(store.queries)
    assert first > 0
    for _ in range(3):
        assert await resolver.app_for(caller, "bob") == (None, None)
        assert await resolver.app_for(caller, "12345") == (None, None)
    # "12345" was new: its number lookups (as dialled and in E.164) happen once; whether it
    # is a Client is known from memory (every Client was read at once); "bob" needs nothing.
    assert store.queries[first:] == [("number", "12345"), ("number", "+12345")]


async def test_any_login_known_or_not_is_answered_from_memory_after_one_read() -> None:
    """svwar's timing class (sip.md §3): no store query on one path only."""
    store = CountingStore()
    directory = SipDirectory(store)  # type: ignore[arg-type]
    assert directory.cached_user("alice") == (False, None)
    users = await asyncio.gather(*(directory.user(login) for login in ("alice", "zed")))
    assert [u.login if u else None for u in users] == ["alice", None]
    assert store.queries == [("accounts", "*"), ("clients", "*")]  # one read for both
    for login in ("bob", "yves", "xavier", "alice"):
        await directory.user(login)
        assert directory.cached_user(login)[0]
    assert store.queries == [("accounts", "*"), ("clients", "*")]
    directory.invalidate()  # a provisioning change: read again, once
    assert await directory.user("zed") is None
    assert store.queries[2:] == [("accounts", "*"), ("clients", "*")]


async def test_a_provisioning_change_drops_the_cached_numbers() -> None:
    store = CountingStore()
    directory = SipDirectory(store)  # type: ignore[arg-type]
    resolver = app_resolver(store, directory)
    caller = Caller(login="alice", account_sid=ACCOUNT)
    assert await resolver.app_for(caller, "+15550001") == (None, None)
    store.numbers["+15550001"] = Row(sid="PN1", account_sid=ACCOUNT,
                                     voice_url="http://app.example/rcml", voice_method="POST",
                                     voice_fallback_url=None, voice_fallback_method="POST",
                                     voice_application_sid=None, status_callback=None)
    assert await resolver.app_for(caller, "+15550001") == (None, None)  # cached: no app yet
    directory.invalidate_numbers()  # what ProvisioningService.create_number triggers
    app, number_sid = await resolver.app_for(caller, "+15550001")
    assert app is not None and app.url == "http://app.example/rcml" and number_sid == "PN1"


async def test_without_a_directory_the_store_answers() -> None:
    store = CountingStore()
    resolver = app_resolver(store, None)
    caller = Caller(login="alice", account_sid=ACCOUNT)
    assert await resolver.app_for(caller, "bob") == (None, None)
    assert await resolver.app_for(caller, "bob") == (None, None)
    assert store.queries == [("number", "bob"), ("client", "bob")] * 2


async def test_a_client_dialling_a_did_in_national_form_reaches_its_app() -> None:
    """api-behaviour.md §8.5: a Client's call matches a number as a provider's or the
    modem's does (as given, US E.164, + added or removed), so a desk phone dialling the
    office's own DID as 10 digits runs its app instead of going out."""
    store = CountingStore()
    store.numbers["+15551234567"] = Row(
        sid="PN1", account_sid=ACCOUNT, voice_url="http://app.example/rcml",
        voice_method="POST", voice_fallback_url=None, voice_fallback_method="POST",
        voice_application_sid=None, status_callback=None)
    resolver = app_resolver(store, SipDirectory(store))  # type: ignore[arg-type]
    caller = Caller(login="alice", account_sid=ACCOUNT)
    for dialled in ("5551234567", "15551234567", "+15551234567"):
        app, number_sid = await resolver.app_for(caller, dialled)
        assert app is not None and app.url == "http://app.example/rcml", dialled
        assert number_sid == "PN1"
