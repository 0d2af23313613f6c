"""A SIP MESSAGE between Clients is listed from its relay on, and a stop never loses it.

Real phones on loopback (``tests.sms.sipua``), a real appliance and its SQLite file: the
row is `sending` while the callee's phone has not answered, `sent` or `failed` after; one
still unanswered at a clean stop, or left `sending` by a crash, is `failed` 408.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.models import AccountSid, SmsRecord, SmsSid, mint_sid
from appliance.sip.message import Request, parse_message
from appliance.store.sms import SmsStore
from appliance.timefmt import storage
from tests.conftest import ADMIN_SID, Api, free_port
from tests.sip.test_cdr_audit import config, message, on_store
from tests.sms.sipua import Phone
from tests.test_serve import wait_health

PW = "Pbx-edge-7"
SMS = f"Accounts/{ADMIN_SID}/SMS/Messages.json"


class SilentPhone(Phone):
    """A phone that takes MESSAGEs and answers them only when told (``answer_held``): a
    phone gone mid-exchange, or a slow one."""

    held: list[tuple[Request, tuple[str, int]]]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse_message(data)
        if isinstance(msg, Request) and msg.method == "MESSAGE":
            if not self.messages:  # not a retransmission
                self.held = [(msg, addr)]
            self.messages.append(msg.body.decode())
            self.got_message.set()
            return
        super().datagram_received(data, addr)

    def answer_held(self) -> None:
        for request, addr in self.held:
            self._answer(request, addr)


@dataclass(frozen=True)
class Box:
    """Where an appliance (in this process or not) answers: its API, SIP and data dir."""

    api_port: int
    sip: tuple[str, int]
    data_dir: Path

    @staticmethod
    def of(app: Appliance) -> Box:
        listen = app.config.sip.listen
        return Box(app.config.api.listen.port, (listen.host, listen.port), app.config.data_dir)

    @asynccontextmanager
    async def api(self) -> AsyncIterator[Api]:
        password = (self.data_dir / "admin-password").read_text().strip()
        async with aiohttp.ClientSession() as session:
            yield Api(session, f"http://127.0.0.1:{self.api_port}", ADMIN_SID, password,
                      self.data_dir)


async def listed(where: Appliance | Box, body: str) -> list[dict[str, Any]]:
    box = where if isinstance(where, Box) else Box.of(where)
    async with box.api() as api:
        status, text, _ = await api.get(SMS, params={"Body": body})
    assert status == 200, text
    rows: list[dict[str, Any]] = json.loads(text)["messages"]
    return rows


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.02)


async def phones(box: Box, silent: bool) -> tuple[Phone, Phone]:
    """dave and bob, Clients with a registered phone each; bob's never answers a MESSAGE
    when SILENT."""
    async with box.api() as api:
        for login in ("dave", "bob"):
            status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                             {"Login": login, "Password": PW})
            assert status == 200, body
    dave = await Phone("dave", PW, box.sip).start()
    bob = await (SilentPhone if silent else Phone)("bob", PW, box.sip).start()
    assert await dave.register() == 200
    assert await bob.register() == 200
    return dave, bob


async def in_flight(where: Appliance | Box, text: str
                    ) -> tuple[Phone, Phone, asyncio.Task[int]]:
    """dave's MESSAGE TEXT relayed to bob's silent phone, listed `sending`."""
    box = where if isinstance(where, Box) else Box.of(where)
    dave, bob = await phones(box, silent=True)
    sending = asyncio.create_task(dave.message("bob", text))
    await asyncio.wait_for(bob.got_message.wait(), 5)
    assert bob.messages == [text]

    async def is_sending() -> bool:
        return [(m["status"], m["from"], m["to"]) for m in await listed(box, text)] == [
            ("sending", "dave", "bob")]
    await until(is_sending)
    return dave, bob, sending


async def hang_up(dave: Phone, bob: Phone, sending: asyncio.Task[int]) -> None:
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await sending
    dave.close()
    bob.close()


async def test_a_message_unanswered_at_a_clean_stop_is_failed_408(tmp_path: Path) -> None:
    first = Appliance(config(tmp_path))
    await first.start()
    try:
        dave, bob, sending = await in_flight(first, "still there?")
    finally:
        await first.stop()
    await hang_up(dave, bob, sending)
    second = Appliance(first.config)
    await second.start()
    try:
        [row] = await listed(second, "still there?")
        assert (row["status"], row["error_code"], row["direction"]) == (
            "failed", 408, "outbound-call")
        assert "appliance stopped" in row["error_message"]
        assert "date_sent" not in row
    finally:
        await second.stop()


async def test_a_message_a_crash_left_sending_is_failed_at_the_next_start(
        tmp_path: Path) -> None:
    first = Appliance(config(tmp_path))
    await first.start()
    try:
        dave, bob, sending = await in_flight(first, "are you there?")
        # A modem SMS `sending` when the power went is the messaging service's to recover
        # (by its parts), not this: it stays as it is.
        now = datetime.now(UTC)
        modem = SmsRecord(
            sid=SmsSid(mint_sid("SM")), account_sid=AccountSid(ADMIN_SID),
            from_="+15550001111", to="+15557778888", body="by the modem", status="sending",
            direction="outbound-call", error_code=None, error_message=None, price="0",
            price_unit="USD", api_version="2012-04-24", date_sent=None, date_created=now,
            date_updated=now)
        await SmsStore(first.store).enqueue(
            modem, body=modem.body, ucs2=False, status_report=False, concat_ref=1,
            x_headers={}, callback=None, now=storage(now))

        async def crashed() -> int:  # the process dies: no stop hook runs
            return 0
        first.message_log.close_all = crashed  # type: ignore[method-assign]
    finally:
        await first.stop()
    await hang_up(dave, bob, sending)
    assert [m["status"] for m in await _stored(first, "are you there?")] == ["sending"]
    second = Appliance(first.config)
    await second.start()
    try:
        [row] = await listed(second, "are you there?")
        assert (row["status"], row["error_code"]) == ("failed", 408)
        assert row["error_message"].startswith("Outcome unknown: the appliance stopped")
        [untouched] = await listed(second, "by the modem")
        assert untouched["status"] == "sending"
    finally:
        await second.stop()


async def test_a_message_answered_is_one_row_sending_then_sent(tmp_path: Path) -> None:
    app = Appliance(config(tmp_path))
    await app.start()
    try:
        dave, bob, sending = await in_flight(app, "lunch at 1?")
        try:
            assert isinstance(bob, SilentPhone)
            bob.answer_held()
            assert await sending == 200
        finally:
            await hang_up(dave, bob, sending)

        async def sent() -> bool:
            return [m["status"] for m in await listed(app, "lunch at 1?")] == ["sent"]
        await until(sent)
        [row] = await listed(app, "lunch at 1?")
        assert row["date_sent"]
        assert "error_code" not in row
    finally:
        await app.stop()


async def test_a_message_nobody_answers_is_sending_then_one_failed_408_row(
        tmp_path: Path) -> None:
    app = Appliance(config(tmp_path))
    await app.start()
    try:
        h, alice, _ = on_store(app)
        await message(h, alice, "bob", b"anyone?")
        await h.tick(1)
        assert [m["status"] for m in await listed(app, "anyone?")] == ["sending"]
        for _ in range(40):  # Timer F (64·T1)
            await h.tick(1)
        [row] = await listed(app, "anyone?")
        assert (row["status"], row["error_code"]) == ("failed", 408)
    finally:
        await app.stop()


async def _stored(app: Appliance, body: str) -> list[dict[str, Any]]:
    """The rows with BODY as the stopped APP left them in its file (no API to ask)."""
    with contextlib.closing(sqlite3.connect(app.config.data_dir / "appliance.db")) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM sms_messages WHERE body = ?",
                                            (body,))]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_the_process_stopped_or_killed_mid_message_lists_it_failed_after(
        tmp_path: Path, sig: signal.Signals) -> None:
    # D5 as reported: `appliance serve`, bob's phone never answers, dave's MESSAGE to him
    # in flight when the process gets SIGTERM (a clean stop) or SIGKILL (a crash).
    box = Box(free_port(), ("127.0.0.1", free_port()), tmp_path / "var")
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{box.data_dir}"\n[api]\nlisten = "127.0.0.1:{box.api_port}"'
                      f'\n[sip]\nlisten = "{box.sip[0]}:{box.sip[1]}"\n')

    log = tmp_path / "appliance.log"

    def serve() -> subprocess.Popen[bytes]:
        with log.open("ab") as stderr:  # so that an early exit says why
            proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config",
                                     str(config)], stderr=stderr)
        wait_health(box.api_port, proc, log=log)
        return proc

    proc = await asyncio.to_thread(serve)
    try:
        dave, bob, sending = await in_flight(box, "hello bob?")
        proc.send_signal(sig)
        assert await asyncio.to_thread(proc.wait, 10) == (0 if sig == signal.SIGTERM else -sig)
        await hang_up(dave, bob, sending)
        proc = await asyncio.to_thread(serve)
        [row] = await listed(box, "hello bob?")
        assert (row["status"], row["error_code"], row["from"], row["to"]) == (
            "failed", 408, "dave", "bob")
        assert ("Outcome unknown" in row["error_message"]) == (sig == signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 10)
