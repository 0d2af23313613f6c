"""Sending SMS (`POST SMS/Messages`), USSD (`POST UssdPush`) and the modem's state (`GET Modem`)."""

from __future__ import annotations

from aiohttp import web

from appliance.api import render, representations
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.render import F, Rep
from appliance.api.routes import Route, route
from appliance.errors import Unavailable
from appliance.services.messaging import MessagingService

MAX_X_HEADERS = 20


def _messaging(ctx: Ctx) -> MessagingService:
    if ctx.services.messaging is None:
        raise Unavailable("SMS is not available: the messaging service is not running")
    return ctx.services.messaging


async def send_sms(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    form = await ctx.form()
    x_headers = {k: v for k, v in form.items() if k.startswith("X-")}
    if len(x_headers) > MAX_X_HEADERS:
        x_headers = dict(list(x_headers.items())[:MAX_X_HEADERS])
    record = await _messaging(ctx).send(
        ctx.me, account, from_=form.get("From"), to=form.get("To"), body=form.get("Body"),
        encoding=form.get("Encoding"), status_callback=form.get("StatusCallback"),
        status_callback_method=form.get("StatusCallbackMethod"), x_headers=x_headers)
    return respond(ctx, render.one(representations.sms(record, ctx.as_json), ctx.as_json))


async def ussd_push(ctx: Ctx) -> web.Response:
    await ctx.operated()
    form = await ctx.form()
    response = await _messaging(ctx).ussd(ctx.me, form.get("To"))
    status = {0: "completed", 1: "menu", 2: "released", 3: "other-client",
              4: "not-supported", 5: "timeout"}.get(response.mode, str(response.mode))
    rep = Rep("UssdPush", [F("to", "To", form.get("To")), F("status", "Status", status),
                           F("message", "Message", response.text or "")])
    return respond(ctx, render.one(rep, ctx.as_json))


async def modem_state(ctx: Ctx) -> web.Response:
    await ctx.operated()
    state = _messaging(ctx).modem_state(ctx.me)
    if state is None:
        rep = Rep("Modem", [F("configured", "Configured", False)])
    else:
        signal = state.signal
        rep = Rep("Modem", [
            F("configured", "Configured", True), F("phase", "Phase", state.phase.value),
            F("sim", "Sim", state.sim.value if state.sim else None),
            F("operator", "Operator", state.operator),
            F("registration", "Registration",
              state.registration.name.lower() if state.registration is not None else None),
            F("signal_rssi", "SignalRssi", signal.rssi if signal else None),
            F("signal_dbm", "SignalDbm", signal.dbm if signal else None),
            F("manufacturer", "Manufacturer", state.manufacturer),
            F("model", "Model", state.model), F("imei", "Imei", state.imei),
            F("last_error", "LastError", state.last_error),
        ])
    return respond(ctx, render.one(rep, ctx.as_json))


ROUTES: list[Route] = [
    route("POST", "Accounts/{A}/SMS/Messages", send_sms),
    route("POST", "Accounts/{A}/UssdPush", ussd_push),
    route("GET", "Accounts/{A}/Modem", modem_state),
]
