"""`appliance serve` under a NOTIFY_SOCKET we bind, as systemd would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from appliance.app import factory_reset
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_real_appliance_notifies(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[api]\nlisten = "127.0.0.1:{port}"\n'
                      f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config", str(config)],
                            env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    messages: list[str] = []
    try:
        while messages.count("WATCHDOG=1") < 3:
            messages.append(sock.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while not messages[-1].startswith("STOPPING=1"):
            messages.append(sock.recv(4096).decode())
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    ready = [m for m in messages if m.startswith("READY=1")]
    assert len(ready) == 1 and f"API on 127.0.0.1:{port}" in ready[0]
    # READY comes before any watchdog pet, and only once the API answers.
    assert messages.index(ready[0]) < messages.index("WATCHDOG=1")
    assert any(m.startswith("STATUS=") for m in messages)
    assert messages[-1].startswith("STOPPING=1")


def test_factory_reset_keeps_a_copy_and_starts_fresh(tmp_path: Path) -> None:
    import sqlite3

    data = tmp_path / "var"
    data.mkdir()
    conn = sqlite3.connect(data / "appliance.db")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.commit()
    conn.close()
    (data / "admin-password").write_text("old\n")
    kept = factory_reset(data)
    assert kept is not None and kept.parent == data / "backups"
    assert sqlite3.connect(kept).execute("SELECT x FROM t").fetchone() == (42,)
    assert not (data / "appliance.db").exists()
    assert not (data / "admin-password").exists()
