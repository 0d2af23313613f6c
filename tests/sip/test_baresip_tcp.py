"""Two baresip soft phones registered over TCP call each other through the running appliance.

The same call as ``test_baresip_phones_call_each_other_through_the_proxy`` in
test_proxy_calls.py (whose helpers this reuses), with ``;transport=tcp`` in both account
lines: REGISTER, the INVITE from alice, the INVITE the proxy forwards to bob (over bob's own
registration connection), the ACK and the BYE all travel over TCP, while the audio (ausine's
tone, G.711) flows phone to phone over RTP/UDP. Bounded: every wait has a limit, the whole test
takes a few seconds; skipped when baresip is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_SID, Api
from tests.sip.test_proxy_calls import (  # noqa: F401 - md5_appliance is a fixture
    PASSWORD,
    Baresip,
    attach_proxy,
    create_client,
    md5_appliance,
)

pytestmark = pytest.mark.skipif(shutil.which("baresip") is None,
                                reason="baresip is not installed")


class TcpBaresip(Baresip):
    """A Baresip whose account registers and places calls over TCP."""

    def __init__(self, home: Path, login: str, server: tuple[str, int], *,
                 auto_answer: bool = False) -> None:
        super().__init__(home, login, server, auto_answer=auto_answer)
        answer = ";answermode=auto" if auto_answer else ""
        (home / "accounts").write_text(
            f"<sip:{login}@{server[0]}:{server[1]};transport=tcp>;auth_pass={PASSWORD}"
            f";regint=600{answer}\n")


@contextlib.asynccontextmanager
async def tcp_phones(appliance: Any, tmp_path: Path) -> AsyncIterator[
        tuple[Api, TcpBaresip, TcpBaresip, tuple[str, int]]]:
    """The proxy attached, Clients alice and bob created through the API, and their baresip
    phones registered over TCP (bob answers by himself): (api, alice, bob, SIP address)."""
    proxy, task = attach_proxy(appliance)
    password = (appliance.config.data_dir / "admin-password").read_text().strip()
    listen = appliance.config.api.listen
    session = aiohttp.ClientSession()
    api = Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
              appliance.config.data_dir)
    server = appliance.transport.address
    for login in ("alice", "bob"):
        await create_client(api, login)
    alice = TcpBaresip(tmp_path / "alice", "alice", server)
    bob = TcpBaresip(tmp_path / "bob", "bob", server, auto_answer=True)
    try:
        for phone in (alice, bob):
            await phone.start()
        async with asyncio.timeout(10):  # the REGISTER may beat our ctrl_tcp connection
            while not all(appliance.location.lookup(login, appliance.wall_clock())
                          for login in ("alice", "bob")):
                await asyncio.sleep(0.1)
        yield api, alice, bob, server
    finally:
        await session.close()
        for phone in (alice, bob):
            await phone.stop()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_baresip_phones_call_each_other_over_tcp(md5_appliance: Any,  # noqa: F811
                                                       tmp_path: Path) -> None:
    appliance = md5_appliance
    async with tcp_phones(appliance, tmp_path) as (api, alice, bob, server):
        for login in ("alice", "bob"):
            [binding] = appliance.location.lookup(login, appliance.wall_clock())
            assert binding.transport == "tcp", binding
            assert binding.connection_id is not None, binding
            assert "transport=tcp" in binding.uri.lower(), binding
        await alice.command("dial", f"sip:bob@{server[0]}:{server[1]}")
        await alice.wait_event("CALL_ESTABLISHED")
        await bob.wait_event("CALL_ESTABLISHED")
        await asyncio.sleep(2)  # audio flows phone to phone; the proxy only sees signalling
        await alice.command("hangup")
        await bob.wait_event("CALL_CLOSED")
        # The proxy records the BYE's outcome on the store thread; give it a moment.
        calls: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while True:
                status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
                assert status == 200, body
                calls = json.loads(body)["calls"]
                if calls and calls[0]["status"] == "completed":
                    break
                await asyncio.sleep(0.1)
        assert [(c["from"], c["to"], c["status"]) for c in calls] == [
            ("alice", "bob", "completed")]
        assert calls[0]["duration"] >= 1
        for phone in (alice, bob):  # media went phone to phone, around the proxy
            await phone.stop()
            log = (phone.home / "baresip.log").read_text(errors="replace")
            assert "incoming rtp for 'audio' established" in log, phone.login


async def test_a_tcp_phone_whose_connection_closed_is_unavailable(
        md5_appliance: Any, tmp_path: Path) -> None:  # noqa: F811
    """bob registered over TCP, then his process dies: the kernel closes his connection, the
    registrar drops the binding that lived on it (the transport cannot reach a NATed phone
    any other way), and alice's call to bob gets 480 at once instead of a connection attempt
    to bob's old source port and a timeout."""
    appliance = md5_appliance
    async with tcp_phones(appliance, tmp_path) as (_, alice, bob, server):
        connections = appliance.transport.connection_count
        assert bob.process is not None
        bob.process.kill()  # no un-REGISTER: only the connection going away tells
        await bob.process.wait()
        async with asyncio.timeout(5):
            while appliance.location.lookup("bob", appliance.wall_clock()):
                await asyncio.sleep(0.05)
        assert appliance.transport.connection_count == connections - 1
        await alice.command("dial", f"sip:bob@{server[0]}:{server[1]}")
        closed = await alice.wait_event("CALL_CLOSED", limit=5)
        assert str(closed.get("param", "")).startswith("480 "), closed
