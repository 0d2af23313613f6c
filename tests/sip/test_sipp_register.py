"""SIPp, an independent UA, registers with digest against a running appliance over UDP and TCP.

Scenarios: tests/data/sip/sipp/register.xml (401 → digest → 200) and
register-wrong-password.xml (401 → digest → 403). SIPp computes the digest itself from
``-au``/``-ap``. Every run is bounded (``-m 1``, ``-timeout``, ``-timeout_error``, a
subprocess timeout) and stays on loopback.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.app import Appliance
from tests.conftest import ADMIN_SID, Api

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parents[1] / "data" / "sip" / "sipp"
PASSWORD = "Pbx-edge-7"
RUN_TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed")


def sipp_command(appliance: Appliance, scenario: str, *, login: str, password: str,
                 transport: str, hold_ms: int = 0) -> list[str]:
    listen = appliance.config.sip.listen
    return [
        str(SIPP), f"{listen.host}:{listen.port}",
        "-sf", str(SCENARIOS / scenario),
        "-s", login, "-au", login, "-ap", password,
        "-t", transport,  # u1: UDP, one socket; t1: TCP, one connection
        "-i", "127.0.0.1", "-p", "0",
        "-m", "1", "-d", str(hold_ms),
        "-timeout", "10", "-timeout_error", "-max_recv_loops", "10",
        "-nostdin", "-trace_err",
    ]


async def run_sipp(command: list[str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")[-3000:] + error_logs(cwd)


def error_logs(cwd: Path) -> str:
    """What sipp's -trace_err wrote (scenario_pid_errors.log in its working directory)."""
    return "\n".join(p.read_text(errors="replace") for p in cwd.glob("*_errors.log"))


async def make_client(api: Api, login: str) -> str:
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": login, "Password": PASSWORD})
    assert status == 200, body
    return str(json.loads(body)["sid"])


async def registrations(api: Api) -> list[dict[str, Any]]:
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Registrations.json")
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


async def wait_for(api: Api, predicate: Any, seconds: float = 5.0) -> list[dict[str, Any]]:
    regs: list[dict[str, Any]] = []
    for _ in range(int(seconds / 0.05)):
        regs = await registrations(api)
        if predicate(regs):
            return regs
        await asyncio.sleep(0.05)
    raise AssertionError(f"registrations never matched: {regs}")


async def test_sipp_registers_over_udp(appliance: Appliance, api: Api, tmp_path: Path) -> None:
    sid = await make_client(api, "alice")
    code, log = await run_sipp(sipp_command(appliance, "register.xml", login="alice",
                                            password=PASSWORD, transport="u1"), tmp_path)
    assert code == 0, log
    regs = await wait_for(api, lambda r: len(r) == 1)
    reg = regs[0]
    assert reg["login"] == "alice" and reg["client_sid"] == sid
    assert reg["contact"].startswith("sip:alice@127.0.0.1:") and reg["transport"] == "udp"
    assert reg["source"].startswith("127.0.0.1:") and 3590 <= reg["expires"] <= 3600
    assert reg["user_agent"] == "sipp-register-test"
    # The first REGISTER found alice outside the directory's cache and took the general path
    # (a server transaction); the answer to the challenge took the quick path, which keeps
    # none (register_view).
    assert appliance.frontdoor.transactions == 1
    # The binding is persisted too (written behind, within a second; flush() writes it now).
    await appliance.registrar.flush()
    stored = await appliance.store.load_bindings(appliance.wall_clock())
    assert [b["aor"] for b in stored] == ["alice"]


async def test_sipp_registers_over_tcp(appliance: Appliance, api: Api, tmp_path: Path) -> None:
    await make_client(api, "tcpalice")
    command = sipp_command(appliance, "register.xml", login="tcpalice", password=PASSWORD,
                           transport="t1", hold_ms=3000)
    run = asyncio.create_task(run_sipp(command, tmp_path))
    try:
        regs = await wait_for(api, lambda r: len(r) == 1)
        assert regs[0]["transport"] == "tcp" and "transport=TCP" in regs[0]["contact"]
    finally:
        code, log = await run
    assert code == 0, log
    # SIPp closed its connection on exit: a TCP binding goes with its connection.
    await wait_for(api, lambda r: r == [])


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_wrong_password_gets_403(appliance: Appliance, api: Api, tmp_path: Path,
                                            transport: str) -> None:
    await make_client(api, "bob")
    code, log = await run_sipp(sipp_command(appliance, "register-wrong-password.xml",
                                            login="bob", password="not-the-password",
                                            transport=transport), tmp_path)
    assert code == 0, log  # the scenario expects the 403 (a second 401 would fail it)
    assert await registrations(api) == []
    # An unknown login is refused exactly the same way.
    code, log = await run_sipp(sipp_command(appliance, "register-wrong-password.xml",
                                            login="nobody", password="whatever",
                                            transport=transport), tmp_path)
    assert code == 0, log
