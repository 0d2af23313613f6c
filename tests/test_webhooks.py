"""The webhook client against a real local aiohttp server that writes its answers in pieces,
with pauses between them, as a slow or far app server does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web

from appliance.webhooks import MAX_RESPONSE, WebhookError, Webhooks

PIECE = 10_000


async def _pieces(request: web.Request, body: bytes, pause: float, *,
                  length: int | None = None, stall_at: int = -1) -> web.StreamResponse:
    """BODY in PIECE-byte writes PAUSE seconds apart, and a 10 s stall once STALL_AT bytes
    are out."""
    resp = web.StreamResponse(headers={"Content-Type": "text/xml"})
    if length is not None:
        resp.content_length = length
    await resp.prepare(request)
    for i in range(0, len(body), PIECE):
        if i <= stall_at < i + PIECE:
            await asyncio.sleep(10.0)
        await resp.write(body[i:i + PIECE])
        await asyncio.sleep(pause)
    await resp.write_eof()
    return resp


def _document(size: int) -> bytes:
    """A valid RCML document of SIZE bytes (a long comment pads it)."""
    head, tail = b"<Response><!-- ", b" --><Hangup/></Response>"
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.fixture
async def server(aiohttp_server: Any) -> Any:
    big = _document(200_000)
    over = _document(MAX_RESPONSE + 5 * PIECE)

    async def slow(request: web.Request) -> web.StreamResponse:
        return await _pieces(request, b"<Response><Say>Hello</Say></Response>", 0.2)

    async def large(request: web.Request) -> web.StreamResponse:
        return await _pieces(request, big, 0.01)

    async def too_large(request: web.Request) -> web.StreamResponse:
        return await _pieces(request, over, 0.01, stall_at=MAX_RESPONSE + 2 * PIECE)

    async def declared(request: web.Request) -> web.StreamResponse:
        return await _pieces(request, over, 0.01, length=len(over), stall_at=0)

    async def audio(request: web.Request) -> web.StreamResponse:
        return await _pieces(request, over, 0.01)

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/large", large)
    app.router.add_get("/too-large", too_large)
    app.router.add_get("/declared", declared)
    app.router.add_get("/audio", audio)
    srv = await aiohttp_server(app, host="127.0.0.1")
    return srv, big


async def test_an_answer_sent_in_pieces_is_read_to_its_end(server: Any) -> None:
    srv, big = server
    hooks = Webhooks()
    try:
        resp = await hooks.request(str(srv.make_url("/slow")), "GET", {})
        assert resp.body == b"<Response><Say>Hello</Say></Response>"
        resp = await hooks.request(str(srv.make_url("/large")), "GET", {})
        assert resp.body == big and resp.content_type == "text/xml"
    finally:
        await hooks.close()


async def test_an_oversized_answer_is_refused_as_soon_as_it_passes_the_limit(server: Any
                                                                            ) -> None:
    srv, _ = server
    hooks = Webhooks(timeout=30)
    try:
        start = time.monotonic()
        with pytest.raises(WebhookError, match=f"larger than {MAX_RESPONSE} bytes"):
            await hooks.request(str(srv.make_url("/too-large")), "GET", {})
        assert time.monotonic() - start < 5.0  # not after the server's stall
        start = time.monotonic()
        with pytest.raises(WebhookError, match=f"larger than {MAX_RESPONSE} bytes "
                                               r"\(Content-Length"):
            await hooks.request(str(srv.make_url("/declared")), "GET", {})
        assert time.monotonic() - start < 5.0  # refused on its headers
        # A caller with a larger budget (audio) gets the whole of it.
        resp = await hooks.request(str(srv.make_url("/audio")), "GET", {},
                                   max_size=1024 * 1024)
        assert len(resp.body) == MAX_RESPONSE + 5 * PIECE
    finally:
        await hooks.close()
