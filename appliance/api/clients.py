"""/Accounts/{A}/Clients (api-behaviour.md §8.2). Unpaged, as Restcomm (#2154)."""

from __future__ import annotations

from aiohttp import web

from appliance.api import listing, render, representations
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.routes import Route, route

FIELDS = {
    "Login": "login", "Password": "password", "FriendlyName": "friendly_name",
    "Status": "status", "VoiceUrl": "voice_url", "VoiceMethod": "voice_method",
    "VoiceFallbackUrl": "voice_fallback_url", "VoiceFallbackMethod": "voice_fallback_method",
    "VoiceApplicationSid": "voice_application_sid", "IsPushEnabled": "is_push_enabled",
}


async def list_clients(ctx: Ctx) -> web.Response:
    async def build() -> bytes:
        account = await ctx.operated()
        rows = await ctx.services.provisioning.list_clients_stored(ctx.me, account)
        # What render.many makes of representations.client, from the stored rows (listing.py).
        return listing.clients(rows, ctx.as_json)
    return respond(ctx, await ctx.cached(build))


async def create_client(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    client = await ctx.services.provisioning.create_client(ctx.me, account,
                                                           await ctx.fields(FIELDS))
    return respond(ctx, render.one(representations.client(client, ctx.as_json), ctx.as_json))


async def get_client(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    client = await ctx.services.provisioning.get_client(ctx.me, account, ctx.path["sid"])
    return respond(ctx, render.one(representations.client(client, ctx.as_json), ctx.as_json))


async def update_client(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    fields = await ctx.fields({k: v for k, v in FIELDS.items() if k != "Login"})
    client = await ctx.services.provisioning.update_client(ctx.me, account, ctx.path["sid"],
                                                           fields)
    return respond(ctx, render.one(representations.client(client, ctx.as_json), ctx.as_json))


async def delete_client(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    await ctx.services.provisioning.delete_client(ctx.me, account, ctx.path["sid"])
    return web.Response(status=200)


ROUTES: list[Route] = [
    route("GET", "Accounts/{A}/Clients", list_clients),
    route("POST", "Accounts/{A}/Clients", create_client),
    route("GET", "Accounts/{A}/Clients/{sid}", get_client),
    route("POST PUT", "Accounts/{A}/Clients/{sid}", update_client),
    route("DELETE", "Accounts/{A}/Clients/{sid}", delete_client),
]
