"""End to end: a separate process notifies a socket we bind, as systemd would (no PID 1 needed).

The lead will point the same check at the real `appliance serve`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROGRAM = Path(__file__).with_name("notify_program.py")
ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 200_000  # pets every 0.1 s
BLOCK = 1.0


def test_ready_status_watchdog_gap_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, str(PROGRAM), str(BLOCK)], env=env, cwd=ROOT)
    got: list[tuple[float, str]] = []
    try:
        # Collect until the loop has recovered and pets resumed, then ask it to stop.
        while True:
            got.append((time.monotonic(), sock.recv(4096).decode()))
            messages = [m for _, m in got]
            if "STATUS=unblocked" not in messages:
                continue
            if messages[messages.index("STATUS=unblocked"):].count("WATCHDOG=1") >= 3:
                break
        proc.send_signal(signal.SIGTERM)
        while not got[-1][1].startswith("STOPPING=1"):
            got.append((time.monotonic(), sock.recv(4096).decode()))
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()

    messages = [m for _, m in got]
    assert "READY=1\nSTATUS=serving" in messages
    assert messages[-1] == "STOPPING=1\nSTATUS=stopping"
    i_block, i_unblock = messages.index("STATUS=blocking"), messages.index("STATUS=unblocked")
    assert messages[:i_block].count("WATCHDOG=1") >= 3  # periodic pets before the block

    pets = [t for t, m in got if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pets, pets[1:], strict=False)]
    normal = sorted(gaps)[len(gaps) // 2]
    assert normal < 0.2, gaps  # about WATCHDOG_USEC / 2
    assert max(gaps) >= BLOCK * 0.9, gaps  # silence while the loop was blocked
    # ... and that silence is exactly the blocked stretch: no pet between the two STATUS lines.
    assert "WATCHDOG=1" not in messages[i_block:i_unblock]
    assert messages[i_unblock:].count("WATCHDOG=1") >= 3  # pets resume afterwards
