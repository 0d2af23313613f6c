"""The `appliance` command: serve, check-config, reset-admin-password."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import click

from appliance import config as config_mod
from appliance import logsetup
from appliance.errors import ApplianceError, ConfigError

LOG_LEVELS = logsetup.LOG_LEVELS
PRIVATE_UMASK = 0o077  # files 0600, directories 0700


def _config_path(given: Path | None) -> Path | None:
    if given is not None:
        return given
    directory = os.environ.get("CONFIGURATION_DIRECTORY")
    if directory:
        candidate = Path(directory.split(":")[0]) / "config.toml"
        if candidate.is_file():
            return candidate
    return None


def _load(given: Path | None) -> config_mod.Config:
    try:
        return config_mod.load(_config_path(given))
    except ConfigError as err:
        click.echo(f"appliance: config error: {err.message}", err=True)
        sys.exit(2)


def _setup_logging(level: str) -> None:
    logsetup.setup(level)


@click.group()
@click.version_option(package_name="appliance")
def main() -> None:
    """Edge telecom appliance: SIP PBX, GSM gateway and Restcomm REST API."""
    # Everything the appliance writes (the database and its -wal/-shm, backups, recordings,
    # admin-password, the TLS key) is for its own user only, whatever umask it was started
    # with (scripts/run inherits a shell's 0022; the unit sets UMask=0077 too).
    os.umask(PRIVATE_UMASK)


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML configuration file (default: embedded defaults, data in ./var).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
def serve(config_path: Path | None, log_level: str) -> None:
    """Run the appliance in the foreground until SIGTERM."""
    _setup_logging(log_level)
    cfg = _load(config_path)
    # frozenlist (aiohttp's signal lists, nothing per request) in Python: its C++ build maps
    # libstdc++ into the process, ~1 MB of resident memory for no speed we would notice.
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
    from appliance.app import serve as run

    try:
        asyncio.run(run(cfg))
    except ConfigError as err:  # found at start, e.g. one file of the TLS pair missing
        click.echo(f"appliance: config error: {err.message}", err=True)
        sys.exit(2)
    except OSError as err:
        click.echo(f"appliance: cannot start: {err}", err=True)
        sys.exit(1)
    except ApplianceError as err:
        click.echo(f"appliance: cannot start: {err.message}", err=True)
        sys.exit(1)
    except sqlite3.DatabaseError as err:  # raised by SQLite wherever the store first met it
        click.echo(f"appliance: cannot start: its database {cfg.data_dir / 'appliance.db'}: "
                   f"{err}" + ("" if isinstance(err, sqlite3.OperationalError) else
                               "; it is damaged: restore a backup with `appliance restore "
                               "<file>` (README, \"Other commands\")"), err=True)
        sys.exit(1)


@main.command("check-config")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
def check_config(config_path: Path | None) -> None:
    """Parse the configuration and print the effective values, as TOML (secrets hidden)."""
    from appliance.config_text import config_toml

    click.echo(config_toml(_load(config_path)), nl=False)


@main.command("reset-admin-password")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
def reset_admin_password(config_path: Path | None) -> None:
    """Console-only: a new random administrator password; the account active and Administrator."""
    cfg = _load(config_path)
    from appliance.app import Appliance, InstanceLock
    from appliance.store.backup import own_like_data_dir

    async def run() -> str:
        appliance = Appliance(cfg)
        await appliance.store.open()
        try:
            return await appliance.accounts.reset_admin_password(cfg.data_dir)
        finally:
            await appliance.store.close()

    # A running appliance keeps the accounts (and the credentials it has verified) in
    # memory: a password changed under it would not apply until its restart. So the reset
    # takes the instance lock, as restore does, and is refused while the service holds it.
    if not (cfg.data_dir / "appliance.db").exists():  # opening it would make one (root's)
        click.echo(f"appliance: no database in {cfg.data_dir}: the administrator account "
                   "does not exist yet; start the appliance once", err=True)
        sys.exit(1)
    lock = InstanceLock(cfg.data_dir)
    try:
        lock.acquire()
    except ApplianceError as err:
        click.echo(f"appliance: {err.message}: stop the service first "
                   "(systemctl stop appliance), then reset the password; "
                   "nothing was changed", err=True)
        sys.exit(1)
    try:
        password = asyncio.run(run())
    except ApplianceError as err:
        click.echo(f"appliance: {err.message}", err=True)
        sys.exit(1)
    except (OSError, sqlite3.Error) as err:
        click.echo(f"appliance: the password could not be reset: {err}", err=True)
        sys.exit(1)
    finally:
        lock.release()
    own_like_data_dir(cfg.data_dir / "admin-password", cfg.data_dir)
    click.echo(f"New administrator password written to {cfg.data_dir / 'admin-password'}; "
               "the administrator account is active, with the Administrator role")
    click.echo(password)


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="File or directory (default: <data_dir>/backups/).")
def backup(config_path: Path | None, output: Path | None) -> None:
    """Copy the database consistently; safe while the appliance runs."""
    cfg = _load(config_path)
    from appliance.store.backup import backup as run_backup

    target = output if output is not None else cfg.data_dir / "backups"
    try:
        written = run_backup(cfg.data_dir / "appliance.db", target)
    except ApplianceError as err:
        click.echo(f"appliance: {err.message}", err=True)
        sys.exit(1)
    except OSError as err:  # the output's folder missing, a full disk
        click.echo(f"appliance: backup failed: {err}", err=True)
        sys.exit(1)
    click.echo(str(written))


@main.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
def restore(source: Path, config_path: Path | None) -> None:
    """Replace the database with SOURCE (stop the appliance first); the old one is kept."""
    cfg = _load(config_path)
    from appliance.app import InstanceLock
    from appliance.store.backup import restore as run_restore

    lock = InstanceLock(cfg.data_dir)
    try:
        lock.acquire()
        try:
            kept = run_restore(cfg.data_dir / "appliance.db", source)
        finally:
            lock.release()
    except ApplianceError as err:
        click.echo(f"appliance: {err.message}", err=True)
        sys.exit(1)
    except OSError as err:
        click.echo(f"appliance: restore failed: {err}", err=True)
        sys.exit(1)
    if kept is not None:
        click.echo(f"previous database kept as {kept}")
    click.echo(f"restored {source} into {cfg.data_dir / 'appliance.db'}")
