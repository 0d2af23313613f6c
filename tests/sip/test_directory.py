"""SipDirectory's caches and the calls service's use of them: a plain Client-to-Client call
costs no store query beyond its CDR."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.services.calls import CallsService
from appliance.services.telephony import CallLog, SipDirectory
from appliance.sip.proxy import Caller

ACCOUNT = "AC" + "1" * 32


class Row:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class CountingStore:
    """The lookups SipDirectory and CallsService._app_for make, counted."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, str]] = []
        self.clients = {
            login: Row(login=login, sid="CL" + login, account_sid=ACCOUNT, realm="r",
                       ha1_md5="", ha1_sha256="", status=1, voice_url=None,
                       voice_application_sid=None)
            for login in ("alice", "bob")}
        self.numbers: dict[str, Any] = {}

    async def get_client_by_login(self, login: str) -> Any:
        self.queries.append(("client", login))
        return self.clients.get(login)

    async def get_account(self, sid: str) -> Any:
        self.queries.append(("account", sid))
        return Row(sid=sid, status="active")

    async def find_number(self, number: str) -> Any:
        self.queries.append(("number", number))
        return self.numbers.get(number)


def calls_service(store: CountingStore, directory: SipDirectory | None) -> CallsService:
    service = CallsService(
        store, CallLog(store, lambda: datetime.now(UTC)), None,  # type: ignore[arg-type]
        lambda: datetime.now(UTC), engine=None, notify=lambda *a: None,
        say=lambda text, language: None, data_dir=Path("/nonexistent"),
        public_base=lambda: "", front_door=lambda: ("127.0.0.1", 5060))
    service.directory = directory
    return service


async def test_client_to_client_calls_read_the_store_once_then_never() -> None:
    store = CountingStore()
    directory = SipDirectory(store)  # type: ignore[arg-type]
    service = calls_service(store, directory)
    caller = Caller(login="alice", account_sid=ACCOUNT)
    assert await service._app_for(caller, "bob") == (None, None)
    first = len(store.queries)
    assert first > 0
    for _ in range(3):
        assert await service._app_for(caller, "bob") == (None, None)
        assert await service._app_for(caller, "12345") == (None, None)
    # "12345" was new: its number lookups (as dialled and in E.164) and its Client lookup
    # happen once; "bob" needs nothing more.
    assert store.queries[first:] == [("number", "12345"), ("number", "+12345"),
                                     ("client", "12345")]


async def test_a_provisioning_change_drops_the_cached_numbers() -> None:
    store = CountingStore()
    directory = SipDirectory(store)  # type: ignore[arg-type]
    service = calls_service(store, directory)
    caller = Caller(login="alice", account_sid=ACCOUNT)
    assert await service._app_for(caller, "+15550001") == (None, None)
    store.numbers["+15550001"] = Row(sid="PN1", account_sid=ACCOUNT,
                                     voice_url="http://app.example/rcml", voice_method="POST",
                                     voice_fallback_url=None, voice_fallback_method="POST",
                                     voice_application_sid=None, status_callback=None)
    assert await service._app_for(caller, "+15550001") == (None, None)  # cached: no app yet
    directory.invalidate()  # what ProvisioningService.create_number triggers
    app, number_sid = await service._app_for(caller, "+15550001")
    assert app is not None and app.url == "http://app.example/rcml" and number_sid == "PN1"


async def test_without_a_directory_the_store_answers() -> None:
    store = CountingStore()
    service = calls_service(store, None)
    caller = Caller(login="alice", account_sid=ACCOUNT)
    assert await service._app_for(caller, "bob") == (None, None)
    assert await service._app_for(caller, "bob") == (None, None)
    assert store.queries == [("number", "bob"), ("client", "bob")] * 2
