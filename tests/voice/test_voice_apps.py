"""Voice applications end to end: a real appliance with a real pjsua2 media worker, registered
pjsua2 test phones (tests/media/phone.py), and the RCML served by a local aiohttp app.

Audio is checked on what the phones record: the 1 kHz <Play>, non-silent <Say>, and the
phone's own 600 Hz tone in the <Record>ing downloaded from the Recordings API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, MediaConfig, SipConfig
from appliance.rcml.runner import play_path
from tests.conftest import ADMIN_SID, Api, free_port
from tests.media.audio import read_samples, rms, tone_share, write_tone

pytest.importorskip("pjsua2")

PHONE = Path(__file__).resolve().parents[1] / "media" / "phone.py"
PASSWORD = "Voice-Test-Pa55word!"
DOMAIN = "pbx.example.com"
NUMBER = "+15550001"
_RTP_BASE = 30000 + (os.getpid() % 50) * 400


class Rcml:
    """The application server: canned documents per path, and every request it got."""

    def __init__(self, tone: Path) -> None:
        self.tone = tone
        self.docs: dict[str, str] = {}
        self.files: dict[str, tuple[str, bytes]] = {}  # path -> (type, body), sent in pieces
        self.status: dict[str, int] = {}  # path -> the HTTP status its document comes with
        self.delay: dict[str, float] = {}  # path -> seconds before it answers
        self.got: list[tuple[str, dict[str, str]]] = []
        self.changed = asyncio.Event()
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/tone.wav":
            return web.FileResponse(self.tone, headers={"Content-Type": "audio/wav"})
        if request.path in self.files:
            kind, data = self.files[request.path]
            resp = web.StreamResponse(headers={"Content-Type": kind})
            await resp.prepare(request)
            for i in range(0, len(data), 65536):
                await resp.write(data[i:i + 65536])
                await asyncio.sleep(0.05)
            await resp.write_eof()
            return resp
        form = dict(await request.post()) if request.method == "POST" else dict(request.query)
        self.got.append((request.path, {k: str(v) for k, v in form.items()}))
        self.changed.set()
        await asyncio.sleep(self.delay.get(request.path, 0.0))
        body = self.docs.get(request.path, "<Response><Hangup/></Response>")
        return web.Response(text=body.replace("{base}", self.base), content_type="text/xml",
                            status=self.status.get(request.path, 200))

    async def wait(self, path: str, seconds: float = 15.0) -> dict[str, str]:
        async with asyncio.timeout(seconds):
            while True:
                for got_path, form in self.got:
                    if got_path == path:
                        return form
                self.changed.clear()
                await self.changed.wait()


class Handset:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    async def wait(self, pred: Callable[[dict[str, Any]], bool], seconds: float = 15.0) -> None:
        async with asyncio.timeout(seconds):
            while not any(pred(e) for e in self.events):
                await asyncio.sleep(0.05)

    async def finish(self, seconds: float = 30.0) -> None:
        async with asyncio.timeout(seconds):
            await self._task
            assert await self.proc.wait() == 0


@pytest.fixture
async def voice(tmp_path: Path, aiohttp_server: Any,
                request: pytest.FixtureRequest) -> AsyncIterator[tuple[Appliance, Api,
                                                                       Rcml, Any]]:
    # Media workers: 1, or what an indirect parametrization asks for.
    workers = int(getattr(request, "param", 1))
    rcml = Rcml(write_tone(tmp_path / "tone.wav", 1000, 2.0))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rcml.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rcml.base = str(server.make_url("")).rstrip("/")
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()), domain=DOMAIN),
                    media=MediaConfig(workers=workers,
                                      rtp_ports=(_RTP_BASE, _RTP_BASE + 99)))
    appliance = Appliance(config)
    await appliance.start()
    started: list[Handset] = []
    rtp = iter(range(_RTP_BASE + 100, _RTP_BASE + 400, 40))

    async def phone(*args: str) -> Handset:
        sip = appliance.config.sip.listen
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(PHONE), "--rtp-port", str(next(rtp)),
            "--register", f"{sip.host}:{sip.port}", "--password", PASSWORD,
            "--domain", DOMAIN, *args, stdout=asyncio.subprocess.PIPE)
        started.append(Handset(proc))
        await started[-1].wait(lambda e: e["event"] == "ready")
        assert any(e["event"] == "registered" and e["code"] == 200
                   for e in started[-1].events), started[-1].events
        return started[-1]

    password = (config.data_dir / "admin-password").read_text().strip()
    listen = config.api.listen
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
                      config.data_dir)
            for login in ("alice", "bob"):
                status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                                 {"Login": login, "Password": PASSWORD})
                assert status == 200, body
            yield appliance, api, rcml, phone
    finally:
        for p in started:
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()
        await appliance.stop()


def segment(path: Path, start: float, end: float) -> tuple[list[int], int]:
    samples, rate = read_samples(path)
    return list(samples[int(start * rate):int(end * rate)]), rate


async def test_number_app_play_gather_say_record(voice: Any, tmp_path: Path) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = ('<Response><Play>{base}/tone.wav</Play>'
                           '<Gather numDigits="1" timeout="6" action="/gathered"/></Response>')
    rcml.docs["/gathered"] = ('<Response><Say>You pressed a key.</Say>'
                              '<Record maxLength="2" playBeep="false" action="/recorded"/>'
                              '</Response>')
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/start"})
    assert status == 200, body
    heard = tmp_path / "heard.wav"
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--record", str(heard), "--tone", "600", "--dtmf", "5",
                        "--dtmf-delay", "3.0", "--timeout", "25")
    start = await rcml.wait("/start")
    assert start["From"] == "alice" and start["To"] == NUMBER
    assert (start["Direction"], start["CallStatus"], start["ApiVersion"]) == (
        "inbound", "ringing", "2012-04-24")
    assert start["CallerName"] == "null" and start["ForwardedFrom"] == "null"
    assert start["AccountSid"] == ADMIN_SID and start["CallSid"].startswith("ID")
    gathered = await rcml.wait("/gathered")
    assert gathered["Digits"] == "5" and gathered["CallStatus"] == "in-progress"
    recorded = await rcml.wait("/recorded", 20)
    assert float(recorded["RecordingDuration"]) >= 1.0
    await alice.finish()  # the app hung up after /recorded
    # The phone heard the 1 kHz <Play> first, then the <Say> (speech, not silence).
    tone, rate = segment(heard, 0.3, 1.8)
    assert tone_share(tone, rate, 1000) > 0.5, tone_share(tone, rate, 1000)
    speech, _ = segment(heard, 3.6, 5.0)
    assert rms(speech) > 300, rms(speech)
    # The recording is public by its .wav URL and holds the phone's 600 Hz tone.
    url = recorded["RecordingUrl"]
    assert url.endswith(".wav") and "/Recordings/RE" in url
    async with api.session.get(url) as resp:
        assert resp.status == 200
        (tmp_path / "rec.wav").write_bytes(await resp.read())
    rec, rate = segment(tmp_path / "rec.wav", 0.2, 1.2)
    assert tone_share(rec, rate, 600) > 0.5
    # One CDR for the caller's leg, through the Calls API.
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
    [call] = json.loads(body)["calls"]
    assert call["sid"] == start["CallSid"]
    assert (call["direction"], call["from"], call["to"], call["status"]) == (
        "inbound", "alice", NUMBER, "completed")
    assert call["subresource_uris"]


async def test_post_calls_rings_a_client_redirect_and_hang_up(voice: Any, tmp_path: Path
                                                              ) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/outbound"] = '<Response><Play>{base}/tone.wav</Play><Pause length="20"/></Response>'
    rcml.docs["/moved"] = '<Response><Say>Moved.</Say><Pause length="20"/></Response>'
    heard = tmp_path / "bob.wav"
    bob = await phone("--user", "bob", "--answer", "--once", "--record", str(heard),
                      "--timeout", "25")
    calls = f"Accounts/{ADMIN_SID}/Calls"
    status, body, _ = await api.post(f"{calls}.json", {"From": "alice", "To": "client:bob",
                                                       "Url": f"{rcml.base}/outbound",
                                                       "Timeout": "x"})
    assert status == 400, body
    status, body, _ = await api.post(f"{calls}.json", {"To": "client:bob"})
    assert status == 400 and "From" in body
    status, body, _ = await api.post(f"{calls}.json", {"From": "alice", "To": "+15551234",
                                                       "Url": f"{rcml.base}/outbound"})
    assert status == 403, body
    status, body, _ = await api.post(f"{calls}.json", {"From": "alice", "To": "client:",
                                                       "Url": f"{rcml.base}/outbound"})
    assert status == 400 and "client:<login>" in body, body
    status, body, _ = await api.post(f"{calls}.json", {"From": "alice", "To": "client:nobody",
                                                       "Url": f"{rcml.base}/outbound"})
    assert status == 404 and "The client nobody was not found" in body, body
    status, body, _ = await api.post(calls, {"From": "alice", "To": "client:bob",
                                             "Url": f"{rcml.base}/outbound",
                                             "StatusCallback": f"{rcml.base}/status"})
    assert status == 200, body
    assert body.startswith("<Call>") and "<RestcommResponse>" not in body  # no wrapper
    sid = body.split("<Sid>")[1].split("</Sid>")[0]
    outbound = await rcml.wait("/outbound")
    assert (outbound["CallSid"], outbound["Direction"], outbound["To"]) == (
        sid, "outbound-api", "bob")
    await asyncio.sleep(2.5)  # bob hears the tone
    status, body, _ = await api.post(f"{calls}/{sid}.json", {"Url": f"{rcml.base}/moved"})
    assert status == 200, body
    await rcml.wait("/moved")
    await asyncio.sleep(2.0)  # bob hears "Moved."
    status, body, _ = await api.post(f"{calls}/{sid}.json", {"Status": "completed"})
    assert status == 200, body
    await bob.finish()
    tone, rate = segment(heard, 0.3, 1.8)
    assert tone_share(tone, rate, 1000) > 0.5
    status, body, _ = await api.get(f"{calls}/{sid}.json")
    call = json.loads(body)
    assert (call["direction"], call["status"], call["to"]) == (
        "outbound-api", "completed", "client:bob")
    assert call["duration"] >= 3
    status, body, _ = await api.post(f"{calls}/{sid}.json", {"Status": "completed"})
    assert status == 410, body
    await asyncio.sleep(0.3)
    events = {f["CallStatus"]: f for path, f in rcml.got if path == "/status"}
    # (no "ringing": the test phone answers at once, without a 180)
    assert {"initiated", "answered", "completed"} <= set(events)
    assert events["completed"]["SequenceNumber"] == "3"
    assert int(events["completed"]["CallDuration"]) >= 3
    status, body, _ = await api.post(f"{calls}/CA00000000000000000000000000000000.json",
                                     {"Status": "completed"})
    assert status == 404, body


async def test_dial_client_bridges_and_reports_the_dial(voice: Any, tmp_path: Path) -> None:
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = '<Response><Dial action="/dialed"><Client>bob</Client></Dial></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/start"})
    assert status == 200, body
    bob = await phone("--user", "bob", "--answer", "--once", "--tone", "600", "--hold", "3",
                      "--timeout", "20")
    heard = tmp_path / "alice.wav"
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--record", str(heard), "--timeout", "20")
    dialed = await rcml.wait("/dialed", 20)
    assert dialed["DialCallStatus"] == "completed"
    assert int(dialed["DialCallDuration"]) >= 2
    await bob.finish()
    await alice.finish()
    samples, rate = read_samples(heard)
    block = list(samples)[-3 * rate:]
    best = max((block[i:i + rate] for i in range(0, len(block) - rate, rate // 4)),
               key=lambda b: tone_share(b, rate, 600))
    assert tone_share(best, rate, 600) > 0.5  # alice heard bob through the bridge
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls/{dialed['DialCallSid']}.json")
    child = json.loads(body)
    assert (child["direction"], child["status"], child["to"], child["parent_call_sid"]) == (
        "outbound-dial", "completed", "bob", dialed["CallSid"])


async def test_play_long_wav_in_full_and_bad_bodies_are_skipped(voice: Any, tmp_path: Path
                                                                ) -> None:
    appliance, api, rcml, phone = voice
    # 16 s of 400 Hz then 1.5 s of 1 kHz: 280 kB, more than an RCML document may be, sent in
    # pieces; the phone hears the end only if the whole file was read.
    low = write_tone(tmp_path / "low.wav", 400, 16.0)
    high = write_tone(tmp_path / "high.wav", 1000, 1.5)
    with wave.open(str(low), "rb") as a, wave.open(str(high), "rb") as b:
        frames = a.readframes(a.getnframes()) + b.readframes(b.getnframes())
    with wave.open(str(tmp_path / "long.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(frames)
    rcml.files["/long.wav"] = ("audio/wav", (tmp_path / "long.wav").read_bytes())
    rcml.files["/text"] = ("text/plain", b"this is not audio")
    # A cached body the worker cannot play (a damaged file) for a URL that now serves a good
    # one.
    cache_dir = appliance.config.data_dir / "cache"
    cached = play_path(cache_dir, f"{rcml.base}/stale.wav")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"<html>oops</html>")
    rcml.files["/stale.wav"] = ("audio/wav", high.read_bytes())
    rcml.docs["/start"] = ('<Response><Play>{base}/text</Play><Play>{base}/stale.wav</Play>'
                           '<Play>{base}/long.wav</Play><Redirect>/done</Redirect></Response>')
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/start"})
    assert status == 200, body
    heard = tmp_path / "heard.wav"
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--record", str(heard), "--timeout", "40")
    await rcml.wait("/done", 35)
    await alice.finish()
    samples, rate = read_samples(heard)
    early = list(samples[rate:2 * rate])
    assert tone_share(early, rate, 400) > 0.5, tone_share(early, rate, 400)
    best = max(tone_share(list(samples[i:i + rate]), rate, 1000)
               for i in range(0, len(samples) - rate, rate // 4))
    assert best > 0.5, best  # the last 1.5 s of the file were played
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    notes = {n["error_code"]: n["message_text"] for n in json.loads(body)["notifications"]}
    assert "text/plain" in notes[11200] and "bad-file" in notes[11100], notes
    assert not cached.exists()  # the stale body was dropped: the next call fetches the URL
    assert not play_path(cache_dir, f"{rcml.base}/text").exists()
