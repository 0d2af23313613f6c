"""/Accounts/{A}/Registrations (**OURS**): the live SIP registrations of the account's Clients.

Restcomm keeps registrations in its database but has no REST resource for them; we show
them so an administrator can see which phones are up. A bare list like /Clients (unpaged:
an account holds at most its Clients × ``[sip] max_contacts`` entries): a JSON array, or
``<Registrations><Registration>…`` in XML. The Client representation is left as Restcomm's.
Reading it needs Read:Clients. Filters (docs/sip.md "Registrations"): ``Login`` (exact),
``Transport`` (any case) and ``SubAccounts=true`` (the descendants' Clients too, as the paged
lists take it). Nothing here is cached: registrations change without a database write the
cache could see.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from appliance.api import render
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.render import F, Rep
from appliance.api.routes import Route, route
from appliance.models import Client
from appliance.services.telephony import Registration
from appliance.timefmt import rfc2822


def registration(r: Registration, client: Client, now: datetime) -> Rep:
    left = max(0, int((r.expires_at - now).total_seconds() + 0.5))
    return Rep("Registration", [
        F("login", "Login", r.login),
        F("client_sid", "ClientSid", client.sid),
        F("account_sid", "AccountSid", client.account_sid),
        F("contact", "Contact", r.contact),
        F("transport", "Transport", r.transport),
        F("source", "Source", r.source),
        F("user_agent", "UserAgent", r.user_agent or None, xml_null="omit"),
        F("expires", "Expires", left),
        F("date_expires", "DateExpires", rfc2822(r.expires_at)),
    ])


async def list_registrations(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    sids = await ctx.services.accounts.scope_sids(
        account, (ctx.query.get("SubAccounts") or "").lower() == "true")
    clients = await ctx.services.provisioning.clients_by_login(ctx.me, sids)
    login = ctx.query.get("Login")
    if login is not None:
        clients = {login: clients[login]} if login in clients else {}
    transport = (ctx.query.get("Transport") or "").lower()
    directory = ctx.services.sip_directory
    live = directory.registrations(set(clients)) if directory is not None else []
    now = datetime.now(UTC)
    reps = [registration(r, clients[r.login], now) for r in live
            if r.expires_at > now and (not transport or r.transport.lower() == transport)]
    return respond(ctx, render.many(reps, "Registrations", ctx.as_json))


ROUTES: list[Route] = [
    route("GET", "Accounts/{A}/Registrations", list_registrations),
]
