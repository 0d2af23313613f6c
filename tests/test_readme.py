"""The README walk-through runs verbatim (but for port and data dir) on a fresh appliance."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.test_serve import wait_health

README = Path(__file__).resolve().parent.parent / "README.md"


def walkthrough_script() -> str:
    text = README.read_text()
    section = text.split("## Walk-through", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    commands = [b for b in blocks if "scripts/run" not in b]
    assert len(commands) >= 6
    return "\n".join(commands)


def test_readme_walkthrough(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "var"
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{data}"\n[api]\nlisten = "127.0.0.1:{port}"\n'
                      f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        wait_health(port, proc)
        script = walkthrough_script().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        script = script.replace("var/admin-password", f"{data}/admin-password")
        # Any HTTP error fails the walk-through.
        prelude = 'set -euo pipefail\ncurl() { command curl -sS --fail-with-body "$@"; echo; }\n'
        result = subprocess.run(["bash", "-c", prelude + script], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert '"login": "alice"' in result.stdout
        assert '"phone_number": "+1234"' in result.stdout
        assert "MySubAccount" in result.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
