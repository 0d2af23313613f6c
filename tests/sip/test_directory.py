"""SipDirectory's caches and the calls service's use of them (its AppResolver,
services.call_apps): a plain Client-to-Client call costs no store query beyond its CDR."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.models import ADMIN_SID, Account, AccountSid, AccountStatus, md5_hex
from appliance.services.access import ADMINISTRATOR
from appliance.services.call_apps import AppResolver
from appliance.services.provisioning import ProvisioningService
from appliance.services.telephony import WAITS_PER_LOOKUP, SipDirectory
from appliance.sip.proxy_ports import Caller
from appliance.store.db import Store

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


# --- one Client changed: only its row is read again -----------------------------------------

NOW = datetime(2024, 3, 3, tzinfo=UTC)
PASSWORD = "Pbx-edge-7"


class ReadCountingStore:
    """The real Store; every read it serves (get_*, all_*, find_*, list_*) is counted by
    method, nothing else is changed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not name.startswith(("get_", "all_", "find_", "list_")):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.reads[name] += 1
            return await attr(*args, **kwargs)
        return counted

    def total(self) -> int:
        return sum(self.reads.values())


@pytest.fixture
async def real_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "directory.db")
    await store.open()
    await store.insert_account(Account(
        sid=AccountSid(ADMIN_SID), parent_sid=None, friendly_name="Admin",
        email_address="admin@example.com", type="Full", status=AccountStatus.ACTIVE,
        role=ADMINISTRATOR, auth_token=md5_hex("x"), date_created=NOW, date_updated=NOW))
    try:
        yield store
    finally:
        await store.close()


async def settled(directory: SipDirectory, login: str) -> None:
    """Wait until the re-read of LOGIN started by a change is over."""
    await directory.user(login)
    assert directory.cached_user(login)[0]


async def test_a_client_change_reads_that_client_again_not_every_client(
        real_store: Store) -> None:
    """Creating Clients by script while phones are registered: each creation reads its own
    Client again (O(1) reads), the other Clients stay cached for the SIP quick path, and the
    directory answers right for created, changed, renamed, deleted and untouched Clients."""
    store = ReadCountingStore(real_store)
    provisioning = ProvisioningService(store, lambda: NOW, lambda: "pbx.example.com")  # type: ignore[arg-type]
    directory = SipDirectory(store)  # type: ignore[arg-type]
    provisioning.on_clients_change.append(directory.clients_changed)  # as app.py wires it
    admin = await real_store.get_account(ADMIN_SID)
    assert admin is not None

    async def create(login: str, **fields: str) -> Any:
        return await provisioning.create_client(
            admin, admin, {"login": login, "password": PASSWORD, **fields})

    await create("alice")
    doomed = await create("dave")
    renamed = await create("carol")
    alice = await directory.user("alice")  # the one full read
    assert alice is not None and alice.enabled
    assert store.reads["all_clients"] == 1

    counts = []
    for n in range(50):
        before = store.total()
        await create(f"u{n:03d}")
        await settled(directory, f"u{n:03d}")
        counts.append(store.total() - before)
        assert directory.cached_user("alice") == (True, alice)  # never dropped meanwhile
    # The creation's own uniqueness check and the directory's read of that one Client and
    # its account: the same few reads for the 1st and the 50th Client.
    assert max(counts) <= 3 and counts[0] == counts[-1], counts
    assert store.reads["all_clients"] == 1 and store.reads["all_accounts"] == 1
    created = await directory.user("u049")
    assert created is not None and created.enabled and created.login == "u049"

    # Disabled: still known, not enabled (the registrar revokes its bindings on that).
    bob = await create("bob")
    await settled(directory, "bob")
    await provisioning.update_client(admin, admin, bob.sid, {"status": "0"})
    disabled = await directory.user("bob")
    assert disabled is not None and not disabled.enabled
    # Deleted: unknown, and answered so from memory.
    await provisioning.delete_client(admin, admin, doomed.sid)
    assert await directory.user("dave") is None
    assert directory.cached_user("dave") == (True, None)
    # Renamed (not offered by the API, but a change may carry two logins): the old login's
    # entry goes, the new one is read.
    await real_store.update_client(dataclasses.replace(renamed, login="carol2"))
    directory.clients_changed({"carol", "carol2"})
    assert directory.cached_user("carol") == (False, None)  # not answered while read again
    assert await directory.user("carol") is None
    carol2 = await directory.user("carol2")
    assert carol2 is not None and carol2.client_sid == renamed.sid
    assert directory.cached_user("carol") == (True, None)
    # Untouched all along; still one full read in all.
    assert directory.cached_user("alice") == (True, alice)
    assert store.reads["all_clients"] == 1


class GatedStore(CountingStore):
    """CountingStore whose reading of every Client waits for GATE."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fail: set[str] = set()

    async def all_clients(self) -> list[Any]:
        rows = list(self.clients.values())  # read before the gate: a change is missed
        await self.gate.wait()
        self.queries.append(("clients", "*"))
        return rows

    async def get_client_by_login(self, login: str) -> Any:
        if login in self.fail:
            raise OSError("disk I/O error")
        return await super().get_client_by_login(login)


def client_row(login: str, status: int = 1) -> Row:
    return Row(login=login, sid="CL" + login, account_sid=ACCOUNT, realm="r", ha1_md5="",
               ha1_sha256="", status=status, voice_url=None, voice_application_sid=None)


async def test_a_client_changed_while_every_client_is_read_is_read_again_after() -> None:
    store = GatedStore()
    directory = SipDirectory(store)  # type: ignore[arg-type]
    lookup = asyncio.ensure_future(directory.user("carol"))
    await asyncio.sleep(0)
    store.clients["carol"] = client_row("carol")  # created after the load read the rows
    store.clients["bob"] = client_row("bob", status=0)  # disabled likewise
    directory.clients_changed({"carol"})
    directory.clients_changed({"bob"})
    store.gate.set()
    carol = await lookup
    assert carol is not None and carol.login == "carol"
    bob = await directory.user("bob")
    assert bob is not None and not bob.enabled
    assert store.queries.count(("clients", "*")) == 1  # the load was kept, not thrown away
    assert directory.cached_user("alice")[0]


async def test_a_failed_read_of_one_client_reads_every_client_again() -> None:
    store = GatedStore()
    store.gate.set()
    directory = SipDirectory(store)  # type: ignore[arg-type]
    assert await directory.user("alice") is not None
    store.fail.add("bob")
    directory.clients_changed({"bob"})
    with pytest.raises(OSError):
        await directory.user("bob")
    # Not taken for an unknown login: nothing is answered from memory until read again.
    assert directory.cached_user("bob") == (False, None)
    assert directory.cached_user("alice") == (False, None)
    store.fail.clear()
    assert await directory.user("bob") is not None
    assert store.queries.count(("clients", "*")) == 2


async def test_a_lookup_waiting_on_a_load_an_account_change_dropped_looks_again() -> None:
    """dave is deleted, then an account changes, while every Client is read: that load is
    dropped, and the lookup that waited for it does not take its answer (dave would
    authenticate once): it waits for the load that follows."""
    store = GatedStore()
    store.clients["dave"] = client_row("dave")
    directory = SipDirectory(store)  # type: ignore[arg-type]
    lookup = asyncio.get_running_loop().create_task(directory.user("dave"))
    await asyncio.sleep(0)  # the load has read the rows, dave's among them
    del store.clients["dave"]
    directory.clients_changed({"dave"})
    directory.invalidate()  # an account changed: the load under way is not kept
    store.gate.set()
    assert await lookup is None
    assert store.queries.count(("clients", "*")) == 2
    assert directory.cached_user("dave") == (True, None)


class ChurningStore(CountingStore):
    """Every read of every Client is dropped by an account change made meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.directory: SipDirectory | None = None

    async def all_clients(self) -> list[Any]:
        rows = await super().all_clients()
        assert self.directory is not None
        self.directory.invalidate()
        return rows


async def test_a_lookup_does_not_wait_for_ever_while_accounts_keep_changing() -> None:
    store = ChurningStore()
    directory = store.directory = SipDirectory(store)  # type: ignore[arg-type]
    alice = await directory.user("alice")
    assert alice is not None and alice.login == "alice" and alice.enabled
    assert store.queries.count(("clients", "*")) == WAITS_PER_LOOKUP
    assert store.queries[-2:] == [("client", "alice"), ("account", ACCOUNT)]  # alone, at last
    assert await directory.user("zed") is None


class BlockingStore(CountingStore):
    """CountingStore whose reads of one Client never end."""

    async def get_client_by_login(self, login: str) -> Any:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def reread_of(login: str) -> asyncio.Task[Any]:
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == f"sip directory: {login}"]
    return task


async def test_a_cancelled_read_of_one_client_is_not_waited_for_again() -> None:
    """The loop shutting down cancels the read of a changed Client: a lookup waiting for it,
    and any later lookup of that login, get the Client (every Client is read again), not
    the read's CancelledError."""
    store = BlockingStore()
    directory = SipDirectory(store)  # type: ignore[arg-type]
    assert await directory.user("bob") is not None
    directory.clients_changed({"bob"})
    waiting = asyncio.get_running_loop().create_task(directory.user("bob"))
    await asyncio.sleep(0)
    read = reread_of("bob")
    read.cancel()
    bob = await waiting
    assert bob is not None and bob.login == "bob"
    assert read.cancelled()
    assert directory.cached_user("bob") == (True, bob)
    assert await directory.user("bob") == bob
    assert store.queries.count(("clients", "*")) == 2
