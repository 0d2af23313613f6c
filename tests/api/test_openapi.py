"""appliance/api/openapi.yaml against the running API.

1. The document is valid OpenAPI (openapi-spec-validator).
2. The appliance serves it at /openapi.yaml.
3. schemathesis generates requests for every operation (examples, coverage and fuzzing
   phases; positive and negative data) against a real appliance and checks each response:
   no 5xx, documented status codes, content types, headers and JSON schemas, negative data
   rejected, 405 + `Allow` for undocumented methods, 401 without credentials.

aiohttp is neither ASGI nor WSGI, so the appliance runs on its own event loop in a background
thread and schemathesis talks to it over loopback HTTP. The schema is loaded at module level
because `schemathesis.pytest.from_fixture` does not work with the installed pytest
(ecosystem.md §5.3); the port is chosen at import time and the server starts in a fixture.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from appliance.api import system
from appliance.app import Appliance
from appliance.config import AdminConfig, ApiConfig, Config, Endpoint, SipConfig
from appliance.models import (
    API_VERSION,
    AccountSid,
    CallRecord,
    CallSid,
    Conference,
    ConferenceSid,
    ConferenceStatus,
    Recording,
    RecordingSid,
    SmsRecord,
    SmsSid,
)
from appliance.store.conferences import ConferenceStore
from tests.conftest import ADMIN_SID, free_port

T = TypeVar("T")

SPEC = system.OPENAPI
ADMIN_PASSWORD = "Fuzz-Edge-2026!x"
CHILD_PASSWORD = "Child-Edge-2026!y"
PORT = free_port()
BASE_URL = f"http://127.0.0.1:{PORT}"

# Every check that applies to single requests. Left out: positive_data_acceptance (well-formed
# requests are refused by business rules the schema cannot express: weak passwords, duplicate
# logins or numbers, a page past the last one) and use_after_free /
# ensure_resource_availability (they need the stateful phase, which is not run here).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection,
          missing_required_header, unsupported_method, allow_header_conformance, ignored_auth]



# -- the appliance on a background loop ----------------------------------------------------------


class BackgroundAppliance:
    """An Appliance served from its own event loop in a daemon thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="appliance",
                                       daemon=True)
        self.appliance: Appliance | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> Appliance:
        self.thread.start()

        async def start() -> Appliance:
            app = Appliance(self.config)
            await app.start()
            return app

        self.appliance = self.run(start())
        return self.appliance

    def stop(self) -> None:
        if self.appliance is not None:
            self.run(self.appliance.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclasses.dataclass
class Seeds:
    """SIDs of what the fixture created, for the path-parameter hook below."""

    children: list[str] = dataclasses.field(default_factory=list)
    keep: dict[str, str] = dataclasses.field(default_factory=dict)  # path parameter -> SID
    spare: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # for DELETE


SEEDS = Seeds()


def _wav(path: Path) -> None:
    """A valid, silent, 0.1 s 8 kHz mono WAV file."""
    data = b"\x00\x00" * 800
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16) + b"data" + struct.pack("<I", len(data))
    path.write_bytes(header + data)


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _seed(server: BackgroundAppliance, data_dir: Path) -> None:
    """Resources under the admin account so GET-by-SID paths have something to find."""
    api = f"{BASE_URL}/restcomm/{API_VERSION}/Accounts"
    auth = (ADMIN_SID, ADMIN_PASSWORD)

    def post(path: str, form: dict[str, str]) -> str:
        resp = requests.post(f"{api}{path}", data=form, auth=auth, timeout=10)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return str(resp.json()["sid"])

    # Targets for /Accounts/{AccountSid} updates: schemathesis may close them or change their
    # password, which must never happen to the account it authenticates as.
    SEEDS.children = [post(".json", {"EmailAddress": f"child{i}@example.com",
                                     "Password": CHILD_PASSWORD}) for i in range(3)]
    clients = [post(f"/{ADMIN_SID}/Clients.json", {"Login": f"seed{i}",
                                                    "Password": CHILD_PASSWORD})
               for i in range(4)]
    apps = [post(f"/{ADMIN_SID}/Applications.json", {"FriendlyName": f"seed app {i}",
                                                      "Kind": "voice"}) for i in range(4)]
    numbers = [post(f"/{ADMIN_SID}/IncomingPhoneNumbers.json",
                    {"PhoneNumber": f"+1555000010{i}", "VoiceApplicationSid": apps[0]})
               for i in range(4)]

    appliance = server.appliance
    assert appliance is not None
    now = datetime.now(UTC)
    account = AccountSid(ADMIN_SID)
    calls = [CallRecord(
        sid=CallSid(_sid("CA")), instance_id=None, account_sid=account, parent_call_sid=None,
        to="+15550000100", from_="alice", phone_number_sid=numbers[0], status="completed",
        start_time=now - timedelta(minutes=5 + i), end_time=now - timedelta(minutes=4 + i),
        duration=60, price=None, price_unit="USD", direction="inbound", answered_by=None,
        api_version=API_VERSION, forwarded_from=None, caller_name="Alice",
        conference_sid=None, ring_duration=3, date_created=now - timedelta(minutes=5 + i),
        date_updated=now - timedelta(minutes=4 + i)) for i in range(3)]
    sms = [SmsRecord(
        sid=SmsSid(_sid("SM")), account_sid=account, from_="+15550000100", to="alice",
        body=f"hello {i}", status="received", direction="inbound", error_code=None,
        error_message=None, price="0", price_unit="USD", api_version=API_VERSION,
        date_sent=now, date_created=now, date_updated=now) for i in range(3)]
    recordings = []
    for _ in range(3):
        sid = RecordingSid(_sid("RE"))
        path = data_dir / f"{sid}.wav"
        _wav(path)
        recordings.append(Recording(sid=sid, account_sid=account, call_sid=calls[0].sid,
                                    duration=0.1, file_path=str(path), date_created=now,
                                    date_updated=now))

    async def insert() -> list[str]:
        await appliance.store.insert_calls(calls)
        for s in sms:
            await appliance.store.insert_sms(s)
        for r in recordings:
            await appliance.store.insert_recording(r)
        await ConferenceStore(appliance.store).insert(conference)
        notes = [await appliance.history.notify(ADMIN_SID, 11200, f"seeded error {i}",
                                                call_sid=calls[0].sid,
                                                request_url="http://example.com/rcml")
                 for i in range(2)]
        return [n.sid for n in notes]

    conference = Conference(sid=ConferenceSid(_sid("CF")), account_sid=account,
                            friendly_name="seeded room", status=ConferenceStatus.COMPLETED,
                            api_version=API_VERSION, date_created=now, date_updated=now)
    notifications = server.run(insert())
    SEEDS.keep = {"ClientSid": clients[0], "ApplicationSid": apps[0],
                  "PhoneNumberSid": numbers[0], "CallSid": calls[0].sid, "SmsSid": sms[0].sid,
                  "NotificationSid": notifications[0], "RecordingSid": recordings[0].sid,
                  "ConferenceSid": conference.sid}
    SEEDS.spare = {"ClientSid": clients[1:], "ApplicationSid": apps[1:],
                   "PhoneNumberSid": numbers[1:], "RecordingSid": [r.sid for r in recordings[1:]]}


@pytest.fixture(scope="module")
def running() -> Iterator[BackgroundAppliance]:
    with tempfile.TemporaryDirectory(prefix="openapi-") as tmp:
        data_dir = Path(tmp) / "var"
        config = Config(data_dir=data_dir,
                        api=ApiConfig(listen=Endpoint("127.0.0.1", PORT)),
                        sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                      domain="pbx.example.com"),
                        admin=AdminConfig(password=ADMIN_PASSWORD))
        server = BackgroundAppliance(config)
        server.start()
        try:
            _seed(server, data_dir)
            yield server
        finally:
            server.stop()


# -- steering generated path parameters towards the seeded resources -----------------------------


def _path_choices(method: str, path: str, generated: dict[str, Any] | None
                  ) -> list[dict[str, Any] | None]:
    """Generated values, plus variants that name seeded resources (same keys, other values)."""
    if not generated or "AccountSid" not in generated:
        return [generated]
    choices: list[dict[str, Any] | None] = [generated]
    if path.endswith(("/Accounts/{AccountSid}", "/Accounts/{AccountSid}.json")):
        # Updates go to the children only; the admin may still be read.
        targets = SEEDS.children if method != "GET" else [ADMIN_SID, *SEEDS.children[:1]]
        choices += [{**generated, "AccountSid": sid} for sid in targets]
        return choices
    choices.append({**generated, "AccountSid": ADMIN_SID})
    for name in generated:
        if name == "AccountSid":
            continue
        if method == "DELETE":
            pool = SEEDS.spare.get(name, [])
        else:
            pool = [SEEDS.keep[name]] if name in SEEDS.keep else []
        choices += [{**generated, "AccountSid": ADMIN_SID, name: sid} for sid in pool]
    return choices


def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    operation = context.operation
    return st.sampled_from(_path_choices(operation.method.upper(), operation.path,
                                         path_parameters))


def _load(phases: list[str]) -> Any:
    loaded = schemathesis.openapi.from_path(SPEC)
    # Auth through the config, not call_and_validate(auth=...): the negative "no
    # Authorization" cases must go out without it.
    loaded.config.update(base_url=BASE_URL, basic_auth=(ADMIN_SID, ADMIN_PASSWORD),
                         request_timeout=10)
    loaded.config.phases.update(phases=phases)
    loaded.hook(flatmap_path_parameters)
    return loaded


# Everything but the /api copy: every phase (the coverage phase also sends undeclared methods
# and missing or malformed parameters).
# Creating or updating a gateway starts a REGISTER towards its Proxy: generated data must never
# make the appliance send SIP to a non-loopback host, so those operations are not fuzzed
# (tests/api/test_gateways.py covers them with loopback proxies).
_NO_GATEWAY_WRITES = dict(method=["POST", "PUT"], path_regex=r"/Management/Gateways")
restcomm_schema = (_load(["examples", "coverage", "fuzzing"]).exclude(path_regex=r"^/api/")
                   .exclude(**_NO_GATEWAY_WRITES))
# The /api prefix runs the same code as /restcomm: a short fuzz keeps the run within budget.
api_schema = (_load(["examples", "fuzzing"]).include(path_regex=r"^/api/")
              .exclude(**_NO_GATEWAY_WRITES))


# -- the tests -------------------------------------------------------------------------------------


def test_spec_is_valid_openapi() -> None:
    document, _ = read_from_filename(str(SPEC))
    validate(document)
    paths = document["paths"]
    # Both prefixes describe the same API.
    restcomm = {p.removeprefix("/restcomm") for p in paths if p.startswith("/restcomm/")}
    api = {p.removeprefix("/api") for p in paths if p.startswith("/api/")}
    assert restcomm == api
    assert "/2012-04-24/Accounts/{AccountSid}/Clients.json" in restcomm


def test_spec_is_served(running: BackgroundAppliance) -> None:
    resp = requests.get(f"{BASE_URL}/openapi.yaml", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/yaml")
    assert resp.content == SPEC.read_bytes()


def test_seeded_resources_are_reachable(running: BackgroundAppliance) -> None:
    """The hook's targets exist, so schemathesis also exercises the 200 paths."""
    api = f"{BASE_URL}/restcomm/{API_VERSION}/Accounts/{ADMIN_SID}"
    auth = (ADMIN_SID, ADMIN_PASSWORD)
    for path in (f"Clients/{SEEDS.keep['ClientSid']}.json", f"Calls/{SEEDS.keep['CallSid']}.json",
                 f"SMS/Messages/{SEEDS.keep['SmsSid']}.json",
                 f"Notifications/{SEEDS.keep['NotificationSid']}.json",
                 f"Recordings/{SEEDS.keep['RecordingSid']}.json",
                 f"Conferences/{SEEDS.keep['ConferenceSid']}.json",
                 f"Conferences/{SEEDS.keep['ConferenceSid']}/Participants.json"):
        resp = requests.get(f"{api}/{path}", auth=auth, timeout=10)
        assert resp.status_code == 200, (path, resp.text)
    resp = requests.get(f"{api}/Recordings/{SEEDS.keep['RecordingSid']}.wav", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "audio/x-wav"


_STATS: dict[str, float] = {"cases": 0, "seconds": 0.0}


# The test appliance has no modem, so USSD and an SMS to a phone number answer 503 "No
# modem is configured" by design (documented in the spec). There, and only there, a 503 is
# not a server error; any other 5xx still fails.
_NO_MODEM_OPERATIONS = (("/UssdPush", "POST"), ("/SMS/Messages", "POST"))


# One keep-alive connection for all cases (the appliance sets no cookies).
_SESSION = requests.Session()


def _call(case: Any) -> None:
    started = time.monotonic()
    if any(case.operation.path.endswith((path, f"{path}.json"))
           and case.operation.method.upper() == method for path, method in _NO_MODEM_OPERATIONS):
        response = case.call_and_validate(
            session=_SESSION, checks=[c for c in CHECKS if c is not not_a_server_error])
        assert response.status_code < 500 or response.status_code == 503, response.text
    else:
        case.call_and_validate(session=_SESSION, checks=CHECKS)
    _STATS["cases"] += 1
    _STATS["seconds"] += time.monotonic() - started


_SETTINGS = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                     suppress_health_check=list(HealthCheck))


@restcomm_schema.parametrize()
@settings(_SETTINGS, max_examples=25)
def test_api_conforms_to_spec(case: Any, running: BackgroundAppliance) -> None:
    _call(case)


@api_schema.parametrize()
@settings(_SETTINGS, max_examples=8)
def test_api_prefix_conforms_to_spec(case: Any, running: BackgroundAppliance) -> None:
    _call(case)


def test_report_case_count(running: BackgroundAppliance) -> None:
    """Not a check: prints how much schemathesis sent (pytest -s shows it)."""
    print(f"\nschemathesis: {int(_STATS['cases'])} cases, "
          f"{_STATS['seconds']:.1f} s in requests and checks",
          json.dumps({k: v for k, v in SEEDS.keep.items()}))
