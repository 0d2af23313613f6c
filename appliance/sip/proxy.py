"""The stateful proxy (RFC 3261 §16): Client → Client calls and MESSAGEs between desk phones.

Theory of operation. The front door hands every request it does not answer itself, and every
response, to ``Proxy.handle``. The proxy keeps its own ``TransactionTable``: a server
transaction for each request it handles, a client transaction for each branch it forwards,
and feeds them ``now`` from its timer clock. ``run()`` wakes it for the transactions'
timers, Timer C and dialog clean-up (``get_timer``/``handle_timer`` do the same for tests);
the branch and call deadlines are kept in a heap, ``sip.deadlines``. The proxy owns its tables
(requests in flight, branches, calls); the parts split off it are collaborators it owns and
hands the very same dicts to, which is why ``_shrink`` compacts them in place.

Two clocks. Every duration (the transactions' Timers A–M, Timer C, reaping, a call's ringing,
idle and linger deadlines, the session interval) runs on the *timer* clock, a monotonic one
(the event loop's by default, as the front door's transactions): the appliance has no RTC and
its wall clock is stepped by NTP after boot, by hours or days, forward or back, which must
neither expire every call at once nor stall every timer. The *wall* clock is for what must
mean the same after a restart: digest nonces (HMAC-stamped, checked across restarts), the
registrar's bindings (persisted absolute expiry). The guard's bans are read on the wall clock
too (by the front door and registrar), but live in memory only: a restart lifts them. CDR
times come from ``CallLog``'s own clock.

A new out-of-dialog request goes through, in order:

1. Max-Forwards (0 → 483; absent → 70), ``Proxy-Require`` (→ 420);
2. a method check: INVITE, MESSAGE and OPTIONS are routed; BYE/INFO/UPDATE/PRACK without a
   To tag → 481; SUBSCRIBE, PUBLISH, NOTIFY, REFER and unknown methods → 501 (in a call,
   they are relayed; a REFER toward a media worker is answered 403: ``sip.in_dialog``);
3. digest authentication (``sip.proxy_auth``: 407 challenges, 403 for bad credentials, a
   disabled Client or a From user that is not the digest username; nonces shared with the
   registrar, algorithms from ``[sip] digest_algorithms``);
   A request whose source address is a registered gateway's provider address
   (``gateway_caller``) is the provider's: never challenged, its ``Caller.gateway`` set, and
   the router routes it by its DID only (docs/gateways.md). One from a media worker's SIP
   socket is never challenged: a leg the calls service admitted (``media_caller``) goes on,
   anything else → 403 (a bug of ours: the worker's only credentials are a gateway's);
4. the caller must be REGISTERED (at least one live binding) → else 403: an unregistered or
   unauthenticated source reaches nobody (architecture.md "Who handles a call": no toll fraud);
5. the ``Router`` decides: fork to the callee's contacts, or refuse (404 unknown, 480 known
   but not registered, 403 no route).

Forking is parallel, to at most ``MAX_BRANCHES`` contacts. Each branch keeps the contact URI
as Request-URI but is *sent* to the binding's source address and TCP connection (phones
behind NAT only accept requests there; a TCP phone whose connection is gone, at its
Contact's port: ``Binding.target``). A branch the transport cannot send fails as a 503
(§16.9, §17.1.4), whether ``send`` says so at once (False) or only later through the
``on_error`` it is given (a TCP connect refused or timed out: ``_unreachable``, reported on
the next timer pass). Every branch (``forwarding.branch_request``) gets our
Via (fresh ``z9hG4bK`` branch), Max-Forwards minus one, and an INVITE gets ``Record-Route:
<sip:host:port;lr;transport=x>`` (two when the transport changes between the legs, RFC 5658),
so that in-dialog requests come back through us. Credentials for our realm are consumed (RFC
3261 §22.3).

Behind NAT (docs/gateways.md "Behind the office's NAT: the route set of a call"): the leg
on a gateway's provider side must reach us at the public address the trunk learned from the
provider's 200 to its REGISTER (``public_address``, ``sip.trunk.Trunk.public_address``), the
LAN side (phones, media workers) at our LAN one. An INVITE crossing between them gets two
Record-Route entries, one for each side, and our Via toward the provider asks for ``rport``
(RFC 3581). The public addresses so written are ours when an in-dialog request's Route names
them (``sip.routeset``), for nothing else. Without a learned address the wire is as without
NAT.

Responses go to ``sip.responses``: what each branch's responses do (forwarded, absorbed, the
best final chosen once every branch has one, the other branches CANCELled after a 2xx or a
6xx) and what a finished request keeps for its lingering branches. A callee's 2xx that comes
after its branch was given up (the caller already has its final) is ended by us, ACK then
BYE, never put through: for that an INVITE branch whose transaction ends without a 2xx is
remembered 64·T1 more (``sip.ended``). The caller's CANCEL, Timer C (3 min, reset by each
provisional) and the reaping of cancelled branches are in ``sip.cancel``.

In-dialog requests (a To tag) go to ``sip.in_dialog``: forwarded without a challenge when
they belong to a dialog of a call we proxied (else 481) and come from its party (else 403),
by loose routing, to the far side's NAT address, or to a Route beyond ours only when it names
that same far side (else 403: no relay to a provider or any host through a call); the BYE of
the answered dialog ends the call. The ACK for a non-2xx is absorbed by our server
transaction.

CDRs (``CallLog``) and SMS rows (``MessageLog``): what is written when is in ``sip.records``.
SIP MESSAGE between Clients is authenticated and routed like INVITE and forked with
non-INVITE client transactions; the appliance's own MESSAGEs (an SMS delivered to a Client)
are sent by ``sip.messenger``. A MESSAGE to a number goes out as an SMS through the router
(202, ``services.routing``); one to a Client with no registered phone is refused 480, not
stored (an SMS from the network to a Client is kept until it registers: ``services.messaging``).

Budgets (style.md habit 6): ``MAX_CONTEXTS`` proxied requests in flight, ``MAX_TRANSACTIONS``
transactions in all, ``MAX_CALLS`` tracked calls/dialogs, ``MAX_BRANCHES`` per fork. An
exhausted budget answers 503 (logged once per episode), never grows a table. One caller
holds at most 1/``CALLER_SHARE`` of ``MAX_CONTEXTS`` (then 503 with Retry-After to it only).
The INVITE branches remembered after their transaction ended (``sip.ended.MAX_ENDED``,
64·T1 each) are not a refusal: past the cap the oldest are forgotten.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from appliance.sip.cancel import Cancels
from appliance.sip.deadlines import Deadlines
from appliance.sip.dialogs import Call, CallKey
from appliance.sip.digest import Algorithm, Nonces
from appliance.sip.ended import MAX_ENDED, EndedBranches
from appliance.sip.errors import SipError, SipStateError
from appliance.sip.forwarding import (
    RINGING_LIFETIME,
    TIMER_C,
    Branch,
    Context,
    Late,
    branch_request,
    describe,
    local_response,
    tag_for,
    token,
    user_of,
)
from appliance.sip.guard import Guard
from appliance.sip.headers import NameAddr
from appliance.sip.hop import make_trying
from appliance.sip.in_dialog import FOREIGN_ROUTE, InDialog
from appliance.sip.memory import BurstTrimmer, compact
from appliance.sip.message import (
    Request,
    Response,
    make_response,
    max_forwards_status,
    stamp_received,
    unsupported_extensions,
)
from appliance.sip.messenger import Messenger
from appliance.sip.proxy_auth import ProxyAuth
from appliance.sip.proxy_ports import (
    Answer,
    Caller,
    CallLog,
    Contact,
    Directory,
    MessageLog,
    Refuse,
    Router,
)
from appliance.sip.records import cdr_open, message_open, record_refusal
from appliance.sip.responses import Responses
from appliance.sip.routeset import remaining_foreign_route, uri_is_us
from appliance.sip.transaction import (
    Deliver,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    State,
    Terminated,
    TimedOut,
    Transaction,
    Transmit,
    TransportFailed,
    client_transaction,
)
from appliance.sip.transaction_table import TransactionTable
from appliance.sip.wire import Flows, Incoming, Sender, Target, Targets

logger = logging.getLogger(__name__)

# Budgets. A desk-phone office has tens of phones; Kamailio's tm sizes its hash table for
# far more, but here every entry is a Python object, so the caps are what a Pi should hold.
# What is tracked outlives the call: an INVITE-to-BYE call leaves ~3 transactions for 64·T1
# (32 s: Timers L, M and J) and 2 for T4 (5 s), and its Call lingers LINGER (32 s) after
# the BYE. 300 calls/s thus keeps ~30,000 transactions and ~10,000 calls; the caps leave
# room for that. A finished transaction or call keeps only what it still needs (see
# ``Responses.settle`` and sip.transaction): ~4 KB for a whole call (bench/sip_linger.py).
MAX_CONTEXTS = 500  # proxied requests in flight (each holds up to MAX_BRANCHES branches)
# One caller (a Client login, or a gateway's provider) holds at most this share of
# MAX_CONTEXTS: a DoS test's one Client flooding INVITEs took all 500 and every other phone's
# calls got 503. A quarter (125 ringing calls from one desk phone) leaves room for the rest.
# Media workers are not limited: their legs are the calls service's, bounded by its own.
CALLER_SHARE = 4
MAX_TRANSACTIONS = 40_000  # server + client transactions, CANCEL/481 absorbers included
MAX_CALLS = 15_000  # calls and dialogs tracked for routing in-dialog requests and for CDRs
MAX_BRANCHES = 10  # parallel forks per request: the registrar's max contacts per AoR
IN_DIALOG_RESERVE = 0.1  # of MAX_TRANSACTIONS, kept for in-dialog requests and CANCELs
MAX_LOCAL_ADDRESSES = 64  # our own addresses seen in Incoming.local (interfaces, not peers)
MAX_PUBLIC_ADDRESSES = 16  # public addresses written in Record-Routes (NAT mappings seen)

ROUTED = frozenset({"INVITE", "MESSAGE", "OPTIONS"})
TIMER_GRANULARITY = 0.05  # seconds between timer scans under load (see Proxy.run)
# The longest the timer task sleeps with nothing due, so that what is kept about stale
# nonces is let go of while the proxy is idle too.
IDLE_WAKE = 60.0
DIALOG_ONLY = frozenset({"BYE", "INFO", "UPDATE", "PRACK", "ACK"})
# What a transaction reports when it could not reach its peer (built once, not per action).
_FAILED = (TimedOut, TransportFailed)


def _loop_time() -> float:
    """The running event loop's monotonic time: the default timer clock."""
    return asyncio.get_running_loop().time()


class Proxy:
    """The stateful proxy. A ``wire.MessageHandler`` for everything but REGISTER/OPTIONS."""

    def __init__(
        self,
        sender: Sender,
        directory: Directory,
        router: Router,
        calls: CallLog,
        messages: MessageLog,
        *,
        clock: Callable[[], float],
        realm: Callable[[], str],
        timer_clock: Callable[[], float] | None = None,
        local_hosts: Collection[str] = (),
        address: tuple[str, int] | None = None,
        nonces: Nonces | None = None,
        guard: Guard | None = None,
        algorithms: Sequence[Algorithm] = (Algorithm.SHA256, Algorithm.MD5),
        max_contexts: int = MAX_CONTEXTS,
        max_transactions: int = MAX_TRANSACTIONS,
        max_calls: int = MAX_CALLS,
        max_branches: int = MAX_BRANCHES,
        max_ended: int = MAX_ENDED,
    ) -> None:
        """CLOCK gives wall-clock seconds (nonces, binding expiry, the guard's bans);
        TIMER_CLOCK monotonic seconds for every timer and deadline (default: the running
        event loop's time, as the front door's transactions use). Our Via and Record-Route
        carry the address each request arrived on (``Incoming.local``), or ADDRESS when
        given. LOCAL_HOSTS (a live collection: the transport's ``local_hosts``) and every
        address a request arrived on are what "us" means in a Route or a response's Via."""
        self._sender = sender
        self._router = router
        self._calls = calls
        self._messages = messages
        self._clock = clock
        self._timer_clock = timer_clock or _loop_time
        self.address = address
        self._realm = realm
        self._local_hosts = local_hosts
        self._locals: set[tuple[str, int]] = set()  # addresses requests arrived on
        # The public addresses we wrote in a Record-Route toward a provider (oldest first):
        # its in-dialog requests name them in their Route, for as long as the call lasts,
        # even when the trunk has learned another mapping since.
        self._public: dict[tuple[str, int], None] = {}
        if address is not None:
            self._locals.add((address[0].lower(), address[1]))
        self._guard = guard
        # Share the registrar's Nonces (persisted secret) so a restart does not turn the
        # nonces phones cache into failures; an unknown nonce is re-challenged anyway.
        self._auth = ProxyAuth(directory, realm=realm, reply=self._reply,
                               nonces=nonces or Nonces(secrets.token_bytes(32)), guard=guard,
                               algorithms=algorithms)
        self.max_contexts = max_contexts
        self._over_share: set[str] = set()  # callers told so, logged once per episode
        self.max_transactions = max_transactions
        self.max_calls = max_calls
        self.max_branches = max_branches
        # Each transaction's peer (where its messages go) is its ``peer`` slot.
        self._table = TransactionTable()
        self._branches: dict[Transaction, Branch] = {}  # client transaction -> its branch
        # An answered INVITE's client transaction lingering in Accepted once its request is
        # over (its Branch and Context are dropped): what a 2xx retransmission still needs.
        self._late: dict[Transaction, Late] = {}
        # INVITE branches whose client transaction ended without a 2xx, for 64·T1: a 2xx
        # from one of them is ended by us (sip.ended, Responses.late_2xx).
        self._ended = EndedBranches(max_ended)
        self._contexts: dict[Transaction, Context] = {}  # server transaction -> its request
        self._live_calls: dict[CallKey, Call] = {}
        self._targets = Targets()  # peers' Targets, shared by their transactions and calls
        # Gives memory back once a burst has drained.
        self._trimmer = BurstTrimmer(before=self._shrink)
        # Branch and Call deadlines (Timer C, reaping, call expiry), see sip.deadlines.
        self._deadlines = Deadlines(deadline_of=self._deadline_of, live=self._tracked)
        # The response side (sip.responses) works on these same tables.
        self._responses = Responses(sender=sender, table=self._table, deadlines=self._deadlines,
                                    calls=calls, messages=messages, contexts=self._contexts,
                                    branches=self._branches, late=self._late,
                                    ended=self._ended, drain=self._drain,
                                    ours=self._is_our_uri)
        # The caller's CANCEL, Timer C and reaping (sip.cancel).
        self._cancels = Cancels(table=self._table, responses=self._responses,
                                contexts=self._contexts, server=self._server, reply=self._reply,
                                forget=self._forget)
        # In-dialog requests and the calls they belong to (sip.in_dialog).
        self._in_dialog = InDialog(sender=sender, deadlines=self._deadlines, calls=calls,
                                   contexts=self._contexts, live_calls=self._live_calls,
                                   addresses=self._locals, local_hosts=local_hosts,
                                   public=self._public, public_toward=self._public_toward,
                                   source=self._source, local=self._local, reply=self._reply,
                                   fork=self._fork, media=self._is_media,
                                   phone_at=self._phone_at, providers=self._providers)
        self._wake = asyncio.Event()
        # Transactions whose message the transport found it could not send only after
        # ``send`` returned (a TCP connect that failed): reported on the next timer pass.
        self._unsent: dict[Transaction, None] = {}
        self._overloaded = False
        # MESSAGEs the appliance itself sends (an SMS delivered to a Client, sip.messenger):
        # their client transactions and the futures that receive the final status.
        self._originated: dict[Transaction, asyncio.Future[int]] = {}
        self.messenger = Messenger(table=self._table, originated=self._originated,
                                   drain=self._drain, wake=self._wake, address=address,
                                   realm=realm, clock=self._timer_clock)
        # (source, request) -> the Caller of a media worker's INVITE, else None (calls service)
        self.media_caller: Callable[[tuple[str, int], Request], Caller | None] | None = None
        # (address, port) -> whether it is one of our media workers' SIP sockets (services
        # wiring): what media_caller does not admit from there is refused, not challenged.
        self.media_source: Callable[[str, int], bool] | None = None
        # (source, request) -> the Caller of a request from a gateway's provider address
        # (services wiring: sip.trunk.Trunk.gateway_at), else None.
        self.gateway_caller: Callable[[tuple[str, int], Request], Caller | None] | None = None
        # (host, port) -> the sids of the gateways whose provider is at HOST:PORT: an address
        # it sends from (sip.trunk.Trunk.gateways_at) or its Proxy name. The parties of a
        # call to or from a provider, for its in-dialog requests (sip.in_dialog).
        self.provider_of: Callable[[str, int], Collection[str]] | None = None
        # (host, port) -> the public address and port the trunk learned from the provider
        # at HOST:PORT (sip.trunk.Trunk.public_address), else None: no NAT between us.
        self.public_address: Callable[[str, int], tuple[str, int] | None] | None = None
        # The transport: a TCP connection that carried an accepted request from a
        # provider's address or a media worker is trusted (it idles as long as a
        # registered phone's flow may; nothing takes that back before it closes). A
        # Client's connections are the registrar's business (its bindings).
        self.flows: Flows | None = None

    # --- the MessageHandler surface -----------------------------------------------------

    async def handle(self, incoming: Incoming) -> None:
        now = self._timer_clock()
        if len(self._locals) < MAX_LOCAL_ADDRESSES:
            self._locals.add((incoming.local[0].lower(), incoming.local[1]))
        try:
            if isinstance(incoming.message, Response):
                await self._responses.on_response(incoming.message, now)
            else:
                await self._on_request(incoming, incoming.message, now)
        except SipError as err:  # a malformed header the parser let through lazily
            logger.info("x %s from %s:%s: %s", describe(incoming.message), *incoming.source, err)
            if isinstance(incoming.message, Request):
                await self._failed(incoming.message, now, err.status)
        except Exception:
            if isinstance(incoming.message, Request):
                await self._failed(incoming.message, now, 500)
            raise  # the transport logs it, once
        finally:
            self._wake.set()

    async def _failed(self, request: Request, now: float, status: int) -> None:
        """REQUEST's handling raised: a server transaction of ours that it left unanswered
        and with no branch to answer it (Trying and Proceeding have no timer) answers STATUS
        (500: RFC 3261 §21.5.1) instead of staying in the table for ever. When even that
        answer fails, the transaction is dropped unanswered: a table slot held for ever per
        such request is what a flood of them would turn into a denial of service."""
        if request.method == "ACK":
            return  # no transaction of its own (match_request would give its INVITE's)
        try:
            server = self._table.match_request(request)
        except Exception:  # noqa: BLE001 - no key, so no transaction was added under it
            return
        if server is None or server in self._contexts or \
                server.state not in (State.TRYING, State.PROCEEDING):
            return
        try:
            await self._reply(server, status if 400 <= status < 700 else 500, now=now)
        except Exception as err:  # noqa: BLE001 - the request's own failure is the one raised
            logger.warning("x cannot answer a failed %s either (%s): dropped",
                           describe(request), type(err).__name__)
        finally:
            if server.state in (State.TRYING, State.PROCEEDING):
                self._table.remove(server)

    def connection_closed(self, connection_id: str) -> None:
        """Nothing to drop: a branch sent to a closed connection goes to its target address
        on a new one, and fails at once (503) when that connect fails (``_unreachable``)."""
        logger.debug("- connection %s closed", connection_id)

    # --- timers ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` next needs to run (-inf: now, for a transport error)."""
        if self._unsent:
            return float("-inf")
        times = [t for t in (self._table.get_timer(), self._deadlines.earliest())
                 if t is not None]
        return min(times, default=None)

    def _tracked(self) -> int:
        """How many branches and calls the deadline heap may hold entries for."""
        return len(self._branches) + len(self._live_calls)

    def _deadline_of(self, key: Transaction | Call) -> float | None:
        """The current deadline of a live branch (by its client transaction) or call, else
        None: what a pruned deadline heap keeps."""
        if isinstance(key, Call):
            return key.deadline if self._live_calls.get(key.key) is key else None
        branch = self._branches.get(key)
        return branch.deadline if branch is not None else None

    async def handle_timer(self, now: float) -> None:
        if self._unsent:
            unsent, self._unsent = self._unsent, {}
            for txn in unsent:  # one that has ended meanwhile ignores it
                # Each on its own: the set is swapped out, so one that raised would lose
                # the rest (their branches left to wait for Timer B).
                try:
                    txn.transport_error(now)
                    await self._drain(txn, txn.pop_actions(), now)
                except Exception:
                    logger.exception("x reporting a transport error to a %s failed",
                                     type(txn).__name__)
        for txn, actions in self._table.handle_timer(now):
            await self._drain(txn, actions, now)
        while (key := self._deadlines.pop_due(now)) is not None:
            if isinstance(key, Call):
                if self._live_calls.get(key.key) is not key:
                    continue
                if key.deadline > now:
                    self._deadlines.arm(key)
                    continue
                await self._in_dialog.expire_call(key, now)
            else:
                branch = self._branches.get(key)
                if branch is None or branch.deadline is None:
                    continue
                if branch.deadline > now:
                    self._deadlines.arm(branch)
                    continue
                await self._cancels.branch_timer(branch, now)
        if self._deadlines.overgrown():
            self._deadlines.prune()  # after a burst: let go of what finished calls left
        self._ended.expire(now)
        self._trimmer.observe(len(self._table) + len(self._live_calls))

    def _shrink(self) -> None:
        """Shrink the tables that grew during a burst (a dict never shrinks), in place."""
        self._table.compact()
        compact(self._branches)
        compact(self._late)
        self._ended.compact()
        self._targets.clear()
        compact(self._contexts)
        compact(self._live_calls)
        compact(self._originated)

    async def run(self) -> None:
        """Drive the timers until cancelled (``Appliance.start`` runs it, ``stop`` cancels it).

        Every message wakes this task so it can see new deadlines, but a scan of the timers
        costs time in proportion to the live transactions; under load, scans are spaced at
        least TIMER_GRANULARITY apart, so one scan serves a burst of messages instead of each
        message paying for its own (which made the cost per call grow with the call rate).
        SIP's shortest timers (T1 = 500 ms) are far longer than the granularity.
        """
        last_scan = float("-inf")
        while True:
            deadline = self.get_timer()
            delay = IDLE_WAKE if deadline is None else \
                min(max(0.0, deadline - self._timer_clock()), IDLE_WAKE)
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            since = time.monotonic() - last_scan
            if since < TIMER_GRANULARITY:
                await asyncio.sleep(TIMER_GRANULARITY - since)
            last_scan = time.monotonic()
            try:
                await self.handle_timer(self._timer_clock())
            except Exception:  # noqa: BLE001 - one call's bug must not stop every call's timers
                logger.exception("x proxy timer handling failed")
            self.forget_stale_nonces()

    def forget_stale_nonces(self) -> None:
        """Let go of the nc-replay table's stale nonces (the timer task does this); nonces
        are stamped with the wall clock, so their staleness is read on it."""
        self._auth.forget_stale(self._clock())

    # --- digest state, kept on the ProxyAuth (sip.proxy_auth) ---------------------------

    @property
    def nonces(self) -> Nonces:
        """The digest nonces; the composition root shares the registrar's."""
        return self._auth.nonces

    @nonces.setter
    def nonces(self, nonces: Nonces) -> None:
        self._auth.nonces = nonces

    # --- counters for /health and tests ------------------------------------------------

    @property
    def transactions(self) -> int:
        return len(self._table)

    @property
    def calls(self) -> int:
        return len(self._live_calls)

    @property
    def in_flight(self) -> int:
        return len(self._contexts)

    @property
    def max_ended(self) -> int:
        """How many ended INVITE branches are remembered for a late 2xx (``sip.ended``)."""
        return self._ended.max_size

    @max_ended.setter
    def max_ended(self, value: int) -> None:
        self._ended.max_size = value

    def full_budgets(self) -> list[str]:
        """The budgets that are exhausted now, each as "<what> (<count> of <limit>)": while
        one is, new requests of its kind are answered 503."""
        full = []
        if len(self._contexts) >= self.max_contexts:
            full.append(f"proxied requests ({len(self._contexts)} of {self.max_contexts})")
        if len(self._live_calls) >= self.max_calls:
            full.append(f"calls ({len(self._live_calls)} of {self.max_calls})")
        cap = self._new_request_cap()
        if len(self._table) >= cap:
            full.append(f"proxy transactions ({len(self._table)} of {cap})")
        return full

    # --- requests ---------------------------------------------------------------------------

    async def _on_request(self, incoming: Incoming, request: Request, now: float) -> None:
        if request.method == "ACK":
            txn = self._table.match_request(request)
            if txn is not None:  # the ACK for a non-2xx we sent: hop-by-hop, absorbed
                txn.receive(request, now)
                await self._drain(txn, txn.pop_actions(), now)
            else:
                await self._in_dialog.forward(incoming, request, now)
            return
        txn = self._table.match_request(request)
        if txn is not None:  # a retransmission
            txn.receive(request, now)
            await self._drain(txn, txn.pop_actions(), now)
            return
        source = self._source(incoming, request)
        if source is None:
            return
        if len(self._table) >= self._transaction_cap(request):
            self._refuse_stateless(request, source, "transactions")
            return
        if request.method == "CANCEL":
            await self._cancels.on_cancel(request, source, now)
            return
        server = self._server(request, source, now)
        if (status := max_forwards_status(request)) is not None:
            await self._reply(server, status, now=now)
            return
        if unsupported := unsupported_extensions(request, (), proxy=True):
            await self._reply(server, 420, now=now,
                              headers=[("Unsupported", ", ".join(unsupported))])
            return
        if request.to.tag is not None:
            await self._in_dialog.forward(incoming, request, now, server=server)
        elif request.method in DIALOG_ONLY:
            await self._reply(server, 481, now=now)
        elif request.method not in ROUTED:
            await self._reply(server, 501, now=now)
        else:
            await self._new_request(server, request, source, incoming, now)

    def _transaction_cap(self, request: Request) -> int:
        """How full the table may be for REQUEST to be let in. New requests leave the last
        IN_DIALOG_RESERVE of it to in-dialog ones (with a To tag: BYE, re-INVITE, ...) and to
        CANCELs: when finished calls fill the table under load, the calls in progress can
        still end, ringing ones be hung up, and their CDRs close at the right time instead
        of at the idle limit."""
        if request.to.tag is not None or request.method == "CANCEL":
            return self.max_transactions
        return self._new_request_cap()

    def _new_request_cap(self) -> int:
        return self.max_transactions - max(1, int(self.max_transactions * IN_DIALOG_RESERVE))

    def _source(self, incoming: Incoming, request: Request) -> Target | None:
        """Stamp received/rport on the top Via and say where responses go (None: nowhere)."""
        host, port = incoming.source
        via = stamp_received(request, host, port)
        if via.response_target() is None:
            logger.info("x %s with a broadcast/multicast Via: dropped", describe(request))
            return None
        return self._targets.get(incoming.transport, host, port, incoming.connection_id)

    def _server(self, request: Request, source: Target, now: float) -> ServerTransaction:
        reliable = source.transport != "udp"
        server: ServerTransaction
        if request.method == "INVITE":
            # We forward the 2xx we get and never build one: nothing to keep once answered.
            server = InviteServerTransaction(request, reliable=reliable, now=now,
                                             keep_request=False)
        else:
            server = NonInviteServerTransaction(request, reliable=reliable, now=now)
        server.pop_actions()  # the Deliver of the request itself: we hold it already
        server.peer = source
        self._table.add(server)
        return server

    def _refuse_stateless(self, request: Request, source: Target, budget: str) -> None:
        if not self._overloaded:
            logger.warning("x budget of %s exhausted: answering 503", budget)
            self._overloaded = True
        if request.method != "ACK":
            response = make_response(request, 503, to_tag=token())
            response.add("Retry-After", "5")
            self._sender.send(response, source)

    # --- new out-of-dialog requests -----------------------------------------------------

    async def _new_request(self, server: ServerTransaction, request: Request, source: Target,
                           incoming: Incoming, now: float) -> None:
        # NOW (timer clock) drives the transactions and the call's deadlines; WALL is for
        # what is kept across restarts: nonces, bindings, bans (see the module docstring).
        wall = self._clock()
        caller = self.media_caller(incoming.source, request) if self.media_caller else None
        if caller is None and self._is_media(*incoming.source):
            # A worker's request for no leg we placed is a bug of ours, not a caller to
            # challenge: its only credentials are a gateway's, which must not answer our 407
            # (they would only count as failed guesses, Guard.spared).
            logger.warning("x %s from media worker %s:%d: not a leg we placed; refused",
                           request.method, *incoming.source)
            await self._reply(server, 403, "Not A Leg We Placed", now=now)
            return
        if caller is None and self.gateway_caller is not None and (
                self._guard is None or not self._guard.is_banned(
                    incoming.source[0], wall, incoming.source[1])):
            caller = self.gateway_caller(incoming.source, request)
        if caller is None:
            caller = await self._auth.authenticate(server, request, incoming, now, wall=wall)
        if caller is None or server.state not in (State.PROCEEDING, State.TRYING):
            return  # challenged or refused, or CANCELled while we looked the caller up
        if (not caller.media and not caller.gateway
                and not self._router.registered(caller.login, wall)):
            logger.info("x %s from %s: caller not registered", request.method, caller.login)
            await self._reply(server, 403, "Caller Not Registered", now=now)
            return
        if remaining_foreign_route(request, self._locals, self._local_hosts):
            await self._reply(server, 403, FOREIGN_ROUTE, now=now)
            return
        if len(self._contexts) >= self.max_contexts or (
            request.method == "INVITE" and len(self._live_calls) >= self.max_calls
        ):
            if not self._overloaded:
                logger.warning("x budget of proxied requests/calls exhausted: answering 503")
                self._overloaded = True
            await self._reply(server, 503, now=now, headers=[("Retry-After", "5")])
            return
        self._overloaded = False
        if self._over_its_share(caller):
            await self._reply(server, 503, "Too Many Requests In Progress", now=now,
                              headers=[("Retry-After", "5")])
            return
        if (caller.media or caller.gateway) and incoming.connection_id is not None \
                and self.flows is not None:
            # Accepted from a provider's address or a media worker (a TCP handshake cannot
            # spoof either): its flow idles as long as a phone's. Not a Client's: one
            # password would trust every connection it sends on, for good; a phone's flow
            # is trusted through its binding (the registrar).
            self.flows.trust(incoming.connection_id)
        decision = await self._router.route(request, caller, wall)
        if server.state not in (State.PROCEEDING, State.TRYING):
            return  # CANCELled meanwhile: 487 already sent
        context = Context(request=request, server=server, source=source,
                          local=self._local(incoming), caller=caller)
        if isinstance(decision, Answer):
            logger.info("- %s %s taken locally: %d", request.method, caller.login,
                        decision.status)
            await self._reply(server, decision.status, decision.reason, now=now)
            return
        if not isinstance(decision, Refuse) and not decision.contacts:
            decision = Refuse(480)  # a route to nobody: the caller still gets a final
        if isinstance(decision, Refuse):
            context.callee = user_of(NameAddr(request.uri)) or request.uri
            logger.log(logging.DEBUG if decision.logged else logging.INFO,
                       "x %s %s -> %s: %d %s", request.method, caller.login, context.callee,
                       decision.status, decision.reason or "")
            await self._reply(server, decision.status, decision.reason, now=now,
                              headers=decision.headers)
            if not caller.media and not decision.logged:
                await record_refusal(self._calls, self._messages, context, decision.status,
                                     decision.reason)
            return
        context.callee = decision.callee
        self._contexts[server] = context
        if request.method == "INVITE":
            await self._reply(server, 100, now=now)
            call = Call(call_id=request.call_id or "", caller_tag=request.from_.tag or "",
                        caller=source, deadline=now + RINGING_LIFETIME,
                        cdr_sid=self._calls.new_sid() if decision.cdr_sid is None
                        else decision.cdr_sid or None,
                        caller_login="" if caller.media or caller.gateway else caller.login,
                        callee_login=decision.callee if decision.phones else "",
                        keep_credentials=decision.keep_credentials)
            context.phone_number_sid = decision.phone_number_sid
            context.cdr_statuses = decision.cdr_statuses
            context.account_sid = decision.account_sid
            context.call = call
            self._live_calls[call.key] = call
            self._deadlines.arm(call)
        elif request.method == "MESSAGE":
            # Listed before the relay, so that no answer can outrun its row; nothing here
            # waits for the database (the row is queued).
            message_open(self._messages, context)
        contacts = decision.contacts[: self.max_branches]
        # Per call: this and "answered" at debug, the end of the call at info (one line).
        logger.debug("> %s %s -> %s (%d contact%s)", request.method, caller.login,
                     decision.callee, len(contacts), "" if len(contacts) == 1 else "s")
        await self._fork(context, contacts, incoming, now, record_route=request.method == "INVITE",
                         headers=decision.headers, keep_credentials=decision.keep_credentials)
        if context.call is not None and context.call.cdr_sid:
            await cdr_open(self._calls, context)

    def _over_its_share(self, caller: Caller) -> bool:
        """True when CALLER holds its share of the proxied requests in flight already."""
        share = max(1, self.max_contexts // CALLER_SHARE)
        if caller.media or len(self._contexts) < share:
            return False
        key = _share_key(caller)
        held = sum(1 for c in self._contexts.values()
                   if c.caller is not None and not c.caller.media and _share_key(c.caller) == key)
        if held < share:
            self._over_share.discard(key)
            return False
        if key not in self._over_share:
            logger.warning("x %s holds %d proxied requests in flight (its share): answering "
                           "its new ones 503", key, held)
            if len(self._over_share) >= 1024:  # bounded: a forgotten one is logged again
                self._over_share.clear()
            self._over_share.add(key)
        return True

    # --- forking -------------------------------------------------------------------------

    async def _fork(self, context: Context, contacts: Collection[Contact], incoming: Incoming,
                    now: float, *, record_route: bool,
                    headers: Collection[tuple[str, str]] = (),
                    keep_credentials: bool = False) -> None:
        public_in = self._public_toward(Target(incoming.transport, *incoming.source)) \
            if record_route else None
        for contact in contacts:
            public_out = self._public_toward(contact.target)
            request = branch_request(context.request, contact.uri, incoming.transport,
                                     contact.target.transport, context.local,
                                     record_route=record_route,
                                     keep_credentials=keep_credentials,
                                     public_in=public_in, public_out=public_out)
            if (context.caller is not None and not context.caller.media) or keep_credentials:
                request.remove("x-leg-id")  # only we name legs towards a media worker
            for name, value in headers:
                request.set(name, value)
            target = self._targets.share(contact.target)
            reliable = target.transport != "udp"
            txn = client_transaction(request, reliable=reliable, now=now)
            branch = Branch(context=context, request=request, target=target, txn=txn)
            if isinstance(txn, InviteClientTransaction):
                branch.deadline = now + TIMER_C
                self._deadlines.arm(branch)
            context.branches.append(branch)
            txn.peer = target
            self._table.add(txn)
            self._branches[txn] = branch
            await self._drain(txn, txn.pop_actions(), now)

    def _is_our_uri(self, uri: str) -> bool:
        return uri_is_us(uri, self._locals, self._local_hosts, userless=True,
                         public=self._public)

    def _phone_at(self, login: str, host: str, port: int | None) -> bool:
        """Whether one of Client LOGIN's phones is registered from HOST:PORT (any port when
        None), read on the wall clock as bindings are."""
        return self._router.phone_at(login, host, port, self._clock())

    def _providers(self, host: str, port: int) -> Collection[str]:
        return self.provider_of(host, port) if self.provider_of is not None else ()

    def _is_media(self, host: str, port: int) -> bool:
        return self.media_source is not None and self.media_source(host, port)

    def _local(self, incoming: Incoming) -> tuple[str, int]:
        return self.address or incoming.local

    def _public_toward(self, peer: Target) -> tuple[str, int] | None:
        """The public address PEER, a gateway's provider, reaches us at through the NAT;
        None for every other peer, and without a learned one. Remembered as ours for the
        Route of in-dialog requests (``MAX_PUBLIC_ADDRESSES``, the oldest let go first)."""
        if self.public_address is None or peer.transport != "udp":
            return None  # trunk lines are UDP only
        public = self.public_address(peer.host, peer.port)
        if public is None:
            return None
        key = (public[0].lower(), public[1])
        self._public.pop(key, None)
        self._public[key] = None
        while len(self._public) > MAX_PUBLIC_ADDRESSES:
            del self._public[next(iter(self._public))]
        return public

    # --- transactions and sending -----------------------------------------------------------

    def _unreachable(self, txn: Transaction) -> None:
        """The transport's late word that TXN's message did not go out (``Sender.send``'s
        on_error, from the loop): the same transport error as a send that fails at once,
        handled on the next timer pass, where it can be awaited."""
        self._unsent[txn] = None
        self._wake.set()

    async def _drain(self, txn: Transaction, actions: list[Any], now: float) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                target = txn.peer
                if target is not None and self._sender.send(
                        action.message, target, action.data,
                        on_error=functools.partial(self._unreachable, txn)) is False:
                    txn.transport_error(now)  # reported to us, the TU, by what follows
                    await self._drain(txn, txn.pop_actions(), now)
            elif isinstance(action, Deliver):
                await self._deliver(txn, action.message, now)
            elif isinstance(action, _FAILED):
                # A branch that timed out got a 408; one that could not be sent to, a 503
                # (§16.9), which the caller sees as 500 (§16.7 step 6).
                status = 408 if isinstance(action, TimedOut) else 503
                future = self._originated.get(txn)
                branch = self._branches.get(txn)
                if future is not None:
                    if not future.done():
                        future.set_result(status)
                elif branch is not None and not branch.done:
                    await self._responses.branch_response(branch, local_response(
                        branch.context.request, status), now)
            elif isinstance(action, Terminated):
                self._table.remove(txn)
                self._forget(txn, now)

    async def _deliver(self, txn: Transaction, message: Request | Response, now: float) -> None:
        if isinstance(message, Response) and txn in self._originated:
            future = self._originated[txn]
            if message.status >= 200 and not future.done():
                future.set_result(message.status)
            return
        if isinstance(message, Response):
            branch = self._branches.get(txn)
            if branch is not None:
                await self._responses.branch_response(branch, message, now)
                if self._contexts.get(branch.context.server) is not branch.context:
                    self._responses.settle(branch)  # its request was over already
                return
            late = self._late.get(txn)
            if late is not None:
                await self._responses.late_response(txn, late, message, now)
            return
        if message.method == "ACK":  # RFC 6026: an ACK for a 2xx reusing the INVITE branch
            peer = txn.peer
            context = self._contexts.get(txn)
            local = context.local if context else self.address or ("127.0.0.1", 5060)
            incoming = Incoming(message, peer.transport if peer else "udp",
                                (peer.host, peer.port) if peer else ("", 0), local,
                                peer.connection_id if peer else None)
            await self._in_dialog.forward(incoming, message, now)

    def _forget(self, txn: Transaction, now: float) -> None:
        """TXN is over (terminated, or dropped at NOW by Timer C or reaping): let go of what
        was kept for it. An INVITE branch that never got a 2xx is remembered a while longer
        (sip.ended): its callee may still answer."""
        future = self._originated.pop(txn, None)
        if future is not None and not future.done():
            future.set_result(408)
        late = self._late.pop(txn, None)
        branch = self._branches.pop(txn, None)
        if branch is not None and branch.final is None:
            branch.final = local_response(branch.context.request, 408)
        self._contexts.pop(txn, None)
        answered = late is not None or (branch is not None and branch.final is not None
                                        and 200 <= branch.final.status < 300)
        if isinstance(txn, InviteClientTransaction) and not answered and txn.peer is not None:
            self._ended.remember(txn.key, txn.request, txn.peer, now)

    async def _reply(self, server: ServerTransaction, status: int, reason: str | None = None,
                     *, now: float, headers: Collection[tuple[str, str]] = ()) -> None:
        response = make_trying(server.request) if status == 100 else \
            make_response(server.request, status, reason, to_tag=tag_for(server.request))
        for name, value in headers:
            response.add(name, value)
        try:
            server.send(response, now)
        except SipStateError:
            return
        await self._drain(server, server.pop_actions(), now)


def _share_key(caller: Caller) -> str:
    """Whose share of the proxied requests a request counts against."""
    return f"gateway {caller.gateway}" if caller.gateway else f"Client {caller.login}"
