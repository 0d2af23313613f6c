"""Gateways: CRUD for the super administrator, and the registration state a trunk reports.

Restcomm rules (api-behaviour.md §8.7): global objects, the `{AccountSid}` of the path is
ignored; only a top-level (super) administrator may touch them; required parameters are checked
in Restcomm's order; `Register` is honoured on update (Restcomm's D7 bug fixed).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from appliance.errors import Conflict, Duplicate, Forbidden, InvalidInput, NotFound
from appliance.models import Account, Gateway, GatewaySid, is_sid_shaped, mint_sid
from appliance.services.access import is_super_admin
from appliance.store.gateways import GatewayStore

MAX_GATEWAYS = 16
MIN_TTL, MAX_TTL = 60, 86400
_PROXY = re.compile(r"^(?:sip:)?(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)(?::[0-9]{1,5})?$")


@dataclasses.dataclass(frozen=True)
class GatewayStatus:
    state: str  # "disabled", "registering", "registered", "failed" (docs/gateways.md)
    last_error: str | None = None
    expires_at: datetime | None = None


class Trunk(Protocol):
    """The SIP side that keeps gateways registered (sip.trunk)."""

    def apply(self, gateway: Gateway) -> None: ...

    def remove(self, sid: str) -> None: ...

    def status(self, sid: str) -> GatewayStatus: ...


def _bool(name: str, value: str | None) -> bool:
    if value is None or value.lower() not in ("true", "false"):
        raise InvalidInput(f"{name} must be true or false")
    return value.lower() == "true"


def _ttl(value: str | None) -> int:
    if value is None or not value.strip().isdigit():
        raise InvalidInput("TTL must be a number of seconds")
    ttl = int(value)
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidInput(f"TTL must be between {MIN_TTL} and {MAX_TTL} seconds")
    return ttl


def _text(name: str, value: str, limit: int = 255) -> str:
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{name} must be at most {limit} printable characters")
    return value


def _name_taken(name: str) -> Conflict:
    return Conflict(f"A gateway named {name!r} already exists: FriendlyName must be unique, "
                    "as outbound routes and [inbound.sources] name gateways by it")


IPV6_UNSUPPORTED = ("IPv6 provider addresses are not supported: give the Proxy as an IPv4 "
                    "address or a host name with an IPv4 address, with an optional :port")


def _proxy(value: str) -> str:
    if not _PROXY.match(value):
        raise InvalidInput("Proxy must be a host name or address, with an optional :port")
    host = value.removeprefix("sip:")
    if host.startswith("["):
        # The trunk registers over the one UDP socket of [sip] listen, IPv4 by default (it
        # cannot send to IPv6), and its own addressing (Contact, Via) and its resolver are
        # IPv4 only. Such a gateway could only ever fail to register.
        raise InvalidInput(IPV6_UNSUPPORTED)
    port = host.rsplit(":", 1)[1] if host.count(":") == 1 else None
    if port is not None and not 0 < int(port) < 65536:
        raise InvalidInput("Proxy port is out of range")
    return host


class GatewayService:
    def __init__(self, store: GatewayStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock
        self.trunk: Trunk | None = None

    @staticmethod
    def _check(actor: Account) -> None:
        if not is_super_admin(actor):
            raise Forbidden("Gateways are managed by the top-level administrator only")

    def status(self, sid: str) -> GatewayStatus:
        if self.trunk is None:
            return GatewayStatus("not-running", "the SIP trunk client is not running")
        return self.trunk.status(sid)

    async def all(self) -> list[Gateway]:
        return await self._store.all()

    async def list(self, actor: Account) -> list[Gateway]:
        self._check(actor)
        return await self._store.all()

    async def get(self, actor: Account, sid: str) -> Gateway:
        self._check(actor)
        gateway = await self._store.get(sid) if is_sid_shaped(sid, "GW") else None
        if gateway is None:
            raise NotFound(f"The gateway {sid} was not found")
        return gateway

    async def create(self, actor: Account, fields: Mapping[str, str]) -> Gateway:
        self._check(actor)
        user = fields.get("UserName")
        if not user:
            raise InvalidInput("UserName can not be null.")
        password = fields.get("Password")
        if not password:
            raise InvalidInput("Password can not be null.")
        proxy = fields.get("Proxy")
        if not proxy:
            raise InvalidInput("The Proxy can not be null")
        register = _bool("Register", fields.get("Register"))
        ttl = _ttl(fields.get("TTL"))
        name = _text("FriendlyName", fields.get("FriendlyName") or user)
        existing = await self._store.all()
        if len(existing) >= MAX_GATEWAYS:
            raise InvalidInput(f"At most {MAX_GATEWAYS} gateways")
        if any(g.friendly_name == name for g in existing):
            raise _name_taken(name)
        now = self._clock()
        gateway = Gateway(sid=GatewaySid(mint_sid("GW")), friendly_name=name,
                          user_name=_text("UserName", user), password=_text("Password", password),
                          proxy=_proxy(proxy), register=register, ttl=ttl, date_created=now,
                          date_updated=now)
        try:
            await self._store.insert(gateway)
        except Duplicate as err:
            # Created by another request since the check above: the same answer.
            raise _name_taken(name) from err
        if self.trunk is not None:
            self.trunk.apply(gateway)
        return gateway

    async def update(self, actor: Account, sid: str, fields: Mapping[str, str]) -> Gateway:
        gateway = await self.get(actor, sid)
        changes: dict[str, object] = {}
        if "FriendlyName" in fields:
            changes["friendly_name"] = _text("FriendlyName", fields["FriendlyName"])
        if fields.get("UserName"):
            changes["user_name"] = _text("UserName", fields["UserName"])
        if fields.get("Password"):
            changes["password"] = _text("Password", fields["Password"])
        if fields.get("Proxy"):
            changes["proxy"] = _proxy(fields["Proxy"])
        if "Register" in fields:
            changes["register"] = _bool("Register", fields["Register"])
        if "TTL" in fields:
            changes["ttl"] = _ttl(fields["TTL"])
        updated = dataclasses.replace(gateway, **changes,  # type: ignore[arg-type]
                                      date_updated=self._clock())
        name = updated.friendly_name
        if name != gateway.friendly_name and any(
                g.friendly_name == name and g.sid != sid for g in await self._store.all()):
            raise _name_taken(name)
        try:
            written = await self._store.update(updated)
        except Duplicate as err:
            raise _name_taken(name) from err
        if not written:  # deleted meanwhile: no line for a gateway the store no longer has
            raise NotFound(f"The gateway {sid} was not found")
        if self.trunk is not None:
            self.trunk.apply(updated)
        return updated

    async def delete(self, actor: Account, sid: str) -> None:
        self._check(actor)
        await self._store.delete(sid)
        if self.trunk is not None:
            self.trunk.remove(sid)
