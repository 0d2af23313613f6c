"""Row <-> model mapping. sqlite3.Row never leaves the store; models never carry SQL types."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from datetime import datetime
from typing import Any

from appliance import models
from appliance.timefmt import from_storage, storage

# What storage() writes. For exactly this shape fromisoformat gives the same aware UTC
# datetime as from_storage's strptime, about 30 times faster; anything else (or a value
# fromisoformat refuses) goes through from_storage, so results and errors are unchanged.
_STORED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)


def _dt(value: str | None) -> Any:
    if not value:
        return None
    if _STORED.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return from_storage(value)


def account(r: sqlite3.Row) -> models.Account:
    return models.Account(
        sid=models.AccountSid(r["sid"]), parent_sid=r["parent_sid"],
        friendly_name=r["friendly_name"], email_address=r["email_address"], type=r["type"],
        status=models.AccountStatus(r["status"]), role=r["role"], auth_token=r["auth_token"],
        date_created=_dt(r["date_created"]), date_updated=_dt(r["date_updated"]),
        organization_sid=r["organization_sid"])


def account_values(a: models.Account) -> dict[str, Any]:
    return {"sid": a.sid, "parent_sid": a.parent_sid, "organization_sid": a.organization_sid,
            "friendly_name": a.friendly_name, "email_address": a.email_address, "type": a.type,
            "status": str(a.status), "role": a.role, "auth_token": a.auth_token,
            "date_created": storage(a.date_created), "date_updated": storage(a.date_updated)}


def client(r: sqlite3.Row) -> models.Client:
    return models.Client(
        sid=models.ClientSid(r["sid"]), account_sid=models.AccountSid(r["account_sid"]),
        friendly_name=r["friendly_name"], login=r["login"], status=int(r["status"]),
        voice_url=r["voice_url"], voice_method=r["voice_method"],
        voice_fallback_url=r["voice_fallback_url"],
        voice_fallback_method=r["voice_fallback_method"],
        voice_application_sid=r["voice_application_sid"],
        push_client_identity=r["push_client_identity"], api_version=r["api_version"],
        date_created=_dt(r["date_created"]), date_updated=_dt(r["date_updated"]),
        ha1_md5=r["ha1_md5"], ha1_sha256=r["ha1_sha256"], realm=r["realm"])


def client_values(c: models.Client) -> dict[str, Any]:
    values = dataclasses.asdict(c)
    values["date_created"] = storage(c.date_created)
    values["date_updated"] = storage(c.date_updated)
    return values


def application(r: sqlite3.Row) -> models.Application:
    return models.Application(
        sid=models.ApplicationSid(r["sid"]), account_sid=models.AccountSid(r["account_sid"]),
        friendly_name=r["friendly_name"], voice_caller_id_lookup=bool(r["voice_caller_id_lookup"]),
        rcml_url=r["rcml_url"], kind=r["kind"], api_version=r["api_version"],
        date_created=_dt(r["date_created"]), date_updated=_dt(r["date_updated"]))


def application_values(a: models.Application) -> dict[str, Any]:
    values = dataclasses.asdict(a)
    values["voice_caller_id_lookup"] = int(a.voice_caller_id_lookup)
    values["date_created"] = storage(a.date_created)
    values["date_updated"] = storage(a.date_updated)
    return values


_NUMBER_BOOLS = ("voice_caller_id_lookup", "voice_capable", "sms_capable", "mms_capable",
                 "fax_capable", "pure_sip")


def phone_number(r: sqlite3.Row) -> models.PhoneNumber:
    values: dict[str, Any] = {f.name: r[f.name] for f in dataclasses.fields(models.PhoneNumber)}
    for name in _NUMBER_BOOLS:
        values[name] = bool(values[name])
    values["date_created"] = _dt(values["date_created"])
    values["date_updated"] = _dt(values["date_updated"])
    return models.PhoneNumber(**values)


def number_values(n: models.PhoneNumber) -> dict[str, Any]:
    values = dataclasses.asdict(n)
    for name in _NUMBER_BOOLS:
        values[name] = int(values[name])
    values["date_created"] = storage(n.date_created)
    values["date_updated"] = storage(n.date_updated)
    return values


def call(r: sqlite3.Row) -> models.CallRecord:
    return models.CallRecord(
        sid=models.CallSid(r["sid"]), instance_id=r["instance_id"],
        account_sid=models.AccountSid(r["account_sid"]), parent_call_sid=r["parent_call_sid"],
        to=r["to"], from_=r["from"], phone_number_sid=r["phone_number_sid"], status=r["status"],
        start_time=_dt(r["start_time"]), end_time=_dt(r["end_time"]), duration=r["duration"],
        price=r["price"], price_unit=r["price_unit"], direction=r["direction"],
        answered_by=r["answered_by"], api_version=r["api_version"],
        forwarded_from=r["forwarded_from"], caller_name=r["caller_name"],
        conference_sid=r["conference_sid"], ring_duration=r["ring_duration"],
        date_created=_dt(r["date_created"]), date_updated=_dt(r["date_updated"]))


def call_values(c: models.CallRecord) -> dict[str, Any]:
    """The row of C. Its text is made safe to bind: a To or From taken from a SIP message
    may hold lone surrogates (the parser decodes with surrogateescape), which sqlite3
    refuses to bind, and a CDR row the store can never write is a lost call."""
    values = dataclasses.asdict(c)
    values["from"] = values.pop("from_")
    for name in ("start_time", "end_time", "date_created", "date_updated"):
        values[name] = storage(values[name]) if values[name] else None
    for name, value in values.items():
        if isinstance(value, str) and not value.isascii():
            values[name] = bindable(value)
    return values


def bindable(text: str) -> str:
    """TEXT, each lone surrogate (not encodable in UTF-8) replaced by "?"."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def sms(r: sqlite3.Row) -> models.SmsRecord:
    return models.SmsRecord(
        sid=models.SmsSid(r["sid"]), account_sid=models.AccountSid(r["account_sid"]),
        from_=r["from"], to=r["to"], body=r["body"], status=r["status"],
        direction=r["direction"], error_code=r["error_code"], error_message=r["error_message"],
        price=r["price"], price_unit=r["price_unit"], api_version=r["api_version"],
        date_sent=_dt(r["date_sent"]), date_created=_dt(r["date_created"]),
        date_updated=_dt(r["date_updated"]))


def sms_values(s: models.SmsRecord) -> dict[str, Any]:
    values = dataclasses.asdict(s)
    values["from"] = values.pop("from_")
    for name in ("date_sent", "date_created", "date_updated"):
        values[name] = storage(values[name]) if values[name] else None
    return values


def notification(r: sqlite3.Row) -> models.Notification:
    values: dict[str, Any] = {f.name: r[f.name] for f in dataclasses.fields(models.Notification)}
    for name in ("message_date", "date_created", "date_updated"):
        values[name] = _dt(values[name])
    return models.Notification(**values)


def notification_values(n: models.Notification) -> dict[str, Any]:
    values = dataclasses.asdict(n)
    for name in ("message_date", "date_created", "date_updated"):
        values[name] = storage(values[name])
    return values


def recording(r: sqlite3.Row) -> models.Recording:
    return models.Recording(
        sid=models.RecordingSid(r["sid"]), account_sid=models.AccountSid(r["account_sid"]),
        call_sid=r["call_sid"], duration=float(r["duration"]), file_path=r["file_path"],
        date_created=_dt(r["date_created"]), date_updated=_dt(r["date_updated"]))


def recording_values(rec: models.Recording) -> dict[str, Any]:
    values = dataclasses.asdict(rec)
    values["date_created"] = storage(rec.date_created)
    values["date_updated"] = storage(rec.date_updated)
    return values


def _stored_columns(model: type, leave_out: tuple[str, ...] = ()) -> str:
    names = [f.name for f in dataclasses.fields(model) if f.name not in leave_out]
    return ", ".join('"from"' if name == "from_" else f'"{name}"' for name in names)


# Stored records, for renderers that format lists straight from the table (api/listing.py):
# the select list giving a model's values in its field order, as stored (timestamps in
# storage() text, no conversion at all). Clients leave out the digest secrets, which are the
# model's last fields, so the positions of the others are still the model's.
CALL_STORED = _stored_columns(models.CallRecord)
CLIENT_STORED = _stored_columns(models.Client, leave_out=("ha1_md5", "ha1_sha256", "realm"))


COLUMNS: dict[str, frozenset[str]] = {
    "calls": frozenset({"to", "from", "status", "start_time", "end_time", "parent_call_sid",
                        "conference_sid", "date_created", "direction", "duration", "price"}),
    "sms_messages": frozenset({"to", "from", "status", "body", "direction", "price",
                               "date_created", "date_sent"}),
    "incoming_phone_numbers": frozenset({"phone_number", "friendly_name", "date_created"}),
    "notifications": frozenset({"date_created", "error_code", "request_url", "message_text",
                                "log", "call_sid", "message_date"}),
    "recordings": frozenset({"date_created", "duration", "call_sid"}),
    "conferences": frozenset({"status", "friendly_name", "date_created", "date_updated"}),
    "conference_participants": frozenset({"conference_sid", "call_sid", "connected",
                                          "date_created"}),
}
