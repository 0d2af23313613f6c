"""The messages the transaction layer builds out of a request itself.

``make_trying`` is the 100 Trying an INVITE server transaction sends when its TU is silent
(RFC 3261 §17.2.1); ``make_ack`` the hop-by-hop ACK an INVITE client transaction sends for a
non-2xx final (§17.1.1.3) and ``make_cancel`` the CANCEL of a pending INVITE (§9.1), both
copies of the request's top Via, Max-Forwards, Route, From, Call-ID and CSeq number.
``stub`` keeps of a request only the headers these read (``STUB_HEADERS``): what a lingering
transaction, or a proxied request once finished, holds instead of the whole message.

Kept apart from the state machines (``sip.transaction``) because the TU builds CANCELs and
stubs with them too, and they follow the message model rather than the timers.
"""

from __future__ import annotations

from collections.abc import Collection

from appliance.sip.message import Request, Response, make_response

# The headers ``_hop_copy`` (an ACK or a CANCEL) and ``make_response`` read.
STUB_HEADERS = frozenset({"via", "max-forwards", "route", "from", "to", "call-id", "cseq"})


def stub(request: Request, keep: Collection[str] = STUB_HEADERS) -> Request:
    """REQUEST's method and URI with only its KEEP headers (shared, not copied), no body."""
    return Request(method=request.method, uri=request.uri, version=request.version,
                   headers=[h for h in request.headers if h.name in keep])


def make_trying(request: Request) -> Response:
    """100 Trying for REQUEST, with its Timestamp if any (RFC 3261 §8.2.6.1: MUST)."""
    response = make_response(request, 100)
    timestamp = request.get("timestamp")
    if timestamp is not None:
        response.add("Timestamp", timestamp)
    return response


def _hop_copy(request: Request, method: str, to: str) -> Request:
    msg = Request(method=method, uri=request.uri)
    msg.add("Via", request.values("via")[0])
    msg.add("Max-Forwards", request.get("max-forwards") or "70")
    for route in request.get_all("route"):
        msg.add("Route", route)
    msg.add("From", request.get("from") or "")
    msg.add("To", to)
    msg.add("Call-ID", request.call_id or "")
    msg.add("CSeq", f"{request.cseq.number} {method}")
    return msg


def make_ack(invite: Request, response: Response) -> Request:
    """The hop-by-hop ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
    return _hop_copy(invite, "ACK", response.get("to") or "")


def make_cancel(invite: Request) -> Request:
    """CANCEL for a pending INVITE (RFC 3261 §9.1): same Request-URI, top Via and CSeq number."""
    return _hop_copy(invite, "CANCEL", invite.get("to") or "")
