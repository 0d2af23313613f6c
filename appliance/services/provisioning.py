"""Clients, incoming phone numbers and applications of an account.

Fields arrive as snake_case strings (the API maps Restcomm's parameter names); this module
validates them, applies Restcomm's defaults and rules, and stores models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from appliance import passwords
from appliance.errors import Conflict, Duplicate, Forbidden, InvalidInput, NotFound
from appliance.models import (
    API_VERSION,
    Account,
    AccountSid,
    Application,
    ApplicationSid,
    Client,
    ClientSid,
    Page,
    PhoneNumber,
    PhoneNumberSid,
    is_sid_shaped,
    md5_hex,
    mint_sid,
)
from appliance.queries import Condition, ListQuery
from appliance.services.access import Action, require
from appliance.services.ports import StoreProtocol
from appliance.services.urls import check_http_url
from appliance.timefmt import storage

logger = logging.getLogger(__name__)

MAX_NAME = 255
MAX_URL = 2048
MAX_LOGIN = 64
MAX_PASSWORD = 128
# RFC 2396 userinfo characters minus ":" (it separates user and password in a URI).
_USERINFO = re.compile(r"^(?:[A-Za-z0-9\-_.!~*'();&=+$,]|%[0-9A-Fa-f]{2})+$")
_HTTP_METHODS = ("GET", "POST")
# What Java's Integer.parseInt takes: Restcomm's test of a numeric Client Status.
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")
# Restcomm's "number not available" answer: 400 with the bare Twilio code as the body.
_NUMBER_TAKEN = "21452"
# The application SIDs an IncomingPhoneNumber may carry: (field, wire name).
_NUMBER_APP_SIDS = (("voice_application_sid", "VoiceApplicationSid"),
                    ("sms_application_sid", "SmsApplicationSid"),
                    ("ussd_application_sid", "UssdApplicationSid"),
                    ("refer_application_sid", "ReferApplicationSid"))


def _url(field: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    return check_http_url(field, value)


def _method(field: str, value: str | None, default: str = "POST") -> str:
    if value is None or value == "":
        return default
    upper = value.upper()
    if upper not in _HTTP_METHODS:
        raise InvalidInput(f"{field} must be GET or POST")
    return upper


def _name(field: str, value: str | None, default: str) -> str:
    if value is None or value == "":
        return default
    if len(value) > MAX_NAME:
        raise InvalidInput(f"{field} is longer than {MAX_NAME} characters")
    return value


def _bool(field: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidInput(f"{field} must be true or false")


def _app_sid(field: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not is_sid_shaped(value, "AP"):
        raise InvalidInput(f"{field} {value} is not a valid application SID")
    return value


def digest_secrets(login: str, realm: str, password: str) -> tuple[str, str]:
    """HA1 for MD5 and SHA-256 digest; computed only here, where the plaintext exists."""
    a1 = f"{login}:{realm}:{password}"
    return md5_hex(a1), hashlib.sha256(a1.encode()).hexdigest()


def normalize_number(raw: str) -> str:
    """`+` and digits when RAW looks like a phone number; otherwise RAW unchanged."""
    compact = re.sub(r"[\s\-.()]", "", raw)
    if re.fullmatch(r"\+?[0-9]{1,15}", compact):
        return "+" + compact.lstrip("+")
    return raw


def number_forms(dialled: str) -> list[str]:
    """The IncomingPhoneNumbers a dialled number may be, in the order they are tried
    (api-behaviour.md §8.5, docs/gateways.md): as given; its US E.164 form (``+1`` added to
    10 digits, ``+`` to 11 digits starting with 1, a ``+`` number as it is); with the ``+``
    added or removed. So a provider's ``5550001234`` is ``+15550001234`` before it is
    ``+5550001234`` (country code 55)."""
    compact = re.sub(r"[\s\-.()]", "", dialled)
    digits = compact[1:] if compact.startswith("+") else compact
    if not re.fullmatch(r"[0-9]{1,32}", digits):
        return [dialled]  # a login ("bob"), a SIP user: no other form
    if compact.startswith("+"):
        us = compact
    elif len(digits) == 10:
        us = "+1" + digits
    elif len(digits) == 11 and digits.startswith("1"):
        us = "+" + digits
    else:
        us = ""
    forms = [dialled, us, "+" + digits, digits]
    return [form for form in dict.fromkeys(forms) if form]


def _numbers_sharing_a_form(number: str) -> list[str]:
    """Every number some dialled number would match as NUMBER too (`number_forms`): a number
    must not be provisioned next to one of them, or a call meant for one could be taken by
    the other (``5550001234`` as a pure SIP number would take the provider's calls for
    ``+15550001234``, tried first as given)."""
    related: list[str] = []
    for form in number_forms(number):
        related += [form, form[1:] if form.startswith("+") else "+" + form]
        us = re.fullmatch(r"\+1([0-9]{10})", form)
        if us:  # the forms whose US E.164 form this is
            related += [us[1], "1" + us[1]]
    return list(dict.fromkeys(related))


class ProvisioningService:
    def __init__(self, store: StoreProtocol, clock: Callable[[], datetime],
                 realm: Callable[[], str]) -> None:
        self._store = store
        self._clock = clock
        self._realm = realm
        # Called after any change to a Client, with the logins it concerns (its old and new
        # login if it was renamed): the SIP directory reads those Clients again, the
        # registrar drops the bindings of removed or disabled ones. Called after a change
        # to an IncomingPhoneNumber: only the directory's numbers are read again.
        self.on_clients_change: list[Callable[[Collection[str]], None]] = []
        self.on_numbers_change: list[Callable[[], None]] = []
        self._numbers_lock = asyncio.Lock()

    def _changed(self, *clients: Client) -> None:
        logins = {client.login for client in clients}
        for callback in self.on_clients_change:
            callback(logins)

    def _numbers_changed(self) -> None:
        for callback in self.on_numbers_change:
            callback()

    # -- clients -----------------------------------------------------------------------------

    async def list_clients(self, actor: Account, account: Account) -> list[Client]:
        require(actor, Action.READ, "Clients")
        return await self._store.list_clients(account.sid)

    async def clients_by_login(self, actor: Account, account_sids: Sequence[str]
                               ) -> dict[str, Client]:
        """The Clients of the accounts ACCOUNT_SIDS (which the caller scoped), by login."""
        require(actor, Action.READ, "Clients")
        return {client.login: client for sid in account_sids
                for client in await self._store.list_clients(sid)}

    async def list_clients_stored(self, actor: Account, account: Account
                                  ) -> list[Sequence[Any]]:
        """list_clients with each Client as its stored values in model field order, without
        the digest secrets and with timestamps as storage text (Store.list_clients_stored)."""
        require(actor, Action.READ, "Clients")
        return await self._store.list_clients_stored(account.sid)

    async def get_client(self, actor: Account, account: Account, sid: str) -> Client:
        require(actor, Action.READ, "Clients")
        return await self._owned_client(account, sid)

    async def _owned_client(self, account: Account, sid: str) -> Client:
        client = await self._store.get_client(sid) if is_sid_shaped(sid, "CL") else None
        if client is None:
            raise NotFound(f"The client {sid} was not found")
        if client.account_sid != account.sid:
            raise Forbidden("The client belongs to another account")
        return client

    def _check_login(self, login: str | None) -> str:
        if login is None or login == "":
            raise InvalidInput("Login can not be null.")
        if len(login) > MAX_LOGIN:
            raise InvalidInput(f"Login is longer than {MAX_LOGIN} characters")
        if not _USERINFO.fullmatch(login) or any(c in login for c in "?=@"):
            raise InvalidInput(f"Login {login} contains invalid character(s)")
        return login

    def _check_password(self, password: str, weak_as_json: bool) -> None:
        if len(password) > MAX_PASSWORD:
            raise InvalidInput(f"Password is longer than {MAX_PASSWORD} characters")
        if not passwords.is_strong(password):
            raise InvalidInput("Password too weak", json_message=weak_as_json)

    @staticmethod
    def _status(value: str | None, *, creating: bool) -> int | None:
        """Status as 0 (disabled) or 1 (enabled); None to keep the default (create only).

        On create, Restcomm silently ignores a non-numeric Status (the client is enabled),
        and api-behaviour.md §8.2 keeps that. Any other value is 400, as D4 answers what
        Restcomm would crash on (its update parses the value unguarded) or store without
        meaning (the seeds: "0 for disabled and 1 for enabled"): an admin who sent
        `Status=false` must not believe the phone is cut off."""
        text = (value or "").strip()
        if creating and not _INTEGER.fullmatch(text):
            return None
        if _INTEGER.fullmatch(text) and int(text) in (0, 1):
            return int(text)
        raise InvalidInput(f"Status must be 0 (disabled) or 1 (enabled), not {value!r}")

    async def create_client(self, actor: Account, account: Account,
                            fields: Mapping[str, str]) -> Client:
        require(actor, Action.CREATE, "Clients")
        login = self._check_login(fields.get("login"))
        password = fields.get("password")
        if password is None or password == "":
            raise InvalidInput("Password can not be null.")
        await self._refuse_taken_login(account, login)
        self._check_password(password, weak_as_json=True)
        client = self._new_client(account, login, password, fields)
        await self._check_app(account, "VoiceApplicationSid", client.voice_application_sid)
        try:
            await self._store.insert_client(client)
        except Duplicate:
            # Another request took the login since the check above: its answer, not a 500.
            await self._refuse_taken_login(account, login)
            raise
        self._changed(client)
        logger.info("- client %s (%s) created in %s", client.sid, login, account.sid)
        return client

    async def _refuse_taken_login(self, account: Account, login: str) -> None:
        existing = await self._store.get_client_by_login(login)
        if existing is not None:
            if existing.account_sid == account.sid:
                raise Conflict("A client with the same login already exists in this account.")
            raise Conflict("A client with the same name was already created by another account. "
                           "Please, choose a different name and try again.")

    def _new_client(self, account: Account, login: str, password: str,
                    fields: Mapping[str, str]) -> Client:
        now = self._clock()
        realm = self._realm()
        ha1_md5, ha1_sha256 = digest_secrets(login, realm, password)
        sid = ClientSid(mint_sid("CL"))
        push = sid if _bool("IsPushEnabled", fields.get("is_push_enabled"), False) else None
        status = self._status(fields.get("status"), creating=True)
        return Client(
            sid=sid, account_sid=account.sid,
            friendly_name=_name("FriendlyName", fields.get("friendly_name"), login),
            login=login, status=status if status is not None else 1,
            voice_url=_url("VoiceUrl", fields.get("voice_url")),
            voice_method=_method("VoiceMethod", fields.get("voice_method")),
            voice_fallback_url=_url("VoiceFallbackUrl", fields.get("voice_fallback_url")),
            voice_fallback_method=_method("VoiceFallbackMethod",
                                          fields.get("voice_fallback_method")),
            voice_application_sid=_app_sid("VoiceApplicationSid",
                                           fields.get("voice_application_sid")),
            push_client_identity=push,
            api_version=API_VERSION, date_created=now, date_updated=now,
            ha1_md5=ha1_md5, ha1_sha256=ha1_sha256, realm=realm)

    async def update_client(self, actor: Account, account: Account, sid: str,
                            fields: Mapping[str, str]) -> Client:
        require(actor, Action.MODIFY, "Clients")
        client = await self._owned_client(account, sid)
        changes: dict[str, Any] = {}
        if "friendly_name" in fields:
            changes["friendly_name"] = _name("FriendlyName", fields["friendly_name"],
                                             client.friendly_name)
        if "status" in fields:
            changes["status"] = self._status(fields["status"], creating=False)
        if "password" in fields:
            self._check_password(fields["password"], weak_as_json=True)
            realm = self._realm()
            changes["ha1_md5"], changes["ha1_sha256"] = digest_secrets(
                client.login, realm, fields["password"])
            changes["realm"] = realm
        for key, wire in (("voice_url", "VoiceUrl"), ("voice_fallback_url", "VoiceFallbackUrl")):
            if key in fields:
                changes[key] = _url(wire, fields[key])
        for key, wire in (("voice_method", "VoiceMethod"),
                          ("voice_fallback_method", "VoiceFallbackMethod")):
            if key in fields:
                changes[key] = _method(wire, fields[key], getattr(client, key))
        if "voice_application_sid" in fields:
            changes["voice_application_sid"] = _app_sid("VoiceApplicationSid",
                                                        fields["voice_application_sid"])
            await self._check_app(account, "VoiceApplicationSid",
                                  changes["voice_application_sid"])
        if "is_push_enabled" in fields:
            enabled = _bool("IsPushEnabled", fields["is_push_enabled"], False)
            changes["push_client_identity"] = client.sid if enabled else None
        updated = dataclasses.replace(client, **changes, date_updated=self._clock())
        await self._store.update_client(updated)
        self._changed(client, updated)
        return updated

    async def delete_client(self, actor: Account, account: Account, sid: str) -> None:
        require(actor, Action.DELETE, "Clients")
        client = await self._owned_client(account, sid)
        await self._store.delete_client(client.sid)
        self._changed(client)

    # LinkedClients: the SIP client Restcomm creates with each account (api-behaviour §8.1).

    async def create_linked(self, account: Account, login: str, password: str) -> None:
        if not _USERINFO.fullmatch(login) or len(login) > MAX_LOGIN:
            logger.info("- no linked client for %s: %r is not a valid login", account.sid, login)
            return
        if await self._store.get_client_by_login(login) is not None:
            return
        client = self._new_client(account, login, password,
                                  {"friendly_name": account.friendly_name})
        try:
            await self._store.insert_client(client)
        except Duplicate:
            return  # created meanwhile by another request: skipped, as when it existed
        self._changed(client)

    async def sync_linked(self, account: Account, login: str, password: str | None) -> None:
        client = await self._linked_client(account, login)
        if client is None:
            return
        changes: dict[str, Any] = {"friendly_name": account.friendly_name}
        if password is not None:
            realm = self._realm()
            changes["ha1_md5"], changes["ha1_sha256"] = digest_secrets(client.login, realm,
                                                                       password)
            changes["realm"] = realm
        updated = dataclasses.replace(client, **changes, date_updated=self._clock())
        await self._store.update_client(updated)
        self._changed(client, updated)

    async def _linked_client(self, account: Account, login: str) -> Client | None:
        """ACCOUNT's linked Client, named LOGIN (its email's local part) but in the case the
        email was first typed in: the account keeps its email lower-cased, the Client's login
        (which digest compares exactly) keeps it as given. None when there is none, or when
        several of the account's logins differ from LOGIN only in case."""
        client = await self._store.get_client_by_login(login)
        if client is not None and client.account_sid == account.sid:
            return client
        wanted = login.casefold()
        found = [c for c in await self._store.list_clients(account.sid)
                 if c.login.casefold() == wanted]
        return found[0] if len(found) == 1 else None

    # -- applications ------------------------------------------------------------------------

    async def list_applications(self, actor: Account, account: Account
                                ) -> list[tuple[Application, list[PhoneNumber]]]:
        require(actor, Action.READ, "Applications")
        apps = await self._store.list_applications(account.sid)
        return [(app, await self._store.numbers_using_application(app.sid)) for app in apps]

    async def get_application(self, actor: Account, account: Account, sid: str
                              ) -> tuple[Application, list[PhoneNumber]]:
        require(actor, Action.READ, "Applications")
        app = await self._owned_application(account, sid)
        return app, await self._store.numbers_using_application(app.sid)

    async def _check_app(self, account: Account, wire_name: str, sid: str | None) -> None:
        """400 unless SID (when set) is an application of ACCOUNT, as Twilio answers: a
        reference to nothing would leave the number or Client silently without its app."""
        if sid is None:
            return
        app = await self._store.get_application(sid)
        if app is None or app.account_sid != account.sid:
            # Another account's application is answered as absent: no hint it exists.
            raise InvalidInput(f"{wire_name} {sid} is not an application of this account")

    async def _owned_application(self, account: Account, sid: str) -> Application:
        app = await self._store.get_application(sid) if is_sid_shaped(sid, "AP") else None
        if app is None:
            raise NotFound(f"The application {sid} was not found")
        if app.account_sid != account.sid:
            raise Forbidden("The application belongs to another account")
        return app

    @staticmethod
    def _kind(value: str | None, default: str | None) -> str | None:
        if value is None or value == "":
            return default
        if value not in ("voice", "sms", "ussd"):
            raise InvalidInput("Kind must be voice, sms or ussd")
        return value

    async def create_application(self, actor: Account, account: Account,
                                 fields: Mapping[str, str]) -> Application:
        require(actor, Action.CREATE, "Applications")
        name = fields.get("friendly_name")
        if not name:
            raise InvalidInput("Friendly name can not be null.")
        now = self._clock()
        app = Application(
            sid=ApplicationSid(mint_sid("AP")), account_sid=account.sid,
            friendly_name=_name("FriendlyName", name, name),
            voice_caller_id_lookup=_bool("VoiceCallerIdLookup",
                                         fields.get("voice_caller_id_lookup"), False),
            rcml_url=_url("RcmlUrl", fields.get("rcml_url")),
            kind=self._kind(fields.get("kind"), None), api_version=API_VERSION,
            date_created=now, date_updated=now)
        await self._store.insert_application(app)
        return app

    async def update_application(self, actor: Account, account: Account, sid: str,
                                 fields: Mapping[str, str]) -> Application:
        require(actor, Action.MODIFY, "Applications")
        app = await self._owned_application(account, sid)
        changes: dict[str, Any] = {}
        if "friendly_name" in fields:
            changes["friendly_name"] = _name("FriendlyName", fields["friendly_name"],
                                             app.friendly_name)
        if "voice_caller_id_lookup" in fields:
            changes["voice_caller_id_lookup"] = _bool(
                "VoiceCallerIdLookup", fields["voice_caller_id_lookup"],
                app.voice_caller_id_lookup)
        if "rcml_url" in fields:
            changes["rcml_url"] = _url("RcmlUrl", fields["rcml_url"])
        if "kind" in fields:
            changes["kind"] = self._kind(fields["kind"], app.kind)
        updated = dataclasses.replace(app, **changes, date_updated=self._clock())
        await self._store.update_application(updated)
        return updated

    async def delete_application(self, actor: Account, account: Account, sid: str) -> None:
        # Restcomm checks Modify (not Delete) here and answers 200 even when absent.
        require(actor, Action.MODIFY, "Applications")
        app = await self._store.get_application(sid) if is_sid_shaped(sid, "AP") else None
        if app is None:
            return
        if app.account_sid != account.sid:
            raise Forbidden("The application belongs to another account")
        # Twilio's rule: the numbers and Clients using it fall back to their own URLs.
        numbers, logins = await self._store.delete_application(app.sid,
                                                               storage(self._clock()))
        if numbers:
            self._numbers_changed()
        if logins:
            for callback in self.on_clients_change:
                callback(set(logins))
        logger.info("- application %s deleted from %s (%d number(s), %d client(s) no longer "
                    "use it)", app.sid, account.sid, numbers, len(logins))

    # -- incoming phone numbers ----------------------------------------------------------------

    async def application_names(self, numbers: list[PhoneNumber]) -> dict[str, str]:
        """Names of the applications these numbers point at (for their representation)."""
        sids = {s for n in numbers for s in (n.voice_application_sid, n.sms_application_sid)
                if s}
        names: dict[str, str] = {}
        for sid in sids:
            app = await self._store.get_application(sid)
            if app is not None:
                names[sid] = app.friendly_name
        return names

    async def page_numbers(self, actor: Account, account: Account, phone_number: str | None,
                           friendly_name: str | None, sort_by_name: bool, reverse: bool,
                           page: int, page_size: int) -> Page[PhoneNumber]:
        require(actor, Action.READ, "IncomingPhoneNumbers")
        conditions = []
        if phone_number:
            conditions.append(Condition("phone_number", "like", f"%{phone_number}%"))
        if friendly_name:
            conditions.append(Condition("friendly_name", "like", f"%{friendly_name}%"))
        column = "friendly_name" if sort_by_name else "phone_number"
        return await self._store.page_numbers(ListQuery(
            account_sids=(account.sid,), conditions=tuple(conditions),
            order=((column, reverse),), page=page, page_size=page_size))

    async def get_number(self, actor: Account, account: Account, sid: str) -> PhoneNumber:
        require(actor, Action.READ, "IncomingPhoneNumbers")
        return await self._owned_number(account, sid)

    async def _owned_number(self, account: Account, sid: str) -> PhoneNumber:
        number = await self._store.get_number(sid) if is_sid_shaped(sid, "PN") else None
        if number is None:
            raise NotFound(f"The phone number {sid} was not found")
        if number.account_sid != account.sid:
            raise Forbidden("The phone number belongs to another account")
        return number

    async def create_number(self, actor: Account, account: Account,
                            fields: Mapping[str, str]) -> PhoneNumber:
        require(actor, Action.CREATE, "IncomingPhoneNumbers")
        raw = fields.get("phone_number") or fields.get("area_code")
        if not raw:
            raise InvalidInput("Phone number can not be null.")
        if len(raw) > 64 or any(ord(c) < 32 for c in raw):
            raise InvalidInput("PhoneNumber must be at most 64 printable characters")
        pure_sip = _bool("isSIP", fields.get("is_sip"), False)
        number_text = raw if pure_sip else normalize_number(raw)
        # Checked and inserted under one lock: two requests for one number in two forms
        # must not both pass the check.
        async with self._numbers_lock:
            for taken in _numbers_sharing_a_form(number_text):
                if await self._store.find_number(taken) is not None:
                    raise InvalidInput(_NUMBER_TAKEN)
            now = self._clock()
            values = self._number_values(fields, None)
            await self._check_number_apps(account, fields, values)
            number = PhoneNumber(
                sid=PhoneNumberSid(mint_sid("PN")), account_sid=AccountSid(account.sid),
                friendly_name=_name("FriendlyName", fields.get("friendly_name"), number_text),
                phone_number=number_text, pure_sip=pure_sip, api_version=API_VERSION,
                date_created=now, date_updated=now, **values)
            try:
                await self._store.insert_number(number)
            except Duplicate as err:
                # Provisioned since the check above (another process): the same answer.
                raise InvalidInput(_NUMBER_TAKEN) from err
        self._numbers_changed()
        return number

    def _number_values(self, fields: Mapping[str, str], current: PhoneNumber | None
                       ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for prefix, wire in (("voice", "Voice"), ("sms", "Sms"), ("ussd", "Ussd")):
            for key, wire_name, kind in (
                (f"{prefix}_url", f"{wire}Url", "url"),
                (f"{prefix}_method", f"{wire}Method", "method"),
                (f"{prefix}_fallback_url", f"{wire}FallbackUrl", "url"),
                (f"{prefix}_fallback_method", f"{wire}FallbackMethod", "method"),
                (f"{prefix}_application_sid", f"{wire}ApplicationSid", "sid"),
            ):
                values[key] = self._field(fields, key, wire_name, kind, current)
        for key, wire_name, kind in (
            ("status_callback", "StatusCallback", "url"),
            ("status_callback_method", "StatusCallbackMethod", "method"),
            ("refer_url", "ReferUrl", "url"), ("refer_method", "ReferMethod", "method"),
            ("refer_application_sid", "ReferApplicationSid", "sid"),
        ):
            values[key] = self._field(fields, key, wire_name, kind, current)
        for key, wire_name, default in (
            ("voice_caller_id_lookup", "VoiceCallerIdLookup", False),
            ("voice_capable", "VoiceCapable", True), ("sms_capable", "SmsCapable", True),
            ("mms_capable", "MmsCapable", False), ("fax_capable", "FaxCapable", False),
        ):
            base = getattr(current, key) if current is not None else default
            values[key] = _bool(wire_name, fields.get(key), base) if key in fields else base
        return values

    async def _check_number_apps(self, account: Account, fields: Mapping[str, str],
                                 values: Mapping[str, Any]) -> None:
        # Only the SIDs this request sets: an update of other fields is not refused for a
        # reference an older version kept after its application was deleted.
        for key, wire_name in _NUMBER_APP_SIDS:
            if key in fields:
                await self._check_app(account, wire_name, values[key])

    @staticmethod
    def _field(fields: Mapping[str, str], key: str, wire_name: str, kind: str,
               current: PhoneNumber | None) -> Any:
        base = getattr(current, key) if current is not None else None
        if key not in fields:
            return base if (base is not None or kind != "method") else "POST"
        value = fields[key]
        if key in ("sms_url", "voice_url") and value.startswith("client:"):
            # An SMS to this number is delivered to that Client's phones (docs/sms.md); a
            # GSM call to the SIM's number rings them (docs/gateways.md).
            login = value[len("client:"):]
            if not _USERINFO.fullmatch(login) or len(login) > MAX_LOGIN:
                raise InvalidInput(f"{wire_name} {value}: not a valid Client login")
            return value
        if kind == "url":
            return _url(wire_name, value)
        if kind == "method":
            return _method(wire_name, value, base or "POST")
        return _app_sid(wire_name, value)

    async def update_number(self, actor: Account, account: Account, sid: str,
                            fields: Mapping[str, str]) -> PhoneNumber:
        require(actor, Action.MODIFY, "IncomingPhoneNumbers")
        number = await self._owned_number(account, sid)
        values = self._number_values(fields, number)
        await self._check_number_apps(account, fields, values)
        if "friendly_name" in fields:
            values["friendly_name"] = _name("FriendlyName", fields["friendly_name"],
                                            number.friendly_name)
        updated = dataclasses.replace(number, **values, date_updated=self._clock())
        await self._store.update_number(updated)
        self._numbers_changed()
        return updated

    async def delete_number(self, actor: Account, account: Account, sid: str) -> None:
        require(actor, Action.DELETE, "IncomingPhoneNumbers")
        number = await self._owned_number(account, sid)
        await self._store.delete_number(number.sid)
        self._numbers_changed()
