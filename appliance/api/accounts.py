"""/Accounts: list children, create sub-accounts, get and update (api-behaviour.md §8.1)."""

from __future__ import annotations

from aiohttp import web

from appliance.api import render, representations
from appliance.api.context import Ctx
from appliance.api.routes import Route, route
from appliance.errors import Forbidden, NotFound
from appliance.services.access import is_super_admin
from appliance.services.accounts import AccountChanges

# What aiohttp would build from content_type= and charset=, spelled out once: building it per
# response is measurable at thousands of requests per second.
_JSON = {"Content-Type": "application/json; charset=utf-8"}
_XML = {"Content-Type": "application/xml; charset=utf-8"}


def respond(ctx: Ctx, body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, headers=_JSON if ctx.as_json else _XML)


async def list_accounts(ctx: Ctx) -> web.Response:
    if "OrganizationSid" in ctx.query or "DomainName" in ctx.query:
        if not is_super_admin(ctx.me):
            raise Forbidden("Only a super administrator may filter by organization")
        domain = ctx.query.get("DomainName")
        org = ctx.query.get("OrganizationSid")
        if (domain and domain != "default.restcomm.com") or (org and org !=
                                                              ctx.me.organization_sid):
            raise NotFound("Unknown organization")
    children = await ctx.services.accounts.list_children(ctx.me)
    reps = [representations.account(a, ctx.as_json) for a in children]
    return respond(ctx, render.many(reps, "Accounts", ctx.as_json))


async def create_account(ctx: Ctx) -> web.Response:
    form = await ctx.form()
    account = await ctx.services.accounts.create(
        ctx.me, email=form.get("EmailAddress"), password=form.get("Password"),
        friendly_name=form.get("FriendlyName"), status=form.get("Status"),
        role=form.get("Role"), organization_sid=form.get("OrganizationSid"))
    return respond(ctx, render.one(representations.account(account, ctx.as_json), ctx.as_json))


async def get_account(ctx: Ctx) -> web.Response:
    target = await ctx.services.accounts.resolve_self_resource(ctx.me, ctx.path["A"])
    return respond(ctx, render.one(representations.account(target, ctx.as_json), ctx.as_json))


async def update_account(ctx: Ctx) -> web.Response:
    target = await ctx.services.accounts.resolve_self_resource(ctx.me, ctx.path["A"])
    form = await ctx.form()
    updated = await ctx.services.accounts.update(ctx.me, target, AccountChanges(
        friendly_name=form.get("FriendlyName"), password=form.get("Password"),
        status=form.get("Status"), role=form.get("Role")))
    return respond(ctx, render.one(representations.account(updated, ctx.as_json), ctx.as_json))


ROUTES: list[Route] = [
    route("GET", "Accounts", list_accounts),
    route("POST", "Accounts", create_account),
    route("GET", "Accounts/{A}", get_account),
    route("POST PUT", "Accounts/{A}", update_account),
]
