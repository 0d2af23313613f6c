"""Outside lines end to end: sipp plays the upstream provider on loopback (its registrar, its
calls to our DIDs, its call server with a digest challenge, an out-of-service server), a real
appliance with one pjsua2 media worker, and a registered pjsua2 test phone (tests/voice)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from appliance.app import Appliance
from appliance.config import (
    ApiConfig,
    Config,
    Endpoint,
    MediaConfig,
    OutboundConfig,
    OutboundRoute,
    SipConfig,
)
from appliance.sip.proxy_ports import Fork
from tests.conftest import ADMIN_SID, Api, free_port
from tests.media.audio import write_tone
from tests.voice.test_voice_apps import PHONE, Handset, Rcml

pytest.importorskip("pjsua2")
pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed")

SIPP = Path(__file__).resolve().parents[1] / "data" / "sip" / "sipp"
PASSWORD = "Voice-Test-Pa55word!"
DOMAIN = "pbx.example.com"
GW = f"Accounts/{ADMIN_SID}/Management/Gateways"
CALLS = f"Accounts/{ADMIN_SID}/Calls"
DID = "+15550001234"
ROUTES = (OutboundRoute("+1555", ("gateway:provider",)),
          OutboundRoute("+1666", ("modem", "gateway:down", "gateway:provider")))
_RTP_BASE = 40000 + (os.getpid() % 50) * 400


def sipp(scenario: str | Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    """A bounded sipp on 127.0.0.1:PORT (one call, 20 s at most)."""
    path = scenario if isinstance(scenario, Path) else SIPP / scenario
    return subprocess.Popen(
        ["sipp", *args, "-sf", str(path), "-i", "127.0.0.1", "-p", str(port), "-m", "1",
         "-nostdin", "-timeout", "20", "-timeout_error", "-bind_local"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def digest_is_valid(trace: str, user: str, password: str) -> bool:
    """Check the Proxy-Authorization of the INVITE in a sipp -trace_msg log (RFC 2617,
    MD5, qop=auth), and that its uri is the Request-URI the provider received."""
    for block in trace.split("INVITE sip:")[1:]:
        request_uri = "sip:" + block.split(" ", 1)[0]
        match = re.search(r"^Proxy-Authorization: Digest (.*)$", block, re.M)
        if match is None:
            continue
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', match[1]))
        if params.get("uri") != request_uri or params.get("username") != user:
            return False
        ha1 = hashlib.md5(f"{user}:{params['realm']}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"INVITE:{params['uri']}".encode()).hexdigest()
        want = hashlib.md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:"
                           f"{params['qop']}:{ha2}".encode()).hexdigest()
        return bool(params["response"] == want)
    return False


def invite_froms(trace: str) -> list[str]:
    """The From URI of each INVITE the provider received (a sipp -trace_msg log)."""
    froms = []
    for block in trace.split("INVITE sip:")[1:]:
        match = re.search(r"^From:\s*(.*?)\s*$", block, re.M)
        uri = re.search(r"<?(sips?:[^>;]+)", match[1]) if match else None
        if uri is not None:
            froms.append(uri[1])
    return froms


async def finished(proc: subprocess.Popen[bytes], seconds: float = 25.0) -> int:
    async with asyncio.timeout(seconds):
        while proc.poll() is None:
            await asyncio.sleep(0.05)
    return proc.returncode


@pytest.fixture
async def outside(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Any]:
    rcml = Rcml(write_tone(tmp_path / "tone.wav", 1000, 2.0))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rcml.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rcml.base = str(server.make_url("")).rstrip("/")
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()), domain=DOMAIN),
                    media=MediaConfig(workers=1, rtp_ports=(_RTP_BASE, _RTP_BASE + 99)),
                    outbound=OutboundConfig(max_calls=2, routes=ROUTES))
    appliance = Appliance(config)
    await appliance.start()
    procs: list[subprocess.Popen[bytes]] = []
    phones: list[Handset] = []

    async def phone(*args: str) -> Handset:
        sip = appliance.config.sip.listen
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(PHONE), "--rtp-port", str(_RTP_BASE + 200),
            "--register", f"{sip.host}:{sip.port}", "--password", PASSWORD,
            "--domain", DOMAIN, *args, stdout=asyncio.subprocess.PIPE)
        phones.append(Handset(proc))
        await phones[-1].wait(lambda e: e["event"] == "ready")
        return phones[-1]

    def run_sipp(scenario: str | Path, port: int, *args: str) -> subprocess.Popen[bytes]:
        procs.append(sipp(scenario, port, *args))
        return procs[-1]

    password = (config.data_dir / "admin-password").read_text().strip()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                      password, config.data_dir)
            status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                             {"Login": "alice", "Password": PASSWORD})
            assert status == 200, body
            yield appliance, api, rcml, phone, run_sipp
    finally:
        for p in phones:
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await appliance.stop()


async def gateway(api: Api, name: str, port: int, *, register: bool) -> dict[str, Any]:
    status, body, _ = await api.post(f"{GW}.json", {
        "FriendlyName": name, "UserName": "office", "Password": "Trunk-pass-1",
        "Proxy": f"127.0.0.1:{port}", "Register": "true" if register else "false",
        "TTL": "600"})
    assert status == 200, body
    return dict(json.loads(body))


async def registered_provider(api: Api, run_sipp: Any) -> int:
    """A gateway registered at a sipp registrar on a fresh port; that port is now the
    provider's address (the registrar sipp has exited)."""
    port = free_port()
    registrar = run_sipp("provider-registrar.xml", port)
    await asyncio.sleep(0.3)
    gw = await gateway(api, "provider", port, register=True)
    assert await finished(registrar) == 0, registrar.stderr.read() if registrar.stderr else ""
    _, body, _ = await api.get(f"{GW}/{gw['sid']}.json")
    assert json.loads(body)["registration_state"] == "registered", body
    return port


async def cdrs(api: Api, count: int, seconds: float = 10.0) -> list[dict[str, Any]]:
    """The CDRs once COUNT of them exist and none is still live."""
    calls: list[dict[str, Any]] = []
    async with asyncio.timeout(seconds):
        while True:
            _, body, _ = await api.get(f"{CALLS}.json")
            calls = json.loads(body)["calls"]
            if len(calls) >= count and all(c["status"] not in (
                    "queued", "ringing", "in-progress") for c in calls):
                return calls
            await asyncio.sleep(0.1)


async def test_provider_calls_a_did_with_an_app(outside: Any) -> None:
    appliance, api, rcml, _, run_sipp = outside
    rcml.docs["/did"] = '<Response><Pause length="10"/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": DID, "VoiceUrl": f"{rcml.base}/did"})
    assert status == 200, body
    port = await registered_provider(api, run_sipp)
    sip = appliance.config.sip.listen
    # The provider dials the DID without its + (matched as +-normalised).
    call = run_sipp("provider-uac.xml", port, f"{sip.host}:{sip.port}", "-s", DID[1:])
    form = await rcml.wait("/did")
    assert (form["From"], form["To"], form["Direction"]) == ("+15559876543", DID, "inbound")
    assert await finished(call) == 0, call.stderr.read() if call.stderr else ""
    [cdr] = await cdrs(api, 1)
    assert (cdr["direction"], cdr["from"], cdr["to"], cdr["status"]) == (
        "inbound", "+15559876543", DID, "completed")
    assert cdr["sid"] == form["CallSid"] and cdr["phone_number_sid"]


async def test_a_ten_digit_did_is_the_us_number_first(outside: Any) -> None:
    """The provider dials 5550001234: that is the admin's +15550001234 (its +1 form is
    tried before the + added), not a sub-account's +5550001234 (provisioned as
    PhoneNumber=5550001234)."""
    appliance, api, rcml, _, run_sipp = outside
    rcml.docs["/admin"] = '<Response><Pause length="10"/></Response>'
    rcml.docs["/sub"] = '<Response><Pause length="1"/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": DID, "VoiceUrl": f"{rcml.base}/admin"})
    assert status == 200, body
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                       "Password": "Sub-Acct-pass-9"})
    assert status == 200, body
    sub = api.as_user("sub@example.com", "Sub-Acct-pass-9")
    status, body, _ = await sub.post(
        f"Accounts/{json.loads(body)['sid']}/IncomingPhoneNumbers.json",
        {"PhoneNumber": "5550001234", "VoiceUrl": f"{rcml.base}/sub"})
    assert status == 200 and json.loads(body)["phone_number"] == "+5550001234", body
    port = await registered_provider(api, run_sipp)
    sip = appliance.config.sip.listen
    call = run_sipp("provider-uac.xml", port, f"{sip.host}:{sip.port}", "-s", "5550001234")
    form = await rcml.wait("/admin")
    assert (form["To"], form["AccountSid"]) == (DID, ADMIN_SID)
    assert await finished(call) == 0, call.stderr.read() if call.stderr else ""
    assert [path for path, _ in rcml.got] == ["/admin"]


async def test_provider_calls_a_did_routed_to_a_client(outside: Any) -> None:
    """VoiceUrl=client:alice: the provider's call rings alice's phone, is answered only when
    she answers, and leaves a parent CDR and an outbound-dial child to alice."""
    appliance, api, _, phone, run_sipp = outside
    for number, target in ((DID, "client:alice"), ("+15550004321", "client:nobody")):
        status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                         {"PhoneNumber": number, "VoiceUrl": target})
        assert status == 200, body
    alice = await phone("--user", "alice", "--answer", "--once", "--timeout", "20")
    await alice.wait(lambda e: e["event"] == "registered" and e["code"] == 200)
    port = await registered_provider(api, run_sipp)
    sip = appliance.config.sip.listen
    call = run_sipp("provider-uac.xml", port, f"{sip.host}:{sip.port}", "-s", DID)
    assert await finished(call) == 0, call.stderr.read() if call.stderr else ""
    await alice.finish()
    assert any(e.get("state") == "CONFIRMED" for e in alice.events), alice.events
    calls = await cdrs(api, 2)
    parent = next(c for c in calls if c["direction"] == "inbound")
    child = next(c for c in calls if c["direction"] == "outbound-dial")
    assert (parent["from"], parent["to"], parent["status"]) == (
        "+15559876543", DID, "completed")
    assert (child["to"], child["status"], child["parent_call_sid"]) == (
        "alice", "completed", parent["sid"])
    # A client: target that names no Client of the account is refused like a DID without an app.
    refused = run_sipp("provider-uac-refused.xml", port, f"{sip.host}:{sip.port}",
                       "-s", "+15550004321")
    assert await finished(refused) == 0, refused.stderr.read() if refused.stderr else ""


async def test_only_calls_out_by_a_route_count_against_max_calls(outside: Any) -> None:
    """A provider's call that rings a Client (a client: DID) takes a worker slot but does
    not go out, so it must not take one of the [outbound] max_calls places from the desk
    phones; a call out by a route's lines does."""
    appliance, *_ = outside
    calls = appliance.calls
    ringing = await calls.to_worker(ADMIN_SID, "+15559876543", DID, None, None,
                                    client="alice")
    assert isinstance(ringing, Fork), ringing
    assert calls.outbound.going_out == 0
    out = await calls.to_worker(ADMIN_SID, "alice", "+15551234567", None, None,
                                lines=("gateway:provider",))
    assert isinstance(out, Fork), out
    assert calls.outbound.going_out == 1


async def test_provider_calls_unknown_dids_and_strangers_are_challenged(
        outside: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    appliance, api, rcml, _, run_sipp = outside
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": "+15550004321"})  # no voice app
    assert status == 200, body
    port = await registered_provider(api, run_sipp)
    sip = appliance.config.sip.listen
    for number in ("+15550009999", "+15550004321"):
        call = run_sipp("provider-uac-refused.xml", port, f"{sip.host}:{sip.port}",
                        "-s", number)
        assert await finished(call) == 0, call.stderr.read() if call.stderr else ""
    assert any("+15550009999" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    # The same INVITE from any other address is a stranger's: challenged (no toll fraud).
    challenged = tmp_path / "challenged.xml"
    challenged.write_text((SIPP / "provider-uac-refused.xml").read_text().replace(
        '<recv response="404"/>', '<recv response="407"/>'))
    call = run_sipp(challenged, free_port(), f"{sip.host}:{sip.port}", "-s", DID)
    assert await finished(call) == 0, call.stderr.read() if call.stderr else ""
    assert not rcml.got
    _, body, _ = await api.get(f"{CALLS}.json")
    assert json.loads(body)["calls"] == []  # refused provider calls have no account: no CDR


async def test_client_calls_a_number_out_through_a_gateway(outside: Any, tmp_path: Path
                                                          ) -> None:
    appliance, api, _, phone, run_sipp = outside
    port = free_port()
    trace = tmp_path / "provider.log"
    provider = run_sipp("provider-uas.xml", port, "-trace_msg", "-message_file", str(trace))
    await gateway(api, "provider", port, register=False)
    await asyncio.sleep(0.3)
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:+15551234567@{sip.host}:{sip.port}",
                        "--hold", "2", "--timeout", "20")
    await alice.finish()
    assert any(e.get("state") == "CONFIRMED" for e in alice.events), alice.events
    assert await finished(provider) == 0, provider.stderr.read() if provider.stderr else ""
    # The worker answered the provider's 407 itself, through the front door, unaltered.
    assert digest_is_valid(trace.read_text(), "office", "Trunk-pass-1")
    # A desk phone's call shows the gateway's own identity, at the provider's domain.
    froms = invite_froms(trace.read_text())
    assert froms and set(froms) == {"sip:office@127.0.0.1"}, froms
    calls = await cdrs(api, 2)
    parent = next(c for c in calls if c["direction"] == "inbound")
    child = next(c for c in calls if c["direction"] == "outbound-dial")
    assert (parent["from"], parent["to"], parent["status"]) == (
        "alice", "+15551234567", "completed")
    assert (child["from"], child["to"], child["status"]) == (
        "alice", "+15551234567", "completed")
    assert child["parent_call_sid"] == parent["sid"]


async def test_failover_to_the_next_line_on_503(outside: Any) -> None:
    appliance, api, _, phone, run_sipp = outside
    down_port, up_port = free_port(), free_port()
    down = run_sipp("provider-uas-503.xml", down_port)
    up = run_sipp("provider-uas.xml", up_port)
    await gateway(api, "down", down_port, register=False)
    await gateway(api, "provider", up_port, register=False)
    await asyncio.sleep(0.3)
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:+16661234567@{sip.host}:{sip.port}",
                        "--hold", "2", "--timeout", "20")
    await alice.finish()
    assert any(e.get("state") == "CONFIRMED" for e in alice.events), alice.events
    assert await finished(down) == 0, down.stderr.read() if down.stderr else ""
    assert await finished(up) == 0, up.stderr.read() if up.stderr else ""
    calls = await cdrs(api, 3)
    parent = next(c for c in calls if c["direction"] == "inbound")
    children = [c for c in calls if c["direction"] == "outbound-dial"]
    assert parent["status"] == "completed"
    assert sorted(c["status"] for c in children) == ["completed", "failed"], children
    assert all(c["parent_call_sid"] == parent["sid"] for c in children)


async def test_outbound_calls_at_once_are_capped_even_when_requested_together(outside: Any
                                                                             ) -> None:
    """[outbound] max_calls (2 here) holds when the requests arrive together: each one is
    counted from its check on, not only once its CDR is written (an await later)."""
    appliance, api, rcml, _, _ = outside
    rcml.docs["/api"] = "<Response><Hangup/></Response>"
    silent = free_port()  # nothing answers there: the calls that got out keep ringing
    await gateway(api, "provider", silent, register=False)
    form = {"From": "+15557654321", "To": "+15551234567", "Url": f"{rcml.base}/api",
            "Timeout": "30"}
    answers = await asyncio.gather(*(api.post(f"{CALLS}.json", dict(form)) for _ in range(8)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 200] + [503] * 6, answers
    refused = [body for status, body, _ in answers if status == 503]
    assert all("Too many outbound calls (2 at once)" in body for body in refused), refused


async def test_numbers_without_a_route_are_refused(outside: Any) -> None:
    appliance, api, _, phone, _ = outside
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:+4930123456@{sip.host}:{sip.port}",
                        "--timeout", "10")
    await alice.finish()
    assert any(e.get("state") == "DISCONNECTED" and e.get("code") == 403
               for e in alice.events), alice.events


async def test_rcml_dial_number_goes_out_through_the_route(outside: Any, tmp_path: Path
                                                          ) -> None:
    appliance, api, rcml, phone, run_sipp = outside
    rcml.docs["/dial"] = ('<Response><Dial callerId="+1 (555) 765-4321">'
                          "<Number>+1 555 123 4567</Number></Dial></Response>")
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": DID, "VoiceUrl": f"{rcml.base}/dial"})
    assert status == 200, body
    port = free_port()
    trace = tmp_path / "provider.log"
    provider = run_sipp("provider-uas.xml", port, "-trace_msg", "-message_file", str(trace))
    await gateway(api, "provider", port, register=False)
    await asyncio.sleep(0.3)
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{DID}@{sip.host}:{sip.port}",
                        "--hold", "3", "--timeout", "20")
    await alice.finish()
    assert await finished(provider) == 0, provider.stderr.read() if provider.stderr else ""
    calls = await cdrs(api, 2)
    parent = next(c for c in calls if c["direction"] == "inbound")
    child = next(c for c in calls if c["direction"] == "outbound-dial")
    assert (child["to"], child["status"], child["parent_call_sid"]) == (
        "+15551234567", "completed", parent["sid"])
    # callerId, a phone number, is the From user; the host is the gateway's Proxy host.
    froms = invite_froms(trace.read_text())
    assert froms and set(froms) == {"sip:+15557654321@127.0.0.1"}, froms


async def test_post_calls_to_a_number_goes_out_through_the_route(outside: Any, tmp_path: Path
                                                                ) -> None:
    appliance, api, rcml, _, run_sipp = outside
    rcml.docs["/api"] = '<Response><Pause length="1"/><Hangup/></Response>'
    port = free_port()
    trace = tmp_path / "provider.log"
    provider = run_sipp("provider-uas.xml", port, "-trace_msg", "-message_file", str(trace))
    await gateway(api, "provider", port, register=False)
    await asyncio.sleep(0.3)
    # A number no route covers stays 403, saying why.
    status, body, _ = await api.post(f"{CALLS}.json", {"From": "+15557654321",
                                                      "To": "+4930123456",
                                                      "Url": f"{rcml.base}/api"})
    assert status == 403 and "No outbound route for +4930123456" in body, body
    status, body, _ = await api.post(f"{CALLS}.json", {"From": "+1 555 765 4321",
                                                      "To": "+1 555 123 4567",
                                                      "Url": f"{rcml.base}/api",
                                                      "Timeout": "20"})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    form = await rcml.wait("/api")
    assert (form["CallSid"], form["Direction"], form["To"]) == (
        sid, "outbound-api", "+15551234567")
    assert await finished(provider) == 0, provider.stderr.read() if provider.stderr else ""
    log = trace.read_text()
    assert digest_is_valid(log, "office", "Trunk-pass-1")
    froms = invite_froms(log)
    assert froms and set(froms) == {"sip:+15557654321@127.0.0.1"}, froms
    [cdr] = await cdrs(api, 1)
    assert (cdr["sid"], cdr["direction"], cdr["to"], cdr["status"]) == (
        sid, "outbound-api", "+15551234567", "completed"), cdr


async def test_post_calls_to_a_number_fails_over_and_uses_the_gateway_identity(
        outside: Any, tmp_path: Path) -> None:
    appliance, api, rcml, _, run_sipp = outside
    rcml.docs["/api"] = '<Response><Pause length="1"/><Hangup/></Response>'
    down_port, up_port = free_port(), free_port()
    trace = tmp_path / "provider.log"
    down = run_sipp("provider-uas-503.xml", down_port)
    up = run_sipp("provider-uas.xml", up_port, "-trace_msg", "-message_file", str(trace))
    await gateway(api, "down", down_port, register=False)
    await gateway(api, "provider", up_port, register=False)
    await asyncio.sleep(0.3)
    # From is no phone number: the provider sees the gateway's UserName.
    status, body, _ = await api.post(f"{CALLS}.json", {"From": "client:alice",
                                                      "To": "+16661234567",
                                                      "Url": f"{rcml.base}/api"})
    assert status == 200, body
    sid = json.loads(body)["sid"]
    assert await finished(down) == 0, down.stderr.read() if down.stderr else ""
    assert await finished(up) == 0, up.stderr.read() if up.stderr else ""
    froms = invite_froms(trace.read_text())
    assert froms and set(froms) == {"sip:office@127.0.0.1"}, froms
    [cdr] = await cdrs(api, 1)
    assert (cdr["sid"], cdr["direction"], cdr["status"]) == (sid, "outbound-api",
                                                             "completed"), cdr
