"""Online backup and offline restore of the SQLite file.

Backup uses SQLite's online backup API, so it is consistent while the appliance runs (WAL
readers do not block the writer). Restore is offline only: the running appliance holds the
instance lock, and `restore` refuses while it is held.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from appliance.errors import ApplianceError, InvalidInput


def backup(db_path: Path, dest: Path) -> Path:
    """Copy DB_PATH to DEST; returns the file written.

    DEST is a file name ending in a suffix (`.db`), or a directory (created if needed) that
    receives a timestamped `appliance-YYYYmmddTHHMMSSZ.db`.
    """
    if not db_path.is_file():
        raise ApplianceError(f"no database at {db_path}")
    if dest.is_dir() or not dest.suffix:
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        dest = dest / f"appliance-{stamp}.db"
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".partial")
    # 0600 from the start (a copy holds the passwords too), not only once renamed.
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")
        finally:
            out.close()
    finally:
        src.close()
    tmp.replace(dest)
    dest.chmod(0o600)
    return dest


def verify(path: Path) -> None:
    """Raise InvalidInput unless PATH is an intact appliance database."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as err:
        raise InvalidInput(f"{path}: not a readable SQLite file ({err})") from err
    try:
        if conn.execute("PRAGMA integrity_check").fetchone() != ("ok",):
            raise InvalidInput(f"{path}: integrity check failed")
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"_sqlite_migrations", "accounts", "clients"} <= names:
            raise InvalidInput(f"{path}: not an appliance database")
    except sqlite3.DatabaseError as err:
        raise InvalidInput(f"{path}: not a SQLite database ({err})") from err
    finally:
        conn.close()


def restore(db_path: Path, src: Path) -> Path | None:
    """Replace DB_PATH with SRC after keeping the current file as a timestamped copy.

    Returns the path of the kept copy (None when there was no database yet).
    """
    verify(src)
    kept: Path | None = None
    if db_path.exists():
        kept = backup(db_path, db_path.parent / "backups")
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = db_path.with_suffix(".restore")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    shutil.copyfile(src, tmp)
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    tmp.replace(db_path)
    db_path.chmod(0o600)
    return kept
