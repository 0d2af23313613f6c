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
    try:
        # A URI, quoted: a `#` or `?` in the data dir's path would end a raw one early (an
        # empty database copied, with exit 0).
        src = sqlite3.connect(_read_only_uri(db_path), uri=True)
        try:
            out = sqlite3.connect(tmp)
            try:
                src.backup(out)
                out.execute("PRAGMA journal_mode=DELETE")
                intact = out.execute("PRAGMA quick_check").fetchone() == ("ok",)
            finally:
                out.close()
        finally:
            src.close()
    except (sqlite3.Error, MemoryError) as err:
        tmp.unlink(missing_ok=True)
        reason = str(err) or "out of memory"
        raise ApplianceError(f"the database {db_path} could not be copied ({reason}): it may "
                             "be damaged") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    dest.chmod(0o600)
    if not intact:  # a damaged page: the copy is kept (it may be all there is), yet said so
        raise ApplianceError(f"{dest} was written, but it fails SQLite's integrity check: the "
                             f"database {db_path} is damaged; restore an earlier backup")
    return dest


def _read_only_uri(path: Path) -> str:
    return path.absolute().as_uri() + "?mode=ro"


def own_like_data_dir(path: Path, data_dir: Path) -> None:
    """Give PATH to the data dir's owner when run as root (a console command run with sudo):
    the service, running as that owner, must open what root wrote in its data dir."""
    if os.geteuid() != 0:
        return
    owner = data_dir.stat()
    if (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid)


def keep_copy(db_path: Path) -> Path:
    """A copy of DB_PATH in its data dir's backups/, before it is replaced or removed: made
    by SQLite when it can read the database, else (damaged) the file as it is."""
    try:
        return backup(db_path, db_path.parent / "backups")
    except ApplianceError:
        # Damaged: the very case a restore or a factory reset is for. Kept as it is (a
        # copy failing only its integrity check was written too; this one is whole).
        return _set_aside(db_path)


def _set_aside(db_path: Path) -> Path:
    """A database that cannot even be read, moved aside as it is (with its WAL)."""
    folder = db_path.parent / "backups"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    kept = folder / f"appliance-{stamp}.damaged.db"
    shutil.copyfile(db_path, kept)
    kept.chmod(0o600)
    wal = Path(str(db_path) + "-wal")
    if wal.exists():
        shutil.copyfile(wal, Path(str(kept) + "-wal"))
    return kept


def verify(path: Path) -> None:
    """Raise InvalidInput unless PATH is an intact appliance database."""
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
    except sqlite3.Error as err:
        raise InvalidInput(f"{path}: not a readable SQLite file ({err})") from err
    try:
        if conn.execute("PRAGMA integrity_check").fetchone() != ("ok",):
            raise InvalidInput(f"{path}: integrity check failed")
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"_sqlite_migrations", "accounts", "clients"} <= names:
            raise InvalidInput(f"{path}: not an appliance database")
    except (sqlite3.DatabaseError, MemoryError) as err:  # MemoryError: a damaged page
        raise InvalidInput(f"{path}: not an intact SQLite database ({err or 'damaged'})"
                           ) from err
    finally:
        conn.close()


def restore(db_path: Path, src: Path) -> Path | None:
    """Replace DB_PATH with SRC after keeping the current file as a timestamped copy.

    Returns the path of the kept copy (None when there was no database yet).
    """
    verify(src)
    kept: Path | None = None
    if db_path.exists():
        kept = keep_copy(db_path)
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = db_path.with_suffix(".restore")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    shutil.copyfile(src, tmp)
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    tmp.replace(db_path)
    db_path.chmod(0o600)
    for written in (db_path, db_path.parent / "backups", kept):
        if written is not None and written.exists():  # no backups/ on a fresh card
            own_like_data_dir(written, db_path.parent)
    return kept
