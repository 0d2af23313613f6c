"""Restcomm's OutboundProxy endpoints over our outbound routes.

Restcomm has a primary and a backup outbound proxy and an API to see and switch the active
one. Here the "proxies" are the gateways of the outbound routes: the primary is the first
gateway line of the catch-all route (prefix "", else the first route), the fallback the
second. Switching makes the other one preferred: in every route that lists it, its line is
tried first (failover to the rest still happens). The choice lives in memory: a restart goes
back to the primary, as Restcomm does.
"""

from __future__ import annotations

import dataclasses

from appliance.config import OutboundConfig
from appliance.errors import Forbidden, InvalidInput
from appliance.models import Account
from appliance.services.access import is_super_admin


@dataclasses.dataclass(frozen=True)
class ProxyState:
    primary: str | None  # "gateway:<FriendlyName>"
    fallback: str | None
    active: str | None
    using_fallback: bool


class OutboundProxies:
    def __init__(self, config: OutboundConfig) -> None:
        self._config = config
        self.using_fallback = False

    def _pair(self) -> tuple[str | None, str | None]:
        routes = self._config.routes
        if not routes:
            return None, None
        default = next((r for r in routes if r.prefix == ""), routes[0])
        gateways = [line for line in default.lines if line.startswith("gateway:")]
        return (gateways[0] if gateways else None, gateways[1] if len(gateways) > 1 else None)

    def state(self, actor: Account) -> ProxyState:
        if not is_super_admin(actor):
            raise Forbidden("Outbound proxies are managed by the top-level administrator only")
        primary, fallback = self._pair()
        using = self.using_fallback and fallback is not None
        return ProxyState(primary, fallback, fallback if using else primary, using)

    def switch(self, actor: Account) -> ProxyState:
        state = self.state(actor)
        if state.fallback is None:
            raise InvalidInput("There is no fallback proxy to switch to: the catch-all "
                               "outbound route (without one, the first route) lists fewer "
                               "than two gateways")
        self.using_fallback = not self.using_fallback
        return self.state(actor)

    def lines_for(self, number: str) -> tuple[str, ...]:
        """The route's lines, with the active fallback gateway tried first when switched."""
        lines = self._config.lines_for(number)
        _, fallback = self._pair()
        if not self.using_fallback or fallback is None or fallback not in lines:
            return lines
        return (fallback, *(line for line in lines if line != fallback))
