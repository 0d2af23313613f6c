"""GSM voice end to end: a fake modem on a pty (with its PCM audio pty), a real appliance
with one pjsua2 media worker, a local application server and a registered pjsua2 test phone.

The GSM side of a call is a loopback pair inside the media worker (services.gsm_calls.GsmSession):
the fake modem's PCM tty is attached to one leg, the app runs on (or the caller is bridged to)
the other."""

from __future__ import annotations

import array
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
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
    ModemConfig,
    OutboundConfig,
    OutboundRoute,
    SipConfig,
)
from tests.conftest import ADMIN_SID, Api, free_port
from tests.fakes.modem import FakeModem
from tests.media.audio import loudest_second, read_samples, rms, tone_share, write_tone
from tests.outside.test_outside_lines import cdrs
from tests.outside.test_suspended_accounts import NOT_ACTIVE, notes_of, suspend, tenant, tree_cdrs
from tests.voice.test_voice_apps import PHONE, Handset, Rcml

pytest.importorskip("pjsua2")

PASSWORD = "Voice-Test-Pa55word!"
DOMAIN = "pbx.example.com"
SIM = "+15550009000"
CALLER = "+15557654321"
ROUTES = (OutboundRoute("+1777", ("modem",)),)
_RTP_BASE = 42000 + (os.getpid() % 50) * 300


def pcm_samples(data: bytes) -> array.array[int]:
    out = array.array("h", data[:len(data) // 2 * 2])
    if sys.byteorder != "little":
        out.byteswap()
    return out


async def until(predicate: Callable[[], bool], within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - state changed by another thread
            await asyncio.sleep(0.05)


@pytest.fixture
async def gsm(tmp_path: Path, aiohttp_server: Any, request: pytest.FixtureRequest
              ) -> AsyncIterator[Any]:
    rcml = Rcml(write_tone(tmp_path / "tone.wav", 1000, 3.0))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rcml.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rcml.base = str(server.make_url("")).rstrip("/")
    fake = FakeModem(link=tmp_path / "usb-Quectel_EC25-if02-port0", tone_hz=700.0,
                     answer_after=0.3, **getattr(request, "param", {})).start()
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()), domain=DOMAIN),
                    media=MediaConfig(workers=1, rtp_ports=(_RTP_BASE, _RTP_BASE + 99)),
                    modem=ModemConfig(device=str(fake.link), audio_device=fake.pcm_path,
                                      number=SIM),
                    outbound=OutboundConfig(max_calls=2, routes=ROUTES))
    appliance = Appliance(config)
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

    try:
        await appliance.start()
        await appliance.wait_modem(10)
        password = (config.data_dir / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{config.api.listen.port}", ADMIN_SID,
                      password, config.data_dir)
            status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                             {"Login": "alice", "Password": PASSWORD})
            assert status == 200, body
            yield appliance, api, rcml, phone, fake
    finally:
        for p in phones:
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()
        await appliance.stop()
        fake.close()


async def test_gsm_call_to_the_sim_number_runs_its_app(gsm: Any) -> None:
    appliance, api, rcml, _, fake = gsm
    rcml.docs["/gsm"] = '<Response><Play>{base}/tone.wav</Play><Pause length="1"/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": SIM, "VoiceUrl": f"{rcml.base}/gsm"})
    assert status == 200, body
    fake.pcm_received.clear()
    fake.inject_call(CALLER, ring_every=0.3)
    start = await rcml.wait("/gsm", 15)
    assert (start["From"], start["To"], start["Direction"]) == (CALLER, SIM, "inbound")
    assert "ATA" in fake.commands
    # The app's <Play> reaches the caller: the modem's PCM tty gets a 1 kHz tone.
    await until(lambda: not fake.calls, 20)  # the app ends, the modem call is hung up
    samples = pcm_samples(bytes(fake.pcm_received))
    block = loudest_second(samples, 8000)
    assert rms(block) > 500, rms(block)
    assert tone_share(block, 8000, 1000) > 0.5, tone_share(block, 8000, 1000)
    calls = await cdrs(api, 1)
    call = calls[0]
    assert (call["from"], call["to"], call["direction"], call["status"]) == (
        CALLER, SIM, "inbound", "completed")


async def test_gsm_call_without_an_app_is_rejected(gsm: Any) -> None:
    _, _, rcml, _, fake = gsm
    fake.inject_call(CALLER, ring_every=0.3)
    await until(lambda: any(c in ("AT+CHUP", "ATH") for c in fake.commands), 10)
    assert "ATA" not in fake.commands
    assert not rcml.got


async def test_phone_calls_a_number_out_by_the_modem(gsm: Any, tmp_path: Path) -> None:
    appliance, api, _, phone, fake = gsm
    heard = tmp_path / "heard.wav"
    sip = appliance.config.sip.listen
    fake.pcm_received.clear()
    alice = await phone("--user", "alice", "--call", f"sip:+17775551234@{sip.host}:{sip.port}",
                        "--tone", "1000", "--record", str(heard), "--hold", "3",
                        "--timeout", "25")
    await alice.finish()
    assert any(e.get("state") == "CONFIRMED" for e in alice.events), alice.events
    assert "ATD+17775551234;" in fake.commands, fake.commands
    await until(lambda: not fake.calls, 10)  # the phone hung up: so did the modem
    # The phone hears the fake modem's 700 Hz; the modem gets the phone's 1 kHz.
    samples, rate = read_samples(heard)
    block = loudest_second(samples, rate)
    assert tone_share(block, rate, 700) > 0.5, tone_share(block, rate, 700)
    sent = loudest_second(pcm_samples(bytes(fake.pcm_received)), 8000)
    assert tone_share(sent, 8000, 1000) > 0.5, tone_share(sent, 8000, 1000)
    calls = await cdrs(api, 2)
    child = next(c for c in calls if c["direction"] == "outbound-dial")
    assert (child["to"], child["status"]) == ("+17775551234", "completed")


async def number_app(api: Api, voice_url: str) -> None:
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": SIM, "VoiceUrl": voice_url})
    assert status == 200, body


GATHER = ('<Response><Gather numDigits="3" timeout="10" action="{base}/digits"/>'
          '</Response>')


async def test_modem_dtmf_reaches_a_gather(gsm: Any) -> None:
    """The modem's own detector (+QTONEDET, the ASCII code of the digit) feeds <Gather>."""
    _, api, rcml, _, fake = gsm
    rcml.docs["/gsm"] = GATHER
    await number_app(api, f"{rcml.base}/gsm")
    fake.inject_call(CALLER, ring_every=0.3)
    await rcml.wait("/gsm", 15)
    await asyncio.sleep(2.0)  # the loopback pair is up and <Gather> listens (a loaded CI)
    for digit in "4*7":
        fake.emit_dtmf(digit)
        await asyncio.sleep(0.15)
    form = await rcml.wait("/digits", 10)
    assert form["Digits"] == "4*7", form


@pytest.mark.parametrize("gsm", [{"dtmf_urc": False}], indirect=True)
async def test_in_band_dtmf_reaches_a_gather(gsm: Any) -> None:
    """A modem without a DTMF URC: the worker's Goertzel detector finds the tones in the
    PCM stream (and only then: with a URC the two would count each digit twice)."""
    _, api, rcml, _, fake = gsm
    rcml.docs["/gsm"] = GATHER
    await number_app(api, f"{rcml.base}/gsm")
    fake.inject_call(CALLER, ring_every=0.3)
    await rcml.wait("/gsm", 15)
    await asyncio.sleep(2.0)  # as above
    fake.play_digits("159")
    form = await rcml.wait("/digits", 10)
    assert form["Digits"] == "159", form


async def test_a_second_gsm_call_is_refused_busy(gsm: Any) -> None:
    """Call waiting: the second caller gets busy (AT+CHLD=0), the first call goes on."""
    _, api, rcml, _, fake = gsm
    rcml.docs["/gsm"] = '<Response><Pause length="3"/></Response>'
    await number_app(api, f"{rcml.base}/gsm")
    fake.inject_call(CALLER, ring_every=0.3)
    await rcml.wait("/gsm", 15)
    second = "+15551112222"
    fake.inject_call(second, ring_every=0.3)
    await until(lambda: fake.refused_waiting == [second], 10)
    assert any(c.number == CALLER and c.stat == 0 for c in fake.calls.values())
    assert not any(c in ("AT+CHUP", "ATH") for c in fake.commands)
    await until(lambda: not fake.calls, 15)  # the app ends: the first call is hung up
    calls = {c["from"]: c for c in await cdrs(api, 2)}
    assert (calls[second]["status"], calls[second]["to"]) == ("busy", SIM)
    assert calls[CALLER]["status"] == "completed"


async def test_gsm_call_to_a_number_routed_to_a_client(gsm: Any, tmp_path: Path) -> None:
    """VoiceUrl=client:alice: alice's phone rings while the GSM call rings; ATA only once
    she answers; audio both ways; her RFC 2833 digit reaches the modem as AT+VTS."""
    _, api, _, phone, fake = gsm
    await number_app(api, "client:alice")
    heard = tmp_path / "alice.wav"
    alice = await phone("--user", "alice", "--answer", "--once", "--tone", "1000",
                        "--record", str(heard), "--hold", "3", "--dtmf", "5",
                        "--dtmf-delay", "1.5", "--timeout", "25")
    fake.pcm_received.clear()
    fake.inject_call(CALLER, ring_every=0.3)
    await alice.finish()
    assert any(e.get("state") == "CONFIRMED" for e in alice.events), alice.events
    assert "ATA" in fake.commands
    await until(lambda: not fake.calls, 10)  # alice hung up: so did the modem
    samples, rate = read_samples(heard)
    block = loudest_second(samples, rate)
    assert tone_share(block, rate, 700) > 0.5, tone_share(block, rate, 700)
    sent = loudest_second(pcm_samples(bytes(fake.pcm_received)), 8000)
    assert tone_share(sent, 8000, 1000) > 0.5, tone_share(sent, 8000, 1000)
    assert fake.dtmf_sent == ["5"], fake.dtmf_sent
    [call] = await cdrs(api, 1)
    assert (call["from"], call["to"], call["direction"], call["status"]) == (
        CALLER, SIM, "inbound", "completed")


async def test_a_network_caller_id_with_a_space_reaches_a_client_escaped(gsm: Any) -> None:
    """An alphanumeric caller ID from the network ("Vodafone UK") is the From user of the
    INVITE to the Client's phone, %-escaped: written raw, its space made the URI invalid and
    the call to the phone failed."""
    _, api, _, phone, fake = gsm
    await number_app(api, "client:alice")
    alice = await phone("--user", "alice", "--answer", "--once", "--hold", "1",
                        "--timeout", "20")
    fake.inject_call("Vodafone UK", ring_every=0.3)
    await alice.finish()
    [incoming] = [e for e in alice.events if e.get("event") == "incoming"]
    assert "sip:Vodafone%20UK@" in incoming["remote"], incoming
    assert any(e.get("state") == "CONFIRMED" for e in alice.events), alice.events


async def test_gsm_call_to_a_suspended_accounts_number_is_rejected(gsm: Any) -> None:
    """The SIM's number belongs to a suspended sub-account: its calls are rejected as for
    a number with no app (AT+CHUP, never ATA), its app is not fetched, and a Notification
    of the account says why."""
    # Before: the call was answered and the app run (its <Dial><Number> went out by the
    # modem line).
    _, api, rcml, _, fake = gsm
    rcml.docs["/gsm"] = '<Response><Pause length="5"/></Response>'
    sid, sub = await tenant(api)
    status, body, _ = await sub.post(f"Accounts/{sid}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": SIM, "VoiceUrl": f"{rcml.base}/gsm"})
    assert status == 200, body
    await suspend(api, sid)
    fake.inject_call(CALLER, ring_every=0.3)
    await until(lambda: any(c in ("AT+CHUP", "ATH") for c in fake.commands), 10)
    assert "ATA" not in fake.commands
    assert not rcml.got
    [note] = await notes_of(api, sid)
    assert note["error_code"] == NOT_ACTIVE and SIM in note["message_text"], note


async def test_suspending_an_account_hangs_up_its_gsm_call(gsm: Any) -> None:
    # Before: the call went on until the app ended, 30 s later.
    _, api, rcml, _, fake = gsm
    rcml.docs["/gsm"] = '<Response><Pause length="30"/></Response>'
    sid, sub = await tenant(api)
    status, body, _ = await sub.post(f"Accounts/{sid}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": SIM, "VoiceUrl": f"{rcml.base}/gsm"})
    assert status == 200, body
    fake.inject_call(CALLER, ring_every=0.3)
    await rcml.wait("/gsm", 15)
    await until(lambda: any(c.stat == 0 for c in fake.calls.values()), 10)  # active
    await suspend(api, sid)
    await until(lambda: not fake.calls, 8)
    assert any(c in ("AT+CHUP", "ATH") for c in fake.commands)
    [call] = await tree_cdrs(api, 1)
    assert (call["from"], call["status"]) == (CALLER, "completed"), call


async def test_suspending_an_account_gives_up_its_call_ringing_out_by_the_modem(
        gsm: Any) -> None:
    """POST /Calls to a number out by the modem line, still ringing when its account is
    suspended: the modem call is given up (AT+CHUP), its app never runs, no next line."""
    # Before: nothing stopped it (the worker has no leg to hang up until the modem call is
    # answered), and once answered its app ran.
    _, api, rcml, _, fake = gsm
    fake.answer_after = 60.0  # the far end never answers while the test lasts
    sid, sub = await tenant(api)
    status, body, _ = await sub.post(f"Accounts/{sid}/Calls.json", {
        "From": "+15550009000", "To": "+17775551234", "Url": f"{rcml.base}/out",
        "Timeout": "60"})
    assert status == 200, body
    await until(lambda: "ATD+17775551234;" in fake.commands, 10)
    await suspend(api, sid)
    await until(lambda: not fake.calls, 8)
    assert any(c in ("AT+CHUP", "ATH") for c in fake.commands)
    [call] = await tree_cdrs(api, 1)
    assert (call["direction"], call["status"]) == ("outbound-api", "canceled"), call
    assert not rcml.got
