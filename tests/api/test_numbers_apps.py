"""IncomingPhoneNumbers (§8.5) and Applications (§8.6)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import xml.etree.ElementTree as ET

from appliance.app import Appliance
from tests.conftest import ADMIN_SID, Api

NUMBERS = f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers"
APPS = f"Accounts/{ADMIN_SID}/Applications"


async def test_seed_example_number(api: Api) -> None:
    status, body, _ = await api.post(f"{NUMBERS}.json", {
        "PhoneNumber": "1234", "VoiceUrl": "http://127.0.0.1:8080/restcomm/demos/hello-play.xml"})
    assert status == 200, body
    number = json.loads(body)
    assert number["phone_number"] == "+1234"
    assert number["voice_url"].endswith("hello-play.xml")
    assert number["voice_method"] == "POST" and number["sms_method"] == "POST"
    assert number["voice_fallback_url"] is None  # explicit nulls for numbers
    assert number["capabilities"] == {"voice_capable": True, "sms_capable": True,
                                      "mms_capable": False, "fax_capable": False}
    assert list(number)[:4] == ["sid", "account_sid", "friendly_name", "phone_number"]
    assert list(number)[-3:] == ["capabilities", "api_version", "uri"]


async def test_e164_normalisation_and_duplicates(api: Api) -> None:
    status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "+1 (555) 123-4567"})
    assert json.loads(body)["phone_number"] == "+15551234567"
    status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "15551234567"})
    assert status == 400 and body == "21452"
    status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "alice-desk",
                                                         "isSIP": "true"})
    assert status == 200 and json.loads(body)["phone_number"] == "alice-desk"
    status, body, _ = await api.post(f"{NUMBERS}.json", {})
    assert status == 400 and body == "Phone number can not be null."


async def test_a_number_in_another_form_of_a_provisioned_one_is_not_available(
        api: Api) -> None:
    """A sub-account cannot provision a form of the admin's number that a provider's call
    would reach first (a pure SIP number is matched as given, before the +1 form)."""
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "sub@example.com",
                                                       "Password": "Sub-Acct-pass-9"})
    assert status == 200, body
    sub = api.as_user("sub@example.com", "Sub-Acct-pass-9")
    sub_numbers = f"Accounts/{json.loads(body)['sid']}/IncomingPhoneNumbers.json"
    status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "+15550001234"})
    assert status == 200, body
    for form in ("5550001234", "15550001234", "555-000-1234"):
        status, body, _ = await sub.post(sub_numbers, {"PhoneNumber": form, "isSIP": "true"})
        assert (status, body) == (400, "21452"), form
    # Without isSIP, 5550001234 is +5550001234 (country code 55): another number.
    status, body, _ = await sub.post(sub_numbers, {"PhoneNumber": "5550001234"})
    assert status == 200 and json.loads(body)["phone_number"] == "+5550001234", body
    # The other way round: a SIP 5550009999 first makes +15550009999 unavailable.
    status, body, _ = await sub.post(sub_numbers, {"PhoneNumber": "5550009999", "isSIP": "true"})
    assert status == 200, body
    status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "+15550009999"})
    assert (status, body) == (400, "21452")


async def test_parallel_provisions_of_one_number_answer_as_sequential_ones(api: Api) -> None:
    # The UNIQUE index on the phone number caught requests racing past the duplicate check:
    # a 500 instead of the duplicate's 400 21452.
    for round_ in range(3):
        answers = await asyncio.gather(*(
            api.post(f"{NUMBERS}.json", {"PhoneNumber": f"+1555000{round_}"})
            for _ in range(10)))
        assert sorted(status for status, _, _ in answers) == [200] + [400] * 9, answers
        assert {body for status, body, _ in answers if status == 400} == {"21452"}


async def test_local_tollfree_mobile_factories(api: Api) -> None:
    for i, kind in enumerate(("Local", "TollFree", "Mobile")):
        status, body, _ = await api.post(f"{NUMBERS}/{kind}.json",
                                         {"PhoneNumber": f"+1555000000{i}"})
        assert status == 200, body
    status, body, _ = await api.get(f"{NUMBERS}/Local.json")
    assert json.loads(body)["total"] == 3
    status, body, _ = await api.get(f"{NUMBERS}/AvailableCountries")
    assert json.loads(body) == ["US"]


async def test_update_and_delete_number(api: Api) -> None:
    status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "+15557654321",
                                                         "SmsUrl": "http://127.0.0.1:9/sms"})
    sid = json.loads(body)["sid"]
    status, body, _ = await api.request("PUT", f"{NUMBERS}/{sid}.json",
                                        data={"SmsUrl": "", "FriendlyName": "Main line",
                                              "VoiceCallerIdLookup": "true"})
    number = json.loads(body)
    assert number["sms_url"] is None and number["friendly_name"] == "Main line"
    assert number["voice_caller_id_lookup"] is True
    status, body, _ = await api.request("DELETE", f"{NUMBERS}/{sid}")
    assert status == 204
    status, _, _ = await api.request("DELETE", f"{NUMBERS}/{sid}")
    assert status == 404
    status, _, _ = await api.post(f"{NUMBERS}/PN00000000000000000000000000000000",
                                  {"FriendlyName": "x"})
    assert status == 404


async def test_number_list_filters_and_sorting(api: Api) -> None:
    for n, name in (("+15550000003", "Zulu"), ("+15550000001", "Alpha"),
                    ("+15550000002", "Mike")):
        await api.post(f"{NUMBERS}.json", {"PhoneNumber": n, "FriendlyName": name})
    status, body, _ = await api.get(f"{NUMBERS}.json")
    assert [n["phone_number"] for n in json.loads(body)["incomingPhoneNumbers"]] == \
        ["+15550000001", "+15550000002", "+15550000003"]
    status, body, _ = await api.get(f"{NUMBERS}.json", params={"SortBy": "FriendlyName",
                                                                "Reverse": "true"})
    assert [n["friendly_name"] for n in json.loads(body)["incomingPhoneNumbers"]] == \
        ["Zulu", "Mike", "Alpha"]
    status, body, _ = await api.get(f"{NUMBERS}.json", params={"FriendlyName": "ik"})
    assert [n["friendly_name"] for n in json.loads(body)["incomingPhoneNumbers"]] == ["Mike"]
    status, body, _ = await api.get(f"{NUMBERS}.json", params={"PhoneNumber": "0003"})
    assert json.loads(body)["total"] == 1
    status, body, _ = await api.get(NUMBERS)
    holder = ET.fromstring(body).find("IncomingPhoneNumbers")
    assert holder is not None and holder.get("total") == "3"
    assert holder.get("previouspageuri") == "null"


async def test_application_crud_with_bound_numbers(api: Api) -> None:
    status, body, _ = await api.post(f"{APPS}.json", {})
    assert status == 400 and body == "Friendly name can not be null."
    status, body, _ = await api.post(f"{APPS}.json", {"FriendlyName": "IVR", "Kind": "voice",
                                                      "RcmlUrl": "http://127.0.0.1:9/ivr.xml"})
    app = json.loads(body)
    assert list(app) == ["sid", "date_created", "date_updated", "friendly_name", "account_sid",
                         "api_version", "voice_caller_id_lookup", "uri", "rcml_url", "kind",
                         "numbers"]
    status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "+15559990000",
                                                         "VoiceApplicationSid": app["sid"]})
    assert status == 200, body
    number = json.loads(body)
    assert number["voice_application_name"] == "IVR"
    assert "sms_application_name" not in number
    status, body, _ = await api.get(f"{APPS}/{app['sid']}.json")
    got = json.loads(body)
    assert [n["phone_number"] for n in got["numbers"]] == ["+15559990000"]
    status, body, _ = await api.post(f"{APPS}/{app['sid']}.json", {"Kind": "sms"})
    assert json.loads(body)["kind"] == "sms"
    status, body, _ = await api.post(f"{APPS}/{app['sid']}.json", {"Kind": "fax"})
    assert status == 400
    status, body, _ = await api.get(APPS)
    assert "<Applications>" in body and "<Numbers>" in body
    status, _, _ = await api.request("DELETE", f"{APPS}/{app['sid']}")
    assert status == 200
    status, _, _ = await api.request("DELETE", f"{APPS}/{app['sid']}")
    assert status == 200  # Restcomm: 200 even when absent
    status, _, _ = await api.get(f"{APPS}/{app['sid']}")
    assert status == 404


CLIENTS = f"Accounts/{ADMIN_SID}/Clients"
NO_APP = "AP" + "0" * 32


async def make_app(api: Api, name: str, account: str = ADMIN_SID) -> str:
    status, body, _ = await api.post(f"Accounts/{account}/Applications.json",
                                     {"FriendlyName": name,
                                      "RcmlUrl": "http://127.0.0.1:9/app.xml"})
    assert status == 200, body
    return str(json.loads(body)["sid"])


async def test_deleting_an_application_clears_every_reference_to_it(
        api: Api, appliance: Appliance) -> None:
    # The numbers and Clients using a deleted application kept its SID: an inbound SMS or
    # call then found no application and went nowhere, while the API showed the SID.
    app, other = await make_app(api, "IVR"), await make_app(api, "Other")
    status, body, _ = await api.post(f"{NUMBERS}.json", {
        "PhoneNumber": "+15559990001", "VoiceUrl": "http://127.0.0.1:9/own.xml",
        "VoiceApplicationSid": app, "SmsApplicationSid": app, "UssdApplicationSid": app,
        "ReferApplicationSid": app, "SmsFallbackUrl": "http://127.0.0.1:9/fallback"})
    assert status == 200, body
    using = json.loads(body)["sid"]
    status, body, _ = await api.post(f"{NUMBERS}.json", {
        "PhoneNumber": "+15559990002", "VoiceApplicationSid": other,
        "SmsApplicationSid": app})
    assert status == 200, body
    mixed = json.loads(body)["sid"]
    status, body, _ = await api.post(f"{CLIENTS}.json", {
        "Login": "ivr-user", "Password": "Pbx-edge-7", "VoiceApplicationSid": app})
    assert status == 200, body
    client = json.loads(body)["sid"]
    # The SIP side's cached view of them (what calls are routed by) is read before...
    directory = appliance.sip_directory
    user, line = await directory.user("ivr-user"), await directory.number("+15559990001")
    assert user is not None and user.voice_application_sid == app
    assert line is not None and line.voice_application_sid == app

    status, _, _ = await api.request("DELETE", f"{APPS}/{app}")
    assert status == 200
    # ...and after the delete: it no longer names the application either.
    user, line = await directory.user("ivr-user"), await directory.number("+15559990001")
    assert user is not None and user.voice_application_sid is None
    assert line is not None and line.voice_application_sid is None

    status, body, _ = await api.get(f"{NUMBERS}/{using}.json")
    number = json.loads(body)
    for key in ("voice_application_sid", "sms_application_sid", "ussd_application_sid",
                "refer_application_sid"):
        assert number[key] is None, key
    assert "voice_application_name" not in number and "sms_application_name" not in number
    assert number["voice_url"] == "http://127.0.0.1:9/own.xml"  # its own URLs are kept
    assert number["sms_fallback_url"] == "http://127.0.0.1:9/fallback"
    status, body, _ = await api.get(f"{NUMBERS}/{mixed}.json")
    number = json.loads(body)
    assert number["sms_application_sid"] is None
    assert number["voice_application_sid"] == other  # another application's stays
    assert number["voice_application_name"] == "Other"
    status, body, _ = await api.get(f"{CLIENTS}/{client}.json")
    assert status == 200 and "voice_application_sid" not in json.loads(body)
    status, body, _ = await api.get(f"{APPS}/{other}.json")
    assert [n["sid"] for n in json.loads(body)["numbers"]] == [mixed]


async def test_an_application_sid_naming_no_application_of_the_account_is_400(
        api: Api) -> None:
    # Accepted with 200 before: the number or Client then silently had no application.
    status, body, _ = await api.post("Accounts.json", {"EmailAddress": "kid@example.com",
                                                       "Password": "Pbx-edge-7"})
    assert status == 200, body
    theirs = await make_app(api, "Child app", json.loads(body)["sid"])
    ours = await make_app(api, "Ours")
    for sid in (NO_APP, theirs):  # another account's application is answered as absent
        for wire in ("VoiceApplicationSid", "SmsApplicationSid", "UssdApplicationSid",
                     "ReferApplicationSid"):
            status, body, _ = await api.post(f"{NUMBERS}.json",
                                             {"PhoneNumber": "+15559990003", wire: sid})
            assert (status, body) == (
                400, f"{wire} {sid} is not an application of this account"), wire
        status, body, _ = await api.post(f"{CLIENTS}.json", {
            "Login": "nobody", "Password": "Pbx-edge-7", "VoiceApplicationSid": sid})
        assert (status, body) == (
            400, f"VoiceApplicationSid {sid} is not an application of this account")
    status, body, _ = await api.get(f"{NUMBERS}.json")
    assert json.loads(body)["total"] == 0  # nothing was created
    status, body, _ = await api.get(f"{CLIENTS}.json")
    assert "nobody" not in [c["login"] for c in json.loads(body)]

    status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "+15559990003",
                                                         "SmsApplicationSid": ours})
    assert status == 200, body
    number = json.loads(body)["sid"]
    status, body, _ = await api.post(f"{CLIENTS}.json", {
        "Login": "somebody", "Password": "Pbx-edge-7", "VoiceApplicationSid": ours})
    assert status == 200, body
    client = json.loads(body)["sid"]
    status, body, _ = await api.request("PUT", f"{NUMBERS}/{number}.json",
                                        data={"SmsApplicationSid": NO_APP,
                                              "FriendlyName": "renamed"})
    assert (status, body) == (400, f"SmsApplicationSid {NO_APP} is not an application of "
                                   "this account")
    status, body, _ = await api.post(f"{CLIENTS}/{client}.json",
                                     {"VoiceApplicationSid": theirs})
    assert (status, body) == (400, f"VoiceApplicationSid {theirs} is not an application of "
                                   "this account")
    status, body, _ = await api.get(f"{NUMBERS}/{number}.json")
    assert json.loads(body)["sms_application_sid"] == ours  # unchanged
    assert json.loads(body)["friendly_name"] == "+15559990003"
    status, body, _ = await api.get(f"{CLIENTS}/{client}.json")
    assert json.loads(body)["voice_application_sid"] == ours
    # An empty value still removes the application.
    status, body, _ = await api.post(f"{NUMBERS}/{number}.json", {"SmsApplicationSid": ""})
    assert status == 200 and json.loads(body)["sms_application_sid"] is None


async def test_a_call_to_a_number_whose_application_is_missing_runs_its_fallback(
        api: Api, appliance: Appliance) -> None:
    # A VoiceApplicationSid an older version kept after deleting its application (planted
    # in the database): the call ran nothing and no Notification said why.
    status, body, _ = await api.post(f"{NUMBERS}.json", {
        "PhoneNumber": "+15559990004", "VoiceFallbackUrl": "http://127.0.0.1:9/fallback"})
    assert status == 200, body
    stored = await appliance.store.get_number(json.loads(body)["sid"])
    assert stored is not None
    dangling = dataclasses.replace(stored, voice_application_sid=NO_APP)
    await appliance.store.update_number(dangling)
    app = await appliance.calls.apps.number_app(dangling)
    assert app is not None and app.url == "http://127.0.0.1:9/fallback"
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    [note] = json.loads(body)["notifications"]
    assert note["error_code"] == 21218 and note["log"] == 1
    assert NO_APP in note["message_text"] and "+15559990004" in note["message_text"]
    # Without a fallback the call runs no app, and the Notification is an error.
    await appliance.store.update_number(dataclasses.replace(dangling, voice_fallback_url=None))
    assert await appliance.calls.apps.number_app(
        dataclasses.replace(dangling, voice_fallback_url=None)) is None
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    notes = json.loads(body)["notifications"]
    assert len(notes) == 2 and {n["log"] for n in notes} == {0, 1}
    # Once a minute for the same number, application and outcome, not for every call
    # (which anyone can place): the calls still run their fallback, or nothing.
    for _ in range(5):
        await appliance.calls.apps.number_app(dangling)
        await appliance.calls.apps.number_app(
            dataclasses.replace(dangling, voice_fallback_url=None))
    status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Notifications.json")
    assert len(json.loads(body)["notifications"]) == 2


async def test_a_webhook_url_without_a_host_is_refused_when_given(api: Api) -> None:
    # `http://` or `http://[::1` passed the old prefix check and failed only when requested,
    # as an 11200 Notification at the first call or message to the number.
    for bad in ("http://", "http://[::1", "https:///path", "http://a b/x", "ftp://host/x",
                "http://xn--a/", "http://xn--/"):
        status, body, _ = await api.post(f"{NUMBERS}.json", {"PhoneNumber": "+15550177",
                                                             "SmsUrl": bad})
        assert status == 400, (bad, body)
        assert "SmsUrl must be an http:// or https:// URL with a host" in body
        status, body, _ = await api.post(f"{APPS}.json", {"FriendlyName": "x", "RcmlUrl": bad})
        assert status == 400 and "RcmlUrl must be" in body, (bad, body)
        status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls.json", {
            "From": "+1", "To": "client:nobody", "Url": bad})
        assert status == 400 and "Url must be" in body, (bad, body)
    status, body, _ = await api.post(f"{NUMBERS}.json", {
        "PhoneNumber": "+15550177", "SmsUrl": "HTTP://[::1]:8080/sms", "VoiceUrl":
        "https://app.example.com/voice?x=1"})
    assert status == 200, body
