"""/Accounts/{A}/Applications (api-behaviour.md §8.6)."""

from __future__ import annotations

from aiohttp import web

from appliance.api import render, representations
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.routes import Route, route

FIELDS = {"FriendlyName": "friendly_name", "VoiceCallerIdLookup": "voice_caller_id_lookup",
          "RcmlUrl": "rcml_url", "Kind": "kind"}


async def list_applications(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    apps = await ctx.services.provisioning.list_applications(ctx.me, account)
    reps = [representations.application(a, nums, ctx.as_json) for a, nums in apps]
    return respond(ctx, render.many(reps, "Applications", ctx.as_json))


async def create_application(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    app = await ctx.services.provisioning.create_application(ctx.me, account,
                                                             await ctx.fields(FIELDS))
    return respond(ctx, render.one(representations.application(app, [], ctx.as_json),
                                   ctx.as_json))


async def get_application(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    app, nums = await ctx.services.provisioning.get_application(ctx.me, account,
                                                                ctx.path["sid"])
    return respond(ctx, render.one(representations.application(app, nums, ctx.as_json),
                                   ctx.as_json))


async def update_application(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    app = await ctx.services.provisioning.update_application(ctx.me, account, ctx.path["sid"],
                                                             await ctx.fields(FIELDS))
    _, nums = await ctx.services.provisioning.get_application(ctx.me, account, app.sid)
    return respond(ctx, render.one(representations.application(app, nums, ctx.as_json),
                                   ctx.as_json))


async def delete_application(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    await ctx.services.provisioning.delete_application(ctx.me, account, ctx.path["sid"])
    return web.Response(status=200)


ROUTES: list[Route] = [
    route("GET", "Accounts/{A}/Applications", list_applications),
    route("POST", "Accounts/{A}/Applications", create_application),
    route("GET", "Accounts/{A}/Applications/{sid}", get_application),
    route("POST PUT", "Accounts/{A}/Applications/{sid}", update_application),
    route("DELETE", "Accounts/{A}/Applications/{sid}", delete_application),
]
