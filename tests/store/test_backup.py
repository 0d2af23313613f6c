"""`appliance backup` while running and `appliance restore` when stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

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


def _made(tmp_path: Path, data: Path) -> Path:
    """tmp_path/config.toml (data in DATA, free ports, no media worker), its database made
    by one start and stop."""
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{data}"\n[api]\nlisten = "127.0.0.1:{free_port()}"\n'
                      f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n[media]\nworkers = 0\n')
    _serve_once(config, _api_port(config))
    return config


def _api_port(config: Path) -> int:
    return int(tomllib.loads(config.read_text())["api"]["listen"].rsplit(":", 1)[1])


def _serve_once(config: Path, port: int) -> str:
    """Start the appliance on CONFIG until its API answers, then stop it (a database made);
    what it logged."""
    proc = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)],
                            stderr=subprocess.PIPE)
    try:
        wait_health(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert proc.stderr is not None
    return proc.stderr.read().decode()


def test_a_damaged_database_says_so_and_a_backup_restores_it(tmp_path: Path) -> None:
    """The service cannot start on a damaged database: one line says so and what to do, and
    `restore`, which first keeps the current database, keeps this one as it is (SQLite
    cannot copy it) instead of failing with a traceback."""
    data = tmp_path / "da#ta"  # a `#` cut the backup's URI short: an empty copy, exit 0
    config = _made(tmp_path, data)
    good = tmp_path / "good.db"
    subprocess.run([*APPLIANCE, "backup", "--config", str(config), "--output", str(good)],
                   capture_output=True, text=True, timeout=30, check=True)
    (tmp_path / "x.toml").write_text(f'data_dir = "{tmp_path / "scratch"}"\n')
    checked = subprocess.run([*APPLIANCE, "restore", str(good), "--config",
                              str(tmp_path / "x.toml")], capture_output=True, text=True,
                             timeout=30)
    # restore checks it whole: an appliance database, not an empty file
    assert checked.returncode == 0, checked.stderr
    db = data / "appliance.db"
    size = db.stat().st_size
    with db.open("r+b") as f:  # a bad sector over the schema's pages
        f.seek(4096)
        f.write(b"\xde\xad" * ((size - 4096) // 2))
    started = subprocess.run([*APPLIANCE, "serve", "--config", str(config)],
                             capture_output=True, text=True, timeout=30)
    assert started.returncode == 1
    assert "cannot start: its database" in started.stderr, started.stderr
    assert "it is damaged: restore a backup" in started.stderr
    assert "Traceback" not in started.stderr, started.stderr[-2000:]
    copied = subprocess.run([*APPLIANCE, "backup", "--config", str(config), "--output",
                             str(tmp_path / "bad.db")], capture_output=True, text=True,
                            timeout=30)
    assert copied.returncode == 1 and "damaged" in copied.stderr, copied.stderr
    assert "Traceback" not in copied.stderr
    done = subprocess.run([*APPLIANCE, "restore", str(good), "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert ".damaged.db" in done.stdout, done.stdout
    _serve_once(config, _api_port(config))  # it starts again, on the backup


def test_restore_run_as_root_leaves_the_database_to_the_data_dirs_owner(
        tmp_path: Path) -> None:
    """`sudo appliance restore …` on the service's data dir: a root-owned 0600 database
    would stop the service (its user) from opening it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, as `sudo appliance restore` runs")
    data = tmp_path / "var"
    config = _made(tmp_path, data)
    good = tmp_path / "good.db"
    subprocess.run([*APPLIANCE, "backup", "--config", str(config), "--output", str(good)],
                   capture_output=True, text=True, timeout=30, check=True)
    service_user = 65534  # nobody: the data dir is the service's
    for path in (data, *data.rglob("*")):
        os.chown(path, service_user, service_user)
    subprocess.run([*APPLIANCE, "restore", str(good), "--config", str(config)],
                   capture_output=True, text=True, timeout=30, check=True)
    owners = {p.relative_to(data).as_posix(): p.stat().st_uid
              for p in (data / "appliance.db", data / "backups", *data.glob("backups/*"))}
    assert set(owners.values()) == {service_user}, owners


def test_a_lost_database_in_a_used_data_dir_is_warned_about(tmp_path: Path) -> None:
    config = _made(tmp_path, tmp_path / "var")
    (tmp_path / "var" / "appliance.db").write_bytes(b"")  # what a broken card may leave
    log = _serve_once(config, _api_port(config))
    assert "no database at" in log and "starting with an EMPTY one" in log, log[-2000:]
    assert "(admin-password)" in log


def test_restore_run_as_root_onto_a_new_card_leaves_everything_to_the_service(
        tmp_path: Path) -> None:
    """A fresh data dir (no database, no backups/ yet) owned by the service's user."""
    if os.geteuid() != 0:
        pytest.skip("needs root, as `sudo appliance restore` runs")
    config = _made(tmp_path, tmp_path / "var")
    good = tmp_path / "good.db"
    subprocess.run([*APPLIANCE, "backup", "--config", str(config), "--output", str(good)],
                   capture_output=True, text=True, timeout=30, check=True)
    card = tmp_path / "card"
    card.mkdir(mode=0o700)
    os.chown(card, 65534, 65534)
    (tmp_path / "card.toml").write_text(f'data_dir = "{card}"\n')
    done = subprocess.run([*APPLIANCE, "restore", str(good), "--config",
                           str(tmp_path / "card.toml")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    owners = {p.name: p.stat().st_uid for p in card.iterdir()}
    assert set(owners.values()) == {65534}, owners  # the database and the lock


def test_a_factory_reset_goes_ahead_on_a_damaged_database(tmp_path: Path) -> None:
    from appliance.app import factory_reset

    data = tmp_path / "var"
    config = _made(tmp_path, data)
    db = data / "appliance.db"
    with db.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xde\xad" * ((db.stat().st_size - 4096) // 2))
    kept = factory_reset(data)
    assert kept is not None and kept.exists()  # the damaged file, kept as it was
    assert not db.exists() and not (data / "admin-password").exists()
    _serve_once(config, _api_port(config))  # a fresh database
