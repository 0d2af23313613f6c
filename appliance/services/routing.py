"""Who handles a request from an authenticated Client: the proxy's ``Router``.

A request goes to another Client (forked to its registered phones), to a media worker (an
RCML app, or a call to a number bridged out through the outbound routes), or out as an SMS
(a MESSAGE to a number); a gateway's INVITE goes by its DID (architecture.md "Who handles a
call"). The hooks for all but the first are set by the composition root. The decisions, in
order:

| Request | Decision |
|---|---|
| INVITE that runs an RCML app (3) | fork to a media worker slot (``apps`` hook), 503 without one |
| INVITE from a caller with a VoiceUrl / VoiceApplicationSid, no ``apps`` hook | 403 (1) |
| ``tel:`` URI, or a non-Client user that looks like a number | 403 (2) |
| a non-Client user at a Request-URI host that is not ours | 403 (2) |
| a user that is no Client | 404 |
| a disabled Client, or one without a live binding | 480 |
| a registered Client | fork to its bindings, highest q first, at most ``max_branches`` |
| INVITE to a number with no app, covered by an outbound route (4) | a worker (B2BUA), or 403 (6) |
| MESSAGE to a number, with an SMS gateway set | queued as SMS: 202, or 403 (6), or 503 (7) |
| a worker's INVITE for a leg to a gateway or one Client phone (``media_legs``) | sent there |
| a gateway's INVITE (``Caller.gateway``) | by its DID (``from_gateway``): its app, else 404 (5) |

(1) "Application Calls Not Available Yet": only a router without the ``apps`` hook (unit tests
of the proxy); the appliance always sets it, and its calls service answers 503 when no media
worker runs.
(2) "No Outbound Route": no ``[outbound]`` route covers the number (docs/gateways.md); and
we are never a relay to foreign domains.
(3) ``services.calls.CallsService.route_invite``: the caller has its own VoiceUrl or
VoiceApplicationSid, or the dialled user is an IncomingPhoneNumber of the caller's account
with a VoiceUrl/VoiceApplicationSid, or a Client with one. An INVITE a media worker placed
for ``POST /Calls`` (``Caller.media``) is routed to the Client only, without a CDR (the calls
service writes the ``outbound-api`` one).
(4) ``services.outbound_calls.OutboundCalls.route`` and docs/gateways.md: the ``[outbound]``
routes of config.toml; a worker answers the phone and bridges it to the first line that takes
the call. Without a route: 403 No Outbound Route.
(5) The DID is the Request-URI user, else the To user (``dialled_number``); when the
Request-URI user is the gateway's UserName (the Contact we registered) and no
IncomingPhoneNumber, the To user (``did_in_to``, taken by
``services.calls.CallsService.route_gateway_invite``).
(6) The caller's account's role lacks Create:Calls / Create:SmsMessages (api-behaviour.md §4,
as the API requires them), or the account is not active, checked where the money is spent:
``OutboundCalls.route`` (also for an app's <Dial><Number>) and
``MessagingService.send_from_client`` (also for an app's <Sms>) and ``send_from_phone``.
(7) With Retry-After, over the phones' SMS limits (``MessagingService.send_from_phone``:
a burst per Client, then one per interval; a bound on the queue), nothing queued.

The callee is found by the Request-URI's user part (a Client login; logins are unique on the
appliance, so the host is not needed to pick the Client). Each contact is reached at the
binding's *source* address and TCP connection (NAT), with the contact URI kept as the branch
Request-URI. The location table is keyed by login, as the registrar fills it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection

from appliance.errors import Forbidden, InvalidInput, TooManyRequests, Unavailable
from appliance.models import Gateway
from appliance.services.caller_id import dialable
from appliance.sip.bindings import Location
from appliance.sip.errors import SipParseError
from appliance.sip.message import Request
from appliance.sip.proxy import MAX_BRANCHES
from appliance.sip.proxy_ports import (
    Answer,
    Caller,
    Contact,
    Decision,
    Directory,
    Fork,
    Refuse,
)
from appliance.sip.uri import SipUri, parse_uri

NO_OUTBOUND_ROUTE = "No Outbound Route"  # 403 reason: no [outbound] route covers the number
NO_APPLICATIONS = "Application Calls Not Available Yet"  # 403 reason: no apps hook (1)
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
        self.outbound_sms: Callable[[Caller, str, str, float], Awaitable[Decision]] | None = None
        # Set when media workers exist: (request, caller, dialled user, now) -> a Fork to a
        # worker when the INVITE runs an RCML app, else None.
        self.apps: Callable[[Request, Caller, str, float], Awaitable[Decision | None]] | None = None
        # Set when media workers exist: (request, caller, number, now) -> the Fork of a
        # Client's call to a number with no app to a worker that bridges it out through the
        # outbound routes; None when no route covers the number (403 No Outbound Route).
        self.outbound: Callable[[Request, Caller, str, float],
                                Awaitable[Decision | None]] | None = None
        # (request) -> the Fork of a worker's INVITE for a leg to a gateway, else None.
        self.media_legs: Callable[[Request], Decision | None] | None = None
        # (request, caller, dialled number) -> the decision for a gateway's INVITE to a DID.
        self.from_gateway: Callable[[Request, Caller, str], Awaitable[Decision]] | None = None

    def contacts_of(self, login: str, now: float) -> tuple[Contact, ...]:
        """Where LOGIN's phones are now (empty when not registered)."""
        return tuple(
            Contact(uri=b.uri, target=b.target())
            for b in self._location.lookup(login, now)[: self.max_branches]
        )

    def registered(self, login: str, now: float) -> bool:
        return bool(self._location.lookup(login, now))

    def phone_at(self, login: str, host: str, port: int | None, now: float) -> bool:
        return any(b.source[0] == host and (port is None or b.source[1] == port)
                   for b in self._location.lookup(login, now))

    def _is_local(self, host: str) -> bool:
        hosts = self._local_hosts() if callable(self._local_hosts) else self._local_hosts
        # No list given: every host counts as ours (only local Clients are reachable anyway).
        return not hosts or host.strip("[]").lower() in {h.lower() for h in hosts}

    async def route(self, request: Request, caller: Caller, now: float) -> Decision:
        if caller.gateway:
            return await self._from_gateway(request, caller)
        if caller.media and request.method == "INVITE" and self.media_legs is not None:
            leg = self.media_legs(request)
            if leg is not None:
                return leg
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
        # Only a phone number goes out (docs/gateways.md: an optional + and 3-20 digits):
        # a "*" or "#" after a country code, or 32 digits, may mean something else to the
        # provider or the network, on the office's bill.
        outside = dialable(uri.user) is not None
        if (callee is None and request.method == "MESSAGE" and outside
                and self.outbound_sms is not None):
            content_type = (request.get("Content-Type") or "text/plain").split(";")[0]
            if content_type.strip().lower() != "text/plain":
                return Refuse(415, "Only text/plain Can Go Out As SMS")
            text = request.body.decode("utf-8", errors="replace")
            return await self.outbound_sms(caller, uri.user, text, now)
        if (callee is None and request.method == "INVITE" and outside
                and self.outbound is not None and not caller.media):
            decision = await self.outbound(request, caller, uri.user, now)
            if decision is not None:
                return decision
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
            Contact(uri=b.uri, target=b.target())
            for b in bindings[: self.max_branches]
        )
        return Fork(callee=callee.login, contacts=contacts, cdr_sid="" if caller.media else None,
                    phones=True)

    async def _from_gateway(self, request: Request, caller: Caller) -> Decision:
        """A request from a gateway's provider: OPTIONS (keep-alive) is answered 200, an
        INVITE goes by its DID (``from_gateway``), anything else is not taken."""
        if request.method == "OPTIONS":
            return Answer(200)
        if request.method != "INVITE":
            return Refuse(403, "Only Calls Are Taken From A Gateway")
        number = dialled_number(request)
        if not number or self.from_gateway is None:
            return Refuse(404)
        return await self.from_gateway(request, caller, number)


def dialled_number(request: Request) -> str:
    """The DID a provider's INVITE is for: the Request-URI user, else the To user (see
    also ``did_in_to``)."""
    for text in (request.uri, request.to.uri):
        user = _user_of(text)
        if user:
            return user
    return ""


def did_in_to(request: Request, caller: Caller, number: str) -> str:
    """The DID in the To of a provider's INVITE addressed to the Contact its gateway
    registered: NUMBER (the Request-URI user, ``dialled_number``) is that gateway's UserName,
    as registration-based trunks send it (``INVITE sip:<UserName>@<our Contact>``, ``To:
    <sip:+15557654321@…>``). "" when CALLER is no gateway's provider (a phone, a stranger: no
    new way in), NUMBER is not the UserName, or the To has no other user. The caller (calls
    service) only takes it when NUMBER is no IncomingPhoneNumber itself."""
    if not caller.gateway or not caller.gateway_user or number != caller.gateway_user:
        return ""
    user = _user_of(request.to.uri)
    return user if user and user != number else ""


def _user_of(text: str) -> str:
    try:
        uri = parse_uri(text)
    except SipParseError:
        return ""
    return (uri.user or "") if isinstance(uri, SipUri) else ""


def gateway_callers(gateways_at: Callable[[str, int], list[Gateway]]
                    ) -> Callable[[tuple[str, int], Request], Caller | None]:
    """The proxy's ``gateway_caller`` hook: a request whose source address is a gateway's
    provider address (``sip.trunk.Trunk.gateways_at``) comes from that provider, which never
    authenticates to us; its caller is the From user (the calling number). Of several
    accounts at one provider, the gateway is the one whose UserName the Request-URI names
    (an INVITE to the Contact it registered, ``did_in_to``), else the first."""
    def caller(source: tuple[str, int], request: Request) -> Caller | None:
        gateways = gateways_at(source[0], source[1])
        if not gateways:
            return None
        addressed = _user_of(request.uri)
        gateway = next((g for g in gateways if g.user_name == addressed), gateways[0])
        try:
            uri = parse_uri(request.from_.uri)
        except SipParseError:
            uri = None
        login = (uri.user if isinstance(uri, SipUri) else None) or "anonymous"
        return Caller(login=login, account_sid="", gateway=gateway.sid,
                      gateway_user=gateway.user_name)
    return caller


class ClientMessenger:
    """Delivers an SMS to a Client's phones as a SIP MESSAGE (messaging's ClientMessenger)."""

    def __init__(self, router: ClientRouter, send: Callable[..., Awaitable[int]],
                 clock: Callable[[], float]) -> None:
        self._router = router
        self._send = send  # sip.messenger.Messenger.send_message
        self._clock = clock

    async def deliver(self, login: str, from_: str, body: str) -> int | None:
        """The final SIP status, or None when LOGIN has no phone registered."""
        contacts = self._router.contacts_of(login, self._clock())
        if not contacts:
            return None
        return await self._send(contacts, from_user=from_, to_user=login, body=body)


def sms_gateway(send_from_phone: Callable[[str, str, str, str, float], Awaitable[object]]
                ) -> Callable[[Caller, str, str, float], Awaitable[Decision]]:
    """Adapt MessagingService.send_from_phone to the router's `outbound_sms` hook: a
    Client's MESSAGE to a phone number is queued as an SMS and answered 202 Accepted, or
    403 with the missing permission as reason when its account's role may not send SMS, or
    503 with Retry-After (RFC 3261 21.5.4: come back later) over the phones' SMS limits."""
    async def outbound(caller: Caller, number: str, text: str, now: float) -> Decision:
        try:
            await send_from_phone(caller.account_sid, caller.login, number, text, now)
        except Forbidden as err:  # the account's role may not send SMS
            return Refuse(403, err.message[:100])
        except InvalidInput as err:
            return Refuse(488, err.message[:100])
        except TooManyRequests as err:  # logged by messaging, at most once a minute
            return Refuse(503, "Too Many SMS, Try Later",
                          headers=(("Retry-After", str(err.retry_after)),), logged=True)
        except Unavailable as err:  # no modem configured
            return Refuse(503, err.message[:100])
        return Answer(202, "Accepted For Delivery By SMS")
    return outbound
