"""What the proxy keeps about a request it forwards, and the pure rules for each hop.

A ``Context`` is one proxied request: its server transaction, where responses to it go, and
a ``Branch`` per contact it was forked to (the request as forwarded, its client transaction,
its deadline: Timer C, ``TIMER_C``, or reaping once cancelled, ``REAP_AFTER``; and whether it
was cancelled). ``Late`` is what an answered INVITE branch still needs once its request is
over: a 2xx retransmission goes to the caller (or gets our ACK again, on a branch we hung
up ourselves: ``hang_up`` makes that ACK and the BYE). ``Reply`` and ``Drain`` are the
proxy's ways of answering a request and of running a transaction's actions, as its
collaborators are handed them.

The helpers make what a forwarded hop carries: the request as sent to one contact
(``branch_request``: Max-Forwards minus one, our realm's credentials consumed,
``consume_credentials``), our Via (``make_via``, a fresh ``z9hG4bK`` branch, or one derived
from the incoming ACK's for a stateless hop, ``ack_branch``), our Record-Route
(``make_record_route``), the To tag of our own responses (``tag_for``, stable across
retransmissions), a final response we make in place of a branch's (``local_response``), the
chosen 401/407 with every branch's challenges (``with_challenges``), and a response with our
Via taken off (``strip_top_via``). ``trim`` lets a finished request keep only what a lingering
branch still reads.

Kept apart from ``sip.proxy`` (which owns the tables, the timers and the I/O) because none of
this does I/O, logs or reads a clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeAlias

from appliance.sip.dialogs import Call, FinalMeaning
from appliance.sip.errors import SipParseError
from appliance.sip.headers import NameAddr
from appliance.sip.hop import stub
from appliance.sip.message import Request, Response, make_response
from appliance.sip.proxy_ports import Caller
from appliance.sip.transaction import ClientTransaction, ServerTransaction, Transaction
from appliance.sip.uri import SipUri, hostport, parse_uri
from appliance.sip.wire import Target

# --- per-request state ------------------------------------------------------------------

DEFAULT_MAX_FORWARDS = 70  # a request without Max-Forwards (RFC 3261 §16.6 step 3)

# A branch's deadline (``Branch.deadline``): Timer C while it rings, reaping once cancelled.
TIMER_C = 180.0  # RFC 3261 §16.6 step 11: "greater than 3 minutes"
REAP_AFTER = 32.0  # 64·T1: a cancelled branch that stays silent this long is dropped
# How long an unanswered call is kept after its INVITE or its latest provisional: Timer C,
# then a CANCEL's reaping, with room to spare. A phone may ring for many minutes by sending a
# 180 every minute (RFC 3261 §13.3.1.1); its call must outlive that, or its BYE draws a 481.
RINGING_LIFETIME = TIMER_C + 2 * REAP_AFTER


@dataclass(eq=False, slots=True)
class Branch:
    context: Context
    request: Request  # as forwarded
    target: Target
    txn: ClientTransaction
    final: Response | None = None  # the final response used for best-response selection
    provisional: bool = False  # a 1xx arrived: a CANCEL may be sent now
    cancel_wanted: bool = False  # CANCEL as soon as a provisional arrives
    cancelled: bool = False  # our CANCEL went out
    timed_out: bool = False  # Timer C fired: its 487 counts as 408
    deadline: float | None = None  # Timer C, or the reaping deadline after a CANCEL
    # Our own ACK for a 2xx the caller could not take (``hang_up``), and where it went:
    # sent again for each retransmission of that 2xx.
    ack: tuple[Request, Target] | None = None

    @property
    def done(self) -> bool:
        return self.final is not None


@dataclass(eq=False, slots=True)
class Context:
    """One proxied request: its server transaction and its branches."""

    request: Request  # as received (Via stamped with received/rport)
    server: ServerTransaction
    source: Target  # where responses to the request go
    local: tuple[str, int]  # our address it arrived on: written in our Via / Record-Route
    caller: Caller | None = None  # None for in-dialog requests
    callee: str = ""
    call: Call | None = None  # the out-of-dialog INVITE's call record
    phone_number_sid: str | None = None
    account_sid: str | None = None  # the CDR's account, when not the caller's
    cdr_statuses: FinalMeaning = ()  # the callee's own meaning of finals (Fork.cdr_statuses)
    sms_sid: str | None = None  # a text MESSAGE's SMS row, `sending` until its final
    branches: list[Branch] = field(default_factory=list)
    final_sent: bool = False
    cancelled: bool = False  # the caller sent CANCEL
    refused: bool = False  # the caller got a non-2xx final: a later 2xx cannot reach it


# The proxy's ``_drain``: run a transaction's actions (send, deliver, time out, forget).
Drain: TypeAlias = Callable[[Transaction, list[Any], float], Awaitable[None]]


class Reply(Protocol):
    """The proxy's ``_reply``, as its collaborators are handed it: answer SERVER's request
    with STATUS (and HEADERS)."""

    async def __call__(self, server: ServerTransaction, status: int, reason: str | None = None,
                       *, now: float, headers: Collection[tuple[str, str]] = ()) -> None: ...


class Late(NamedTuple):
    """What a 2xx retransmission on a finished request's INVITE branch still needs: the
    server transaction and the caller to forward it to, and the call to note its dialog in."""

    server: ServerTransaction
    source: Target
    call: Call | None
    ack: tuple[Request, Target] | None = None  # ours, when we hung the branch up (Branch.ack)


# --- helpers -----------------------------------------------------------------------------------


def token() -> str:
    return secrets.token_hex(8)


def user_of(name_addr: NameAddr) -> str | None:
    try:
        uri = parse_uri(name_addr.uri)
    except SipParseError:
        return None
    return uri.user if isinstance(uri, SipUri) else None


def make_via(local: tuple[str, int], transport: str, branch: str | None = None, *,
             rport: bool = False) -> str:
    """Our Via; with RPORT (RFC 3581) the far side answers to the address and port the
    request came from, the NAT's mapping, not to the LAN port sent-by names."""
    branch = branch or "z9hG4bK" + token()
    via = f"SIP/2.0/{transport.upper()} {hostport(local)};branch={branch}"
    return via + ";rport" if rport else via


def make_record_route(local: tuple[str, int], transport: str) -> str:
    return f"<sip:{hostport(local)};lr;transport={transport.lower()}>"


def branch_request(original: Request, uri: str, inbound: str, outbound: str,
                   local: tuple[str, int], *, record_route: bool,
                   branch: str | None = None, keep_credentials: bool = False,
                   public_in: tuple[str, int] | None = None,
                   public_out: tuple[str, int] | None = None) -> Request:
    """ORIGINAL as forwarded to URI (§16.6): Max-Forwards minus one, our credentials
    consumed unless KEEP_CREDENTIALS, our Record-Route if RECORD_ROUTE, and our Via, on a
    fresh branch unless BRANCH.

    The Record-Route is two entries (RFC 5658) when the legs see us at different places:
    the transport changes from INBOUND to OUTBOUND, or one leg is a provider's behind NAT,
    which must reach us at the public address PUBLIC_IN (the side ORIGINAL came from) or
    PUBLIC_OUT (the side it goes to), not at LOCAL. The top entry is the outbound side's:
    the callee's route set starts with it, the caller's (reversed) with the inbound one's.
    Toward a PUBLIC_OUT our Via asks for ``rport``."""
    request = Request(method=original.method, uri=uri, headers=list(original.headers),
                      body=original.body)
    forwards = original.get("max-forwards")
    hops = int(forwards) - 1 if forwards and forwards.isdigit() else DEFAULT_MAX_FORWARDS
    request.set("Max-Forwards", str(max(hops, 0)))
    if not keep_credentials:
        consume_credentials(request)
    if record_route:
        inner = make_record_route(public_in or local, inbound)
        outer = make_record_route(public_out or local, outbound)
        request.prepend("Record-Route", inner)
        if outer != inner:
            request.prepend("Record-Route", outer)
    request.prepend("Via", make_via(local, outbound, branch, rport=public_out is not None))
    return request


def consume_credentials(request: Request) -> None:
    """Drop the credentials meant for us (RFC 3261 §22.3). No proxy sits between the
    phones and us, so every Proxy-Authorization line is for our realm."""
    request.remove("proxy-authorization")


def describe(message: Request | Response) -> str:
    if isinstance(message, Request):
        return message.method
    return f"{message.status} response"


def tag_for(request: Request) -> str:
    """The To tag of our own responses: derived from the top Via branch, so a request and
    its retransmissions get the same tag."""
    top = request.top_via
    seed = (top.branch if top is not None and top.branch else "") + (request.call_id or "")
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


def ack_branch(ack: Request) -> str:
    """A stateless hop's branch (§16.11): derived from the incoming one, so a retransmitted
    ACK gets the same branch downstream."""
    top = ack.top_via
    seed = (top.branch if top is not None and top.branch else "") + (ack.call_id or "")
    return "z9hG4bK" + hashlib.sha256(seed.encode()).hexdigest()[:20]


@dataclass
class LocalResponse(Response):
    """A final response we make ourselves in place of a branch's (408, 487, 500): it is
    addressed to the caller already, so no Via of ours is stripped when it is sent."""


def local_response(request: Request, status: int) -> Response:
    made = make_response(request, status, to_tag=tag_for(request))
    return LocalResponse(headers=made.headers, body=made.body, status=made.status,
                         reason=made.reason)


def trim(context: Context) -> None:
    """A finished request's context stays reachable from its branches while their client
    transactions linger (64·T1 after a 2xx, for 2xx retransmissions): keep of its messages
    only what that still reads (the method, the identifying headers, the final statuses),
    not whole INVITEs and 200s with their bodies."""
    context.request = stub(context.request, ())  # its method is all that is read now
    for branch in context.branches:
        branch.request = stub(branch.request)  # a late 1xx may still call for a CANCEL
        final = branch.final
        if final is not None and final.headers:
            branch.final = Response(status=final.status, reason=final.reason)


CHALLENGES = ("www-authenticate", "proxy-authenticate")


def with_challenges(chosen: Response, finals: Collection[Response]) -> Response:
    """CHOSEN, when it is a 401 or 407, with the challenges of every other 401/407 among
    FINALS added unmodified (RFC 3261 §16.7 step 7): each phone of a forked call may want
    its own credentials, and the caller can only answer the ones it sees. Else CHOSEN."""
    if chosen.status not in (401, 407):
        return chosen
    extra = [(name, value) for other in finals
             if other is not chosen and other.status in (401, 407)
             for name in CHALLENGES for value in other.get_all(name)]
    if not extra:
        return chosen
    merged = dataclasses.replace(chosen, headers=list(chosen.headers))
    for name, value in extra:
        merged.add(name, value)
    return merged


def hang_up(invite: Request, response: Response,
            ours: Callable[[str], bool]) -> tuple[Request, Request]:
    """The ACK (RFC 3261 §13.2.2.4) and the BYE (§15.1.1) with which we end, as its UAC,
    the dialog a 2xx to INVITE (our branch, as forwarded or its ``stub``) opens: the remote
    target is the 2xx's Contact, the route set its Record-Route entries below ours (OURS
    says whether a Record-Route URI is one of ours), reversed; From, Call-ID and the CSeq
    number are the INVITE's, the BYE's one more. Our Via is the INVITE's own (its sent-by,
    and ``rport`` toward a provider behind NAT), on a fresh branch each."""
    contact = response.get("contact")
    try:
        target = NameAddr.parse(contact).uri if contact else invite.uri
    except SipParseError:
        target = invite.uri
    route: list[str] = []
    for value in response.values("record-route"):
        try:
            if ours(NameAddr.parse(value).uri):
                break  # ours and what the caller's side put above us: not our route set
        except SipParseError:
            pass
        route.append(value)
    via = invite.values("via")[0]
    head, _, tail = via.partition(";branch=")
    rest = tail.partition(";")[2]

    def request(method: str, number: int) -> Request:
        message = Request(method=method, uri=target)
        message.add("Via", f"{head};branch=z9hG4bK{token()}" + (f";{rest}" if rest else ""))
        message.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        for value in reversed(route):
            message.add("Route", value)
        message.add("From", invite.get("from") or "")
        message.add("To", response.get("to") or "")
        message.add("Call-ID", invite.call_id or "")
        message.add("CSeq", f"{number} {method}")
        return message

    number = invite.cseq.number
    return request("ACK", number), request("BYE", number + 1)


def strip_top_via(response: Response) -> Response | None:
    """A copy of RESPONSE without our Via; None when no Via would be left (§16.7 step 3)."""
    copy = dataclasses.replace(response, headers=list(response.headers))
    copy.pop_first_value("via")
    return copy if copy.values("via") else None
