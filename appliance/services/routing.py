"""Who handles a request from an authenticated Client: the proxy's ``Router``.

Today one destination exists: another Client, reached by forking to its registered phones
(architecture.md "Who handles a call", first row). The decisions, in order:

| Request | Decision |
|---|---|
| INVITE from a caller with a VoiceUrl / VoiceApplicationSid | 403 (1) |
| ``tel:`` URI, or a non-Client user that looks like a number | 403 (2) |
| a non-Client user at a Request-URI host that is not ours | 403 (2) |
| a user that is no Client | 404 |
| a disabled Client, or one without a live binding | 480 |
| a registered Client | fork to its bindings, highest q first, at most ``max_branches`` |

(1) "Application Calls Not Available Yet": its RCML runs in a media worker, not built yet.
(2) "No Outbound Route": GSM and trunk routes come later; and we are never a relay to
foreign domains.

The callee is found by the Request-URI's user part (a Client login; logins are unique on the
appliance, so the host is not needed to pick the Client). Each contact is reached at the
binding's *source* address and TCP connection (NAT), with the contact URI kept as the branch
Request-URI. The location table is keyed by login, as the registrar fills it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

from appliance.sip.bindings import Location
from appliance.sip.errors import SipParseError
from appliance.sip.message import Request
from appliance.sip.proxy import (
    MAX_BRANCHES,
    Caller,
    Contact,
    Decision,
    Directory,
    Fork,
    Refuse,
)
from appliance.sip.uri import SipUri, parse_uri
from appliance.sip.wire import Target

NO_OUTBOUND_ROUTE = "No Outbound Route"  # 403 reason: trunk/GSM routes are a later issue
NO_APPLICATIONS = "Application Calls Not Available Yet"  # 403 reason: RCML needs media workers
_NUMBER = re.compile(r"\+?[0-9*#]{2,32}")


def looks_like_number(user: str) -> bool:
    """A dialled number (``+15551234``, ``0612345678``, ``*97``) rather than a login."""
    return bool(_NUMBER.fullmatch(re.sub(r"[\s\-.()]", "", user)))


class ClientRouter:
    """Routes Client → Client requests through the location table."""

    def __init__(self, directory: Directory, location: Location, *,
                 local_hosts: Collection[str] | Callable[[], Collection[str]] = (),
                 max_branches: int = MAX_BRANCHES) -> None:
        self._directory = directory
        self._location = location
        self._local_hosts = local_hosts
        self.max_branches = max_branches

    def registered(self, login: str, now: float) -> bool:
        return bool(self._location.lookup(login, now))

    def _is_local(self, host: str) -> bool:
        hosts = self._local_hosts() if callable(self._local_hosts) else self._local_hosts
        # No list given: every host counts as ours (only local Clients are reachable anyway).
        return not hosts or host.strip("[]").lower() in {h.lower() for h in hosts}

    async def route(self, request: Request, caller: Caller, now: float) -> Decision:
        if request.method == "INVITE" and (caller.voice_url or caller.voice_application_sid):
            return Refuse(403, NO_APPLICATIONS)
        try:
            uri = parse_uri(request.uri)
        except SipParseError:
            return Refuse(400, "Bad Request-URI")
        if not isinstance(uri, SipUri):
            return Refuse(403, NO_OUTBOUND_ROUTE)
        if not uri.user:
            return Refuse(404)
        callee = await self._directory.user(uri.user)
        if callee is None:
            if looks_like_number(uri.user) or not self._is_local(uri.host):
                return Refuse(403, NO_OUTBOUND_ROUTE)
            return Refuse(404)
        if not callee.enabled:
            return Refuse(480)
        bindings = self._location.lookup(callee.login, now)
        if not bindings:
            return Refuse(480)
        contacts = tuple(
            Contact(uri=b.uri, target=_target(b.uri, b.transport, b.source, b.connection_id))
            for b in bindings[: self.max_branches]
        )
        return Fork(callee=callee.login, contacts=contacts)


def _target(uri: str, transport: str, source: tuple[str, int],
            connection_id: str | None) -> Target:
    """The binding's source address (NAT-safe); the contact URI's only when none was kept."""
    if source[0]:
        return Target(transport.lower(), source[0], source[1], connection_id)
    contact = parse_uri(uri)
    if isinstance(contact, SipUri):
        return Target(contact.transport or transport.lower(), contact.host.strip("[]"),
                      contact.port or 5060)
    return Target(transport.lower(), "", 0)
