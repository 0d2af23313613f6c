"""REGISTER (RFC 3261 §10.3, sip.md §2.3, api-behaviour.md §11): digest, bindings, replies.

Theory of operation. ``Registrar.handle(incoming)`` turns one REGISTER into the response to
send (or None: drop it); ``answer_plain`` does the same for the common REGISTER over UDP that
the front door's quick path reads straight from its bytes (``register_view``). Both read the
request into ``RegisterFields`` and call ``decide``, so every rule below holds for both; only
the reading and the writing of the reply differ.

The address-of-record is the **Client login**, the To-URI's user part (unescaped); the To
host is not checked, since an appliance serves one organization whose logins are unique.
``Location`` is keyed by that login, so ``location.lookup(login, now)`` is how the proxy
finds a Client's phones (``aor_of(uri)`` gives the key for a URI).

Authentication, in order:

| Situation | Reply |
|---|---|
| no credentials for our realm, or a nonce not ours (1) | 401, a fresh challenge |
| our nonce, right password: nonce expired, ``nc`` seen (3), or used (no qop) | 401 ``stale=true`` |
| wrong password (any nonce age or ``nc``), unknown user, username ≠ login | **403**, a failure |
| right password, Client disabled or its account not active | **403**, never re-challenged |
| broken credentials (missing fields, unknown algorithm or qop, foreign ``uri``) (2) | 400 |

(1) Forged, issued before the nonce secret changed, or issued to another source address (a
phone whose address changed; a spoofer's, fetched at its own): not counted, and checked before
the password, so the reply says nothing about it.
(2) A digest ``uri`` that is not the Request-URI by RFC 3261 §19.1.4 (RFC 7616 §3.4.6); or a
parameter holding a byte that is no UTF-8 (``DigestCredentials.parse`` refuses it).
(3) In a new request (another Via branch): a phone reusing its cached credentials, or a replay
of what it sent. Not a failure: the response is right, so counting it would ban the phone's
own address. A retransmission of the request that used that ``nc`` (same nonce, nc and
branch) gets that request's answer again (``_last_accepted``).

- **401, not 407.** api-behaviour.md §11 says Restcomm answers REGISTER with 407
  Proxy-Authenticate; RFC 3261 §10.3 (and every desk phone) expects a registrar's 401
  WWW-Authenticate, so that is what we send. Phones answer either, but some only retry on 401.
- **403 for a bad password** follows api-behaviour.md §11 (Restcomm issue #935: do not
  re-challenge). The failure is counted per source IP in ``Guard``; after ``max_failures`` the
  source is banned and the front door drops everything it sends. Only a digest answering a
  nonce issued to that very source can fail (a nonce is bound to the address it was sent to,
  ``digest.Nonces``; any other gets a fresh 401, (1)): a UDP spoofer who never sees the
  challenges sent to a desk phone's address cannot get it banned.
- **No user enumeration** (sip.md §3, svwar): the realm of an unknown login is the
  appliance realm, the challenge is built by the same code with the same headers, and an
  unknown login presenting credentials gets the same 403 as a wrong password.
- Challenges offer MD5 then SHA-256 by default (``DEFAULT_ALGORITHMS`` says why that is
  not RFC 8760's SHA-256-first), both ``qop="auth"``. Nonces are
  stateless HMACs (``digest.Nonces``) whose secret the composition root persists, so a
  restart does not invalidate the nonces phones hold; an ``nc`` replay binds nothing (3).

Bindings: ``Location.register`` applies the checks (400 for a bad ``*`` or CSeq order, 423 +
Min-Expires, 503 for too many contacts; 400 for a Contact that is not a SIP URI or whose
expires or q is not RFC 3261's). The 200 lists every contact with its q-value and remaining
expires, plus a Date header. After each change the AoR's bindings are published to the
Directory for the API at once, and saved through the ``BindingStore`` **write-behind**: the
changed AoRs are marked, and at most ``flush_interval`` (1 s) later one store call writes the
current snapshot of every marked AoR in one transaction (``flush()`` does it at once; ``stop()``
does it last). A phone refreshing its binding every minute thus costs no write of its own, and
a burst of REGISTERs costs one commit per second instead of one each. What a power cut can
lose is the last second of binding changes: a phone whose binding is lost is unreachable only
until its next REGISTER (bindings are a cache of what phones keep telling us, unlike SMS).
A timer task removes bindings when they expire; bindings of a closed TCP connection are
removed at once, and so are those of a Client deleted or disabled (or whose account stops
being active): ``revoke``, which the composition root runs after each provisioning change.
The TCP connections the bindings were made on follow them (``flows``, the transport): a
connection is trusted (``Flows.trust``: it may idle as long as a registered phone's silent
flow) when a binding first refers to it, and no longer (``Flows.distrust``: the short idle
timeout again, from then) when the last binding referring to it goes — unregistered,
expired, revoked, or moved to another connection by a REGISTER sent there. A REGISTER that
binds nothing on a connection (a query, an unregistration) does not trust it.
The keep-alive (``sip.ping_schedule``, ``sip.pinger``; none when ``[sip] ping_interval`` is 0) is
told of every change of an AoR's bindings, and of the contacts a REGISTER refreshed (proof
of life); it pings each contact with OPTIONS and calls ``unreachable`` for one that left
three pings in a row unanswered, which removes that binding as its expiry would have.
Times are wall-clock seconds from the ``clock`` callable, because expiry times are persisted
across restarts.

Logging: a REGISTER that adds or removes a contact is logged at info; a refresh of the same
contacts only at debug (a 200-phone office re-registers a few times a second all day).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from appliance.errors import StoreBusy
from appliance.services.telephony import SipUser
from appliance.sip.bindings import (
    Binding,
    Location,
    Origin,
    RegistrationError,
)
from appliance.sip.digest import (
    MAX_TRACKED_NONCES,
    Algorithm,
    DigestAuth,
    NonceCounts,
    Nonces,
    NonceStatus,
    Verdict,
    algorithm_of,
    forget_stale,
    stored_ha1,
)
from appliance.sip.errors import SipParseError
from appliance.sip.guard import Guard, LogThrottle
from appliance.sip.headers import (
    DigestCredentials,
    NameAddr,
    is_digest,
    is_utf8,
    parse_name_addrs,
)
from appliance.sip.message import Request, Response, make_response
from appliance.sip.register_view import PlainRegister, RegisterFields, fields_of
from appliance.sip.tags import random_hex
from appliance.sip.uri import SipUri, parse_uri, same_uri
from appliance.sip.wire import Flows, Incoming

logger = logging.getLogger(__name__)

# The longest the expiry task sleeps, so that a wall-clock jump (NTP sync at boot on a Pi
# without an RTC) is noticed within a minute.
MAX_TIMER_SLEEP: Final = 60.0
# Failed authentications are logged at warning at most once per source in this interval
# (svcrack sends hundreds a second); the ban itself is always logged.
FAILURE_LOG_INTERVAL: Final = 60.0
MAX_LOGGED_SOURCES: Final = 1000
# The challenges of a 401, in order. MD5 comes first although RFC 8760 would have the
# preferred (SHA-256) first: a UA that reads only the first WWW-Authenticate and knows only MD5
# cannot register otherwise — SIPp 3.6.1 is one ("createAuthHeader: authentication must use
# MD5 or AKAv1-MD5"), and MD5-only desk-phone firmware behaves alike. [sip] digest_algorithms
# changes the order (or drops MD5) where every phone speaks SHA-256.
DEFAULT_ALGORITHMS: Final = (Algorithm.MD5, Algorithm.SHA256)
_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# Realms whose DigestAuth is kept (one per account realm in use; past this many, all go).
MAX_CACHED_REALMS: Final = 64
# Write-behind of bindings (see the module docstring): the longest a change waits for disk.
FLUSH_INTERVAL: Final = 1.0


@dataclass(init=False)
class Reply:
    """What the registrar answers, before it is rendered for either path."""

    status: int
    headers: list[tuple[str, str]]

    # Written out (init=False): compiled, the dataclass-made __init__ would run interpreted.
    def __init__(self, status: int, headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.headers = [] if headers is None else headers


class Directory(Protocol):
    """What the registrar needs of provisioning (``services.telephony.SipDirectory``)."""

    async def user(self, login: str) -> SipUser | None: ...

    def cached_user(self, login: str) -> tuple[bool, SipUser | None]:
        """(True, what ``user`` would return) when that is known without waiting, else
        (False, None)."""

    def set_bindings(self, login: str, bindings: Sequence[Binding]) -> None:
        """LOGIN's live bindings are now BINDINGS (after every change, a refresh too;
        none: no registration left). Shown by the API as ``Registration.of`` each."""


class Liveness(Protocol):
    """The keep-alive of the registered contacts (``sip.pinger.Pinger``)."""

    def track(self, aor: str, uris: Collection[str]) -> None:
        """AOR's bindings are now URIS (after every change)."""

    def heard(self, aor: str, uris: Collection[str]) -> None:
        """A REGISTER from AOR's phone refreshed URIS."""


class BindingStore(Protocol):
    """Persistence of bindings (``store.db.Store``)."""

    async def save_bindings(self, snapshots: dict[str, list[dict[str, Any]]]) -> None:
        """Replace the stored bindings of each AoR in SNAPSHOTS (an empty list: none left)."""


    async def load_bindings(self, now: float) -> list[dict[str, Any]]: ...


def aor_of(uri: str) -> str | None:
    """The Location key of a SIP URI: its unescaped user part (the Client login)."""
    try:
        parsed = parse_uri(uri)
    except SipParseError:
        return None
    if not isinstance(parsed, SipUri) or not parsed.user:
        return None
    return parsed.user


class Registrar:
    def __init__(
        self,
        *,
        directory: Directory,
        location: Location,
        guard: Guard,
        store: BindingStore | None,
        clock: Callable[[], float],
        realm: Callable[[], str],
        nonces: Nonces | None = None,
        algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
        timer_cap: float = MAX_TIMER_SLEEP,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.directory = directory
        self.location = location
        self.guard = guard
        self.store = store
        self.clock = clock
        self.realm = realm  # the appliance realm: challenges for unknown logins use it
        self.nonces = nonces or Nonces(secrets.token_bytes(32))
        self.counts = NonceCounts()
        self.algorithms = tuple(algorithms)
        self._auths: dict[str, DigestAuth] = {}  # by realm (``_auth``)
        self.timer_cap = timer_cap
        self.flush_interval = flush_interval
        self._dirty: set[str] = set()  # AoRs changed since their last write
        self._flush_timer: asyncio.TimerHandle | None = None
        self._date: tuple[int, str] = (-1, "")  # the Date header of the current second
        # Per AoR, the contact URIs last published (a REGISTER of the same ones is a refresh,
        # logged at debug only), and the source IPs (counted over AoRs, for
        # is_known_source). Both follow _publish, so they hold no more than the location
        # table does.
        self._published: dict[str, frozenset[str]] = {}
        self._sources = _Referrers()
        # Likewise the TCP connections the bindings were made on (a phone may register
        # several lines on one): the connections ``flows`` (the transport) is told to
        # trust, and to distrust.
        self._connections = _Referrers()
        self.flows: Flows | None = None
        # The keep-alive pings ([sip] ping_interval; None: 0, none): told of every change,
        # it calls ``unreachable`` for a contact that stopped answering.
        self.keepalive: Liveness | None = None
        self._failure_log = LogThrottle(FAILURE_LOG_INTERVAL, MAX_LOGGED_SOURCES)
        # nonce -> (nc, Via branch) of the last request it authenticated, and the refusal it
        # got (None: it was applied). A retransmission of that very request is not an nc
        # replay, even when no transaction absorbs it (the quick path keeps none, and the
        # front door's table is capped), and it gets the same answer.
        self._last_accepted: OrderedDict[str, tuple[str, str, Reply | None]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._revoke_task: asyncio.Task[None] | None = None
        self._revoke_again = False
        self._wake = asyncio.Event()
        self._deadline: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, *, nonce_secret: bytes | None = None) -> None:
        """Load saved bindings, publish them, and start the expiry timer."""
        if nonce_secret is not None:
            self.nonces = Nonces(nonce_secret, lifetime=self.nonces.lifetime)
        if self.store is not None:
            now = self.clock()
            self.location.load(await self.store.load_bindings(now), now)
            for aor in {b["aor"] for b in self.location.to_dicts()}:
                self._publish(aor, now)
            logger.info("- registrar: %d binding(s) restored", len(self.location))
        self._task = asyncio.get_running_loop().create_task(self._run_timer())

    async def stop(self) -> None:
        """Stop the expiry timer and any revocation, and write every binding change still
        pending."""
        for task in (self._task, self._revoke_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._revoke_task = None
        await self.flush()

    # --- what the front door asks ---------------------------------------------------------

    def is_known_source(self, ip: str) -> bool:
        """Whether IP holds a live binding (its phone authenticated): the front door spares
        it the unauthenticated-request budget."""
        return ip in self._sources.counts

    def connection_closed(self, connection_id: str) -> None:
        """Drop the bindings that were reachable only over this TCP connection."""
        gone = self.location.remove_connection(connection_id)
        if not gone:
            return
        now = self.clock()
        for aor in {b.aor for b in gone}:
            logger.info("- %s: contact(s) dropped with TCP connection %s", aor, connection_id)
            self._changed(aor, now)

    # --- REGISTER -------------------------------------------------------------------------

    async def handle(self, incoming: Incoming) -> Response | None:
        request = incoming.message
        if not isinstance(request, Request) or request.method != "REGISTER":
            return None
        now = self.clock()
        try:
            login = aor_of(request.to.uri)
            if login is None:
                raise SipParseError("To is not a SIP URI with a user part")
            fields = fields_of(request, login)
            user = await self.directory.user(login)
            origin = Origin(incoming.transport, incoming.source, incoming.connection_id)
            reply = self.decide(fields, user, origin, now)
        except SipParseError as err:
            logger.debug("x REGISTER from %s:%d: %s", *incoming.source, err)
            reply = Reply(400)
        response = make_response(request, reply.status, to_tag=random_hex(10))
        for name, value in reply.headers:
            response.add(name, value)
        return response

    def answer_plain(self, view: PlainRegister, source: tuple[str, int],
                     now: float) -> bytes | None:
        """The reply to a plain REGISTER over UDP read by the quick path, or None when its
        Client is not in the directory's cache (the general path awaits the store)."""
        login = view.fields.login
        known, user = self.directory.cached_user(login or "")
        if not known:
            return None
        try:
            reply = self.decide(view.fields, user, Origin("udp", source, None), now)
        except SipParseError as err:
            logger.debug("x REGISTER from %s:%d: %s", *source, err)
            reply = Reply(400)
        return view.reply(reply.status, reply.headers, to_tag=random_hex(10))

    def decide(self, fields: RegisterFields, user: SipUser | None, origin: Origin,
               now: float) -> Reply:
        """The answer to a REGISTER for FIELDS.login (USER: its Client, or None when there is
        none). Raises SipParseError for a request to answer 400."""
        ip = origin.source[0]
        login = fields.login or ""
        # A Contact that cannot be read makes the request malformed: 400 before any challenge
        # (RFC 4475 §3.1.2.13). Syntax alone decides it, so it tells nothing about users.
        contacts = parse_name_addrs(fields.contacts)
        realm = user.realm if user is not None else self.realm()
        auth = self._auth(realm)
        creds = self._credentials(fields.authorizations, realm)
        # A nonce not ours, or not issued to this source address, gets a fresh challenge
        # before the password is looked at, and is not a failure: a blind spoofer sending
        # with a phone's address cannot make a failure count there, nor learn anything.
        if creds is None or self.nonces.check(creds.nonce or "", now, ip) is NonceStatus.INVALID:
            return self._challenge(auth, now, ip, stale=False)
        nonce = creds.nonce or ""
        this = (creds.params.get("nc") or "", fields.branch)
        last = self._last_accepted.get(nonce)
        retransmission = bool(this[1]) and last is not None and last[:2] == this
        if retransmission:
            auth = DigestAuth(realm, self.nonces, self.algorithms, None)  # nc seen: by us
        algorithm = algorithm_of(creds)
        if algorithm is None:
            raise SipParseError(f"unsupported digest algorithm {creds.algorithm!r}")
        # RFC 7616 §3.4.6: the digest must be for this request's resource; a mismatch is
        # 400, not a failed password. "host" and "host:5060" are taken for the same
        # resource here (§19.1.4 would not), so that a phone writing its port in one place
        # only is not locked out for a difference of no consequence.
        if not same_uri(creds.params.get("uri") or "", fields.request_uri, default_port=True):
            raise SipParseError("digest uri is not the Request-URI")
        ha1: str | None = None
        if user is not None and creds.username == login:
            ha1 = stored_ha1(algorithm, md5=user.ha1_md5, sha256=user.ha1_sha256)
        verdict = auth.verify(creds, method="REGISTER", ha1=ha1, now=now, ip=ip)
        if verdict is Verdict.MALFORMED:
            raise SipParseError("malformed digest credentials")
        if verdict is Verdict.STALE:  # the right password only: a wrong one is REJECTED
            return self._challenge(auth, now, ip, stale=True)
        if verdict is Verdict.REJECTED:
            self._failed(ip, login, now)
            return Reply(403)
        self.guard.record_success(ip, login)
        assert user is not None  # noqa: S101 - ACCEPTED needs a stored HA1
        if not user.enabled:
            logger.info("- %s from %s:%d refused: client disabled or account inactive",
                        login, *origin.source)
            return Reply(403)
        if retransmission:
            assert last is not None  # noqa: S101 - a retransmission has a last request
            if last[2] is not None:  # refused (423, 400...): refused again
                return last[2]
            return self._ok(self.location.lookup(login, now), now)  # the bindings as they are
        try:
            reply = self._bind(fields, contacts, origin, login, now)
        except SipParseError:
            self._accepted(nonce, this, Reply(400))
            raise
        self._accepted(nonce, this, None if reply.status == 200 else reply)
        return reply

    def _auth(self, realm: str) -> DigestAuth:
        """The digest checks for REALM, kept per realm (there are few) for as long as the
        nonces, their counts and the algorithms are the same objects."""
        auth = self._auths.get(realm)
        if (auth is None or auth.nonces is not self.nonces or auth.counts is not self.counts
                or auth.algorithms is not self.algorithms):
            if len(self._auths) >= MAX_CACHED_REALMS:
                self._auths.clear()
            auth = self._auths[realm] = DigestAuth(realm, self.nonces, self.algorithms,
                                                   self.counts)
        return auth

    def _accepted(self, nonce: str, this: tuple[str, str], refusal: Reply | None) -> None:
        """Remember the request NONCE last authenticated (THIS: its nc and branch)."""
        self._last_accepted[nonce] = (*this, refusal)
        self._last_accepted.move_to_end(nonce)
        while len(self._last_accepted) > MAX_TRACKED_NONCES:
            self._last_accepted.popitem(last=False)

    @staticmethod
    def _credentials(values: Sequence[str], realm: str) -> DigestCredentials | None:
        """The Authorization answering our realm (a phone may carry several). Credentials in
        a scheme other than Digest are skipped: a new challenge answers them (RFC 4475
        §3.3.7), not a 400."""
        for value in values:
            if not is_digest(value):
                continue
            creds = DigestCredentials.parse(value)
            if creds.realm == realm:
                return creds
        return None

    @staticmethod
    def _challenge(auth: DigestAuth, now: float, ip: str, *, stale: bool) -> Reply:
        """401 with a challenge per algorithm, their nonce good from IP only."""
        return Reply(401, [("WWW-Authenticate", value)
                           for value in auth.challenges(now, ip, stale=stale)])

    def _failed(self, ip: str, login: str, now: float) -> None:
        banned = self.guard.record_failure(ip, now, login)
        if banned:
            log_ban(self.guard, ip)
            return
        if self._failure_log.due(ip, now):
            logger.warning("x REGISTER for %r from %s failed authentication", login, ip)

    def _bind(self, fields: RegisterFields, contacts: list[NameAddr], origin: Origin, login: str,
              now: float) -> Reply:
        for contact in contacts:
            if not contact.is_wildcard:
                _check_contact(contact)
        expires_text = fields.expires
        expires_header: int | None = None
        if expires_text is not None:
            if not expires_text.isdigit() or len(expires_text) > 10:
                raise SipParseError(f"bad Expires {expires_text[:20]!r}")
            expires_header = int(expires_text)
        try:
            bindings = self.location.register(
                login, contacts, expires_header=expires_header, call_id=fields.call_id,
                cseq=fields.cseq, now=now, origin=origin, user_agent=fields.user_agent[:200])
        except RegistrationError as err:
            logger.debug("x REGISTER %s from %s:%d: %s", login, *origin.source, err)
            return Reply(err.status, [("Min-Expires", str(err.min_expires))]
                         if err.min_expires is not None else [])
        uris = frozenset(b.uri for b in bindings)
        if contacts:
            refresh = uris == self._published.get(login, frozenset())
            level = logging.DEBUG if refresh else logging.INFO
            if logger.isEnabledFor(level):
                logger.log(level, "- %s registered from %s %s:%d: %d contact(s)", login,
                           origin.transport, *origin.source, len(bindings))
            self._changed(login, now, bindings, uris)
            if self.keepalive is not None:
                self.keepalive.heard(login, [c.uri for c in contacts if not c.is_wildcard])
        elif uris != self._published.get(login, frozenset()):
            # A query that found bindings expired and not yet swept: register dropped them,
            # so the timer will not see them go. Published now, or their connections stay
            # trusted and their sources known (no budget) until they close.
            self._changed(login, now, bindings, uris)
        return self._ok(bindings, now)

    def _ok(self, bindings: list[Binding], now: float) -> Reply:
        headers = [("Contact", binding.header_value(now)) for binding in bindings]
        second = int(now)
        if self._date[0] != second:
            self._date = (second, email.utils.formatdate(second, usegmt=True))
        headers.append(("Date", self._date[1]))
        return Reply(200, headers)

    # --- changes: persist, publish, re-arm ------------------------------------------------

    def _changed(self, aor: str, now: float, bindings: list[Binding] | None = None,
                 uris: frozenset[str] | None = None) -> None:
        """AOR's bindings changed: publish, mark for the next write, re-arm the expiry timer.
        BINDINGS (and their URIS), when given, are ``location.lookup(aor, now)`` already."""
        bindings = self._publish(aor, now, bindings, uris)
        if self.store is not None:
            self._dirty.add(aor)
            if self._flush_timer is None:
                self._flush_timer = asyncio.get_running_loop().call_later(
                    self.flush_interval, self._flush_due)
        earliest = min((b.expires_at for b in bindings), default=None)
        if earliest is not None and (self._deadline is None or earliest < self._deadline):
            self._wake.set()

    def _flush_due(self) -> None:
        self._flush_timer = None
        task = asyncio.get_running_loop().create_task(self._write())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self) -> None:
        """Write the current bindings of every marked AoR, in one store call."""
        if self.store is None or not self._dirty:
            return
        aors, self._dirty = self._dirty, set()
        now = self.clock()
        # Taken now, on the loop: later changes mark their AoR again for the next write,
        # and the store's single thread keeps writes in the order they were asked for.
        snapshots = {aor: [b.to_dict() for b in self.location.lookup(aor, now)]
                     for aor in aors}
        try:
            await self.store.save_bindings(snapshots)
        except Exception as err:
            if isinstance(err, StoreBusy):  # its store logged it, once a minute
                logger.debug("x saving the bindings of %d AoR(s) failed: %s", len(snapshots),
                             err)
            else:
                logger.exception("x saving the bindings of %d AoR(s) failed", len(snapshots))
            self._dirty |= aors - self._dirty  # tried again with the next write

    def _publish(self, aor: str, now: float, bindings: list[Binding] | None = None,
                 uris: frozenset[str] | None = None) -> list[Binding]:
        if bindings is None:
            bindings = self.location.lookup(aor, now)
        if bindings:
            self._published[aor] = uris if uris is not None else frozenset(b.uri for b in bindings)
        else:
            self._published.pop(aor, None)
        self._sources.update(aor, {b.source[0] for b in bindings})
        self._count_connections(
            aor, {b.connection_id for b in bindings if b.connection_id is not None})
        if self.keepalive is not None:
            self.keepalive.track(aor, [b.uri for b in bindings])
        self.directory.set_bindings(aor, bindings)
        return bindings

    def _count_connections(self, aor: str, new: set[str]) -> None:
        """AOR's bindings now refer to the TCP connections NEW: trust a connection the
        first binding refers to, distrust one the last binding left."""
        gained, lost = self._connections.update(aor, new)
        if self.flows is not None:
            for connection_id in lost:
                self.flows.distrust(connection_id)
            for connection_id in gained:
                self.flows.trust(connection_id)

    async def flush(self) -> None:
        """Write the pending binding changes now and wait for every write (tests, shutdown)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._dirty:
            task = asyncio.get_running_loop().create_task(self._write())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def request_revoke(self) -> None:
        """A Client or an account changed: ``revoke`` soon, in a task of its own. One at a
        time; a change made while it runs makes it go round once more, so the last change is
        always seen."""
        self._revoke_again = True
        if self._revoke_task is None or self._revoke_task.done():
            self._revoke_task = asyncio.get_running_loop().create_task(
                self._revoke_loop(), name="sip binding revocation")

    async def _revoke_loop(self) -> None:
        while self._revoke_again:
            self._revoke_again = False
            try:
                await self.revoke()
            except Exception:
                logger.exception("x dropping the bindings of removed clients failed")

    async def revoke(self) -> list[Binding]:
        """Remove the bindings of every login the directory no longer lets register: its
        Client deleted or disabled, or its account not active. Such a binding could not be
        refreshed (the next REGISTER gets 403), and kept until it expires it would still be
        listed by the API and, worse, be forked to if a new Client took the login."""
        gone: list[Binding] = []
        for aor in self.location.aors():
            user = await self.directory.user(aor)
            if user is not None and user.enabled:
                continue
            removed = self.location.remove(aor)
            if removed:
                logger.info("- %s: %d contact(s) dropped: the client is deleted or disabled",
                            aor, len(removed))
                self._changed(aor, self.clock())
                gone += removed
        return gone

    def binding(self, aor: str, uri: str) -> Binding | None:
        """AOR's live binding of the contact URI, if any."""
        return next((b for b in self.location.lookup(aor, self.clock()) if b.uri == uri), None)

    def unreachable(self, aor: str, uri: str) -> None:
        """AOR's contact URI stopped answering the keep-alive's OPTIONS: its binding goes as
        an expired one does (store, API, TCP trust)."""
        if self.location.remove_contact(aor, uri) is None:
            return
        logger.info("- %s: contact %s dropped: no answer to its keep-alive OPTIONS", aor, uri)
        self._changed(aor, self.clock())

    def expire(self) -> list[Binding]:
        """Remove the bindings whose time is up (the timer task calls this)."""
        now = self.clock()
        gone = self.location.expired(now)
        for aor in {b.aor for b in gone}:
            logger.info("- %s: registration expired", aor)
            self._changed(aor, now)
        return gone

    async def _run_timer(self) -> None:
        while True:
            self._deadline = self.location.get_timer()
            now = self.clock()
            delay = self.timer_cap if self._deadline is None else self._deadline - now
            delay = min(max(delay, 0.0), self.timer_cap)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self.expire()
            self.forget_stale_nonces()

    def forget_stale_nonces(self) -> None:
        """Let go of what the nc-replay and retransmission tables keep about nonces gone
        stale (the timer does this at least every ``timer_cap``): after a burst of
        REGISTERs they empty within two nonce lifetimes instead of staying at their cap."""
        before = self.clock() - self.nonces.lifetime
        self.counts.forget_stale(before)
        self._last_accepted = forget_stale(self._last_accepted, before)


class _Referrers:
    """How many AoRs refer to each key (a source IP, a TCP connection), kept as the set of
    keys each AoR's bindings refer to changes."""

    def __init__(self) -> None:
        self._by_aor: dict[str, set[str]] = {}
        self.counts: dict[str, int] = {}

    def update(self, aor: str, new: set[str]) -> tuple[list[str], list[str]]:
        """AOR now refers to the keys NEW: the keys it made referred to (it is their first
        referrer), and those no AoR refers to any more."""
        old = self._by_aor.pop(aor, None)
        if new:
            self._by_aor[aor] = new
        if old == new or not (old or new):
            # The same keys (a refresh), or none before nor now (UDP phones and connections,
            # usually): no count changes.
            return [], []
        if old is None:
            old = set()
        lost = []
        for key in old - new:
            left = self.counts.get(key, 1) - 1
            if left > 0:
                self.counts[key] = left
            else:
                self.counts.pop(key, None)
                lost.append(key)
        gained = []
        for key in new - old:
            count = self.counts[key] = self.counts.get(key, 0) + 1
            if count == 1:
                gained.append(key)
        return gained, lost

def _check_contact(contact: NameAddr) -> None:
    """A Contact we could later send a request to: a valid sip:/sips: URI, and nothing that
    is not UTF-8 in its display name or parameters either (they are stored with the binding,
    listed by the API and echoed in every 200)."""
    if not contact.params and contact.display is None:
        # The usual Contact, a bare <uri>: only its URI to check, cached by value.
        problem = _contact_problem(contact.uri, None, None)
        if problem is not None:
            raise SipParseError(problem)
        return
    problem = _contact_problem(contact.uri, contact.param("expires"), contact.param("q"))
    if problem is None and not all(
            is_utf8(text) for text in (contact.display or "",
                                       *(part for pair in contact.params for part in pair
                                         if part is not None))):
        problem = "Contact is not UTF-8"
    if problem is not None:
        raise SipParseError(problem)


@functools.lru_cache(maxsize=1024)
def _contact_problem(uri_text: str, expires: str | None, q: str | None) -> str | None:
    # Cached by value: a phone refreshes the same Contact all day.
    try:
        uri = parse_uri(uri_text)
    except SipParseError as err:
        return str(err)
    if not isinstance(uri, SipUri):
        return f"Contact {uri_text[:60]!r} is not a SIP URI"
    if not is_utf8(uri_text):
        # Bytes that are no UTF-8 (kept as lone surrogates) are no URI, and could never be
        # stored: the write of every binding would fail with this one in its batch.
        return "Contact is not UTF-8"
    if expires is not None and (not expires.isdigit() or len(expires) > 10):
        return f"bad Contact expires {expires[:20]!r}"
    # RFC 3261 §20.10 qvalue; float() alone would take "nan", "inf" or "7", which break the
    # proxy's ordering of contacts (Kamailio answers 400 "Invalid q value" alike).
    if q is not None and not _QVALUE.fullmatch(q):
        return f"bad Contact q {q[:20]!r}"
    return None


def log_ban(guard: Guard, ip: str) -> None:
    """Log that IP was just banned (the registrar's and the proxy's failures alike)."""
    grave, line = guard.ban_notice(ip)
    logger.log(logging.ERROR if grave else logging.WARNING, "%s", line)
