"""Calls (CDRs), SMS records, notifications and recordings: lists and single records.

Placing a call (POST /Calls) and modifying a live one (POST /Calls/{sid}) go to
services.calls (api-behaviour.md §8.3). Sending SMS is in api/messages.py.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from appliance.api import listing, render, representations
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.routes import Route, route
from appliance.errors import Gone, InvalidInput, MethodNotAllowed
from appliance.models import API_VERSION, CallRecord
from appliance.rcml.runner import App
from appliance.services.access import Action, require
from appliance.services.calls import CallsService
from appliance.services.history import ListFilters, parse_paging
from appliance.services.urls import check_http_url


def _filters(ctx: Ctx) -> ListFilters:
    q, bound = ctx.query, ctx.bound
    return ListFilters(
        to=q.get("To"), from_=q.get("From"), status=q.get("Status"), body=q.get("Body"),
        start_time=q.get("StartTime"), end_time=q.get("EndTime"),
        started_from=bound("StartTime>"), started_until=bound("StartTime<"),
        ended_from=bound("EndTime>"), ended_until=bound("EndTime<"),
        date_sent=q.get("DateSent"), sent_from=bound("DateSent>"),
        sent_until=bound("DateSent<"),
        date_created=q.get("DateCreated"), created_from=bound("DateCreated>"),
        created_until=bound("DateCreated<"),
        message_date=q.get("MessageDate"), logged_from=bound("MessageDate>"),
        logged_until=bound("MessageDate<"),
        parent_call_sid=q.get("ParentCallSid"), conference_sid=q.get("ConferenceSid"),
        call_sid=q.get("CallSid"), error_code=q.get("ErrorCode"),
        request_url=q.get("RequestUrl"), message_text=q.get("MessageText"),
        sub_accounts=(q.get("SubAccounts") or "").lower() == "true",
        sort_by=q.get("SortBy"), reverse=q.get("Reverse"))


async def list_calls(ctx: Ctx) -> web.Response:
    async def build() -> bytes:
        account = await ctx.operated()
        paging = parse_paging(ctx.query.get("Page"), ctx.query.get("PageSize"))
        page = await ctx.services.history.page_calls_stored(ctx.me, account, _filters(ctx),
                                                            paging)
        # What render.paged makes of representations.call, from the stored rows (listing.py).
        return listing.calls_page(page, uri=f"/{API_VERSION}/Accounts/{account.sid}/Calls",
                                  as_json=ctx.as_json)
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


async def call_notifications(ctx: Ctx) -> web.Response:
    """The call's subresource_uris.notifications: the Notifications list of that call only
    (paged and filtered like the list)."""
    account = await ctx.operated()
    call = await ctx.services.history.get_call(ctx.me, account, ctx.path["sid"])
    paging = parse_paging(ctx.query.get("Page"), ctx.query.get("PageSize"))
    filters = dataclasses.replace(_filters(ctx), call_sid=call.sid, sub_accounts=False)
    page = await ctx.services.history.page_notifications(ctx.me, account, filters, paging)
    reps = [representations.notification(n, ctx.as_json) for n in page.items]
    return respond(ctx, render.paged(page, reps, uri=ctx.raw_path(), json_key="notifications",
                                     list_tag="Notifications", xml_attributes=False,
                                     as_json=ctx.as_json))


def _calls(ctx: Ctx) -> CallsService:
    if ctx.services.calls is None:
        raise MethodNotAllowed("Placing calls is not available: no calls service")
    return ctx.services.calls


def _method(value: str | None, name: str) -> str:
    method = (value or "POST").upper()
    if method not in ("GET", "POST"):
        raise InvalidInput(f"{name} must be GET or POST")
    return method


def _url(value: str | None, name: str) -> str | None:
    return check_http_url(name, value) if value else None


def _app(form: dict[str, str]) -> App:
    url = _url(form["Url"], "Url")
    assert url is not None
    return App(url, _method(form.get("Method"), "Method"),
               _url(form.get("FallbackUrl"), "FallbackUrl"),
               _method(form.get("FallbackMethod"), "FallbackMethod"),
               _url(form.get("StatusCallback"), "StatusCallback"),
               _method(form.get("StatusCallbackMethod"), "StatusCallbackMethod"))


async def create_call(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    require(ctx.me, Action.CREATE, "Calls")
    form = dict(await ctx.form())
    for name in ("From", "To", "Url"):
        if not form.get(name):
            raise InvalidInput(f"{name} can not be null.")
    timeout = form.get("Timeout", "60")
    if not timeout.isdigit() or not 1 <= int(timeout) <= 600:
        raise InvalidInput("Timeout must be an integer number of seconds (1-600)")
    _status_callback_events(form.get("StatusCallbackEvent"))
    # Username/Password (SIP auth towards the target) are accepted and unused: the only SIP
    # targets are our own Clients (a foreign domain is 403), which need no credentials.
    records = await _calls(ctx).api_calls.originate(
        account.sid, from_=form["From"], to=form["To"], app=_app(form),
        ring_seconds=int(timeout))
    reps = [representations.call(r, ctx.as_json) for r in records]
    if len(reps) == 1:  # a single CDR: XML without the RestcommResponse wrapper (§8.3)
        return respond(ctx, render.one(reps[0], ctx.as_json, wrap=False))
    return respond(ctx, render.many(reps, "Calls", ctx.as_json))  # one per registered phone


CALL_EVENTS = ("initiated", "ringing", "answered", "completed")


def _status_callback_events(value: str | None) -> tuple[str, ...]:
    """StatusCallbackEvent: a comma-separated subset of CALL_EVENTS (400 otherwise). As in
    Restcomm the events given are *added to* the default, which is all four: every event is
    sent whatever the value (api-behaviour.md §8.3)."""
    given = tuple(e.strip().lower() for e in (value or "").split(",") if e.strip())
    bad = [e for e in given if e not in CALL_EVENTS]
    if bad or (value is not None and value.strip() and not given):
        raise InvalidInput("StatusCallbackEvent must be a comma-separated list of "
                           f"{', '.join(CALL_EVENTS)}: not {', '.join(bad) or value!r}")
    return tuple(dict.fromkeys(CALL_EVENTS + given))


async def modify_call(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    require(ctx.me, Action.MODIFY, "Calls")
    before = await ctx.services.history.get_call(ctx.me, account, ctx.path["sid"])
    form = dict(await ctx.form())
    status = form.get("Status")
    app = _app(form) if form.get("Url") else None
    mute = form.get("Mute")
    if status is None and app is None and mute is None:
        raise InvalidInput("Url, Status or Mute is required")
    # Every value is checked before anything is done to the call.
    if status is not None and status not in ("completed", "canceled"):
        raise InvalidInput("Status must be completed or canceled")
    if mute is not None and mute.lower() not in ("true", "false"):
        raise InvalidInput("Mute must be true or false")
    if mute is not None:
        await _mute(ctx, before, mute)
    if status is not None or app is not None:
        await _calls(ctx).modify(before.sid, status=status, app=app)
    return respond(ctx, render.one(representations.call(before, ctx.as_json), ctx.as_json))


async def _mute(ctx: Ctx, call: CallRecord, value: str) -> None:
    """`Mute=true|false`: a call in a conference is muted there (services.conferences);
    muting any other call is not built (400)."""
    conferences = ctx.services.conferences
    if conferences is not None and await conferences.mute_call(call.sid, value.lower() == "true"):
        return
    if call.status not in ("queued", "ringing", "in-progress"):
        raise Gone("Call is already completed.")
    raise InvalidInput("Mute applies to a call in a conference only")


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
    route("POST", "Accounts/{A}/Calls/{sid}", modify_call),
    route("GET", "Accounts/{A}/Calls/{sid}/Recordings", call_recordings),
    route("GET", "Accounts/{A}/Calls/{sid}/Notifications", call_notifications),
    route("GET", "Accounts/{A}/SMS/Messages", list_sms),
    route("GET", "Accounts/{A}/SMS/Messages/{sid}", get_sms),
    route("GET", "Accounts/{A}/Notifications", list_notifications),
    route("GET", "Accounts/{A}/Notifications/{sid}", get_notification),
    route("GET", "Accounts/{A}/Recordings", list_recordings),
    route("GET", "Accounts/{A}/Recordings/{sid}", get_recording),
    route("DELETE", "Accounts/{A}/Recordings/{sid}", delete_recording),
]
