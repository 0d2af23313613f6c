"""The rows the proxy writes: a CDR per call and an SMS row per MESSAGE.

CDRs (``CallLog``), one row per authenticated, registered caller's INVITE that reached the
routing step. Direction ``inbound``: the call came *into* the appliance from a Client, which
is how Restcomm records the caller's leg of a Client → Client call; ``from`` is the caller's
bare login and ``to`` the callee's login (or the dialled user when refused). ``queued`` at the
INVITE, ``ringing`` at the first 18x, ``in-progress`` at the first 2xx, ``completed`` at the
BYE of the answered dialog (either side; exactly once; duration from answer to BYE). Unanswered
calls end ``busy`` (486/600/603), ``no-answer`` (408/480, a Timer C 487, and our own 480),
``canceled`` (the caller's CANCEL) or ``failed`` (404, 403, anything else), unless the callee
reads its finals otherwise (``Fork.cdr_statuses``: an RCML app's ``<Reject>``). A dialog that
never sees a BYE is closed ``completed`` after ``MAX_DIALOG_IDLE`` (12 h) without in-dialog
traffic, or after its RFC 4028 session interval.

A SIP MESSAGE between Clients is kept as an SMS row: from = the sender's login, to = the
recipient's login, direction ``outbound-call`` (what Restcomm's SmsService writes for a
Client's SIP MESSAGE to another Client). ``message_open`` lists it `sending` as it is relayed
(queued, never awaited: the relay does not wait for the database), ``record_message`` ends
it: ``sent`` on a 2xx, ``failed`` with ``error_code`` = the final status otherwise (404
unknown, 480 not registered, 408 when no phone answered); a MESSAGE refused before the relay
is one ``failed`` row. Only a text/plain MESSAGE is a row (``message_text``): others are
relayed all the same, but an "is typing" notice is nobody's SMS.

A failed write is logged, never raised: a CDR failure must never break call signalling.
One the storage could not take (a full disk, a lock) is the store's to log, once a minute
(StoreBusy): here it is a debug line, not a traceback per call or per MESSAGE.
Apart from ``sip.proxy`` because it is bookkeeping, not SIP: plain functions given the
``CallLog``/``MessageLog`` the proxy holds (not a core module: it logs).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.errors import StoreBusy
from appliance.sip.dialogs import cdr_status
from appliance.sip.forwarding import Context
from appliance.sip.proxy_ports import CallLog, MessageLog

logger = logging.getLogger(__name__)

CALL_DIRECTION = "inbound"
MESSAGE_DIRECTION = "outbound-call"


async def cdr_open(calls: CallLog, context: Context) -> None:
    """Write the CDR row. Its sid was minted before the branches went out, and
    ``CallLog.opened`` registers the row before its first await, so a 180 or 200 that
    races the INSERT still finds it (the store's single writer keeps the order)."""
    call, caller = context.call, context.caller
    if call is None or caller is None:
        return
    try:
        await calls.opened(account_sid=context.account_sid or caller.account_sid,
                           from_=caller.login,
                           to=context.callee, direction=CALL_DIRECTION,
                           sid=call.cdr_sid, phone_number_sid=context.phone_number_sid)
    except Exception:  # noqa: BLE001 - a CDR failure must never break call signalling
        _not_written("x CDR for call %s not opened", call.call_id)


async def record_refusal(calls: CallLog, messages: MessageLog, context: Context, status: int,
                         reason: str | None) -> None:
    caller = context.caller
    if caller is None or not caller.account_sid:
        return  # e.g. a provider's call to a DID we do not have: no account to log it in
    if context.request.method == "MESSAGE":
        await record_message(messages, context, status, reason or "")
    elif context.request.method == "INVITE":
        sid = calls.new_sid()
        try:
            await calls.opened(account_sid=caller.account_sid, from_=caller.login,
                               to=context.callee, direction=CALL_DIRECTION, sid=sid)
        except Exception:  # noqa: BLE001 - see cdr_open
            _not_written("x CDR for refused call from %s not written yet", caller.login)
        # Ended even so: the call is live from `opened` on, whatever its commit did, and its
        # row is written with the next batch (``ended`` logs rather than raises).
        await calls.ended(sid, cdr_status(status, canceled=False))


async def cdr(step: Callable[..., Awaitable[Any]], *args: Any) -> None:
    try:
        await step(*args)
    except Exception:  # noqa: BLE001 - see cdr_open
        _not_written("x CDR update %s%r failed", getattr(step, "__name__", step), args)


def _not_written(message: str, *args: object) -> None:
    """Log the write that just failed (the exception being handled) with its traceback,
    unless the storage could not take it: its store logged that already."""
    if isinstance(sys.exc_info()[1], StoreBusy):
        logger.debug(message + ": %s", *args, sys.exc_info()[1])
    else:
        logger.exception(message, *args)


def message_text(content_type: str | None, body: bytes) -> str | None:
    """The text a MESSAGE carries, None when it is no text/plain (an "is typing" notice,
    RFC 3994, or a delivery notice, RFC 5438: relayed, but nobody's SMS). No Content-Type is
    text/plain (an empty MESSAGE has none). The body is decoded by its charset parameter,
    UTF-8 by default (RFC 3428 §9) and for a charset Python does not know, any byte it
    cannot decode replaced, never refused: it was relayed already."""
    media, *params = (content_type or "text/plain").split(";")
    if media.strip().lower() != "text/plain":
        return None
    charset = "utf-8"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"'):
            charset = value.strip().strip('"')
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


def message_open(messages: MessageLog, context: Context) -> None:
    """List the text MESSAGE of CONTEXT, about to be relayed, as `sending`."""
    caller = context.caller
    if caller is None:
        return
    text = message_text(context.request.get("Content-Type"), context.request.body)
    if text is None:
        return
    try:
        context.sms_sid = messages.opened(account_sid=caller.account_sid, from_=caller.login,
                                          to=context.callee, body=text,
                                          direction=MESSAGE_DIRECTION)
    except Exception:  # noqa: BLE001 - see cdr_open
        _not_written("x SMS row for MESSAGE from %s not opened", caller.login)


async def record_message(messages: MessageLog, context: Context, status: int,
                         reason: str) -> None:
    """The final STATUS of CONTEXT's MESSAGE: its row `sent` or `failed` (once); a MESSAGE
    refused before the relay has no row yet, and gets its `failed` one."""
    caller = context.caller
    if caller is None:
        return
    ok = 200 <= status < 300
    try:
        if context.sms_sid is not None:
            await messages.ended(context.sms_sid, sent=ok, error_code=status,
                                 error_message=reason)
            return
        text = message_text(context.request.get("Content-Type"), context.request.body)
        if text is None or ok:
            return
        await messages.record(account_sid=caller.account_sid, from_=caller.login,
                              to=context.callee, body=text, direction=MESSAGE_DIRECTION,
                              error_code=status, error_message=reason)
    except Exception:  # noqa: BLE001 - see cdr_open
        _not_written("x SMS row for MESSAGE from %s not written", caller.login)
