"""What every API handler receives: the caller, the chosen format and parsed inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import MultiDict, MultiDictProxy, MultiMapping

from appliance.api.cache import RESPONSE_CACHE
from appliance.errors import InvalidInput
from appliance.models import Account
from appliance.services.accounts import AccountService
from appliance.services.calls import CallsService
from appliance.services.conferences import ConferencesService
from appliance.services.gateways import GatewayService
from appliance.services.history import HistoryService
from appliance.services.login_guard import LoginGuard
from appliance.services.messaging import MessagingService
from appliance.services.outbound import OutboundProxies
from appliance.services.provisioning import ProvisioningService
from appliance.services.telephony import SipDirectory

MAX_PARAMS = 200  # form fields per request; Restcomm resources take fewer than 60
MAX_VALUE = 64 * 1024


@dataclasses.dataclass
class ApiServices:
    accounts: AccountService
    provisioning: ProvisioningService
    history: HistoryService
    health: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
    public_base: str = ""  # scheme://host:port used for absolute file URIs
    max_body: int = 10_000_000  # Restcomm's request filter limit; [api] max_body_bytes
    messaging: MessagingService | None = None  # None: SMS sending is not wired (no modem code)
    gateways: GatewayService | None = None
    outbound: OutboundProxies | None = None
    sip_directory: SipDirectory | None = None  # None: no SIP front door (registrations empty)
    calls: CallsService | None = None  # None: calls cannot be placed or modified (405)
    conferences: ConferencesService | None = None  # None: the Conferences API answers 404
    logins: LoginGuard = dataclasses.field(default_factory=LoginGuard)


SERVICES = web.AppKey("services", ApiServices)


@dataclasses.dataclass
class Ctx:
    request: web.Request
    services: ApiServices
    as_json: bool
    path: Mapping[str, str]
    prefix: str
    actor: Account | None = None
    _form: MultiDictProxy[str] | None = None
    cached_at: Hashable | None = None  # set by cached(): the body's data version

    @property
    def me(self) -> Account:
        if self.actor is None:
            raise RuntimeError("route needs authentication")
        return self.actor

    @property
    def query(self) -> MultiMapping[str]:
        return self.request.query

    def bound(self, name: str) -> str | None:
        """The value of a list's inequality filter NAME (`StartTime>`, `DateCreated<`...)."""
        # `StartTime>=2024-03-03` as typed splits at its first `=`: the key `StartTime>`
        # with the value `2024-03-03`; a client that encodes the whole key
        # (`StartTime%3E%3D=2024-03-03`, as a params dict does) sends the key `StartTime>=`.
        # Both mean the same.
        return self.query.get(name) or self.query.get(name + "=")

    async def form(self) -> MultiDictProxy[str]:
        if self._form is None:
            try:
                raw = await self.request.post()
            except (ValueError, UnicodeDecodeError, AssertionError, LookupError,
                    RequestPayloadError) as err:
                # LookupError: an unknown charset; RequestPayloadError: a Content-Encoding
                # the body does not have (aiohttp then drops the connection after our answer:
                # http_log makes that one throttled line)
                cause = err.__cause__ if isinstance(err, RequestPayloadError) else err
                reason = getattr(cause, "message", None) or str(cause) or type(err).__name__
                raise InvalidInput(f"The request body could not be parsed: {reason}") from err
            if len(raw) > MAX_PARAMS:
                raise InvalidInput(f"Too many parameters (at most {MAX_PARAMS})")
            values: list[tuple[str, str]] = []
            for key, value in raw.items():
                if not isinstance(value, str):
                    raise InvalidInput(f"{key}: file uploads are not accepted")
                if len(value) > MAX_VALUE or "\x00" in value:
                    raise InvalidInput(f"{key}: value is too long or contains NUL")
                values.append((key, value))
            self._form = MultiDictProxy(MultiDict(values))
        return self._form

    async def fields(self, names: Mapping[str, str]) -> dict[str, str]:
        """Form parameters by their Restcomm names, mapped to snake_case service fields."""
        form = await self.form()
        return {field: form[wire] for wire, field in names.items() if wire in form}

    async def operated(self) -> Account:
        """The `{A}` account of the path, subject to the tree rule."""
        # A POST or PUT to a collection creates; one to a resource (`{sid}` in the path)
        # changes what exists, such as hanging up a live call of an account just closed.
        creating = self.request.method in ("POST", "PUT") and "sid" not in self.path
        return await self.services.accounts.resolve_operated(self.me, self.path["A"],
                                                             creating=creating)

    def raw_path(self) -> str:
        return self.request.path

    async def cached(self, build: Callable[[], Awaitable[bytes]]) -> bytes:
        """The body BUILD renders, reused while the database is unchanged.

        Only for GETs whose body depends on nothing but the caller, the URL (path and query),
        the format and stored data; errors raised by BUILD are never cached.
        """
        cache = self.request.app.get(RESPONSE_CACHE)
        if cache is None:
            return await build()
        # The caller by SID: any change to the account is a write, which empties the cache.
        key = (self.me.sid, self.request.method, self.request.raw_path, self.as_json)
        body, version = cache.lookup(key)
        if body is None:
            body = await build()
            cache.store(key, version, body)
        self.cached_at = version
        return body
