"""In-dialog requests (RFC 3261 §16.12): the requests of a call we proxied, back through us.

Theory of operation. A request with a To tag was authenticated when its dialog was created:
it is forwarded without a challenge when it belongs to a dialog of a call we proxied, comes
from that dialog's party, and goes to its other party; anything else is refused, so that no
one rides a call to a host of their choosing (a provider: a call on the office's bill; any
host: an open relay; docs/sip.md "No toll fraud").

- The dialog: the ``Call`` is looked up by Call-ID and the caller's From tag, in either
  direction, and the other tag must be one of its dialogs' callee tags, as noted from the
  callee's 18x/2xx: else 481 (RFC 3261 §12.2.2; no such dialog here).
- The sender: its source must be that side's, as the call recorded it (``_is_party``): the
  caller's INVITE source, or the callee branch's target; a TCP peer may come back on another
  connection from its host; a Client's phone also from wherever it is registered now (a NAT
  mapping that changed mid-call); a provider from any of its gateway's addresses; the
  callee's provider also from the hop its answer record-routed. Else 403 ``Not A Party To
  This Call``: the Call-ID and tags cross the LAN in clear, and a stranger's BYE, re-INVITE or
  REFER (the phone would dial the Refer-To with its own credentials) must not pass.
- The next hop: our own Route entries are popped first (loose routing; those at a public
  address we record-routed toward a provider behind NAT too, docs/gateways.md; a
  strict-routing phone's Request-URI that is our Record-Route is replaced by the last Route,
  §16.4, ``sip.routeset``). With no Route left the request goes to the far side's address
  remembered from the dialog (its NAT address); the Request-URI is never where it is sent.
  A Route left must name that same side (``_next_hop``): its recorded address, the hop its
  provider's answer record-routed, or an address or the name of the same gateway's provider;
  a next hop without ``;lr`` is a strict router, whose URI becomes the Request-URI (§16.6
  step 6). Any other host: 403 ``No Route To A Foreign Proxy``, as out of a dialog.

Refusals are logged at most once a minute per source address. The ACK for a 2xx is
forwarded statelessly (on a branch derived from its own, so a retransmission gets the same
one), and one that is refused is dropped; any other request gets a Context and a single
branch, like a new request without Record-Route.

In-dialog traffic on an answered call pushes its idle deadline out (``Session-Expires``, or
``MAX_DIALOG_IDLE``); the BYE of the answered dialog ends the call (its CDR ``completed``,
the call kept ``LINGER`` for crossing requests); a call that reaches its deadline without a
BYE is forgotten, its CDR closed ``completed`` (``expire_call``). A subscription in the
dialog (a blind transfer's REFER, RFC 3515) outlives the BYE (RFC 5057 §5.2): the call is
kept until its last NOTIFY's expiry, then ``LINGER``, so the transferee's NOTIFYs reach a
transferor that hung up as soon as its REFER was accepted. A REFER toward one of our media
workers is answered 403 here: a worker bridges its calls and never transfers them
(docs/voice.md "Transfers").

``InDialog`` is owned by the proxy, not a mixin: it is handed the proxy's tables (the same
dicts), and forks, replies and reads a request's source through the proxy. Not a core module:
it logs and writes CDRs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Protocol

from appliance.models import CallStatus
from appliance.sip.deadlines import Deadlines
from appliance.sip.dialogs import (
    LINGER,
    Call,
    CallKey,
    Hop,
    session_idle_limit,
    subscription_hold,
)
from appliance.sip.forwarding import Context, Reply, ack_branch, branch_request, user_of
from appliance.sip.guard import LogThrottle
from appliance.sip.message import Request, max_forwards_status
from appliance.sip.proxy_ports import CallLog, Contact
from appliance.sip.records import cdr
from appliance.sip.routeset import (
    pop_own_routes,
    remaining_route_target,
    route_to_strict_next_hop,
)
from appliance.sip.transaction import ServerTransaction, Transaction
from appliance.sip.wire import Incoming, Sender, Target

# The proxy's log lines keep the proxy's logger name: moving code between modules changes no log.
logger = logging.getLogger("appliance.sip.proxy")

NOT_A_PARTY = "Not A Party To This Call"
FOREIGN_ROUTE = "No Route To A Foreign Proxy"  # the reason out of a dialog too (sip.proxy)
REFUSAL_LOG_INTERVAL = 60.0  # a refused source is logged at most this often
MAX_LOGGED_SOURCES = 1000


class Fork(Protocol):
    """The proxy's ``_fork``: send CONTEXT's request to each of CONTACTS, a branch each."""

    async def __call__(self, context: Context, contacts: Collection[Contact],
                       incoming: Incoming, now: float, *, record_route: bool,
                       headers: Collection[tuple[str, str]] = (),
                       keep_credentials: bool = False) -> None: ...


class InDialog:
    """In-dialog requests and the calls they belong to; see the module docstring."""

    def __init__(self, *, sender: Sender, deadlines: Deadlines, calls: CallLog,
                 contexts: dict[Transaction, Context], live_calls: dict[CallKey, Call],
                 addresses: Collection[tuple[str, int]], local_hosts: Collection[str],
                 public: Collection[tuple[str, int]],
                 public_toward: Callable[[Target], tuple[str, int] | None],
                 source: Callable[[Incoming, Request], Target | None],
                 local: Callable[[Incoming], tuple[str, int]], reply: Reply,
                 fork: Fork, media: Callable[[str, int], bool] = lambda _h, _p: False,
                 phone_at: Callable[[str, str, int | None], bool] = lambda _l, _h, _p: False,
                 providers: Callable[[str, int], Collection[str]] = lambda _h, _p: ()
                 ) -> None:
        """CONTEXTS and LIVE_CALLS are the proxy's own tables; ADDRESSES and LOCAL_HOSTS
        (live collections) are what "us" means in a Route, and PUBLIC, the public addresses
        written in our Record-Routes toward providers behind NAT (exact address and port).
        PUBLIC_TOWARD gives that address toward a peer that is such a provider, else None
        (our Via to it asks for ``rport``). SOURCE stamps a request's Via and says where
        its responses go, LOCAL is our address it arrived on. MEDIA says whether an
        address and port are a media worker's SIP socket. PHONE_AT(login, host, port)
        whether one of Client LOGIN's phones is registered from HOST at PORT (any port
        when None); PROVIDERS(host, port) the gateways whose provider is at HOST:PORT (an
        address it sends from, or its Proxy name)."""
        self._sender = sender
        self._deadlines = deadlines
        self._calls = calls
        self._contexts = contexts
        self._live_calls = live_calls
        self._locals = addresses
        self._local_hosts = local_hosts
        self._public = public
        self._public_toward = public_toward
        self._source = source
        self._local = local
        self._reply = reply
        self._fork = fork
        self._media = media
        self._phone_at = phone_at
        self._providers = providers
        self._refusals = LogThrottle(REFUSAL_LOG_INTERVAL, MAX_LOGGED_SOURCES)

    async def forward(self, incoming: Incoming, request: Request, now: float,
                      server: ServerTransaction | None = None) -> None:
        is_ack = request.method == "ACK"
        if is_ack and self._source(incoming, request) is None:
            return
        if is_ack and max_forwards_status(request) is not None:
            return  # an ACK gets no response; a looping one just stops here
        pop_own_routes(request, self._locals, self._local_hosts, self._public)
        found = self._find_call(request)
        if found is None:
            if server is not None:
                await self._reply(server, 481, now=now)
            return
        call, towards_callee = found
        # The callee's tag names the dialog: the To tag toward the callee, the From tag back.
        callee_tag = (request.to.tag if towards_callee else request.from_.tag) or ""
        callee = call.callee(callee_tag)
        if callee is None:  # a dialog of this call that we never saw: not ours to relay
            await self._refuse(call, request, incoming, server, now, 481, None,
                               "no such dialog")
            return
        hop = call.callee_hop(callee_tag)
        if towards_callee:
            sender, login, sender_hop = call.caller, call.caller_login, None
            far, far_hop = callee, hop
        else:
            sender, login, sender_hop = callee, call.callee_login, hop
            far, far_hop = call.caller, None
        if not self._is_party(incoming, sender, login, sender_hop):
            await self._refuse(call, request, incoming, server, now, 403, NOT_A_PARTY,
                               "not from a party to it")
            return
        target = far
        route = remaining_route_target(request)
        if route is not None:
            next_hop = self._next_hop(route, far, far_hop)
            if next_hop is None:
                await self._refuse(call, request, incoming, server, now, 403, FOREIGN_ROUTE,
                                   f"its Route names {route.host}:{route.port}")
                return
            target = next_hop
            route_to_strict_next_hop(request)
        if request.method == "REFER" and server is not None \
                and self._media(target.host, target.port):
            # Never to a worker: pjsua would accept it and dial the Refer-To itself.
            logger.info("x REFER in call %s toward a media worker: refused", call.call_id)
            await self._reply(server, 403, "Transfer Not Supported", now=now)
            return
        if call.answered and not call.ended:
            call.deadline = max(call.deadline, now + session_idle_limit(
                request.get("session-expires")))
        if request.method == "NOTIFY" and call.answered:
            # A transferor may hang up as soon as its REFER is accepted, and the NOTIFY with
            # the outcome comes once the target answers, maybe minutes later: the call is
            # kept for the subscription (pushed later: the deadline heap needs no re-arm).
            # Only an answered call's: a REFER needs a confirmed dialog, and a call that
            # failed must not be held for an hour by a NOTIFY into its early dialog.
            call.subscribed_until = max(call.subscribed_until, now + subscription_hold(
                request.get("subscription-state")))
            if call.ended:
                call.deadline = max(call.deadline, call.subscribed_until + LINGER)
        if is_ack or server is None:  # the ACK for a 2xx: end-to-end, forwarded statelessly
            forwarded = branch_request(request, request.uri, incoming.transport,
                                       target.transport, self._local(incoming),
                                       record_route=False, branch=ack_branch(request),
                                       keep_credentials=call.keep_credentials,
                                       public_out=self._public_toward(target))
            self._sender.send(forwarded, target)
            return
        source = server.peer
        if source is None:
            return
        context = Context(request=request, server=server, source=source,
                          local=self._local(incoming))
        self._contexts[server] = context
        if request.method == "INVITE":  # a re-INVITE: 100 at once, as for the first INVITE
            await self._reply(server, 100, now=now)
        await self._fork(context, [Contact(request.uri, target)], incoming, now,
                         record_route=False, keep_credentials=call.keep_credentials)
        if request.method == "BYE":
            await self._bye(call, request, now)

    def _is_party(self, incoming: Incoming, at: Target, login: str, hop: Hop | None) -> bool:
        """Whether INCOMING comes from the side of a call recorded at AT (with the Client
        LOGIN's phones on it, or "", and the hop its provider record-routed, or None)."""
        host, port = incoming.source
        if incoming.transport == "udp":
            if host == at.host and port == at.port:
                return True
            if hop is not None and (host.lower(), port) == hop:
                return True
        elif host == at.host:
            # A TCP (or TLS) source cannot be spoofed, and its port is an ephemeral one: a
            # phone that connected again (its old connection closed) comes from a new port.
            return True
        if login and self._phone_at(login, host, port if incoming.transport == "udp" else None):
            return True
        theirs = self._providers(at.host, at.port)
        return bool(theirs) and any(sid in theirs for sid in self._providers(host, port))

    def _next_hop(self, route: Target, far: Target, hop: Hop | None) -> Target | None:
        """Where a request whose remaining Route names ROUTE goes, when that is the far side
        of its call (recorded at FAR, with the hop its provider record-routed, HOP): FAR
        itself when ROUTE names its address (on its TCP connection, if any), ROUTE when it
        names HOP or the same gateway's provider; None for any other host."""
        host, port = route.host.lower(), route.port
        if host == far.host.lower() and port == far.port:
            return far
        if hop is not None and (host, port) == hop:
            return route
        theirs = self._providers(far.host, far.port)
        if theirs and any(sid in theirs for sid in self._providers(host, port)):
            return route
        return None

    async def _refuse(self, call: Call, request: Request, incoming: Incoming,
                      server: ServerTransaction | None, now: float, status: int,
                      reason: str | None, why: str) -> None:
        """Answer REQUEST STATUS (an ACK: nothing), logged once a minute per source."""
        host, port = incoming.source
        if self._refusals.due(host, now):
            logger.warning("x %s in call %s from %s:%d, %s: refused (%d)", request.method,
                           call.call_id, host, port, why, status)
        if server is not None:
            await self._reply(server, status, reason, now=now)

    async def _bye(self, call: Call, request: Request, now: float) -> None:
        tags = {request.from_.tag, request.to.tag}
        if not call.answered or call.ended or call.primary_tag not in tags:
            return
        call.ended = True
        call.deadline = max(now, call.subscribed_until) + LINGER
        self._deadlines.arm(call)
        logger.info("- call %s ended by BYE from %s", call.call_id, user_of(request.from_))
        if call.cdr_sid:
            await cdr(self._calls.ended, call.cdr_sid, CallStatus.COMPLETED)

    def _find_call(self, request: Request) -> tuple[Call, bool] | None:
        """The call REQUEST belongs to, and whether it travels towards the callee."""
        call_id = request.call_id or ""
        from_tag, to_tag = request.from_.tag or "", request.to.tag or ""
        call = self._live_calls.get((call_id, from_tag))
        if call is not None:
            return call, True
        call = self._live_calls.get((call_id, to_tag))
        if call is not None:
            return call, False
        return None

    async def expire_call(self, call: Call, now: float) -> None:
        self._live_calls.pop(call.key, None)
        if call.answered and not call.ended:
            call.ended = True
            logger.warning("x call %s closed without a BYE after its idle limit", call.call_id)
            if call.cdr_sid:
                await cdr(self._calls.ended, call.cdr_sid, CallStatus.COMPLETED)
