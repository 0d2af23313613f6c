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


_PLACEHOLDER = "\x00"  # stands for any non-empty segment that is no route's literal there
_EMPTY = ""
MAX_SHAPES = 4096  # distinct shapes are few (bounded by the routes' literals); a cap all the same


class Router:
    """`match` over a fixed route list, remembering the outcome per path *shape*.

    What `match` decides depends only on the method, the segment count, which segments equal
    a literal some route has at that position, and which are empty. A shape keeps exactly
    that, so SIDs and other free values share one entry, and a hit costs a tuple build and a
    dict lookup instead of a scan over every route of that length.
    """

    def __init__(self, routes: list[Route]) -> None:
        self._by_length: dict[int, list[Route]] = {}
        for r in routes:
            self._by_length.setdefault(len(r.pattern), []).append(r)
        self._literals: dict[int, tuple[frozenset[str], ...]] = {
            n: tuple(frozenset(r.pattern[i] for r in rs if (i, r.pattern[i]) in r.literals)
                     for i in range(n))
            for n, rs in self._by_length.items()}
        self._shapes: dict[tuple[str, ...], tuple[Route | None, frozenset[str]]] = {}

    def match(self, segments: list[str], method: str
              ) -> tuple[Route | None, dict[str, str], set[str]]:
        literals = self._literals.get(len(segments))
        if literals is None:
            return None, {}, set()
        shape = (method, *(seg if seg in lits else (_EMPTY if not seg else _PLACEHOLDER)
                           for seg, lits in zip(segments, literals, strict=True)))
        known = self._shapes.get(shape)
        if known is None:
            found, _, allowed = match(self._by_length[len(segments)], segments, method)
            known = (found, frozenset(allowed))
            if len(self._shapes) < MAX_SHAPES:
                self._shapes[shape] = known
        found, allowed_methods = known
        values = {name: segments[i] for i, name in found.params} if found is not None else {}
        return found, values, set(allowed_methods)
