"""The open-file limit: raised towards the hard limit when too low for the caps, else a
warning (systemd's default soft limit, 1024, is below SIP's own TCP cap)."""

from __future__ import annotations

import resource
import subprocess
import sys

SCRIPT = """
import logging, resource
from appliance.platform.rlimits import ensure_open_files
logging.basicConfig(format="%(levelname)s %(message)s")
print(ensure_open_files(1792), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def run_with(soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=30, check=True, preexec_fn=limit)


def test_a_low_soft_limit_is_raised_to_the_hard_one() -> None:
    run = run_with(1024, 4096)
    assert run.stdout.split() == ["4096", "4096"]
    assert run.stderr == ""


def test_a_low_hard_limit_is_warned_about() -> None:
    run = run_with(1024, 1024)
    assert run.stdout.split() == ["1024", "1024"]
    assert "x open-file limit 1024 is below the 1792" in run.stderr
    assert "LimitNOFILE=65536" in run.stderr


def test_a_high_enough_limit_is_left_alone() -> None:
    run = run_with(2048, 4096)
    assert run.stdout.split() == ["2048", "2048"]
