"""Registering to an upstream provider as a UAC (RFC 3261 §10.2), sans-I/O.

One `UpstreamRegistration` per gateway: it builds the REGISTER requests, answers the provider's
401/407 challenges with digest credentials, refreshes before the binding expires, and backs
off with jitter after a failure. It reads no clock and draws no random numbers: `now`, the
jitter factor and fresh tokens (branch, cnonce) are passed in, so every path is a unit test.

Times: a refresh is sent at half the granted expiry (at most 60 s early for long ones); after
a failure the next try waits 5, 10, 20 … up to 300 s, times a jitter factor in [0.8, 1.2] so
that many boxes behind one NAT do not retry in step; a 503 with Retry-After is honoured.

Behind NAT (docs/gateways.md "Behind the office's NAT: the public Contact"): the provider's
200 says in our top Via (``received``/``rport``, RFC 3581) the address and port our REGISTER
came from. When that is not the address of the Contact we registered, the machine registers
again at once with a Contact at that public address, removing the old one in the same
REGISTER (``<old>;expires=0``, RFC 3261 §10.2.2), and keeps it from then on (pjsua's contact
rewrite). Only the 200 to our own REGISTER is read (the trunk feeds nothing else), and at most
one rewrite happens per registration attempt or refresh: a provider whose view flips at every
answer costs one extra REGISTER per refresh, never a loop.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable

from appliance.sip.digest import Algorithm, compute_response, make_ha1, parse_algorithm
from appliance.sip.errors import SipParseError
from appliance.sip.headers import DigestCredentials, NameAddr, Via, quote
from appliance.sip.message import Header, Request, Response
from appliance.sip.uri import SipUri, param, parse_uri

BACKOFF = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)
REFRESH_MARGIN = 60.0
# Never refresh sooner than this after a 200: a provider answering with a tiny or zero expiry
# must not make us REGISTER in a tight loop.
MIN_REFRESH = 5.0
MAX_AUTH_ROUNDS = 2  # a second challenge to the same request after our answer = wrong password


class State(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"  # waiting for the back-off timer
    UNREGISTERING = "unregistering"
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True)
class UpstreamAccount:
    user: str
    password: str
    domain: str  # registrar host as in the Request-URI and AoR
    expires: int  # seconds asked for


@dataclasses.dataclass(frozen=True)
class LocalAddress:
    host: str
    port: int
    transport: str = "udp"


class UpstreamRegistration:
    def __init__(self, account: UpstreamAccount, local: LocalAddress, *, call_id: str,
                 from_tag: str, token: Callable[[], str], cseq: int = 0,
                 learn_public: bool = True, contact: LocalAddress | None = None,
                 stale: LocalAddress | None = None) -> None:
        """CALL_ID, FROM_TAG and CSEQ (the last CSeq number used) continue an earlier
        registration of the same AoR and Contact (an update of the gateway): RFC 3261 §10.2
        keeps one Call-ID per registrar, its CSeq increasing; CONTACT and STALE carry over
        the address it learned and the old Contact it was still removing. LEARN_PUBLIC: take
        the public address from the provider's 200 (module docstring); False keeps LOCAL."""
        self.account = account
        self.local = local
        self.learn_public = learn_public
        # The address our Contact names: LOCAL until the provider told us our public one.
        self.contact = contact or local
        # A Contact of ours to remove (``;expires=0``) in each REGISTER until one is answered
        # 200: the binding at the address we registered before learning the public one.
        self.stale = stale
        self._learned = False  # a rewrite happened in this attempt or refresh already
        self.call_id = call_id
        self.from_tag = from_tag
        self._token = token
        self._cseq = cseq
        self._auth_rounds = 0
        self._failures = 0
        self._timer: float | None = None
        self._unregister_after = False
        self.state = State.IDLE
        self.last_error: str | None = None
        self.expires_at: float | None = None
        self.expires = account.expires

    # -- requests ----------------------------------------------------------------------------

    def _request(self, expires: int, authorization: tuple[str, str] | None = None) -> Request:
        self._cseq += 1
        acct, local = self.account, self.local
        aor = f"sip:{acct.user}@{acct.domain}"
        contacts = [self._contact(self.contact)]
        if self.stale is not None and self.stale != self.contact:
            contacts.append(self._contact(self.stale) + ";expires=0")
        headers = [
            Header.make("Via", f"SIP/2.0/{local.transport.upper()} {_host(local.host)}:{local.port}"
                        f";branch=z9hG4bK{self._token()};rport"),
            Header.make("Max-Forwards", "70"),
            Header.make("From", f"<{aor}>;tag={self.from_tag}"),
            Header.make("To", f"<{aor}>"),
            Header.make("Call-ID", self.call_id),
            Header.make("CSeq", f"{self._cseq} REGISTER"),
            *(Header.make("Contact", contact) for contact in contacts),
            Header.make("Expires", str(expires)),
        ]
        if authorization is not None:
            headers.append(Header.make(*authorization))
        headers.append(Header.make("Content-Length", "0"))
        return Request(headers=headers, method="REGISTER", uri=f"sip:{acct.domain}")

    def _contact(self, address: LocalAddress) -> str:
        contact = f"<sip:{self.account.user}@{_host(address.host)}:{address.port}"
        return contact + (">" if address.transport == "udp" else
                          f";transport={address.transport}>")

    @property
    def cseq(self) -> int:
        """The CSeq number of the last REGISTER built."""
        return self._cseq

    def start(self, now: float) -> Request:
        """Register now (first time, after an update, or when the network came back)."""
        self.state = State.REGISTERING
        self._auth_rounds = 0
        self._timer = None
        self._unregister_after = False
        self._learned = False
        return self._request(self.expires)

    def stop(self, now: float) -> Request | None:
        """Unregister (Expires: 0) when registered, or when a REGISTER the provider may
        bind is in flight: a refresh, or a first REGISTER answering the provider's challenge
        (its 200 may be on its way, and the binding would then stand for the whole TTL, its
        calls coming to a line we no longer keep). A first REGISTER nobody answered binds
        nothing we could know of: no unregistration then. The object is done afterwards."""
        self._timer = None
        in_flight = self.state is State.REGISTERING and (
            self.expires_at is not None or self._auth_rounds > 0)
        if self.state is State.REGISTERED or in_flight:
            self.state = State.UNREGISTERING
            self._auth_rounds = 0
            return self._request(0)
        self.state = State.STOPPED
        return None

    def drop(self) -> None:
        """Give up without unregistering: a registration continuing this one (same AoR and
        Contact, ``cseq``) takes over the binding at the provider."""
        self._timer = None
        self.state = State.STOPPED

    # -- responses and timers ------------------------------------------------------------------

    def on_response(self, response: Response, now: float, jitter: float = 1.0
                    ) -> Request | None:
        """Feed a final response to our last REGISTER; returns the next request if any."""
        if response.status < 200 or self.state not in (State.REGISTERING,
                                                        State.UNREGISTERING):
            return None
        expires = 0 if self.state is State.UNREGISTERING else self.expires
        if response.status in (401, 407):
            return self._challenged(response, expires, now, jitter)
        if 200 <= response.status < 300:
            if self.state is State.UNREGISTERING:
                self.state = State.STOPPED
                self.expires_at = None
                return None
            granted = self._granted(response)
            self.stale = None  # removed by the REGISTER this answers, which listed it
            self.last_error = None
            self._failures = 0
            self._auth_rounds = 0
            self.expires_at = now + granted
            public = self._public(response)
            if public is not None:
                # The binding just made names an address the provider cannot reach: replace
                # it now (the state stays REGISTERING, as during a refresh).
                self._learned = True
                self.stale, self.contact = self.contact, public
                return self._request(self.expires)
            self.state = State.REGISTERED
            self._timer = now + max(granted / 2, granted - REFRESH_MARGIN, MIN_REFRESH)
            return None
        if response.status == 423:
            minimum = response.get("Min-Expires")
            if minimum and minimum.strip().isdigit() and int(minimum) > self.expires:
                self.expires = int(minimum)
                self._auth_rounds = 0
                return self._request(self.expires)
        retry_after = response.get("Retry-After")
        delay = None
        if response.status == 503 and retry_after:
            digits = retry_after.split(";")[0].strip()
            delay = float(digits) if digits.isdigit() else None
        self._fail(f"{response.status} {response.reason}".strip(), now, jitter, delay)
        return None

    def _challenged(self, response: Response, expires: int, now: float, jitter: float
                    ) -> Request | None:
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenges = response.get_all(header)
        chosen: DigestCredentials | None = None
        algorithm = Algorithm.MD5
        for value in challenges:
            try:
                creds = DigestCredentials.parse(value)
            except SipParseError:
                continue
            alg = parse_algorithm(creds.params.get("algorithm", "MD5"))
            if alg is not None and not alg.session:
                chosen, algorithm = creds, alg
                break
        stale = chosen is not None and chosen.params.get("stale", "").lower() == "true"
        if chosen is None or (self._auth_rounds >= MAX_AUTH_ROUNDS - 1 and not stale):
            self._fail("authentication rejected: check the gateway's UserName and Password"
                       if chosen is not None else f"{response.status}: no usable challenge",
                       now, jitter, None)
            return None
        self._auth_rounds += 1
        realm = chosen.params.get("realm", "")
        nonce = chosen.params.get("nonce", "")
        qops = [q.strip() for q in chosen.params.get("qop", "").split(",") if q.strip()]
        uri = f"sip:{self.account.domain}"
        ha1 = make_ha1(self.account.user, realm, self.account.password, algorithm)
        parts = [f"username={quote(self.account.user)}", f"realm={quote(realm)}",
                 f"nonce={quote(nonce)}", f"uri={quote(uri)}"]
        if "auth" in qops:
            cnonce, nc = self._token()[:16], "00000001"
            response_value = compute_response(ha1=ha1, algorithm=algorithm, method="REGISTER",
                                              uri=uri, nonce=nonce, qop="auth", nc=nc,
                                              cnonce=cnonce)
            parts += ["qop=auth", f"nc={nc}", f"cnonce={quote(cnonce)}"]
        else:
            response_value = compute_response(ha1=ha1, algorithm=algorithm, method="REGISTER",
                                              uri=uri, nonce=nonce)
        parts += [f"response={quote(response_value)}", f"algorithm={algorithm.value}"]
        if "opaque" in chosen.params:
            parts.append(f"opaque={quote(chosen.params['opaque'])}")
        name = "Authorization" if response.status == 401 else "Proxy-Authorization"
        return self._request(expires, (name, "Digest " + ", ".join(parts)))

    def _granted(self, response: Response) -> float:
        """The expiry the provider granted for our contact: each listed contact's
        ``expires`` parameter, else the Expires header (RFC 3261 §10.2.4), else the TTL
        asked. A provider or SBC fixing NAT lists our Contact rewritten (its public address
        and port instead of ours): when no contact is ours by host and port, the ones with
        our user part are taken to be ours, and when none has it either, every listed
        contact could be (other devices of the account are listed too). Of several
        candidates the shortest expiry counts: refreshing early is harmless, late loses the
        office's inbound calls. (A stale binding of ours about to lapse, listed with a few
        seconds left, costs one early refresh: ``MIN_REFRESH`` keeps it from a loop.)"""
        header = response.get("Expires")
        default = int(header) if header and header.strip().isdigit() else None
        exact: list[int] = []
        same_user: list[int] = []
        listed: list[int] = []
        for value in response.values("Contact"):
            try:
                contact = NameAddr.parse(value)
                uri = parse_uri(contact.uri)
            except SipParseError:
                continue
            text = param(contact.params, "expires")
            expires = int(text) if text is not None and text.strip().isdigit() else default
            if expires is None:
                continue
            if isinstance(uri, SipUri) and self.stale is not None and _at(uri, self.stale):
                continue  # the old Contact this REGISTER removed, listed by a sloppy registrar
            listed.append(expires)
            if not isinstance(uri, SipUri):
                continue
            if uri.user == self.account.user:
                same_user.append(expires)
            if _at(uri, self.contact):
                exact.append(expires)
        for candidates in (exact, same_user, listed):
            if candidates:
                return float(min(candidates))
        return float(default if default is not None else self.expires)

    def _public(self, response: Response) -> LocalAddress | None:
        """The address the provider saw our REGISTER come from (``received``/``rport`` in
        the top Via of its 200, RFC 3581; one missing means sent-by's host or port, as in
        pjsua), when it is another than our Contact's and this attempt has not rewritten
        it yet; else None. Only an IPv4 address counts (the trunk is IPv4 only)."""
        if not self.learn_public or self._learned or self.contact.transport != "udp":
            return None
        try:
            via = response.top_via
        except SipParseError:
            return None
        if via is None or (via.received is None and via.rport is None):
            return None
        host, port = _public_address(via, self.local.port)
        if host is None or not 0 < port < 65536:
            return None
        if host == self.contact.host and port == self.contact.port:
            return None
        return LocalAddress(host, port)

    def on_timeout(self, now: float, jitter: float = 1.0) -> None:
        """Our REGISTER got no final response (transaction timeout or transport error)."""
        if self.state is State.UNREGISTERING:
            self.state = State.STOPPED
            return
        self._fail("no answer from the provider", now, jitter, None)

    def _fail(self, reason: str, now: float, jitter: float, delay: float | None) -> None:
        self.state = State.FAILED
        self.last_error = reason
        self.expires_at = None
        step = BACKOFF[min(self._failures, len(BACKOFF) - 1)]
        self._failures += 1
        self._timer = now + (delay if delay is not None else step * jitter)

    def get_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> Request | None:
        """The refresh or retry time came: the next REGISTER."""
        if self._timer is None or now < self._timer:
            return None
        self._timer = None
        if self.state in (State.REGISTERED, State.FAILED):
            return self.start(now)
        return None


def _host(host: str) -> str:
    """HOST as a Via sent-by or URI writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _at(uri: SipUri, address: LocalAddress) -> bool:
    return (uri.host.strip("[]").lower() == address.host.strip("[]").lower()
            and (uri.port or 5060) == address.port)


def _public_address(via: Via, default_port: int) -> tuple[str | None, int]:
    """The host and port VIA's received/rport name (sent-by's for a missing one): the host
    as an IPv4 address that can be sent to, else None."""
    text = (via.received or via.host).strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None, 0
    if (not isinstance(address, ipaddress.IPv4Address) or address.is_unspecified
            or address.is_multicast or text == "255.255.255.255"):
        return None, 0
    rport = via.param("rport")
    if rport:  # filled in: it must be a port (a bare "rport" is our own request's, echoed)
        return (str(address), int(rport)) if rport.isdigit() else (None, 0)
    return str(address), via.port or default_port
