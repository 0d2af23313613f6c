"""Transaction keys: which transaction a message belongs to (RFC 3261 §17.1.3, §17.2.3).

A server transaction is known by its request's top Via (an RFC 3261 branch and sent-by) and
method, ACK mapping to its INVITE (``server_key``; the RFC 2543 rule without the magic
cookie); a client transaction by its top Via branch and CSeq method (``client_key``).
``rfc3261_key`` builds a server key from those parts, as the REGISTER quick path reads them
from the bytes (``sip.register_view``).

Kept apart from the state machines (``sip.transaction``, each computing its key when created)
and the table matching messages by key (``sip.transaction_table``): both need the keys, and
the quick path needs nothing else.
"""

from __future__ import annotations

import sys

from appliance.sip.errors import SipParseError
from appliance.sip.headers import is_rfc3261_branch
from appliance.sip.message import Request, Response

TransactionKey = tuple[str, ...]


def rfc3261_key(branch: str, host: str, port: int | None, method: str) -> TransactionKey:
    """The server transaction key of a request whose top Via has an RFC 3261 BRANCH (the
    magic cookie) and sent-by HOST:PORT (``server_key``; the REGISTER quick path builds it
    from the bytes)."""
    # sent-by interned (mortal strings: freed with the last key that uses them), like the
    # methods in the keys: a phone's transactions all share one copy instead of one per key.
    return ("3261", branch, sys.intern(f"{host.lower()}:{port or ''}"), method)


def server_key(request: Request) -> TransactionKey:
    """RFC 3261 §17.2.3: which server transaction REQUEST belongs to.

    ACK maps to its INVITE; CANCEL keeps its own method and so its own transaction.
    Without the magic cookie we fall back to the RFC 2543 rule (Request-URI, From tag,
    Call-ID, CSeq number and top Via), as pjsip does.
    """
    top = request.top_via
    if top is None:
        raise SipParseError("request without Via")
    method = "INVITE" if request.method == "ACK" else sys.intern(request.method)
    branch = top.branch
    if branch is not None and is_rfc3261_branch(branch):
        # Cached on the request with the Via object it came from: the table lookup and the
        # new transaction both need it. Nothing edits a Via's branch or sent-by in place
        # (stamp_received only adds received/rport, which the key does not use).
        cached = request._server_key
        if cached is not None and cached[0] is top and cached[1][3] == method:
            return cached[1]
        key = rfc3261_key(branch, top.host, top.port, method)
        request._server_key = (top, key)
        return key
    cseq = request.cseq
    return (
        "2543", request.uri, request.from_.tag or "", request.call_id or "",
        str(cseq.number), str(top), method,
    )


def client_key(message: Request | Response) -> TransactionKey:
    """RFC 3261 §17.1.3: top Via branch + CSeq method."""
    top = message.top_via
    if top is None or not top.branch:
        raise SipParseError("no branch in the top Via")
    return (top.branch, sys.intern(message.cseq.method))
