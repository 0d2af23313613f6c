"""How the proxy authenticates the caller of a new out-of-dialog request (RFC 3261 §22.3).

No ``Proxy-Authorization`` → 407 with ``Proxy-Authenticate`` SHA-256 then MD5 by default
(``algorithms``; the composition root passes ``[sip] digest_algorithms``, MD5 first, as SIPp and
MD5-only phones read only the first one), realm = the From user's stored realm (the default
realm for an unknown user: the very same challenge shape, against enumeration); wrong password →
403 (no re-challenge, api-behaviour.md §11); expired nonce, or an ``nc`` already seen for it
(cached credentials reused, or a replay; the right password only, else 403) → 407
``stale=true``, not a failure; a nonce that is not ours (a restart) → a fresh 407; a disabled
Client, or a digest username that differs from the From user → 403. A banned source (``Guard``)
→ 403 before anything else; failures and successes are reported to the guard. Nonces are issued
to the request's source address and are good from there only (``digest.Nonces``): one presented
from elsewhere gets a fresh 407 before the password is looked at, and is not a failure, so a
blind spoofer cannot get a phone's address banned nor learn whether a guess was right.

``ProxyAuth`` is owned by the proxy (one per proxy, not per request): it holds the nonces
(shared with the registrar), the nc-replay counts, the algorithms and the realm, and answers
through the proxy's own reply function, so the responses and their order are the proxy's.
It is given two times: ``now``, the proxy's timer clock, for the transaction it replies on,
and ``wall``, the wall clock, for the nonces (HMAC-stamped, valid across a restart) and the
guard (whose bans the front door and registrar read on the wall clock too).
Not a core module: it logs and looks users up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from appliance.sip.digest import (
    HEADERS,
    Algorithm,
    DigestAuth,
    NonceCounts,
    Nonces,
    NonceStatus,
    Verdict,
    stored_ha1,
)
from appliance.sip.digest import algorithm_of as digest_algorithm
from appliance.sip.errors import SipParseError
from appliance.sip.forwarding import Reply, user_of
from appliance.sip.guard import Guard
from appliance.sip.headers import DigestCredentials, is_digest
from appliance.sip.message import Request
from appliance.sip.proxy_ports import Caller, Directory
from appliance.sip.registrar import log_ban
from appliance.sip.transaction import ServerTransaction
from appliance.sip.uri import same_uri
from appliance.sip.wire import Incoming

logger = logging.getLogger(__name__)


class ProxyAuth:
    """Digest authentication of the proxy's callers; see the module docstring."""

    def __init__(self, directory: Directory, *, realm: Callable[[], str], reply: Reply,
                 nonces: Nonces, guard: Guard | None,
                 algorithms: Sequence[Algorithm]) -> None:
        """REALM gives the default realm (for users without a stored one, and unknown ones);
        REPLY sends the proxy's responses."""
        self._directory = directory
        self._realm = realm
        self._reply = reply
        self.nonces = nonces
        self.counts = NonceCounts()
        self._guard = guard
        self.algorithms = tuple(algorithms)

    async def authenticate(self, server: ServerTransaction, request: Request,
                           incoming: Incoming, now: float, *, wall: float) -> Caller | None:
        """The authenticated caller of REQUEST, or None once it was challenged or refused.
        NOW is the timer clock (the replies), WALL the wall clock (nonces, the guard)."""
        ip, port = incoming.source
        if self._guard is not None and self._guard.is_banned(ip, wall, port):
            await self._reply(server, 403, now=now)
            return None
        from_user = user_of(request.from_)
        challenge_header, credentials_header = HEADERS[407]
        # Credentials in a scheme other than Digest are as good as none: challenge them
        # (RFC 4475 §3.3.7 asks this of a registrar; the same holds for a proxy).
        values = [v for v in request.get_all(credentials_header) if is_digest(v)]
        if not values:
            user = await self._directory.user(from_user) if from_user else None
            await self.challenge(server, user.realm if user else self._realm(), now,
                                 wall=wall, ip=ip)
            return None
        try:
            creds = DigestCredentials.parse(values[0])
        except SipParseError:
            await self._reply(server, 400, "Bad Proxy-Authorization", now=now)
            return None
        username = creds.username or ""
        user = await self._directory.user(username) if username else None
        realm = user.realm if user else self._realm()
        if self.nonces.check(creds.nonce or "", wall, ip) is NonceStatus.INVALID:
            # Not our nonce (forged, or issued before the secret changed), or not issued to
            # this source address (a spoofer's, fetched at its own): challenge afresh before
            # the password is looked at, as the registrar does; not a failure, and a forger
            # learns nothing from it.
            await self.challenge(server, realm, now, wall=wall, ip=ip)
            return None
        # RFC 7616 §3.4.6, as the registrar checks it: credentials are good for the resource
        # they were computed for only. Else a digest caught on its way to an extension
        # (sip:bob@...) would place a call to any number from the same phone's address.
        if not same_uri(creds.params.get("uri") or "", request.uri, default_port=True):
            logger.info("x %s from %s:%s: digest uri %.80r is not the Request-URI %.80r",
                        request.method, ip, port, creds.params.get("uri") or "", request.uri)
            await self._reply(server, 400, "Digest URI Is Not The Request-URI", now=now)
            return None
        auth = DigestAuth(realm, self.nonces, self.algorithms, self.counts)
        algorithm = digest_algorithm(creds)
        ha1: str | None = None
        if user is not None and algorithm is not None:
            ha1 = stored_ha1(algorithm, md5=user.ha1_md5, sha256=user.ha1_sha256)
        verdict = auth.verify(creds, method=request.method, ha1=ha1, now=wall, ip=ip,
                              body=request.body)
        if verdict is Verdict.STALE:  # the right password only: a wrong one is REJECTED
            await self.challenge(server, realm, now, wall=wall, ip=ip, stale=True)
            return None
        if verdict is Verdict.MALFORMED:
            await self.challenge(server, realm, now, wall=wall, ip=ip)
            return None
        if verdict is Verdict.REJECTED or user is None:
            if self._guard is not None and self._guard.is_spared(ip, port):
                # One of our media workers (with a gateway's credentials, the only ones it
                # holds): a bug of ours, not a guess, and not counted (``Guard.spared``).
                logger.error("x %s from media worker %s:%s: bad credentials for %r (not "
                             "counted)", request.method, ip, port, username)
            else:
                logger.info("x %s from %s:%s: bad credentials for %r", request.method, ip,
                            port, username)
            if self._guard is not None and self._guard.record_failure(ip, wall, username,
                                                                      port):
                log_ban(self._guard, ip)
            await self._reply(server, 403, now=now)
            return None
        if self._guard is not None:
            self._guard.record_success(ip, username)
        if not user.enabled:
            await self._reply(server, 403, "Client Disabled", now=now)
            return None
        if from_user != user.login:
            await self._reply(server, 403, "From Does Not Match Credentials", now=now)
            return None
        return Caller(login=user.login, account_sid=user.account_sid, voice_url=user.voice_url,
                      voice_application_sid=user.voice_application_sid)

    async def challenge(self, server: ServerTransaction, realm: str, now: float,
                        *, wall: float, ip: str, stale: bool = False) -> None:
        """Answer 407 with a ``Proxy-Authenticate`` per algorithm for REALM, its nonces
        stamped with WALL and good from IP (the request's source address) only."""
        auth = DigestAuth(realm, self.nonces, self.algorithms)
        header = HEADERS[407][0]
        values = auth.challenges(wall, ip, stale=stale)
        await self._reply(server, 407, now=now, headers=[(header, value) for value in values])

    def forget_stale(self, now: float) -> None:
        """Let go of the nc-replay table's nonces that are stale at NOW (wall clock)."""
        self.counts.forget_stale(now - self.nonces.lifetime)

