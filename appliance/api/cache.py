"""Rendered bodies of read-only responses, reused while the database is unchanged.

A body is stored under the database version read *before* it was built, and served only while
the version still reads the same. Any write (through the store or by another process) moves
the version on and empties the cache, so a reader never gets a body older than the last write
it could have seen; a hit skips the store thread and the rendering entirely.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

from aiohttp import web

Version = Hashable

MAX_BYTES = 8 * 1024 * 1024  # all bodies together; an edge box has little memory to spare
MAX_BODY = 1024 * 1024  # larger bodies are rebuilt each time
MAX_ANSWERS = 256  # whole responses (their bodies are the cached ones, shared, not copies)


class ResponseCache:
    def __init__(self, version: Callable[[], Version | None], max_bytes: int = MAX_BYTES,
                 max_body: int = MAX_BODY) -> None:
        self._version = version
        self._max_bytes = max_bytes
        self._max_body = max_body
        self._at: Version | None = None
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        # Whole responses by (Authorization, raw path, Accept): see `answered`.
        self._answers: dict[Hashable, tuple[bytes, Mapping[str, str]]] = {}

    def lookup(self, key: Hashable) -> tuple[bytes | None, Version | None]:
        """The cached body for KEY (or None) and the version to store a new one under."""
        version = self._version()
        if version is None:
            return None, None
        if version != self._at:
            self._bodies.clear()
            self._answers.clear()
            self._size = 0
            self._at = version
            return None, version
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
        return body, version

    def answered(self, request_key: Hashable) -> tuple[bytes, Mapping[str, str]] | None:
        """The whole 200 response (body, headers) a request with the same credentials, raw
        path and Accept header got in the current version, or None.

        Such a request would pass the same authentication (a password, token or status
        change is a write, which empties the cache) and reach the same handler with the same
        inputs, so it can skip both: the path a script polling a list takes."""
        version = self._version()
        if version is None or version != self._at:
            return None
        return self._answers.get(request_key)

    def remember_answer(self, request_key: Hashable, version: Version | None, body: bytes,
                        headers: Mapping[str, str]) -> None:
        """Keep a 200 response whose body was cached under VERSION (see `answered`)."""
        if version is None or version != self._at or len(body) > self._max_body:
            return
        if len(self._answers) >= MAX_ANSWERS:
            self._answers.clear()
        self._answers[request_key] = (body, headers)

    def store(self, key: Hashable, version: Version | None, body: bytes) -> None:
        """Keep BODY for KEY if VERSION (from lookup) is still the current epoch."""
        if version is None or version != self._at or len(body) > self._max_body:
            return
        old = self._bodies.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._bodies[key] = body
        self._size += len(body)
        while self._size > self._max_bytes:
            _, evicted = self._bodies.popitem(last=False)
            self._size -= len(evicted)


RESPONSE_CACHE = web.AppKey("response_cache", ResponseCache)
