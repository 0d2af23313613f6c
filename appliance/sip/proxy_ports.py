"""What the proxy needs from the rest of the appliance, and what its router answers.

``sip.proxy`` is a service but the appliance's other services sit above it: they look Clients
up (``Directory``, ``User``), write CDRs and SMS rows (``CallLog``, ``MessageLog``) and decide
where a call goes (``Router``, implemented by ``services.routing``). These Protocols and the
frozen records crossing them (``Caller`` in, a ``Decision`` of ``Fork``/``Refuse``/``Answer``
out) are declared here, low, so that the services import them without importing the proxy
(style.md §3.1: dependencies that point up go through a Protocol declared low). Pure
declarations: nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from appliance.models import CallRecord, CallStatus
from appliance.sip.dialogs import FinalMeaning
from appliance.sip.message import Request
from appliance.sip.wire import Target


class User(Protocol):
    """A Client as the proxy sees it (``services.telephony.SipUser`` satisfies it)."""

    @property
    def login(self) -> str: ...
    @property
    def account_sid(self) -> str: ...
    @property
    def realm(self) -> str: ...
    @property
    def ha1_md5(self) -> str: ...
    @property
    def ha1_sha256(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def voice_url(self) -> str | None: ...
    @property
    def voice_application_sid(self) -> str | None: ...


class Directory(Protocol):
    async def user(self, login: str) -> User | None: ...


class CallLog(Protocol):
    """CDR writer (``services.telephony.CallLog``)."""

    def new_sid(self) -> str: ...
    async def opened(self, *, account_sid: str, from_: str, to: str, direction: str,
                     sid: Any = None, phone_number_sid: str | None = None) -> CallRecord: ...
    async def ringing(self, sid: str) -> None: ...
    async def answered(self, sid: str) -> None: ...
    async def ended(self, sid: str, status: CallStatus) -> CallRecord | None: ...


class MessageLog(Protocol):
    """Keeps a MESSAGE as an SMS row (``services.message_log.MessageLog``): `sending` from
    ``opened``, which must not wait for the database (it comes before the relay), to the
    final answer, ``ended``; a MESSAGE refused before the relay is one ``record``."""

    def opened(self, *, account_sid: str, from_: str, to: str, body: str,
               direction: str) -> str: ...

    async def ended(self, sid: str, *, sent: bool, error_code: int | None = ...,
                    error_message: str | None = ...) -> Any: ...

    async def record(self, *, account_sid: str, from_: str, to: str, body: str,
                     direction: str, error_code: int, error_message: str | None) -> Any: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated, enabled Client that sent a request."""

    login: str
    account_sid: str
    voice_url: str | None = None
    voice_application_sid: str | None = None
    media: bool = False  # a media worker's INVITE for a leg the calls service dialled
    # The sid of the gateway whose provider sent the request (a call to one of our DIDs):
    # trusted by its source address, never challenged; ``login`` is the caller's number.
    gateway: str = ""
    # That gateway's UserName: the user part of the Contact it registers upstream, which a
    # provider may put in the Request-URI of its INVITEs, the DID then in the To.
    gateway_user: str = ""


@dataclass(frozen=True)
class Contact:
    """One place to fork to: the Request-URI of the branch and where to send it."""

    uri: str
    target: Target


@dataclass(frozen=True)
class Fork:
    callee: str  # the callee's login: the CDR's / SMS row's `to`
    contacts: tuple[Contact, ...]
    # Added to every branch (after dropping the caller's own copies): X-Leg-Id to a worker.
    headers: tuple[tuple[str, str], ...] = ()
    # The CDR sid to use for an INVITE (the calls service passes its CallSid); "" means
    # write no CDR (the calls service logs that leg itself).
    cdr_sid: str | None = None
    phone_number_sid: str | None = None
    # The CDR's account when it is not the caller's (a provider's call to a DID).
    account_sid: str | None = None
    # Forward Proxy-Authorization (a worker's leg to a gateway answers the provider's own
    # challenge); otherwise credentials are ours and are consumed.
    keep_credentials: bool = False
    # The contacts are registered phones of Client CALLEE (not a media worker, not a
    # gateway): a phone of CALLEE's that moved (registered again from elsewhere) is still
    # the callee for the requests within the call (sip.in_dialog).
    phones: bool = False
    # What the callee's own unanswered finals mean for the CDR where the usual reading
    # (`dialogs.cdr_status`: a person's phone) does not fit: (status, CDR status) pairs.
    cdr_statuses: FinalMeaning = ()


@dataclass(frozen=True)
class Refuse:
    status: int
    reason: str | None = None  # reason phrase; None = the standard one
    headers: tuple[tuple[str, str], ...] = ()  # added to the answer (e.g. Retry-After)
    # The router logged it already, throttled (a flood's refusals): the proxy's own line
    # for it goes to debug, and no row (CDR, SMS) is written for it: a flood must not fill
    # the database with its refusals.
    logged: bool = False


@dataclass(frozen=True)
class Answer:
    """The router took the request itself (e.g. a MESSAGE to a phone number, queued as SMS):
    answer it with STATUS, nothing is forwarded and no row is written by the proxy."""

    status: int
    reason: str | None = None


Decision = Fork | Refuse | Answer


class Router(Protocol):
    """Where a request of an authenticated Client goes (implemented by services.routing)."""

    def registered(self, login: str, now: float) -> bool:
        """True when LOGIN has at least one live binding."""

    def phone_at(self, login: str, host: str, port: int | None, now: float) -> bool:
        """True when one of LOGIN's live bindings was registered from HOST, at PORT (at any
        port when None): a request from there comes from one of LOGIN's phones."""

    async def route(self, request: Request, caller: Caller, now: float) -> Decision:
        """Fork to contacts, or refuse with a status and reason phrase."""
