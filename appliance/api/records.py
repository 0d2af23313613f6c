"""Calls (CDRs), SMS records, notifications and recordings: lists and single records.

Placing calls through the API comes with the voice work; until then that POST answers 405 with
a message saying so. Sending SMS is in api/messages.py.
"""

from __future__ import annotations

from aiohttp import web

from appliance.api import render, representations
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.routes import Route, route
from appliance.errors import MethodNotAllowed
from appliance.models import API_VERSION
from appliance.services.history import ListFilters, parse_paging


def _filters(ctx: Ctx) -> ListFilters:
    q = ctx.query
    return ListFilters(
        to=q.get("To"), from_=q.get("From"), status=q.get("Status"), body=q.get("Body"),
        start_time=q.get("StartTime"), end_time=q.get("EndTime"),
        parent_call_sid=q.get("ParentCallSid"), conference_sid=q.get("ConferenceSid"),
        call_sid=q.get("CallSid"), error_code=q.get("ErrorCode"),
        request_url=q.get("RequestUrl"), message_text=q.get("MessageText"),
        sub_accounts=(q.get("SubAccounts") or "").lower() == "true",
        sort_by=q.get("SortBy"), reverse=q.get("Reverse"))


async def list_calls(ctx: Ctx) -> web.Response:
    async def build() -> bytes:
        account = await ctx.operated()
        paging = parse_paging(ctx.query.get("Page"), ctx.query.get("PageSize"))
        page = await ctx.services.history.page_calls(ctx.me, account, _filters(ctx), paging)
        reps = [representations.call(c, ctx.as_json) for c in page.items]
        uri = f"/{API_VERSION}/Accounts/{account.sid}/Calls"
        return render.paged(page, reps, uri=uri, json_key="calls", list_tag="Calls",
                            xml_attributes=True, as_json=ctx.as_json)
    return respond(ctx, await ctx.cached(build))


async def get_call(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    call = await ctx.services.history.get_call(ctx.me, account, ctx.path["sid"])
    return respond(ctx, render.one(representations.call(call, ctx.as_json), ctx.as_json))


async def call_recordings(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    call = await ctx.services.history.get_call(ctx.me, account, ctx.path["sid"])
    page = await ctx.services.history.page_recordings(
        ctx.me, account, ListFilters(call_sid=call.sid), parse_paging("0", "1000"))
    reps = [representations.recording(r, ctx.services.public_base, ctx.as_json)
            for r in page.items]
    return respond(ctx, render.many(reps, "Recordings", ctx.as_json))


async def create_call(ctx: Ctx) -> web.Response:
    await ctx.operated()
    raise MethodNotAllowed("Placing calls through the API is not available in this version: "
                           "the media workers are not built yet.")


async def list_sms(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    paging = parse_paging(ctx.query.get("Page"), ctx.query.get("PageSize"))
    page = await ctx.services.history.page_sms(ctx.me, account, _filters(ctx), paging)
    reps = [representations.sms(s, ctx.as_json) for s in page.items]
    return respond(ctx, render.paged(page, reps, uri=ctx.raw_path(), json_key="messages",
                                     list_tag="SMSMessages", xml_attributes=False,
                                     as_json=ctx.as_json))


async def get_sms(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    sms = await ctx.services.history.get_sms(ctx.me, account, ctx.path["sid"])
    return respond(ctx, render.one(representations.sms(sms, ctx.as_json), ctx.as_json))


async def list_notifications(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    paging = parse_paging(ctx.query.get("Page"), ctx.query.get("PageSize"))
    page = await ctx.services.history.page_notifications(ctx.me, account, _filters(ctx), paging)
    reps = [representations.notification(n, ctx.as_json) for n in page.items]
    return respond(ctx, render.paged(page, reps, uri=ctx.raw_path(), json_key="notifications",
                                     list_tag="Notifications", xml_attributes=False,
                                     as_json=ctx.as_json))


async def get_notification(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    note = await ctx.services.history.get_notification(ctx.me, account, ctx.path["sid"])
    return respond(ctx, render.one(representations.notification(note, ctx.as_json),
                                   ctx.as_json))


async def list_recordings(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    paging = parse_paging(ctx.query.get("Page"), ctx.query.get("PageSize"))
    page = await ctx.services.history.page_recordings(ctx.me, account, _filters(ctx), paging)
    reps = [representations.recording(r, ctx.services.public_base, ctx.as_json)
            for r in page.items]
    return respond(ctx, render.paged(page, reps, uri=ctx.raw_path(), json_key="recordings",
                                     list_tag="Recordings", xml_attributes=False,
                                     as_json=ctx.as_json))


async def get_recording(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    rec = await ctx.services.history.get_recording(ctx.me, account, ctx.path["sid"])
    return respond(ctx, render.one(
        representations.recording(rec, ctx.services.public_base, ctx.as_json), ctx.as_json))


async def delete_recording(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    await ctx.services.history.delete_recording(ctx.me, account, ctx.path["sid"])
    return web.Response(status=200)


ROUTES: list[Route] = [
    route("GET", "Accounts/{A}/Calls", list_calls),
    route("POST", "Accounts/{A}/Calls", create_call),
    route("GET", "Accounts/{A}/Calls/{sid}", get_call),
    route("GET", "Accounts/{A}/Calls/{sid}/Recordings", call_recordings),
    route("GET", "Accounts/{A}/SMS/Messages", list_sms),
    route("GET", "Accounts/{A}/SMS/Messages/{sid}", get_sms),
    route("GET", "Accounts/{A}/Notifications", list_notifications),
    route("GET", "Accounts/{A}/Notifications/{sid}", get_notification),
    route("GET", "Accounts/{A}/Recordings", list_recordings),
    route("GET", "Accounts/{A}/Recordings/{sid}", get_recording),
    route("DELETE", "Accounts/{A}/Recordings/{sid}", delete_recording),
]
