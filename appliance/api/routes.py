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


def route(methods: str, pattern: str, handler: Handler) -> Route:
    return Route(frozenset(methods.split()), tuple(pattern.split("/")), handler)


def match(routes: list[Route], segments: list[str], method: str
          ) -> tuple[Route | None, dict[str, str], set[str]]:
    """The route for SEGMENTS and METHOD, its path values, and the methods the path allows.

    A literal segment wins over a placeholder: `IncomingPhoneNumbers/Local` is not also
    `IncomingPhoneNumbers/{sid}`, so its `Allow` lists only what /Local supports.
    """
    allowed: set[str] = set()
    found: tuple[Route, dict[str, str]] | None = None
    fewest = len(segments) + 1  # placeholders in the most specific matching pattern
    for r in routes:
        if len(r.pattern) != len(segments):
            continue
        values: dict[str, str] = {}
        for pat, seg in zip(r.pattern, segments, strict=True):
            if pat.startswith("{"):
                if not seg:
                    break
                values[pat[1:-1]] = seg
            elif pat != seg:
                break
        else:
            if len(values) > fewest:
                continue
            if len(values) < fewest:
                fewest, allowed, found = len(values), set(), None
            allowed |= r.methods
            if found is None and method in r.methods:
                found = (r, values)
    if found is not None:
        return found[0], found[1], allowed
    return None, {}, allowed
