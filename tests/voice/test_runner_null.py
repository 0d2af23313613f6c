"""The RCML runner's control flow on the NullMediaEngine (no pjsua2 needed): lazy answer and
<Reject>, Gather digits and timeout, fallback URL, notifications for fetch/parse failures and
budgets, and a live redirect."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from appliance.media import wavcache
from appliance.media.engine import (
    CommandFailed,
    LegChanged,
    LegId,
    LegState,
    MediaEvent,
    PlayFinished,
    VoiceMissing,
)
from appliance.media.null import NullMediaEngine
from appliance.rcml.parse import BUDGET_EXCEEDED
from appliance.rcml.runner import App, CallInfo, Fetcher, LegEvents, Runner, play_path
from appliance.webhooks import MAX_RESPONSE, WebhookError, WebhookResponse, Webhooks
from tests.media.audio import write_tone


class World:
    def __init__(self, tmp: Path, docs: Mapping[str, str]) -> None:
        self.engine = NullMediaEngine()
        self.docs = dict(docs)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.notes: list[int] = []
        self.details: list[dict[str, Any]] = []  # each notify's keyword arguments
        self.seen: list[MediaEvent] = []
        self.tmp = tmp
        self.events = LegEvents()
        self.leg = LegId("LGtest")
        self.engine.subscribe(self._event)
        self.hooks: Webhooks | None = None  # set: requests go to a real server through it
        self.voices: list[str] = []  # the voice of each say()
        self.missing_voices: set[str] = set()  # say() has no such voice (VoiceMissing)

    def _event(self, ev: MediaEvent) -> None:
        self.seen.append(ev)
        if ev.leg == self.leg:
            self.events.put(ev)

    async def request(self, url: str, method: str, params: Mapping[str, str], *,
                      max_size: int | None = None) -> WebhookResponse:
        self.requests.append((url, method, dict(params)))
        if self.hooks is not None:
            return await self.hooks.request(url, method, params, max_size=max_size)
        if url not in self.docs:
            raise WebhookError(f"{method} {url}: HTTP 404")
        return WebhookResponse(200, "text/xml", self.docs[url].encode(), {})

    async def notify(self, account_sid: str, code: int, message: str, **kw: Any) -> None:
        self.notes.append(code)
        self.details.append(kw)

    async def say(self, text: str, language: str, voice: str) -> Path:
        self.voices.append(voice)
        if voice in self.missing_voices:
            raise VoiceMissing(f"no {voice} voice here")
        return write_tone(self.tmp / "say.wav", 400, 0.1)

    def runner(self, app: App) -> Runner:
        async def no(*args: Any) -> Any:
            raise AssertionError("not expected")

        out = Fetcher(request=self.request, notify=self.notify, say=self.say,
                      save_recording=no, send_sms=no, dial=None, cache_dir=self.tmp / "cache",
                      recordings_dir=self.tmp / "rec")
        info = CallInfo(sid="CAtest", account_sid="ACtest", from_="alice", to="+1555",
                        direction="inbound", leg=self.leg, app=app, timestamp="now")
        self.engine.simulate_incoming(self.leg)
        return Runner(info, self.engine, self.events, out)

    def ended(self) -> LegChanged:
        [end] = [e for e in self.seen if isinstance(e, LegChanged) and e.state is LegState.ENDED]
        return end

    def answered(self) -> bool:
        return any(isinstance(e, LegChanged) and e.state is LegState.ANSWERED for e in self.seen)


async def run(runner: Runner) -> None:
    async with asyncio.timeout(10):
        await runner.run()
    await asyncio.sleep(0)  # the engine's last events


async def test_reject_first_refuses_without_answering(tmp_path: Path) -> None:
    w = World(tmp_path, {"http://app/a": '<Response><Reject reason="busy"/></Response>'})
    await run(w.runner(App("http://app/a")))
    assert w.ended().code == 486 and not w.answered()
    [(_, method, params)] = w.requests
    assert method == "POST" and params["CallStatus"] == "ringing"
    assert params["CallerName"] == "null" and params["Direction"] == "inbound"


async def test_gather_digits_go_to_the_action_then_hangup(tmp_path: Path) -> None:
    w = World(tmp_path, {
        "http://app/a": '<Response><Gather timeout="3" action="/g"><Say>Hi</Say></Gather>'
                        '</Response>',
        "http://app/g": '<Response><Hangup/></Response>'})
    task = asyncio.create_task(run(w.runner(App("http://app/a"))))
    await asyncio.sleep(0.1)
    w.engine.simulate_dtmf(w.leg, "12#")
    await task
    assert w.requests[-1][0] == "http://app/g"
    assert w.requests[-1][2]["Digits"] == "12"
    assert w.requests[-1][2]["CallStatus"] == "in-progress"
    assert w.answered() and w.ended().code == 200


async def test_gather_timeout_continues_without_a_request(tmp_path: Path) -> None:
    w = World(tmp_path, {"http://app/a": '<Response><Gather timeout="1" action="/g"/>'
                                         '<Pause length="1"/></Response>'})
    await run(w.runner(App("http://app/a")))
    assert [r[0] for r in w.requests] == ["http://app/a"]
    assert w.answered() and w.notes == []


async def test_fallback_url_then_notification_when_both_fail(tmp_path: Path) -> None:
    w = World(tmp_path, {"http://app/fb": "<Response><Hangup/></Response>"})
    await run(w.runner(App("http://app/a", fallback_url="http://app/fb")))
    assert [r[0] for r in w.requests] == ["http://app/a", "http://app/fb"]
    assert w.notes == [11200]
    w = World(tmp_path, {})
    await run(w.runner(App("http://app/a")))
    assert w.notes == [11200] and not w.answered() and w.ended().code == 500


async def test_a_document_without_verbs_answers_then_hangs_up(tmp_path: Path) -> None:
    w = World(tmp_path, {"http://app/a": "<Response/>"})
    await run(w.runner(App("http://app/a")))
    assert w.notes == [] and w.answered() and w.ended().code == 200


async def test_a_failed_redirect_before_answering_fails_the_call(tmp_path: Path) -> None:
    w = World(tmp_path, {"http://app/a": "<Response><Redirect>/gone</Redirect></Response>"})
    await run(w.runner(App("http://app/a")))
    assert w.notes == [11200] and not w.answered() and w.ended().code == 500


async def test_bad_rcml_and_redirect_loop_are_notified(tmp_path: Path) -> None:
    w = World(tmp_path, {"http://app/a": "<Response><Play>"})
    await run(w.runner(App("http://app/a")))
    assert w.notes == [12100]
    w = World(tmp_path, {"http://app/a": "<Response><Redirect>/a</Redirect></Response>"})
    await run(w.runner(App("http://app/a")))
    assert w.notes == [BUDGET_EXCEEDED]


async def test_live_redirect_runs_the_new_document(tmp_path: Path) -> None:
    w = World(tmp_path, {"http://app/a": '<Response><Pause length="30"/></Response>',
                         "http://app/b": "<Response><Hangup/></Response>"})
    runner = w.runner(App("http://app/a"))
    task = asyncio.create_task(run(runner))
    await asyncio.sleep(0.1)
    runner.redirect(App("http://app/b"))
    await task
    assert [r[0] for r in w.requests] == ["http://app/a", "http://app/b"]
    assert w.requests[1][2]["CallStatus"] == "in-progress"


async def test_a_verb_failing_unexpectedly_ends_the_call_logged_and_notified(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = World(tmp_path, {"http://app/a": '<Response><Record maxLength="2" action="/r"/>'
                                         '<Say>Not said.</Say></Response>'})

    async def refused(leg: LegId, file: str, **kw: Any) -> None:
        raise CommandFailed("busy", "already recording")

    w.engine.record = refused  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="appliance.rcml.runner"):
        await run(w.runner(App("http://app/a")))
    # No action, no next verb: the call ends as an app error ends it, and says why.
    assert [r[0] for r in w.requests] == ["http://app/a"]
    assert w.notes == [11100]
    assert w.answered() and w.ended().code == 200
    assert "x call CAtest: the application stopped on an error" in caplog.text
    assert "already recording" in caplog.text


async def _served(aiohttp_server: Any, files: Mapping[str, tuple[str, bytes]]) -> str:
    """A real app server sending each body in 16 kB writes 20 ms apart; its base URL."""
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path not in files:
            return web.Response(status=404)
        kind, body = files[request.path]
        resp = web.StreamResponse(headers={"Content-Type": kind})
        await resp.prepare(request)
        for i in range(0, len(body), 16384):
            await resp.write(body[i:i + 16384])
            await asyncio.sleep(0.02)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


async def test_large_document_and_wav_in_pieces_text_play_skipped(tmp_path: Path,
                                                                  aiohttp_server: Any) -> None:
    big_wav = write_tone(tmp_path / "big.wav", 500, 20.0).read_bytes()  # 320 kB
    assert len(big_wav) > MAX_RESPONSE
    plays = ('<Play>{b}/text</Play><Play>{b}/big.wav</Play><Play>{b}/missing.wav</Play>'
             '<Redirect>{b}/next</Redirect>')
    pad = "<!-- " + "padding " * 25000 + "-->"  # a 200 kB document, valid
    files = {"/text": ("text/plain", b"Hello, this is not a WAV"),
             "/big.wav": ("audio/wav", big_wav),
             "/next": ("text/xml", b"<Response><Hangup/></Response>")}
    base = await _served(aiohttp_server, files)
    doc = f"<Response>{pad}{plays.format(b=base)}</Response>".encode()
    assert MAX_RESPONSE > len(doc) > 190_000
    files["/a"] = ("text/xml", doc)
    w = World(tmp_path, {})
    w.hooks = Webhooks()
    try:
        await run(w.runner(App(f"{base}/a")))
    finally:
        await w.hooks.close()
    # text/plain: a Notification, not a play; the WAV played; a 404: a Notification; then
    # the next verb (the Redirect) ran.
    assert w.notes == [11200, 11200]
    assert [r[0] for r in w.requests] == [f"{base}/a", f"{base}/text", f"{base}/big.wav",
                                          f"{base}/missing.wav", f"{base}/next"]
    [played] = [Path(e.file) for e in w.seen if isinstance(e, PlayFinished)]
    assert _cached_files(tmp_path / "cache" / "play") == {played: big_wav}  # whole, alone


def _cached_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_wav_problem_takes_what_pjmedia_plays(tmp_path: Path) -> None:
    good = write_tone(tmp_path / "t.wav", 400, 0.1).read_bytes()
    assert wavcache.wav_problem(good) is None
    assert wavcache.wav_problem(b"Hello") == "not a RIFF/WAVE file"
    assert wavcache.wav_problem(good[:44]) == "no audio in the data chunk"
    stereo = good[:22] + (2).to_bytes(2, "little") + good[24:]
    assert wavcache.wav_problem(stereo) is None
    listed = good[:12] + b"LIST\x04\x00\x00\x00INFO" + good[12:]  # a chunk before "fmt "
    assert wavcache.wav_problem(listed) is None
    ulaw = good[:20] + (7).to_bytes(2, "little") + good[22:34] + (8).to_bytes(2, "little") \
        + good[36:]
    assert wavcache.wav_problem(ulaw) is None
    eight_bit = good[:34] + (8).to_bytes(2, "little") + good[36:]
    assert "unsupported encoding" in (wavcache.wav_problem(eight_bit) or "")


async def test_play_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    tone = write_tone(tmp_path / "t.wav", 400, 1.0).read_bytes()  # 16 kB
    urls = [f"http://app/{n}.wav" for n in range(5)]
    w = World(tmp_path, {})
    # As the runner sees it, with a cap of 3 files and nothing protected as recent.
    files = wavcache.cache(tmp_path / "cache" / "play", 3 * len(tone) + 100)
    files.keep_s = 0.0
    served: dict[str, bytes] = dict.fromkeys(urls, tone)

    async def audio(url: str, method: str, params: Mapping[str, str], *,
                    max_size: int | None = None) -> WebhookResponse:
        w.requests.append((url, method, {}))
        return WebhookResponse(200, "audio/wav", served[url], {})

    def cached(url: str) -> bool:
        return play_path(tmp_path / "cache", url).exists()

    # What an older version cached under the URL itself (perhaps cut short): never used,
    # first out.
    old = files.path(hashlib.sha256(urls[0].encode()).hexdigest())
    old.parent.mkdir(parents=True)
    old.write_bytes(tone[:1000])  # noqa: ASYNC240
    os.utime(old, (1.0, 1.0))
    runner = w.runner(App("http://app/a"))
    runner.out.request = audio
    for n, url in enumerate(urls[:3]):
        path = await runner.fetch_audio(url)
        os.utime(path, (1000.0 + n, 1000.0 + n))  # used in this order
    await runner.fetch_audio(urls[0])  # used again: now the most recent
    await runner.fetch_audio(urls[3])  # past the cap: the least recently used (1) goes
    assert [cached(u) for u in urls] == [True, False, True, True, False]
    assert not old.exists()
    await runner.fetch_audio(urls[4])
    assert [cached(u) for u in urls] == [True, False, False, True, True]
    assert len(w.requests) == 5  # the hit was not fetched again


async def test_calls_playing_one_uncached_url_together_fetch_it_once(
        tmp_path: Path, aiohttp_server: Any) -> None:
    """Ten calls start the same hold music at once: one download (each would hold a copy of
    up to MAX_AUDIO in memory), all play the one cached file."""
    wav = write_tone(tmp_path / "hold.wav", 440, 5.0).read_bytes()
    base = await _served(aiohttp_server, {"/hold.wav": ("audio/wav", wav)})
    hooks = Webhooks()
    try:
        worlds = [World(tmp_path, {}) for _ in range(10)]
        for w in worlds:
            w.hooks = hooks
        paths = await asyncio.gather(*(w.runner(App(f"{base}/a")).fetch_audio(f"{base}/hold.wav")
                                       for w in worlds))
    finally:
        await hooks.close()
    assert len(set(paths)) == 1 and paths[0].read_bytes() == wav
    assert sum(len(w.requests) for w in worlds) == 1


async def test_say_without_its_voice_is_spoken_in_the_default_one(tmp_path: Path) -> None:
    """The TTS engine has no female voice: the <Say> is spoken all the same, in the
    default voice, and a warning Notification says so; the next verb runs."""
    w = World(tmp_path, {"http://app/a": '<Response><Say voice="woman">Hi</Say>'
                                         '<Say voice="alice">Hi</Say><Say>Hi</Say></Response>'})
    w.missing_voices = {"woman", "alice"}
    played = []
    real_play = w.engine.play

    async def play(leg: LegId, file: str, *, loop: int = 1, tag: int = 0) -> None:
        played.append(file)
        await real_play(leg, file, loop=loop, tag=tag)

    w.engine.play = play  # type: ignore[method-assign]
    await run(w.runner(App("http://app/a")))
    assert w.voices == ["woman", "man", "alice", "man", "man"]
    assert len(played) == 3 and w.notes == [11100, 11100]


async def test_a_bad_document_is_reported_with_what_was_sent_and_what_came_back(
        tmp_path: Path) -> None:
    # The app's author reads the Notification: the parameters we sent and the body we got
    # (api-behaviour.md: RequestVariables, ResponseHeaders, ResponseBody), for the first
    # document and for an action's.
    w = World(tmp_path, {"http://app/a": "<Respons><Say>typo</Say></Respons>"})
    await run(w.runner(App("http://app/a")))
    [details] = w.details
    assert details["request_url"] == "http://app/a"
    assert "CallSid=CAtest" in details["request_variables"]
    assert details["response_body"] == "<Respons><Say>typo</Say></Respons>"

    w = World(tmp_path, {"http://app/a": '<Response><Gather action="/next" timeout="1"/>'
                                         '</Response>',
                         "http://app/next": "not xml at all"})
    runner = w.runner(App("http://app/a"))
    task = asyncio.create_task(run(runner))
    await asyncio.sleep(0.2)
    w.engine.simulate_dtmf(w.leg, "5")
    await task
    bad = [d for d in w.details if d.get("request_url") == "http://app/next"]
    assert bad and bad[0]["response_body"] == "not xml at all"
    assert "Digits=5" in bad[0]["request_variables"]


async def test_a_redirect_while_the_first_document_is_on_its_way_takes_effect_at_once(
        tmp_path: Path) -> None:
    w = World(tmp_path, {"http://app/b": "<Response><Hangup/></Response>"})
    plain = w.request

    async def slow(url: str, method: str, params: Mapping[str, str], *,
                   max_size: int | None = None) -> WebhookResponse:
        if url == "http://app/slow":
            w.requests.append((url, method, dict(params)))
            await asyncio.sleep(8)  # an app server slow to answer (the limit is 10 s)
        return await plain(url, method, params, max_size=max_size)

    w.request = slow  # type: ignore[method-assign]
    runner = w.runner(App("http://app/slow"))
    started = asyncio.get_running_loop().time()
    task = asyncio.create_task(run(runner))
    await asyncio.sleep(0.3)
    runner.redirect(App("http://app/b"))
    await task
    assert asyncio.get_running_loop().time() - started < 3
    assert [url for url, _, _ in w.requests] == ["http://app/slow", "http://app/b"]
    assert w.notes == []
