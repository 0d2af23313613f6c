"""`appliance backup` while running and `appliance restore` when stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import ADMIN_SID, basic, free_port
from tests.test_serve import wait_health

APPLIANCE = [sys.executable, "-m", "appliance"]


def _create_client(port: int, password: str, login: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN_SID}/Clients.json",
        data=f"Login={login}&Password=Pbx-edge-7".encode(),
        headers={"Authorization": basic(ADMIN_SID, password)})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["login"] == login


def _logins(port: int, password: str) -> list[str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN_SID}/Clients.json",
        headers={"Authorization": basic(ADMIN_SID, password)})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return sorted(c["login"] for c in json.loads(resp.read()))


def test_backup_online_restore_offline(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[api]\nlisten = "127.0.0.1:{port}"\n'
                      f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n')
    serve = [*APPLIANCE, "serve", "--config", str(config)]
    proc = subprocess.Popen(serve, stderr=subprocess.PIPE)
    try:
        wait_health(port, proc)
        password = (tmp_path / "var" / "admin-password").read_text().strip()
        _create_client(port, password, "before")
        out = subprocess.run([*APPLIANCE, "backup", "--config", str(config), "--output",
                              str(tmp_path / "b.db")], capture_output=True, text=True,
                             timeout=30, check=True)
        assert out.stdout.strip() == str(tmp_path / "b.db")
        _create_client(port, password, "after")
        # Restore is refused while the appliance runs.
        refused = subprocess.run([*APPLIANCE, "restore", str(tmp_path / "b.db"), "--config",
                                  str(config)], capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1 and "another appliance is running" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    done = subprocess.run([*APPLIANCE, "restore", str(tmp_path / "b.db"), "--config",
                           str(config)], capture_output=True, text=True, timeout=30, check=True)
    assert "previous database kept as" in done.stdout
    proc = subprocess.Popen(serve, stderr=subprocess.PIPE)
    try:
        wait_health(port, proc)
        assert _logins(port, password) == ["before"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_restore_rejects_a_non_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    result = subprocess.run([*APPLIANCE, "restore", str(junk), "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "not a" in result.stderr


def test_second_instance_on_same_data_dir_refuses(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[api]\nlisten = "127.0.0.1:{port}"\n'
                      f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n')
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        wait_health(port, proc)
        other = tmp_path / "other.toml"
        other.write_text(f'data_dir = "{tmp_path / "var"}"\n[api]\n'
                         f'listen = "127.0.0.1:{free_port()}"\n'
                         f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n')
        second = subprocess.run([*APPLIANCE, "serve", "--config", str(other)],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and "another appliance is running" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
