"""/Accounts/{A}/Registrations (**OURS**): the live SIP registrations of the account's Clients.

Restcomm keeps registrations in its database but has no REST resource for them; we show
them so an administrator can see which phones are up. A bare list like /Clients (unpaged):
a JSON array, or ``<Registrations><Registration>…`` in XML. Reading it needs Read:Clients.
Nothing here is cached: registrations change without a database write the cache could see.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from appliance.api import render
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.render import F, Rep
from appliance.api.routes import Route, route
from appliance.services.telephony import Registration
from appliance.timefmt import rfc2822


def registration(r: Registration, client_sid: str, now: datetime) -> Rep:
    left = max(0, int((r.expires_at - now).total_seconds() + 0.5))
    return Rep("Registration", [
        F("login", "Login", r.login),
        F("client_sid", "ClientSid", client_sid),
        F("contact", "Contact", r.contact),
        F("transport", "Transport", r.transport),
        F("source", "Source", r.source),
        F("user_agent", "UserAgent", r.user_agent or None, xml_null="omit"),
        F("expires", "Expires", left),
        F("date_expires", "DateExpires", rfc2822(r.expires_at)),
    ])


async def list_registrations(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    clients = await ctx.services.provisioning.list_clients(ctx.me, account)
    sids = {c.login: c.sid for c in clients}
    directory = ctx.services.sip_directory
    live = directory.registrations(set(sids)) if directory is not None else []
    now = datetime.now(UTC)
    reps = [registration(r, sids[r.login], now) for r in live if r.expires_at > now]
    return respond(ctx, render.many(reps, "Registrations", ctx.as_json))


ROUTES: list[Route] = [
    route("GET", "Accounts/{A}/Registrations", list_registrations),
]
