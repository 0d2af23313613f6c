"""/Accounts/{A}/OutboundProxy, /getActiveProxy and /switchProxy (Restcomm, over our
outbound routes' gateways: docs/gateways.md)."""

from __future__ import annotations

from aiohttp import web

from appliance.api import render
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.render import F, Rep
from appliance.api.routes import Route, route
from appliance.errors import Unavailable
from appliance.services.outbound import OutboundProxies, ProxyState


def _service(ctx: Ctx) -> OutboundProxies:
    if ctx.services.outbound is None:
        raise Unavailable("Outbound proxies are not available")
    return ctx.services.outbound


def _rep(state: ProxyState) -> Rep:
    return Rep("OutboundProxy", [
        F("ActiveProxy", "ActiveProxy", state.active),
        F("UsingFallBackProxy", "UsingFallBackProxy", state.using_fallback),
        F("PrimaryProxy", "PrimaryProxy", state.primary),
        F("FallbackProxy", "FallbackProxy", state.fallback),
    ])


async def proxies(ctx: Ctx) -> web.Response:
    await ctx.operated()
    return respond(ctx, render.one(_rep(_service(ctx).state(ctx.me)), ctx.as_json))


async def switch(ctx: Ctx) -> web.Response:
    await ctx.operated()
    return respond(ctx, render.one(_rep(_service(ctx).switch(ctx.me)), ctx.as_json))


ROUTES: list[Route] = [
    route("GET", "Accounts/{A}/OutboundProxy", proxies),
    route("GET", "Accounts/{A}/OutboundProxy/getActiveProxy", proxies),
    route("GET", "Accounts/{A}/OutboundProxy/switchProxy", switch),
]
