"""The registrar's location table (RFC 3261 §10.3): contacts per address-of-record.

``Location.register(...)`` applies one REGISTER atomically: every check runs before any
binding changes, and a failed check raises ``RegistrationError`` carrying the status to
answer. The checks and their replies:

| Rule | Reply |
|---|---|
| ``*`` with other contacts, or without ``Expires: 0`` (§10.3 step 6) | 400 |
| same Call-ID as a stored binding and CSeq not higher (step 7) | 400 (Kamailio's choice) |
| an expiry below ``min_expires`` and not 0 | 423 + ``Min-Expires`` |
| more than ``max_contacts`` bindings would result | 503 |

503 for too many contacts follows Kamailio's "503 Too many registered contacts"; a 403
reads as "wrong password" to many phones and makes them stop registering altogether.

Expiry precedence: the contact's ``expires`` param, then the ``Expires`` header, then
``default_expires``; capped at ``max_expires``. Times are the caller's ``now``: use wall-clock
seconds here, because ``to_dicts``/``from_dicts`` persist absolute expiry times across a
restart. Contacts are told apart by their URI text (RFC 5626 instance ids are not used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from appliance.sip.errors import SipError
from appliance.sip.headers import NameAddr
from appliance.sip.uri import SipUri, parse_uri
from appliance.sip.wire import Target

DEFAULT_EXPIRES: Final = 3600  # RFC 3261 §10.2.1.1 suggests one hour
MIN_EXPIRES: Final = 60  # RFC 3261 §10.3 step 7 recommends at least 60 s, as Kamailio does
MAX_EXPIRES: Final = 3600
MAX_CONTACTS: Final = 10  # Kamailio registrar's max_contacts in our reference setup (sip.md §5.1)


class RegistrationError(SipError):
    """A REGISTER the table refuses; ``status`` is the reply, ``min_expires`` is set for 423."""

    def __init__(self, message: str, status: int, *, min_expires: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.min_expires = min_expires


@dataclass(init=False)
class Binding:
    aor: str
    uri: str  # the contact URI, as the phone sent it
    expires_at: float
    call_id: str
    cseq: int
    transport: str
    source: tuple[str, int]  # where the REGISTER came from (NAT-mapped address)
    connection_id: str | None  # the TCP connection to reuse for requests to it
    q: float | None
    params: list[tuple[str, str | None]]  # other contact params
    user_agent: str  # of the REGISTER that made it, shown in the API (kept over a restart)

    # Written out (init=False): compiled, the dataclass-made __init__ would run interpreted.
    def __init__(self, aor: str, uri: str, expires_at: float, call_id: str, cseq: int,
                 transport: str = "udp", source: tuple[str, int] = ("", 0),
                 connection_id: str | None = None, q: float | None = None,
                 params: list[tuple[str, str | None]] | None = None,
                 user_agent: str = "") -> None:
        self.aor = aor
        self.uri = uri
        self.expires_at = expires_at
        self.call_id = call_id
        self.cseq = cseq
        self.transport = transport
        self.source = source
        self.connection_id = connection_id
        self.q = q
        self.params = [] if params is None else params
        self.user_agent = user_agent

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))

    def header_value(self, now: float) -> str:
        """A Contact value for the 200 OK: the URI with its params, its q-value (a phone
        checks the 200 for what it asked) and remaining expires."""
        if not self.params and self.q is None:  # the general case below, for the usual one
            return f"<{self.uri}>;expires={self.expires_in(now)}"
        contact = NameAddr(uri=self.uri, params=list(self.params))
        if self.q is not None:
            contact.set_param("q", qvalue_text(self.q))
        contact.set_param("expires", str(self.expires_in(now)))
        return str(contact)

    def target(self) -> Target:
        """Where requests to this contact are sent (calls, MESSAGEs, keep-alive pings).

        UDP: the address the REGISTER came from (NAT-safe, RFC 3581). TCP (or TLS): the
        phone's own connection (known by that address too) while the binding has one; else
        (restored after a restart) a new connection to the host the REGISTER came from at
        the contact URI's port (5060, 5061 for ``sips:`` or TLS), where the phone listens:
        the port the REGISTER came from was its outgoing one, where nothing listens. The
        source host rather than the contact's, as for UDP: it is what reaches the phone, a
        NAT's address too (the contact host behind one is private). The contact URI's host
        and port only when no source was kept."""
        transport = self.transport.lower()
        if self.source[0] and (transport == "udp" or self.connection_id is not None):
            return Target(transport, self.source[0], self.source[1], self.connection_id)
        contact = parse_uri(self.uri)
        if not isinstance(contact, SipUri):
            return Target(transport, self.source[0], self.source[1])
        port = contact.port or _default_port(contact, transport)
        if not self.source[0]:
            return Target(contact.transport or transport, contact.host.strip("[]"), port)
        return Target(transport, self.source[0], port)

    def to_dict(self) -> dict[str, Any]:
        """What ``dataclasses.asdict`` gives (same keys, order and values), built directly:
        ``asdict`` deep-copies field by field, and the registrar writes many of these."""
        return {"aor": self.aor, "uri": self.uri, "expires_at": self.expires_at,
                "call_id": self.call_id, "cseq": self.cseq, "transport": self.transport,
                "source": tuple(self.source), "connection_id": self.connection_id,
                "q": self.q, "params": [tuple(p) for p in self.params],
                "user_agent": self.user_agent}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Binding:
        source = data.get("source") or ("", 0)
        return cls(
            aor=str(data["aor"]),
            uri=str(data["uri"]),
            expires_at=float(data["expires_at"]),
            call_id=str(data["call_id"]),
            cseq=int(data["cseq"]),
            transport=str(data.get("transport", "udp")),
            source=(str(source[0]), int(source[1])),
            connection_id=data.get("connection_id"),
            q=data.get("q"),
            params=[(str(k), None if v is None else str(v)) for k, v in data.get("params", [])],
            user_agent=str(data.get("user_agent") or ""),
        )


def _precedence(binding: Binding) -> tuple[float, float]:
    """The order of an AoR's bindings: highest q first, then the most recent."""
    return (-(binding.q if binding.q is not None else 1.0), -binding.expires_at)


def _default_port(contact: SipUri, transport: str) -> int:
    return 5061 if contact.scheme == "sips" or transport == "tls" else 5060


def qvalue_text(q: float) -> str:
    """Q as RFC 3261 writes a qvalue (``0.5``, ``1``), at most three decimals."""
    return f"{q:.3f}".rstrip("0").rstrip(".")


@dataclass(init=False)
class Origin:
    """Where a REGISTER came from, stored with each binding it creates (never changed)."""

    transport: str
    source: tuple[str, int]
    connection_id: str | None

    # Written out (init=False): compiled, the dataclass-made __init__ would run interpreted.
    def __init__(self, transport: str = "udp", source: tuple[str, int] = ("", 0),
                 connection_id: str | None = None) -> None:
        self.transport = transport
        self.source = source
        self.connection_id = connection_id


class Location:
    def __init__(
        self,
        *,
        default_expires: int = DEFAULT_EXPIRES,
        min_expires: int = MIN_EXPIRES,
        max_expires: int = MAX_EXPIRES,
        max_contacts: int = MAX_CONTACTS,
    ) -> None:
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.max_contacts = max_contacts
        self._bindings: dict[str, dict[str, Binding]] = {}  # aor -> contact uri -> binding

    def __len__(self) -> int:
        return sum(len(b) for b in self._bindings.values())

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of AOR, highest q first (then most recent)."""
        live = [b for b in self._bindings.get(aor, {}).values() if b.expires_at > now]
        if len(live) > 1:  # one binding (most AoRs): nothing to order
            live.sort(key=_precedence)
        return live

    def register(
        self,
        aor: str,
        contacts: list[NameAddr],
        *,
        expires_header: int | None,
        call_id: str,
        cseq: int,
        now: float,
        origin: Origin | None = None,
        user_agent: str = "",
    ) -> list[Binding]:
        """Apply a REGISTER; returns the AoR's bindings afterwards (all of them go in the
        200 OK). An empty CONTACTS list is a query. USER_AGENT goes with the bindings it
        makes or refreshes."""
        origin = origin or Origin()
        current = {u: b for u, b in self._bindings.get(aor, {}).items() if b.expires_at > now}
        if any(c.is_wildcard for c in contacts):
            if len(contacts) != 1 or expires_header != 0:
                raise RegistrationError("'Contact: *' needs to be alone with 'Expires: 0'", 400)
            for binding in current.values():
                self._check_order(binding, call_id, cseq)
            self._bindings.pop(aor, None)
            return []

        updates: dict[str, int] = {}
        for contact in contacts:
            expires = self._expiry(contact, expires_header)
            if 0 < expires < self.min_expires:
                raise RegistrationError(
                    f"expires {expires} below {self.min_expires}", 423,
                    min_expires=self.min_expires,
                )
            existing = current.get(contact.uri)
            if existing is not None:
                self._check_order(existing, call_id, cseq)
            updates[contact.uri] = min(expires, self.max_expires)

        result = dict(current)
        for contact in contacts:
            expires = updates[contact.uri]
            if expires == 0:
                result.pop(contact.uri, None)
                continue
            if contact.params:
                params = [(k, v) for k, v in contact.params if k.lower() not in ("expires", "q")]
                q = contact.q
            else:  # the usual Contact: no parameters to read
                params, q = [], None
            result[contact.uri] = Binding(
                aor=aor, uri=contact.uri, expires_at=now + expires, call_id=call_id, cseq=cseq,
                transport=origin.transport, source=origin.source,
                connection_id=origin.connection_id, q=q, params=params,
                user_agent=user_agent,
            )
        if len(result) > self.max_contacts:
            raise RegistrationError(f"more than {self.max_contacts} contacts for {aor}", 503)
        if result:
            self._bindings[aor] = result
        else:
            self._bindings.pop(aor, None)
        # What lookup(aor, now) gives: every binding in RESULT is live (the current ones
        # were, the new ones expire after now).
        live = list(result.values())
        if len(live) > 1:
            live.sort(key=_precedence)
        return live

    def _expiry(self, contact: NameAddr, expires_header: int | None) -> int:
        expires = contact.expires if contact.params else None
        if expires is not None:
            return expires
        if expires_header is not None:
            return expires_header
        return self.default_expires

    @staticmethod
    def _check_order(binding: Binding, call_id: str, cseq: int) -> None:
        if binding.call_id == call_id and cseq <= binding.cseq:
            raise RegistrationError(f"CSeq {cseq} not above {binding.cseq} for {call_id}", 400)

    def remove_connection(self, connection_id: str) -> list[Binding]:
        """Drop bindings tied to a closed TCP connection (their phone cannot be reached)."""
        gone: list[Binding] = []
        for aor in list(self._bindings):
            contacts = self._bindings[aor]
            for uri in [u for u, b in contacts.items() if b.connection_id == connection_id]:
                gone.append(contacts.pop(uri))
            if not contacts:
                del self._bindings[aor]
        return gone

    def remove_contact(self, aor: str, uri: str) -> Binding | None:
        """Drop AOR's binding of the contact URI (its phone stopped answering)."""
        contacts = self._bindings.get(aor)
        if contacts is None:
            return None
        binding = contacts.pop(uri, None)
        if not contacts:
            del self._bindings[aor]
        return binding

    def remove(self, aor: str) -> list[Binding]:
        """Drop every binding of AOR (its Client was deleted or may no longer register)."""
        return list(self._bindings.pop(aor, {}).values())

    def aors(self) -> list[str]:
        """The AoRs holding bindings (expired ones not swept yet included)."""
        return list(self._bindings)

    def expired(self, now: float) -> list[Binding]:
        """Remove and return every binding whose time is up."""
        gone: list[Binding] = []
        for aor in list(self._bindings):
            contacts = self._bindings[aor]
            for uri in [u for u, b in contacts.items() if b.expires_at <= now]:
                gone.append(contacts.pop(uri))
            if not contacts:
                del self._bindings[aor]
        return gone

    def get_timer(self) -> float | None:
        """When the next binding expires."""
        times = [b.expires_at for c in self._bindings.values() for b in c.values()]
        return min(times, default=None)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [b.to_dict() for c in self._bindings.values() for b in c.values()]

    def load(self, items: list[dict[str, Any]], now: float) -> None:
        """Restore saved bindings; already-expired ones are skipped. Connection ids are
        cleared: no TCP connection survives a restart, the phone reconnects or re-registers."""
        for item in items:
            binding = Binding.from_dict(item)
            binding.connection_id = None
            if binding.expires_at > now:
                self._bindings.setdefault(binding.aor, {})[binding.uri] = binding
