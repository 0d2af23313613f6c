"""The compiled registrar hot path (appliance/accel.py): used when it matches the sources,
never when it does not, and the interpreted sources still pass the REGISTER tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import accel

ROOT = Path(__file__).resolve().parents[2]
SIP = ["/src/appliance/sip"]


def build_dir(tmp_path: Path, stamp: str | None) -> Path:
    (tmp_path / "appliance" / "sip").mkdir(parents=True)
    if stamp is not None:
        (tmp_path / "stamp").write_text(stamp + "\n")
    return tmp_path


def test_a_build_matching_the_sources_comes_first(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.DISABLE, raising=False)
    build = build_dir(tmp_path, accel.stamp())
    assert accel.search_path("appliance.sip", SIP, build) == [
        str(build / "appliance" / "sip"), *SIP]


def test_a_stale_missing_or_disabled_build_is_not_used(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.DISABLE, raising=False)
    stale = build_dir(tmp_path / "stale", "0" * 64)  # built from other sources
    assert accel.search_path("appliance.sip", SIP, stale) == SIP
    unstamped = build_dir(tmp_path / "unstamped", None)  # a build cut short
    assert accel.search_path("appliance.sip", SIP, unstamped) == SIP
    assert accel.search_path("appliance.sip", SIP, tmp_path / "none") == SIP
    good = build_dir(tmp_path / "good", accel.stamp())
    monkeypatch.setenv(accel.DISABLE, "0")
    assert accel.search_path("appliance.sip", SIP, good) == SIP


def test_the_stamp_follows_every_compiled_source(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # An edit to any one compiled module must change the stamp (else stale code would run).
    copies = {}
    for module in accel.MODULES:
        copy = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(accel.source_path(module).read_bytes())
        copies[module] = copy
    monkeypatch.setattr(accel, "ROOT", tmp_path)
    original = accel.stamp()
    seen = {original}
    for copy in copies.values():
        text = copy.read_bytes()
        copy.write_bytes(text + b"\n# edited\n")
        seen.add(accel.stamp())
        copy.write_bytes(text)
    assert len(seen) == len(accel.MODULES) + 1
    assert accel.stamp() == original


@pytest.mark.skipif(os.environ.get(accel.DISABLE) == "0", reason="APPLIANCE_ACCEL=0 is set")
def test_the_appliance_runs_the_compiled_build_of_these_sources() -> None:
    # scripts/setup (run by scripts/test and scripts/run) builds it; a C compiler is needed.
    assert accel.built_stamp() == accel.stamp(), "out of date or missing: scripts/build-accel"
    # The registrar alone, as the install test does: not every compiled module is imported.
    code = ("import appliance.sip.registrar; from appliance import accel; "
            "print(accel.active(), accel.describe())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out.startswith("True registrar: compiled"), out
    assert accel.active()  # this test run too


def test_the_interpreted_sources_pass_the_register_tests() -> None:
    # Where no compiler is at hand the same modules run interpreted: the REGISTER tests hold.
    env = {**os.environ, accel.DISABLE: "0"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/sip/test_register_view.py", "tests/sip/test_digest.py",
         "tests/core/test_accel.py::test_the_interpreted_run_is_interpreted"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout


@pytest.mark.skipif(os.environ.get(accel.DISABLE) != "0", reason="run by the test above")
def test_the_interpreted_run_is_interpreted() -> None:
    import appliance.sip.registrar  # noqa: F401 - loaded for the check

    assert not accel.active()
    assert accel.describe() == "registrar: interpreted (APPLIANCE_ACCEL=0)"
