"""A small router over path segments, so the `.json` suffix can sit on any segment."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from aiohttp import web

from appliance.api.context import Ctx

Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: tuple[str, ...]  # literal segments, or "{name}"
    handler: Handler
    # Derived from the pattern once, so matching compares only what can differ.
    literals: tuple[tuple[int, str], ...] = ()
    params: tuple[tuple[int, str], ...] = ()


def route(methods: str, pattern: str, handler: Handler) -> Route:
    parts = tuple(pattern.split("/"))
    return Route(frozenset(methods.split()), parts, handler,
                 literals=tuple((i, p) for i, p in enumerate(parts) if not p.startswith("{")),
                 params=tuple((i, p[1:-1]) for i, p in enumerate(parts) if p.startswith("{")))


def match(routes: list[Route], segments: list[str], method: str
          ) -> tuple[Route | None, dict[str, str], set[str]]:
    """The route for SEGMENTS and METHOD, its path values, and the methods the path allows.

    A literal segment wins over a placeholder: `IncomingPhoneNumbers/Local` is not also
    `IncomingPhoneNumbers/{sid}`, so its `Allow` lists only what /Local supports.
    """
    allowed: set[str] = set()
    found: tuple[Route, dict[str, str]] | None = None
    fewest = len(segments) + 1  # placeholders in the most specific matching pattern
    count = len(segments)
    for r in routes:
        if len(r.pattern) != count or len(r.params) > fewest:
            continue
        if any(segments[i] != lit for i, lit in r.literals):
            continue
        if any(not segments[i] for i, _ in r.params):
            continue
        if len(r.params) < fewest:
            fewest, allowed, found = len(r.params), set(), None
        allowed |= r.methods
        if found is None and method in r.methods:
            found = (r, {name: segments[i] for i, name in r.params})
    if found is not None:
        return found[0], found[1], allowed
    return None, {}, allowed
