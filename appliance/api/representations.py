"""Models -> wire representations, field by field in Restcomm's order (api-behaviour.md §8)."""

from __future__ import annotations

from collections.abc import Mapping

from appliance.api.render import F, Rep
from appliance.models import (
    API_VERSION,
    Account,
    Application,
    CallRecord,
    Client,
    Conference,
    Notification,
    Participant,
    PhoneNumber,
    Recording,
    SmsRecord,
)
from appliance.timefmt import iso, rfc2822

BASE = f"/{API_VERSION}"


def _uri(path: str, as_json: bool) -> str:
    return path + (".json" if as_json else "")


_ACCOUNT_SUBRESOURCES = (
    ("available_phone_numbers", "AvailablePhoneNumbers", "AvailablePhoneNumbers"),
    ("calls", "Calls", "Calls"),
    ("conferences", "Conferences", "Conferences"),
    ("incoming_phone_numbers", "IncomingPhoneNumbers", "IncomingPhoneNumbers"),
    ("notifications", "Notifications", "Notifications"),
    ("outgoing_caller_ids", "OutgoingCallerIds", "OutgoingCallerIds"),
    ("recordings", "Recordings", "Recordings"),
    ("sandbox", "Sandbox", "Sandbox"),
    ("sms_messages", "SMSMessages", "SMS/Messages"),
    ("transcriptions", "Transcriptions", "Transcriptions"),
)


def account(a: Account, as_json: bool) -> Rep:
    base = f"{BASE}/Accounts/{a.sid}"
    subs = Rep("SubresourceUris", [F(key, tag, _uri(f"{base}/{path}", as_json))
                                   for key, tag, path in _ACCOUNT_SUBRESOURCES])
    if as_json:
        # JSON puts type before status, and its uri is the odd /Accounts.json/AC… form.
        return Rep("Account", [
            F("sid", "", a.sid), F("organization", "", a.organization_sid),
            F("friendly_name", "", a.friendly_name), F("email_address", "", a.email_address),
            F("type", "", a.type), F("status", "", str(a.status)), F("role", "", a.role),
            F("date_created", "", rfc2822(a.date_created)),
            F("date_updated", "", rfc2822(a.date_updated)),
            F("auth_token", "", a.auth_token), F("uri", "", f"{BASE}/Accounts.json/{a.sid}"),
            F("subresource_uris", "", subs)])
    return Rep("Account", [
        F("", "Sid", a.sid), F("", "organization", a.organization_sid),
        F("", "FriendlyName", a.friendly_name), F("", "EmailAddress", a.email_address),
        F("", "Status", str(a.status)), F("", "Role", a.role), F("", "Type", a.type),
        F("", "DateCreated", rfc2822(a.date_created)),
        F("", "DateUpdated", rfc2822(a.date_updated)), F("", "AuthToken", a.auth_token),
        F("", "Uri", base), F("", "SubresourceUris", subs)])


def client(c: Client, as_json: bool) -> Rep:
    return Rep("Client", [
        F("sid", "Sid", c.sid), F("date_created", "DateCreated", rfc2822(c.date_created)),
        F("date_updated", "DateUpdated", rfc2822(c.date_updated)),
        F("account_sid", "AccountSid", c.account_sid), F("api_version", "ApiVersion",
                                                         c.api_version),
        F("friendly_name", "FriendlyName", c.friendly_name), F("login", "Login", c.login),
        F("password_algorithm", "Password_Algorithm", "MD5"),
        F("status", "Status", str(c.status)),
        F("voice_url", "VoiceUrl", c.voice_url, xml_null="omit"),
        F("voice_method", "VoiceMethod", c.voice_method),
        F("voice_fallback_url", "VoiceFallbackUrl", c.voice_fallback_url, xml_null="omit"),
        F("voice_fallback_method", "VoiceFallbackMethod", c.voice_fallback_method),
        F("voice_application_sid", "VoiceApplicationSid", c.voice_application_sid,
          xml_null="omit"),
        F("uri", "Uri", _uri(f"{BASE}/Accounts/{c.account_sid}/Clients/{c.sid}", as_json)),
        F("push_client_identity", "PushClientIdentity", c.push_client_identity,
          xml_null="omit"),
    ])


def phone_number(n: PhoneNumber, as_json: bool,
                 app_names: Mapping[str, str] | None = None) -> Rep:
    """APP_NAMES maps application SIDs to names: `voice_application_name` and
    `sms_application_name` are added when the number points at an application."""
    names = app_names or {}
    voice_name = names.get(n.voice_application_sid) if n.voice_application_sid else None
    sms_name = names.get(n.sms_application_sid) if n.sms_application_sid else None
    def url(key: str, tag: str, value: str | None) -> F:
        return F(key, tag, value, xml_null="omit", json_null=True)

    def val(key: str, tag: str, value: str | bool | None) -> F:
        return F(key, tag, value, json_null=True)

    return Rep("IncomingPhoneNumber", [
        val("sid", "Sid", n.sid), val("account_sid", "AccountSid", n.account_sid),
        val("friendly_name", "FriendlyName", n.friendly_name),
        val("phone_number", "PhoneNumber", n.phone_number),
        url("voice_url", "VoiceUrl", n.voice_url), val("voice_method", "VoiceMethod",
                                                        n.voice_method),
        url("voice_fallback_url", "VoiceFallbackUrl", n.voice_fallback_url),
        val("voice_fallback_method", "VoiceFallbackMethod", n.voice_fallback_method),
        url("status_callback", "StatusCallback", n.status_callback),
        val("status_callback_method", "StatusCallbackMethod", n.status_callback_method),
        val("voice_caller_id_lookup", "VoiceCallerIdLookup", n.voice_caller_id_lookup),
        url("voice_application_sid", "VoiceApplicationSid", n.voice_application_sid),
        F("voice_application_name", "VoiceApplicationName", voice_name, xml_null="omit"),
        val("date_created", "DateCreated", rfc2822(n.date_created)),
        val("date_updated", "DateUpdated", rfc2822(n.date_updated)),
        url("sms_url", "SmsUrl", n.sms_url), val("sms_method", "SmsMethod", n.sms_method),
        url("sms_fallback_url", "SmsFallbackUrl", n.sms_fallback_url),
        val("sms_fallback_method", "SmsFallbackMethod", n.sms_fallback_method),
        url("sms_application_sid", "SmsApplicationSid", n.sms_application_sid),
        F("sms_application_name", "SmsApplicationName", sms_name, xml_null="omit"),
        url("ussd_url", "UssdUrl", n.ussd_url), val("ussd_method", "UssdMethod", n.ussd_method),
        url("ussd_fallback_url", "UssdFallbackUrl", n.ussd_fallback_url),
        val("ussd_fallback_method", "UssdFallbackMethod", n.ussd_fallback_method),
        url("ussd_application_sid", "UssdApplicationSid", n.ussd_application_sid),
        url("refer_url", "ReferUrl", n.refer_url), val("refer_method", "ReferMethod",
                                                        n.refer_method),
        url("refer_application_sid", "ReferApplicationSid", n.refer_application_sid),
        F("capabilities", "Capabilities", Rep("Capabilities", [
            F("voice_capable", "Voice", n.voice_capable),
            F("sms_capable", "Sms", n.sms_capable),
            F("mms_capable", "Mms", n.mms_capable),
            F("fax_capable", "Fax", n.fax_capable)])),
        val("api_version", "ApiVersion", n.api_version),
        val("uri", "Uri", _uri(f"{BASE}/Accounts/{n.account_sid}/IncomingPhoneNumbers/{n.sid}",
                               as_json)),
    ])


def application(app: Application, numbers: list[PhoneNumber], as_json: bool) -> Rep:
    return Rep("Application", [
        F("sid", "Sid", app.sid), F("date_created", "DateCreated", rfc2822(app.date_created)),
        F("date_updated", "DateUpdated", rfc2822(app.date_updated)),
        F("friendly_name", "FriendlyName", app.friendly_name),
        F("account_sid", "AccountSid", app.account_sid),
        F("api_version", "ApiVersion", app.api_version),
        F("voice_caller_id_lookup", "VoiceCallerIdLookup", app.voice_caller_id_lookup),
        F("uri", "Uri", _uri(f"{BASE}/Accounts/{app.account_sid}/Applications/{app.sid}",
                             as_json)),
        F("rcml_url", "RcmlUrl", app.rcml_url, xml_null="omit"),
        F("kind", "Kind", app.kind, xml_null="omit"),
        F("numbers", "Numbers", [Rep("Number", [
            F("sid", "Sid", n.sid), F("friendly_name", "FriendlyName", n.friendly_name),
            F("phone_number", "PhoneNumber", n.phone_number),
            F("voice_application_sid", "VoiceApplicationSid", n.voice_application_sid,
              xml_null="omit"),
            F("sms_application_sid", "SmsApplicationSid", n.sms_application_sid,
              xml_null="omit"),
            F("ussd_application_sid", "UssdApplicationSid", n.ussd_application_sid,
              xml_null="omit"),
        ]) for n in numbers]),
    ])


def call(c: CallRecord, as_json: bool) -> Rep:
    path = f"{BASE}/Accounts/{c.account_sid}/Calls/{c.sid}"
    subs = Rep("SubresourceUris", [
        F("notifications", "Notifications", _uri(f"{path}/Notifications", as_json)),
        F("recordings", "Recordings", _uri(f"{path}/Recordings", as_json))])
    fields = [
        F("sid", "Sid", c.sid), F("InstanceId", "InstanceId", c.instance_id, xml_null="omit"),
        F("date_created", "DateCreated", rfc2822(c.date_created)),
        F("date_updated", "DateUpdated", rfc2822(c.date_updated)),
        F("parent_call_sid", "ParentCallSid", c.parent_call_sid),
        F("account_sid", "AccountSid", c.account_sid), F("to", "To", c.to),
        F("from", "From", c.from_), F("phone_number_sid", "PhoneNumberSid", c.phone_number_sid),
        F("status", "Status", c.status),
        F("start_time", "StartTime", iso(c.start_time) if c.start_time else None),
        F("end_time", "EndTime", iso(c.end_time) if c.end_time else None),
        F("duration", "Duration", c.duration),
        F("", "Price", c.price),  # Restcomm's JSON has no price key
        F("price_unit", "PriceUnit", c.price_unit), F("direction", "Direction", c.direction),
        F("answered_by", "AnsweredBy", c.answered_by),
        F("api_version", "ApiVersion", c.api_version),
        F("forwarded_from", "ForwardedFrom", c.forwarded_from),
        F("caller_name", "CallerName", c.caller_name), F("uri", "Uri", _uri(path, as_json)),
    ]
    if as_json:
        fields += [F("ring_duration", "", c.ring_duration), F("subresource_uris", "", subs)]
    else:
        fields += [F("", "SubresourceUris", subs), F("", "Ring_duration", c.ring_duration)]
    return Rep("Call", fields)


def sms(s: SmsRecord, as_json: bool) -> Rep:
    fields = [
        F("sid", "Sid", s.sid), F("date_created", "DateCreated", rfc2822(s.date_created)),
        F("date_updated", "DateUpdated", rfc2822(s.date_updated)),
        F("date_sent", "DateSent", iso(s.date_sent) if s.date_sent else None),
        F("account_sid", "AccountSid", s.account_sid), F("from", "From", s.from_),
        F("to", "To", s.to), F("body", "Body", s.body), F("status", "Status", s.status),
        F("direction", "Direction", s.direction),
        F("error_code", "", s.error_code), F("error_message", "", s.error_message),
    ]
    if s.error_code is not None:
        fields.append(F("", "Error", Rep("Error", [
            F("", "ErrorCode", s.error_code), F("", "ErrorMessage", s.error_message)])))
    fields += [
        F("price", "Price", s.price), F("price_unit", "PriceUnit", s.price_unit),
        F("api_version", "ApiVersion", s.api_version),
        F("uri", "Uri", _uri(f"{BASE}/Accounts/{s.account_sid}/SMS/Messages/{s.sid}", as_json)),
    ]
    return Rep("SMSMessage", fields)


def notification(n: Notification, as_json: bool) -> Rep:
    return Rep("Notification", [
        F("sid", "Sid", n.sid), F("date_created", "DateCreated", rfc2822(n.date_created)),
        F("date_updated", "DateUpdated", rfc2822(n.date_updated)),
        F("account_sid", "AccountSid", n.account_sid), F("call_sid", "CallSid", n.call_sid),
        F("api_version", "ApiVersion", API_VERSION), F("log", "Log", n.log),
        F("error_code", "ErrorCode", n.error_code), F("more_info", "MoreInfo", n.more_info),
        F("message_text", "MessageText", n.message_text),
        F("message_date", "MessageDate", iso(n.message_date)),
        F("request_url", "RequestUrl", n.request_url),
        F("request_method", "RequestMethod", n.request_method),
        F("request_variables", "RequestVariables", n.request_variables),
        F("response_headers", "ResponseHeaders", n.response_headers),
        F("response_body", "ResponseBody", n.response_body),
        F("uri", "Uri", _uri(f"{BASE}/Accounts/{n.account_sid}/Notifications/{n.sid}",
                             as_json)),
    ])


def recording(r: Recording, file_base: str, as_json: bool) -> Rep:
    return Rep("Recording", [
        F("sid", "Sid", r.sid), F("date_created", "DateCreated", rfc2822(r.date_created)),
        F("date_updated", "DateUpdated", rfc2822(r.date_updated)),
        F("account_sid", "AccountSid", r.account_sid), F("call_sid", "CallSid", r.call_sid),
        F("duration", "Duration", f"{r.duration:.1f}"),
        F("api_version", "ApiVersion", API_VERSION),
        F("uri", "Uri", _uri(f"{BASE}/Accounts/{r.account_sid}/Recordings/{r.sid}", as_json)),
        F("file_uri", "FileUri",
          f"{file_base}/restcomm/{API_VERSION}/Accounts/{r.account_sid}/Recordings/{r.sid}.wav"),
    ])


def conference(c: Conference, as_json: bool) -> Rep:
    path = f"{BASE}/Accounts/{c.account_sid}/Conferences/{c.sid}"
    return Rep("Conference", [
        F("sid", "Sid", c.sid), F("date_created", "DateCreated", rfc2822(c.date_created)),
        F("date_updated", "DateUpdated", rfc2822(c.date_updated)),
        F("account_sid", "AccountSid", c.account_sid), F("status", "Status", str(c.status)),
        F("api_version", "ApiVersion", c.api_version),
        F("friendly_name", "FriendlyName", c.friendly_name),
        F("uri", "Uri", _uri(path, as_json)),
        F("subresource_uris", "SubresourceUris", Rep("SubresourceUris", [
            F("participants", "Participants", _uri(f"{path}/Participants", as_json))])),
    ])


def participant(p: Participant, as_json: bool) -> Rep:
    path = (f"{BASE}/Accounts/{p.account_sid}/Conferences/{p.conference_sid}/Participants/"
            f"{p.call_sid}")
    return Rep("Participant", [
        F("call_sid", "CallSid", p.call_sid), F("conference_sid", "ConferenceSid",
                                                 p.conference_sid),
        F("date_created", "DateCreated", rfc2822(p.date_created)),
        F("date_updated", "DateUpdated", rfc2822(p.date_updated)),
        F("account_sid", "AccountSid", p.account_sid), F("muted", "Muted", p.muted),
        F("start_conference_on_enter", "StartConferenceOnEnter", p.start_conference_on_enter),
        F("end_conference_on_exit", "EndConferenceOnExit", p.end_conference_on_exit),
        F("uri", "Uri", _uri(path, as_json)),
    ])
