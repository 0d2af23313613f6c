"""Who handles a request from an authenticated Client: the proxy's ``Router``.

Today one destination exists: another Client, reached by forking to its registered phones
(architecture.md "Who handles a call", first row). The decisions, in order:

| Request | Decision |
|---|---|
| INVITE that runs an RCML app (3) | fork to a media worker slot (``apps`` hook), 503 without one |
| INVITE from a caller with a VoiceUrl / VoiceApplicationSid, no ``apps`` hook | 403 (1) |
| ``tel:`` URI, or a non-Client user that looks like a number | 403 (2) |
| a non-Client user at a Request-URI host that is not ours | 403 (2) |
| a user that is no Client | 404 |
| a disabled Client, or one without a live binding | 480 |
| a registered Client | fork to its bindings, highest q first, at most ``max_branches`` |
| MESSAGE to a number, with an SMS gateway set | handed to it (queued as SMS): 202 |

(1) "Application Calls Not Available Yet": its RCML runs in a media worker, not built yet.
(2) "No Outbound Route": GSM and trunk routes come later; and we are never a relay to
foreign domains.
(3) ``services.calls.CallsService.route_invite``: the caller has its own VoiceUrl or
VoiceApplicationSid, or the dialled user is an IncomingPhoneNumber of the caller's account
with a VoiceUrl/VoiceApplicationSid, or a Client with one. An INVITE a media worker placed
for ``POST /Calls`` (``Caller.media``) is routed to the Client only, without a CDR (the calls
service writes the ``outbound-api`` one).

The callee is found by the Request-URI's user part (a Client login; logins are unique on the
appliance, so the host is not needed to pick the Client). Each contact is reached at the
binding's *source* address and TCP connection (NAT), with the contact URI kept as the branch
Request-URI. The location table is keyed by login, as the registrar fills it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection

from appliance.errors import InvalidInput
from appliance.sip.bindings import Location
from appliance.sip.errors import SipParseError
from appliance.sip.message import Request
from appliance.sip.proxy import (
    MAX_BRANCHES,
    Answer,
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
        # Set by the composition root when the modem is there: (caller, number, text) ->
        # the decision for a Client's MESSAGE to a phone number.
        self.outbound_sms: Callable[[Caller, str, str], Awaitable[Decision]] | None = None
        # Set when media workers exist: (request, caller, dialled user, now) -> a Fork to a
        # worker when the INVITE runs an RCML app, else None.
        self.apps: Callable[[Request, Caller, str, float], Awaitable[Decision | None]] | None = None

    def contacts_of(self, login: str, now: float) -> tuple[Contact, ...]:
        """Where LOGIN's phones are now (empty when not registered)."""
        return tuple(
            Contact(uri=b.uri, target=_target(b.uri, b.transport, b.source, b.connection_id))
            for b in self._location.lookup(login, now)[: self.max_branches]
        )

    def registered(self, login: str, now: float) -> bool:
        return bool(self._location.lookup(login, now))

    def _is_local(self, host: str) -> bool:
        hosts = self._local_hosts() if callable(self._local_hosts) else self._local_hosts
        # No list given: every host counts as ours (only local Clients are reachable anyway).
        return not hosts or host.strip("[]").lower() in {h.lower() for h in hosts}

    async def route(self, request: Request, caller: Caller, now: float) -> Decision:
        has_app = bool(caller.voice_url or caller.voice_application_sid)
        if request.method == "INVITE" and has_app and self.apps is None:
            return Refuse(403, NO_APPLICATIONS)
        try:
            uri = parse_uri(request.uri)
        except SipParseError:
            return Refuse(400, "Bad Request-URI")
        if not isinstance(uri, SipUri):
            return Refuse(403, NO_OUTBOUND_ROUTE)
        if not uri.user:
            return Refuse(404)
        if request.method == "INVITE" and self.apps is not None and not caller.media:
            decision = await self.apps(request, caller, uri.user, now)
            if decision is not None:
                return decision
        callee = await self._directory.user(uri.user)
        if (callee is None and request.method == "MESSAGE" and looks_like_number(uri.user)
                and self.outbound_sms is not None):
            content_type = (request.get("Content-Type") or "text/plain").split(";")[0]
            if content_type.strip().lower() != "text/plain":
                return Refuse(415, "Only text/plain Can Go Out As SMS")
            text = request.body.decode("utf-8", errors="replace")
            return await self.outbound_sms(caller, uri.user, text)
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
        return Fork(callee=callee.login, contacts=contacts, cdr_sid="" if caller.media else None)


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


class ClientMessenger:
    """Delivers an SMS to a Client's phones as a SIP MESSAGE (messaging's ClientMessenger)."""

    def __init__(self, router: ClientRouter, send: Callable[..., Awaitable[int]],
                 clock: Callable[[], float]) -> None:
        self._router = router
        self._send = send  # Proxy.send_message
        self._clock = clock

    async def deliver(self, login: str, from_: str, body: str) -> int | None:
        """The final SIP status, or None when LOGIN has no phone registered."""
        contacts = self._router.contacts_of(login, self._clock())
        if not contacts:
            return None
        return await self._send(contacts, from_user=from_, to_user=login, body=body)


def sms_gateway(send_from_client: Callable[[str, str, str, str], Awaitable[object]]
                ) -> Callable[[Caller, str, str], Awaitable[Decision]]:
    """Adapt MessagingService.send_from_client to the router's `outbound_sms` hook: a
    Client's MESSAGE to a phone number is queued as an SMS and answered 202 Accepted."""
    async def outbound(caller: Caller, number: str, text: str) -> Decision:
        try:
            await send_from_client(caller.account_sid, caller.login, number, text)
        except InvalidInput as err:
            return Refuse(488, err.message[:100])
        return Answer(202, "Accepted For Delivery By SMS")
    return outbound
