"""Conferences and their participants (api-behaviour.md §8.8): services.conferences.

Lists are paged like Calls (XML list attributes, uri without prefix or .json). A participant
is a call while it is in a conference: POST `Muted` (or Restcomm's `Mute`) = true|false mutes
or unmutes it; DELETE takes it out of the conference (its RCML goes on after the <Dial>).
"""

from __future__ import annotations

from aiohttp import web

from appliance.api import render, representations
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.routes import Route, route
from appliance.errors import InvalidInput, NotFound
from appliance.models import API_VERSION
from appliance.services.conferences import ConferenceFilters, ConferencesService
from appliance.services.history import parse_paging


def _service(ctx: Ctx) -> ConferencesService:
    if ctx.services.conferences is None:
        raise NotFound("Conferences are not available")
    return ctx.services.conferences


async def list_conferences(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    q = ctx.query
    paging = parse_paging(q.get("Page"), q.get("PageSize"))
    filters = ConferenceFilters(
        status=q.get("Status"), friendly_name=q.get("FriendlyName"),
        date_created=q.get("DateCreated"), created_from=ctx.bound("DateCreated>"),
        created_until=ctx.bound("DateCreated<"),
        date_updated=q.get("DateUpdated"), updated_from=ctx.bound("DateUpdated>"),
        updated_until=ctx.bound("DateUpdated<"), sort_by=q.get("SortBy"))
    page = await _service(ctx).page(ctx.me, account, filters, paging.page, paging.page_size)
    reps = [representations.conference(c, ctx.as_json) for c in page.items]
    uri = f"/{API_VERSION}/Accounts/{account.sid}/Conferences"
    return respond(ctx, render.paged(page, reps, uri=uri, json_key="conferences",
                                     list_tag="Conferences", xml_attributes=True,
                                     as_json=ctx.as_json))


async def get_conference(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    conf = await _service(ctx).get(ctx.me, account, ctx.path["sid"])
    return respond(ctx, render.one(representations.conference(conf, ctx.as_json),
                                   ctx.as_json))


async def list_participants(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    paging = parse_paging(ctx.query.get("Page"), ctx.query.get("PageSize"))
    sid = ctx.path["sid"]
    page = await _service(ctx).page_participants(ctx.me, account, sid, paging.page,
                                                 paging.page_size)
    reps = [representations.participant(p, ctx.as_json) for p in page.items]
    uri = f"/{API_VERSION}/Accounts/{account.sid}/Conferences/{sid}/Participants"
    return respond(ctx, render.paged(page, reps, uri=uri, json_key="participants",
                                     list_tag="Participants", xml_attributes=True,
                                     as_json=ctx.as_json))


async def get_participant(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    found = await _service(ctx).get_participant(ctx.me, account, ctx.path["sid"],
                                                ctx.path["call"])
    return respond(ctx, render.one(representations.participant(found, ctx.as_json),
                                   ctx.as_json))


async def modify_participant(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    form = await ctx.form()
    given = [form[name] for name in ("Muted", "Mute") if name in form]  # Muted wins
    if not given:
        raise InvalidInput("Muted is required (true or false)")
    if any(v.lower() not in ("true", "false") for v in given):
        raise InvalidInput("Muted must be true or false")
    value = given[0]
    found = await _service(ctx).set_muted(ctx.me, account, ctx.path["sid"], ctx.path["call"],
                                          value.lower() == "true")
    return respond(ctx, render.one(representations.participant(found, ctx.as_json),
                                   ctx.as_json))


async def remove_participant(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    await _service(ctx).remove(ctx.me, account, ctx.path["sid"], ctx.path["call"])
    return web.Response(status=204)


ROUTES: list[Route] = [
    route("GET", "Accounts/{A}/Conferences", list_conferences),
    route("GET", "Accounts/{A}/Conferences/{sid}", get_conference),
    route("GET", "Accounts/{A}/Conferences/{sid}/Participants", list_participants),
    route("GET", "Accounts/{A}/Conferences/{sid}/Participants/{call}", get_participant),
    route("POST", "Accounts/{A}/Conferences/{sid}/Participants/{call}", modify_participant),
    route("DELETE", "Accounts/{A}/Conferences/{sid}/Participants/{call}", remove_participant),
]
