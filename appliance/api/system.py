"""/health, /openapi.yaml and the public recording files."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from appliance.api.context import SERVICES, Ctx
from appliance.errors import NotFound

OPENAPI = Path(__file__).with_name("openapi.yaml")


async def health(request: web.Request) -> web.Response:
    ok, components = await request.app[SERVICES].health()
    body = {"status": "ok" if ok else "degraded", "components": components}
    return web.Response(status=200 if ok else 503, body=json.dumps(body, indent=2).encode(),
                        content_type="application/json")


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})


async def recording_file(ctx: Ctx, sid: str, kind: str) -> web.StreamResponse:
    """The media file of a recording: public by its unguessable SID, as in Restcomm."""
    path = await ctx.services.history.recording_path(sid)
    if path is None or kind != "wav" or not path.is_file():
        raise NotFound("The recording file was not found")
    return web.FileResponse(path, headers={"Content-Type": "audio/x-wav"})
