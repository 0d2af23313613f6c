"""/Accounts/{A}/Management/Gateways (api-behaviour.md §8.7): the super administrator's trunks.

Each representation adds `registration_state` and `registration_error` after Restcomm's fields:
what the trunk client reports now (registered, failed with the provider's answer, …).
"""

from __future__ import annotations

from aiohttp import web

from appliance.api import render
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.render import F, Rep
from appliance.api.routes import Route, route
from appliance.errors import Unavailable
from appliance.models import API_VERSION, Gateway
from appliance.services.gateways import GatewayService
from appliance.timefmt import rfc2822


def _service(ctx: Ctx) -> GatewayService:
    if ctx.services.gateways is None:
        raise Unavailable("Gateways are not available")
    return ctx.services.gateways


def gateway_rep(g: Gateway, service: GatewayService, as_json: bool) -> Rep:
    status = service.status(g.sid)
    uri = f"/{API_VERSION}/Management/Gateways/{g.sid}" + (".json" if as_json else "")
    return Rep("Gateway", [
        F("sid", "Sid", g.sid), F("date_created", "DateCreated", rfc2822(g.date_created)),
        F("date_updated", "DateUpdated", rfc2822(g.date_updated)),
        F("friendly_name", "FriendlyName", g.friendly_name), F("password", "Password", g.password),
        F("proxy", "Proxy", g.proxy), F("register", "Register", g.register),
        F("user_name", "UserName", g.user_name), F("time_to_live", "TimeToLive", g.ttl),
        F("uri", "Uri", uri),
        F("registration_state", "RegistrationState", status.state),
        F("registration_error", "RegistrationError", status.last_error, xml_null="omit"),
    ])


async def list_gateways(ctx: Ctx) -> web.Response:
    service = _service(ctx)
    gateways = await service.list(ctx.me)
    reps = [gateway_rep(g, service, ctx.as_json) for g in gateways]
    return respond(ctx, render.many(reps, "Gateways", ctx.as_json))


async def create_gateway(ctx: Ctx) -> web.Response:
    service = _service(ctx)
    gateway = await service.create(ctx.me, await ctx.form())
    return respond(ctx, render.one(gateway_rep(gateway, service, ctx.as_json), ctx.as_json))


async def get_gateway(ctx: Ctx) -> web.Response:
    service = _service(ctx)
    gateway = await service.get(ctx.me, ctx.path["sid"])
    return respond(ctx, render.one(gateway_rep(gateway, service, ctx.as_json), ctx.as_json))


async def update_gateway(ctx: Ctx) -> web.Response:
    service = _service(ctx)
    gateway = await service.update(ctx.me, ctx.path["sid"], await ctx.form())
    return respond(ctx, render.one(gateway_rep(gateway, service, ctx.as_json), ctx.as_json))


async def delete_gateway(ctx: Ctx) -> web.Response:
    await _service(ctx).delete(ctx.me, ctx.path["sid"])
    return web.Response(status=200)


ROUTES: list[Route] = [
    route("GET", "Accounts/{A}/Management/Gateways", list_gateways),
    route("POST", "Accounts/{A}/Management/Gateways", create_gateway),
    route("GET", "Accounts/{A}/Management/Gateways/{sid}", get_gateway),
    route("POST PUT", "Accounts/{A}/Management/Gateways/{sid}", update_gateway),
    route("DELETE", "Accounts/{A}/Management/Gateways/{sid}", delete_gateway),
]
