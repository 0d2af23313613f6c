"""WAV files for the media workers: what pjmedia's player takes, and the size-capped caches.

Both caches (``<data_dir>/cache/play`` for <Play> and waitUrl downloads, ``cache/tts`` for
<Say>) are written only by the main process; the media workers only open the files they are
told to play. A cache is a tree ``root/xx/<sha256>.wav``. Every use sets the file's mtime
(atime is unreliable: SD cards are mounted noatime), and a file added past the cap evicts
the least recently used files until the tree is back under it. A file used in the last
KEEP_S seconds is never evicted (a worker may be about to open it; once open, pjmedia reads
it through its descriptor, so unlinking a playing file does not cut it), so the cap can be
overshot for a while by what calls are playing right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

PLAY_CACHE_MAX = 200 * 1024 * 1024  # bytes of <Play>/waitUrl downloads kept
TTS_CACHE_MAX = 100 * 1024 * 1024  # bytes of synthesised <Say> kept
KEEP_S = 300.0


def wav_problem(data: bytes) -> str | None:
    """Why pjmedia's WAV player would refuse DATA (None: it plays it).

    What pjsua2 2.15's createPlayer takes (tried): RIFF/WAVE with a "fmt " chunk of 16-bit
    PCM or 8-bit A-law/u-law (other chunks anywhere, any rate, any number of channels) and a
    "data" chunk; 8-bit or 24-bit PCM and float are refused."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return "not a RIFF/WAVE file"
    fmt: tuple[int, ...] | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"fmt ":
            if size < 16 or offset + 24 > len(data):
                return "truncated fmt chunk"
            fmt = struct.unpack_from("<HHIIHH", data, offset + 8)
        elif chunk == b"data":
            if fmt is None:
                return "no fmt chunk before the data"
            tag, channels, rate, _, _, bits = fmt
            if not ((tag == 1 and bits == 16) or (tag in (6, 7) and bits == 8)):
                return f"unsupported encoding (format {tag}, {bits} bits): use 16-bit PCM or G.711"
            if channels == 0 or rate == 0:
                return "no channels or a sample rate of 0"
            return None if size > 0 and offset + 8 < len(data) else "no audio in the data chunk"
        offset += 8 + size + (size & 1)
    return "no data chunk"


class FileCache:
    """One cache tree; get it with `cache()` so that all its users share one size count."""

    def __init__(self, root: Path, max_bytes: int, keep_s: float = KEEP_S) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.keep_s = keep_s
        self._total: int | None = None  # exact after a scan, then an upper bound
        self._lock = threading.Lock()  # store() runs in threads
        # Per file being fetched: its lock and how many wait on it (dropped at zero).
        self._fetches: dict[Path, tuple[asyncio.Lock, list[int]]] = {}

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.wav"

    @contextlib.asynccontextmanager
    async def one_fetch(self, path: Path) -> AsyncIterator[None]:
        """Held while PATH is fetched: calls wanting the same file not cached yet wait for
        the first one's download (then find it cached) instead of each holding a copy of up
        to MAX_AUDIO in memory and fetching it again."""
        lock, users = self._fetches.setdefault(path, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._fetches[path]

    def used(self, path: Path) -> bool:
        """True when PATH is in the cache; it becomes the most recently used."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        except OSError:  # a read-only disk: still usable, just never evicted first
            return path.is_file()
        return True

    def drop(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def store(self, path: Path, data: bytes) -> None:
        """Write DATA as PATH, whole or not at all, then evict past the cap (blocking: run
        it in a thread)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.added(path)

    def added(self, path: Path) -> None:
        """PATH was just written into the tree: count it, and evict if past the cap."""
        with self._lock:
            if self._total is None:
                self._total = sum(size for _, size, _ in self._files())
            else:
                try:
                    self._total += path.stat().st_size
                except OSError:
                    pass
            if self._total > self.max_bytes:
                self._total = self._evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        found: list[tuple[float, int, Path]] = []
        stale = time.time() - 3600.0
        try:
            subdirs = [d for d in os.scandir(self.root)
                       if len(d.name) == 2 and d.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return found
        for sub in subdirs:
            try:
                entries = list(os.scandir(sub.path))
            except FileNotFoundError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if e.name.startswith("."):
                    if e.name.endswith(".part") and st.st_mtime < stale:
                        Path(e.path).unlink(missing_ok=True)  # a crash mid-write left it
                elif e.name.endswith(".wav"):
                    found.append((st.st_mtime, st.st_size, Path(e.path)))
        return found

    def _evict(self) -> int:
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        fresh = time.time() - self.keep_s
        for mtime, size, path in files:
            if total <= self.max_bytes or mtime > fresh:
                break
            path.unlink(missing_ok=True)
            total -= size
        return total


_caches: dict[Path, FileCache] = {}
_caches_lock = threading.Lock()


def cache(root: Path, max_bytes: int) -> FileCache:
    """The process's one FileCache for ROOT (created with MAX_BYTES the first time)."""
    root = Path(os.path.abspath(root))
    with _caches_lock:
        found = _caches.get(root)
        if found is None:
            found = _caches[root] = FileCache(root, max_bytes)
        return found
