"""The outside contract: `appliance serve`, config errors, /health, clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ADMIN_SID, basic, free_port

APPLIANCE = [sys.executable, "-m", "appliance"]


def wait_health(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0,
                log: Path | None = None) -> dict:
    """/health's answer once the API is up. An early exit fails with what the process wrote
    to its stderr pipe, or to LOG (a file given as its stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = (proc.stderr.read() if proc.stderr is not None
                    else log.read_bytes()[-4000:] if log is not None
                    else b"(stderr not captured)")
            raise AssertionError(f"appliance exited early ({proc.returncode}): {said!r}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except OSError:
            time.sleep(0.1)
    raise AssertionError("no /health answer")


def write_config(tmp_path: Path, api_port: int, data: Path | None = None,
                 extra: str = "", api_host: str = "127.0.0.1") -> Path:
    """tmp_path/config.toml: the API on API_HOST:API_PORT, SIP on a free port, data in DATA
    (default tmp_path/var), then EXTRA; no media worker unless EXTRA has a [media] table
    (none of these tests places a call: a worker would only load the machine)."""
    config = tmp_path / "config.toml"
    media = "" if "[media]" in extra else "[media]\nworkers = 0\n"
    config.write_text(f'data_dir = "{data or tmp_path / "var"}"\n[api]\n'
                      f'listen = "{api_host}:{api_port}"\n'
                      f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n{media}{extra}')
    return config


def test_serve_health_and_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        health = wait_health(port, proc)
        assert health["status"] == "ok"
        assert health["components"]["store"] == "up"
        password = (tmp_path / "var" / "admin-password").read_text().strip()
        assert len(password) >= 20
        assert oct(os.stat(tmp_path / "var" / "admin-password").st_mode)[-3:] == "600"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        stderr = proc.stderr.read().decode()  # type: ignore[union-attr]
        assert "appliance stopped" in stderr
        assert password not in stderr  # no secrets in the log
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_while_waiting_for_the_modem_stops_at_once(tmp_path: Path) -> None:
    """Start-up gives a modem up to 30 s to become ready; a SIGTERM meanwhile (a modem that
    is absent, or whose SIM stays busy) stops the appliance then, not when the wait ends."""
    port = free_port()
    config = write_config(tmp_path, port, extra=f'[modem]\ndevice = "{tmp_path / "absent"}"\n')
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # 503 (the modem is down) is the answer here
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            except urllib.error.HTTPError as err:
                assert json.loads(err.read())["components"]["modem"]["phase"] == "down"
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("no /health answer")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert "appliance stopped" in proc.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_unknown_config_key_stops_startup(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[sip]\ndomian = "pbx.example.com"\n')
    result = subprocess.run([*APPLIANCE, "serve", "--config", str(config)],
                            capture_output=True, timeout=20)
    assert result.returncode == 2
    assert b"sip.domian: unknown key" in result.stderr


def test_a_tls_key_path_typo_stops_startup_and_keeps_the_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "office.crt", tmp_path / "office.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
                    "-subj", "/CN=pbx.office.example", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True, timeout=60)
    before = cert.read_bytes()
    config = write_config(tmp_path, free_port(), extra="")
    config.write_text(config.read_text().replace(
        "[sip]", f'tls = true\ntls_cert = "{cert}"\ntls_key = "{tmp_path / "office.ky"}"\n[sip]'))
    result = subprocess.run([*APPLIANCE, "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert "config error: api.tls_key: the private key" in result.stderr
    assert "office.ky does not exist" in result.stderr
    assert cert.read_bytes() == before and not (tmp_path / "office.ky").exists()


def test_restart_keeps_data_and_password(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    for _ in range(2):
        proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                                stderr=subprocess.PIPE)
        wait_health(port, proc)
        first = (tmp_path / "var" / "admin-password").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert (tmp_path / "var" / "admin-password").read_text() == first


def test_reset_admin_password_from_the_console(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    wait_health(port, proc)
    old = (tmp_path / "var" / "admin-password").read_text().strip()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    result = subprocess.run([*APPLIANCE, "reset-admin-password", "--config", str(config)],
                            capture_output=True, timeout=20, check=True)
    new = (tmp_path / "var" / "admin-password").read_text().strip()
    assert new != old and new.encode() in result.stdout


def test_reset_admin_password_also_makes_the_administrator_active_again(tmp_path: Path) -> None:
    # An older version let the API demote or suspend the top-level account, locking it out;
    # the console reset is the way back in.
    port = free_port()
    config = write_config(tmp_path, port)
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    wait_health(port, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    with sqlite3.connect(tmp_path / "var" / "appliance.db") as db:
        db.execute("UPDATE accounts SET role = 'administrator', status = 'suspended' "
                   "WHERE sid = ?", (ADMIN_SID,))
    db.close()
    result = subprocess.run([*APPLIANCE, "reset-admin-password", "--config", str(config)],
                            capture_output=True, text=True, timeout=20, check=True)
    password = (tmp_path / "var" / "admin-password").read_text().strip()
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        wait_health(port, proc)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts.json",
            data=b"EmailAddress=back%40example.com&Password=Pbx-edge-7",
            headers={"Authorization": basic(ADMIN_SID, password)})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200  # a write: needs the Administrator role and active
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN_SID}.json",
            headers={"Authorization": basic(ADMIN_SID, password)})
        with urllib.request.urlopen(request, timeout=5) as answer:
            account = json.loads(answer.read())
        assert (account["role"], account["status"]) == ("Administrator", "active")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert "active, with the Administrator role" in result.stdout


def test_reset_admin_password_is_refused_while_the_appliance_runs(tmp_path: Path) -> None:
    # The running service caches the accounts: a reset under it printed a new password
    # that did not work until a restart. It is refused, as restore is, and changes nothing.
    port = free_port()
    config = write_config(tmp_path, port)
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        wait_health(port, proc)
        old = (tmp_path / "var" / "admin-password").read_text().strip()
        result = subprocess.run([*APPLIANCE, "reset-admin-password", "--config", str(config)],
                                capture_output=True, text=True, timeout=20)
        assert result.returncode == 1, result
        assert "another appliance is running" in result.stderr
        assert "stop the service first" in result.stderr
        assert "password" not in result.stdout.lower()
        assert (tmp_path / "var" / "admin-password").read_text().strip() == old
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN_SID}.json",
            headers={"Authorization": basic(ADMIN_SID, old)})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_api_on_the_ipv6_wildcard_answers_ipv4_and_ipv6_clients(tmp_path: Path) -> None:
    # aiohttp's TCPSite makes an IPv6 socket IPv6-only: on "[::]" the admin's curl to the
    # box's IPv4 address was refused.
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback (::1) on this machine")
    port = free_port()
    config = write_config(tmp_path, port, api_host="[::]")
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        assert wait_health(port, proc)["status"] == "ok"  # over 127.0.0.1
        with urllib.request.urlopen(f"http://[::1]:{port}/health", timeout=5) as answer:
            assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_data_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """scripts/run inherits a shell's umask 0022; the database holds gateway and Client
    passwords, so it (and its -wal, -shm), the data dir and the backups are ours only."""
    port = free_port()
    data = tmp_path / "var" / "data"
    config = write_config(tmp_path, port, data, "[media]\nworkers = 0\n")
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE, umask=0o022)
    try:
        wait_health(port, proc)
        assert mode(data) == "0o700"
        db = data / "appliance.db"
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), data / "admin-password"):
            assert mode(path) == "0o600", path
        backup = subprocess.run([*APPLIANCE, "backup", "--config", str(config)],
                                capture_output=True, timeout=20, umask=0o022)
        assert backup.returncode == 0, backup.stderr
        written = Path(backup.stdout.decode().strip())
        assert mode(written) == "0o600" and mode(written.parent) == "0o700"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # A database and data dir left readable by an older version are made private at the
    # next start (the dir closes what else it holds: the admin password, old backups).
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists():
            path.chmod(0o644)
    data.chmod(0o755)
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE, umask=0o022)
    try:
        wait_health(port, proc)
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert mode(path) == "0o600", path
        assert mode(data) == "0o700"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_data_dir_that_is_not_ours_is_left_as_it_is(tmp_path: Path) -> None:
    """A data dir owned by someone else (a mount point, a shared folder) is not ours to
    close: the appliance warns and starts, instead of failing on the chmod."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the directory to another user")
    port = free_port()
    data = tmp_path / "shared"
    data.mkdir()
    os.chown(data, 65534, 65534)
    data.chmod(0o777)
    config = write_config(tmp_path, port, data, "[media]\nworkers = 0\n")
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        wait_health(port, proc)
        assert mode(data) == "0o777"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert b"is open to others and not ours to close" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
