"""In-dialog requests (RFC 3261 §16.12): the requests of a call we proxied, back through us.

Theory of operation. A request with a To tag was authenticated when its dialog was created:
it is forwarded without a challenge when it belongs to a call we proxied (``Call``, looked up
by Call-ID and the caller's From tag, in either direction), else answered 481, so the proxy
is no open relay. Our own Route entries are popped first (loose routing; those at a public
address we record-routed toward a provider behind NAT too, docs/gateways.md; a
strict-routing phone's Request-URI that is our Record-Route is replaced by the last Route,
§16.4, ``sip.routeset``); the request then goes where its next Route points, or else to the
far side's NAT address remembered from the dialog (a next hop without ``;lr`` is a strict
router: its URI becomes the Request-URI, §16.6 step 6). The ACK for a 2xx is forwarded
statelessly (on a branch derived from its own, so a retransmission gets the same one); any
other request gets a Context and a single branch, like a new request without Record-Route.

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
from appliance.sip.dialogs import LINGER, Call, CallKey, session_idle_limit, subscription_hold
from appliance.sip.forwarding import Context, Reply, ack_branch, branch_request, user_of
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
                 fork: Fork, media: Callable[[str, int], bool] = lambda _h, _p: False
                 ) -> None:
        """CONTEXTS and LIVE_CALLS are the proxy's own tables; ADDRESSES and LOCAL_HOSTS
        (live collections) are what "us" means in a Route, and PUBLIC, the public addresses
        written in our Record-Routes toward providers behind NAT (exact address and port).
        PUBLIC_TOWARD gives that address toward a peer that is such a provider, else None
        (our Via to it asks for ``rport``). SOURCE stamps a request's Via and says where
        its responses go, LOCAL is our address it arrived on. MEDIA says whether an
        address and port are a media worker's SIP socket."""
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
        target = remaining_route_target(request)
        if target is not None:
            route_to_strict_next_hop(request)
        else:
            to_tag = request.to.tag or ""
            target = call.callee(to_tag) if towards_callee else call.caller
        if target is None:
            if server is not None:
                await self._reply(server, 481, now=now)
            return
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
