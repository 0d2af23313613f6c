"""systemd/appliance.service: verify cleanly and stay hardened (ecosystem.md §2.3, §2.4).

`systemd-analyze verify` only *warns* on unknown keys and bad values (rc stays 0), so we assert
its stderr is empty. It also fails when ExecStart's binary is missing, and the venv binary
exists only on the device: we verify a copy whose ExecStart points at this Python (``--root``
does not help: the unit's dependencies would have to exist in the fake root too).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "appliance.service"
SYSUSERS = ROOT / "systemd" / "appliance.sysusers.conf"
EXEC_START = "/opt/appliance/.venv/bin/appliance serve --config /etc/appliance/config.toml"
MAX_EXPOSURE = 2.5

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _settings() -> dict[str, list[str]]:
    """Every Key=value of the unit, in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def _verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = EXEC_START.split()[0]
    copy = tmp_path / "appliance.service"
    copy.write_text(text.replace(f"ExecStart={binary} ", f"ExecStart={sys.executable} "))
    return subprocess.run(
        [str(ANALYZE), "verify", "--man=no", str(copy)],
        capture_output=True, text=True, timeout=60,
    )


@needs_analyze
def test_verify_has_empty_stderr(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert f"\nExecStart={EXEC_START}\n" in text
    result = _verify(text, tmp_path)
    assert result.stderr == ""
    assert result.returncode == 0


@needs_analyze
def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above would notice a misspelt key: verify warns on stderr."""
    result = _verify(UNIT.read_text().replace("ProtectSystem=", "ProtectSytem="), tmp_path)
    assert "ProtectSytem" in result.stderr
    assert result.returncode == 0  # the reason stderr must be checked


@needs_analyze
def test_security_exposure() -> None:
    result = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout
    assert match[2] == "OK"


def test_unit_has_the_settings_the_design_requires() -> None:
    s = _settings()
    one = {key: values[-1] for key, values in s.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30s"
    assert one["Restart"] == "on-failure"
    assert one["ExecStart"] == EXEC_START
    assert one["User"] == "appliance" and "DynamicUser" not in s
    assert set(one["SupplementaryGroups"].split()) == {"dialout", "gpio"}
    for directory in ("State", "Cache", "Runtime", "Configuration"):
        assert one[f"{directory}Directory"] == "appliance"
    assert one["AmbientCapabilities"] == one["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert one["DevicePolicy"] == "closed"
    assert {v.split()[0] for v in s["DeviceAllow"]} >= {
        "char-ttyUSB", "char-ttyACM", "char-gpiochip"}
    assert set(one["RestrictAddressFamilies"].split()) == {
        "AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert "@system-service" in s["SystemCallFilter"]
    assert one["UMask"] == "0077"
    assert int(one["LimitNOFILE"]) >= 65536  # SIP's 1024 + the API's 512 TCP connections
    for key in ("ProtectSystem",):
        assert one[key] == "strict"
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "LockPersonality",
                "RestrictRealtime", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
                "RestrictNamespaces", "MemoryDenyWriteExecute"):
        assert one[key] == "yes", key
    assert "PrivateDevices" not in s  # would hide /dev/ttyUSB*


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]


def test_sysusers_creates_the_user_and_groups() -> None:
    rows = [line.split() for line in SYSUSERS.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    assert ["u", "appliance"] == rows[0][:2]
    assert ["m", "appliance", "dialout"] in rows
    assert ["m", "appliance", "gpio"] in rows
    assert ["g", "gpio", "-"] in rows


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers is not installed")
def test_sysusers_dry_run(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-sysusers", "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "appliance" in result.stdout + result.stderr


# MemoryDenyWriteExecute=yes: prove the main process's stack runs without W+X memory. The
# kernel's PR_SET_MDWE (Linux 6.3+) enforces the same rule systemd's seccomp filter does.
_MDWE_PROGRAM = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping was allowed: the restriction is not active")
except PermissionError:
    pass
import asyncio, hashlib, re, sqlite3, ssl
import aiohttp, defusedxml, gpiozero, serial
import appliance.config, appliance.platform.gpio, appliance.platform.systemd
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
assert callback(1) == 2  # a libffi closure
sqlite3.connect(":memory:").execute("create table t(x)")
asyncio.run(asyncio.sleep(0))
print("ok")
"""


def test_python_runs_without_writable_executable_memory() -> None:
    result = subprocess.run([sys.executable, "-c", _MDWE_PROGRAM], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    if result.returncode == 77:
        pytest.skip("kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
