"""The RCML runner's control flow on the NullMediaEngine (no pjsua2 needed): lazy answer and
<Reject>, Gather digits and timeout, fallback URL, notifications for fetch/parse failures and
budgets, and a live redirect."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.media.engine import LegChanged, LegId, LegState, MediaEvent
from appliance.media.null import NullMediaEngine
from appliance.rcml.parse import BUDGET_EXCEEDED
from appliance.rcml.runner import App, CallInfo, Fetcher, LegEvents, Runner
from appliance.webhooks import WebhookError, WebhookResponse
from tests.media.audio import write_tone


class World:
    def __init__(self, tmp: Path, docs: Mapping[str, str]) -> None:
        self.engine = NullMediaEngine()
        self.docs = dict(docs)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.notes: list[int] = []
        self.seen: list[MediaEvent] = []
        self.tmp = tmp
        self.events = LegEvents()
        self.leg = LegId("LGtest")
        self.engine.subscribe(self._event)

    def _event(self, ev: MediaEvent) -> None:
        self.seen.append(ev)
        if ev.leg == self.leg:
            self.events.put(ev)

    async def request(self, url: str, method: str, params: Mapping[str, str], *,
                      max_size: int | None = None) -> WebhookResponse:
        self.requests.append((url, method, dict(params)))
        if url not in self.docs:
            raise WebhookError(f"{method} {url}: HTTP 404")
        return WebhookResponse(200, "text/xml", self.docs[url].encode(), {})

    async def notify(self, account_sid: str, code: int, message: str, **kw: Any) -> None:
        self.notes.append(code)

    async def say(self, text: str, language: str) -> Path:
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
    assert w.notes == [11200] and not w.answered() and w.ended().code == 480


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
