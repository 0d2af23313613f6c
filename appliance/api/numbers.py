"""/Accounts/{A}/IncomingPhoneNumbers (api-behaviour.md §8.5)."""

from __future__ import annotations

import json

from aiohttp import web

from appliance.api import render, representations
from appliance.api.accounts import respond
from appliance.api.context import Ctx
from appliance.api.routes import Route, route
from appliance.errors import InvalidInput
from appliance.models import API_VERSION
from appliance.services.history import parse_paging

FIELDS = {
    "PhoneNumber": "phone_number", "AreaCode": "area_code", "FriendlyName": "friendly_name",
    "isSIP": "is_sip", "VoiceCallerIdLookup": "voice_caller_id_lookup",
    "StatusCallback": "status_callback", "StatusCallbackMethod": "status_callback_method",
    "VoiceCapable": "voice_capable", "SmsCapable": "sms_capable", "MmsCapable": "mms_capable",
    "FaxCapable": "fax_capable", "ReferUrl": "refer_url", "ReferMethod": "refer_method",
    "ReferApplicationSid": "refer_application_sid",
}
for _wire, _key in (("Voice", "voice"), ("Sms", "sms"), ("Ussd", "ussd")):
    FIELDS.update({f"{_wire}Url": f"{_key}_url", f"{_wire}Method": f"{_key}_method",
                   f"{_wire}FallbackUrl": f"{_key}_fallback_url",
                   f"{_wire}FallbackMethod": f"{_key}_fallback_method",
                   f"{_wire}ApplicationSid": f"{_key}_application_sid"})

_KINDS = ("", "/Local", "/TollFree", "/Mobile")


async def list_numbers(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    q = ctx.query
    paging = parse_paging(q.get("Page"), q.get("PageSize"))
    page = await ctx.services.provisioning.page_numbers(
        ctx.me, account, phone_number=q.get("PhoneNumber"), friendly_name=q.get("FriendlyName"),
        sort_by_name=q.get("SortBy") == "FriendlyName",
        reverse=(q.get("Reverse") or "").lower() == "true",
        page=paging.page, page_size=paging.page_size)
    if page.page > page.num_pages:
        raise InvalidInput("")  # out of range: 400 with an empty (plain-text) body
    names = await ctx.services.provisioning.application_names(page.items)
    reps = [representations.phone_number(n, ctx.as_json, names) for n in page.items]
    uri = f"/{API_VERSION}/Accounts/{account.sid}/IncomingPhoneNumbers"
    return respond(ctx, render.paged(page, reps, uri=uri, json_key="incomingPhoneNumbers",
                                     list_tag="IncomingPhoneNumbers", xml_attributes=True,
                                     as_json=ctx.as_json))


async def create_number(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    number = await ctx.services.provisioning.create_number(ctx.me, account,
                                                           await ctx.fields(FIELDS))
    names = await ctx.services.provisioning.application_names([number])
    return respond(ctx, render.one(representations.phone_number(number, ctx.as_json, names),
                                   ctx.as_json))


async def get_number(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    number = await ctx.services.provisioning.get_number(ctx.me, account, ctx.path["sid"])
    names = await ctx.services.provisioning.application_names([number])
    return respond(ctx, render.one(representations.phone_number(number, ctx.as_json, names),
                                   ctx.as_json))


async def update_number(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    fields = await ctx.fields({k: v for k, v in FIELDS.items()
                               if k not in ("PhoneNumber", "AreaCode", "isSIP")})
    number = await ctx.services.provisioning.update_number(ctx.me, account, ctx.path["sid"],
                                                           fields)
    names = await ctx.services.provisioning.application_names([number])
    return respond(ctx, render.one(representations.phone_number(number, ctx.as_json, names),
                                   ctx.as_json))


async def delete_number(ctx: Ctx) -> web.Response:
    account = await ctx.operated()
    await ctx.services.provisioning.delete_number(ctx.me, account, ctx.path["sid"])
    return web.Response(status=204)


async def available_countries(ctx: Ctx) -> web.Response:
    await ctx.operated()
    return web.Response(body=json.dumps(["US"]).encode(), content_type="application/json")


ROUTES: list[Route] = [route("GET", "Accounts/{A}/IncomingPhoneNumbers/AvailableCountries",
                             available_countries)]
for _kind in _KINDS:
    ROUTES += [route("GET", f"Accounts/{{A}}/IncomingPhoneNumbers{_kind}", list_numbers),
               route("POST", f"Accounts/{{A}}/IncomingPhoneNumbers{_kind}", create_number)]
ROUTES += [
    route("GET", "Accounts/{A}/IncomingPhoneNumbers/{sid}", get_number),
    route("POST PUT", "Accounts/{A}/IncomingPhoneNumbers/{sid}", update_number),
    route("DELETE", "Accounts/{A}/IncomingPhoneNumbers/{sid}", delete_number),
]
