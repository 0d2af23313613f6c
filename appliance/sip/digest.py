"""HTTP digest for SIP (RFC 2617, RFC 7616 algorithms, RFC 8760 for SIP): challenges,
stateless nonces and verification against a stored HA1.

The appliance stores HA1 = H(username ":" realm ":" password) per algorithm, never the
password, so everything here starts from HA1. ``-sess`` variants derive their session HA1
from it. The same code serves ``Authorization`` after a 401 (registrar) and
``Proxy-Authorization`` after a 407 (proxy): only the header names differ, see ``HEADERS``.

Nonces are stateless: ``hex(ts) "." salt "." HMAC(secret, ts "." salt "." ip)``, where ip is
the source address the challenge was sent to (the transport's string for it, as the guard keys
sources; it is not written in the nonce). A nonce is thus good only from the address it was
issued to: presented from any other it is INVALID, which callers answer with a fresh challenge
before looking at the password, and do not count as a failure. So a blind spoofer (UDP), who
never sees the challenges sent to a desk phone's address, cannot make a failure count against
that address, nor learn from a reply whether a guess was right; whoever sees the replies sent
to an address (on the same host or NAT, or sniffing) can, as with any fail2ban-style ban. A
phone whose address changes while it holds a nonce is simply challenged again.
An authentic nonce older than ``lifetime`` makes the caller re-challenge with ``stale=true``
(the phone retries with the same password, silently) — but only for the right password: a
wrong one with a stale nonce is REJECTED (a counted failure), so the stale path is no free
guess; and a stale nonce from another address is INVALID like any foreign one. Only
``NonceCounts`` keeps state, to tell a replayed ``nc`` (one not above the highest seen for
its nonce); it is capped and evicts the oldest nonce. A replayed nc is answered like an
expired nonce, and likewise only for the right response: a wrong one is REJECTED (checked
first, so the nc check is no oracle and no free guess). The right response with a used nc is
a phone reusing its cached credentials in a new transaction (some firmware does) or a replay
of what it sent (a sniffer on the LAN): neither gains from a fresh challenge, and counting it
as a failure would ban the phone's own address for knowing its password. (A retransmission of
the very request that used the nc is the caller's to recognise: the registrar does.) A
digest without qop (hence without nc) is accepted, as sip.md §2.3 asks, but once per nonce:
its second use is answered like an expired nonce too.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from appliance.sip.headers import DigestCredentials, format_challenge
from appliance.sip.tags import random_hex

DEFAULT_NONCE_LIFETIME: Final = 300.0  # seconds; Kamailio auth's nonce_expire default is 300 too
MAX_CLOCK_SKEW: Final = 5.0  # a nonce "from the future" beyond this is forged
MAX_TRACKED_NONCES: Final = 10_000  # nc replay memory: ~100 bytes each, ~1 MB worst case
_SHA256_BLOCK: Final = 64  # bytes: the HMAC key is padded to one block (RFC 2104 §2)

_T = TypeVar("_T")

# Challenge status → (challenge header, credentials header).
HEADERS: Final = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}


class Algorithm(enum.StrEnum):
    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA256 = "SHA-256"
    SHA256_SESS = "SHA-256-sess"

    @property
    def base(self) -> Algorithm:
        """The algorithm whose HA1 the appliance stores for this one."""
        return _BASES[self]

    @property
    def session(self) -> bool:
        return self in _SESSIONS


# Looked up by member (a str, hashed once): Enum.name and .value go through a descriptor
# written in Python, slow on every REGISTER.
_BASES: Final = {a: Algorithm.SHA256 if a.startswith("SHA-256") else Algorithm.MD5
                 for a in Algorithm}
_SESSIONS: Final = frozenset(a for a in Algorithm if a.endswith("-sess"))
_BY_VALUE: Final = {a.lower(): a for a in Algorithm}
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_REQUIRED: Final = ("username", "realm", "nonce", "uri", "response")


def parse_algorithm(value: str | None) -> Algorithm | None:
    if value is None:
        return Algorithm.MD5  # RFC 2617 §3.2.1: absent means MD5
    return _BY_VALUE.get(value.lower())


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Algorithm → its hash, as hex (-sess variants hash as their base does).
_HASHES: Final = {a: _sha256_hex if _BASES[a] is Algorithm.SHA256 else _md5_hex for a in Algorithm}


def _h(algorithm: Algorithm, text: str | bytes) -> str:
    return _HASHES[algorithm](text.encode("utf-8") if isinstance(text, str) else text)


def make_ha1(username: str, realm: str, password: str, algorithm: Algorithm = Algorithm.MD5) -> str:
    """What provisioning stores for a client: H(username:realm:password)."""
    return _h(algorithm.base, f"{username}:{realm}:{password}")


def compute_response(
    *,
    ha1: str,
    algorithm: Algorithm,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value a client computes (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1)."""
    h = _HASHES[algorithm]
    if algorithm in _SESSIONS:
        ha1 = h(f"{ha1}:{nonce}:{cnonce or ''}".encode())
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + h(body)
    ha2 = h(a2.encode())
    if qop:
        return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{ha2}".encode())


class NonceStatus(enum.Enum):
    VALID = "valid"
    STALE = "stale"  # ours, but expired: re-challenge with stale=true
    INVALID = "invalid"  # forged, garbled or from the future


class Nonces:
    """Issues and checks stateless HMAC nonces, each bound to the source IP it was issued
    to (see the module docstring)."""

    def __init__(self, secret: bytes, *, lifetime: float = DEFAULT_NONCE_LIFETIME) -> None:
        self.lifetime = lifetime
        # HMAC-SHA256 (RFC 2104) with the key's two padded blocks hashed once: each MAC then
        # copies these states, ~0.5 µs against ~1.3 µs for ``hmac.new`` (the same digest).
        key = secret if len(secret) <= _SHA256_BLOCK else hashlib.sha256(secret).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        # The last (nonce, ip) whose MAC was checked, and its timestamp (None: forged, or
        # not issued to ip). A request is checked twice (the registrar's first look, then
        # ``verify``): the HMAC runs once.
        self._last: tuple[str, str, int | None] = ("", "", None)

    def _mac(self, body: str, ip: str) -> str:
        """HMAC-SHA256(secret, BODY "." IP), its first 32 hex digits."""
        inner = self._inner.copy()
        inner.update(f"{body}.{ip}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:32]

    def issue(self, now: float, ip: str, *, salt: str | None = None) -> str:
        """A nonce stamped with NOW, good only when presented from IP (a source address as
        the transport gives it, the same string ``check`` is given)."""
        # The salt makes two challenges in the same second differ, so nc tracking per
        # nonce does not mix up two phones.
        body = f"{int(now):x}.{salt if salt is not None else random_hex(12)}"
        return f"{body}.{self._mac(body, ip)}"

    def check(self, nonce: str, now: float, ip: str) -> NonceStatus:
        """NONCE presented from IP at NOW: INVALID unless we issued it to IP."""
        last, last_ip, ts = self._last
        if nonce != last or ip != last_ip or not nonce:
            ts = self._authentic_ts(nonce, ip)
            self._last = (nonce, ip, ts)
        if ts is None or ts > now + MAX_CLOCK_SKEW:
            return NonceStatus.INVALID
        return NonceStatus.STALE if now - ts > self.lifetime else NonceStatus.VALID

    def _authentic_ts(self, nonce: str, ip: str) -> int | None:
        """The timestamp of NONCE when its MAC is ours for IP, else None."""
        ts_text, _, rest = nonce.partition(".")
        salt, _, mac = rest.partition(".")
        if not (ts_text and salt and mac) or len(ts_text) > 16:
            return None
        try:
            ts = int(ts_text, 16)
        except ValueError:
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(f"{ts_text}.{salt}", ip).encode()):
            return None
        return ts


def nonce_time(nonce: str) -> int | None:
    """The issue time written in NONCE, unchecked (None when there is none): only for
    forgetting what was kept about nonces that are stale by now."""
    ts_text = nonce.partition(".")[0]
    if not ts_text or len(ts_text) > 16:
        return None
    try:
        return int(ts_text, 16)
    except ValueError:
        return None


def forget_stale(table: OrderedDict[str, _T], before: float) -> OrderedDict[str, _T]:
    """TABLE, keyed by nonce in the order the nonces were last used, without its oldest
    entries whose nonce was issued before BEFORE. A stale nonce is re-challenged before
    anything kept about it is read, so nothing is lost. Returns TABLE itself, or a new
    smaller copy when most of it went (a dict never shrinks)."""
    dropped = 0
    while table:
        nonce = next(iter(table))
        issued = nonce_time(nonce)
        if issued is not None and issued >= before:
            break
        del table[nonce]
        dropped += 1
    return OrderedDict(table) if dropped > len(table) else table


class NonceCounts:
    """Remembers the highest ``nc`` seen per nonce; a repeat or lower value is a replay.

    Bounded: past ``cap`` nonces the oldest is forgotten. A replay of a forgotten nonce is
    then accepted until the nonce itself goes stale, which the lifetime bounds. Nonces gone
    stale are forgotten by ``forget_stale`` (the owner's timer), so that the table empties
    once a burst of challenges is over.
    """

    def __init__(self, cap: int = MAX_TRACKED_NONCES) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._cap = cap

    def __len__(self) -> int:
        return len(self._seen)

    def accept(self, nonce: str, nc: int) -> bool:
        last = self._seen.get(nonce)
        if last is not None and nc <= last:
            return False
        self._seen[nonce] = nc
        self._seen.move_to_end(nonce)
        while len(self._seen) > self._cap:
            self._seen.popitem(last=False)
        return True

    def forget_stale(self, before: float) -> None:
        """Forget the nonces issued before BEFORE (see the module's ``forget_stale``)."""
        self._seen = forget_stale(self._seen, before)


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    # right password, but an expired nonce, an nc already seen for it, or (without qop) a
    # nonce already used: stale=true, not a failure
    STALE = "stale"
    # wrong response, unknown user: a failure; also a forged nonce or one issued to another
    # address, which callers re-challenge before ``verify`` (not a failure)
    REJECTED = "rejected"
    MALFORMED = "malformed"  # missing fields, wrong realm, unknown algorithm/qop: 400 or 401


@dataclass
class DigestAuth:
    """Challenges and checks for one realm."""

    realm: str
    nonces: Nonces
    algorithms: Sequence[Algorithm] = (Algorithm.SHA256, Algorithm.MD5)
    counts: NonceCounts | None = None

    def challenges(self, now: float, ip: str, *, stale: bool = False) -> list[str]:
        """Header values for a 401/407 sent to IP (its nonce is good from IP only), one per
        algorithm in ``algorithms``' order (RFC 8760 §2.4: many desk phones only know MD5
        and take the first challenge they understand)."""
        nonce = self.nonces.issue(now, ip)  # hex digits and dots: no quoting needed
        return [nonce.join(_challenge_template(self.realm, a, stale)) for a in self.algorithms]

    def verify(
        self,
        creds: DigestCredentials,
        *,
        method: str,
        ha1: str | None,
        now: float,
        ip: str,
        body: bytes = b"",
    ) -> Verdict:
        """Check CREDS for a request with METHOD from IP. HA1 is the stored hash for
        ``creds.username`` under ``algorithm_of(creds).base``, or None for an unknown user
        (answered exactly like a wrong password, against user enumeration).

        A nonce not issued to IP is REJECTED before the response is even computed: callers
        ``Nonces.check`` it first and answer INVALID with a fresh challenge (no failure), so
        no answer ever depends on the password for a nonce from elsewhere."""
        params = creds.params
        algorithm = parse_algorithm(params.get("algorithm"))
        # A -sess variant is accepted wherever its base is: it derives from the same HA1.
        if algorithm is None or _BASES[algorithm] not in _bases(tuple(self.algorithms)):
            return Verdict.MALFORMED
        for name in _REQUIRED:
            if not params.get(name):
                return Verdict.MALFORMED
        if params["realm"] != self.realm:
            return Verdict.MALFORMED
        qop = params.get("qop")
        nc_text, cnonce = params.get("nc"), params.get("cnonce")
        if algorithm in _SESSIONS and not cnonce:
            return Verdict.MALFORMED  # a session HA1 is keyed on the client nonce
        if qop is not None:
            if qop not in ("auth", "auth-int") or not cnonce or not nc_text:
                return Verdict.MALFORMED
            if len(nc_text) != 8 or not _HEX.issuperset(nc_text):
                return Verdict.MALFORMED
        nonce = params["nonce"]
        status = self.nonces.check(nonce, now, ip)
        if status is NonceStatus.INVALID:
            return Verdict.REJECTED
        expected = compute_response(
            # A dummy HA1 keeps an unknown user's timing the same as a known one's.
            ha1=ha1 if ha1 is not None else "0" * 32,
            algorithm=algorithm,
            method=method,
            uri=creds.params["uri"],
            nonce=nonce,
            qop=qop,
            nc=nc_text,
            cnonce=cnonce,
            body=body,
        )
        matches = hmac.compare_digest(expected.encode(), creds.params["response"].lower().encode())
        if not matches or ha1 is None:
            return Verdict.REJECTED
        # Stale only for the right password: a wrong one is REJECTED above (a failure),
        # whatever its nonce's age or nc.
        if status is NonceStatus.STALE:
            return Verdict.STALE
        if self.counts is not None:
            if nc_text is None:
                # No qop (RFC 2069 phones): no nc tells the phone from someone replaying what
                # it sent, and the digest does not cover the Contact. Such a nonce serves one
                # request; its next use is re-challenged (the password was right).
                if not self.counts.accept(nonce, 0):
                    return Verdict.STALE
            elif not self.counts.accept(nonce, int(nc_text, 16)):
                # An nc seen already: cached credentials reused, or a replay. Re-challenged
                # (the response was right), not a failure; nothing is accepted twice.
                return Verdict.STALE
        return Verdict.ACCEPTED


_NONCE_MARK: Final = '"\x00"'  # a quoted nonce no nonce of ours can be


@functools.lru_cache(maxsize=64)
def _challenge_template(realm: str, algorithm: Algorithm, stale: bool) -> tuple[str, str]:
    """A challenge's value for REALM, ALGORITHM and STALE, split where its nonce goes:
    ``nonce.join(template)`` is ``format_challenge`` with that nonce (one without quotes
    or backslashes). The last mark is the nonce's: only fixed text comes after it."""
    before, _, after = format_challenge(realm, _NONCE_MARK[1:-1], algorithm=str(algorithm),
                                        stale=stale).rpartition(_NONCE_MARK)
    return before + '"', '"' + after


@functools.lru_cache(maxsize=16)
def _bases(algorithms: Sequence[Algorithm]) -> frozenset[Algorithm]:
    """The stored HA1s (their algorithms) that ALGORITHMS are checked against."""
    return frozenset(_BASES[a] for a in algorithms)


def stored_ha1(algorithm: Algorithm, *, md5: str, sha256: str) -> str | None:
    """Of a Client's stored HA1s, the one ALGORITHM's responses are checked against (None
    when it is empty)."""
    return (sha256 if _BASES[algorithm] is Algorithm.SHA256 else md5) or None


def algorithm_of(creds: DigestCredentials) -> Algorithm | None:
    """The algorithm CREDS use; its ``.base`` says which stored HA1 to look up."""
    return parse_algorithm(creds.params.get("algorithm"))
