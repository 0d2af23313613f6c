"""What the proxy remembers about a proxied call, and the pure rules it applies to it.

A ``Call`` is one proxied INVITE and, once answered, its dialog(s): enough to route in-dialog
requests to the far side's NAT address (the phones' Contacts are often private), to tell its
parties from anyone else (``sip.in_dialog``) and to close its CDR exactly once. It is keyed by
``(Call-ID, caller's From tag)``; each early or confirmed dialog inside it is a callee To tag
with where that callee branch is reached (``callee``) and, on a call out to a gateway, the
provider's Record-Route hop nearest to us (``callee_hop``). Nothing here does I/O or reads a
clock: ``sip.proxy`` owns the table, the timers and the CDR writes.

``best_response`` is RFC 3261 §16.7 step 6; ``cdr_status`` maps how a call ended to the
Restcomm call status (api-behaviour.md §8.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.models import CallStatus
from appliance.sip.wire import Target

# A dialog that never sees a BYE (a phone lost power mid-call) is closed after this long
# without in-dialog traffic; with RFC 4028 session timers the negotiated interval wins.
MAX_DIALOG_IDLE = 12 * 3600.0
# After the end of a call we keep it this long (64·T1) so crossing BYEs and retransmissions
# still find their way instead of drawing a 481.
LINGER = 32.0
MAX_DIALOGS_PER_CALL = 20  # early + confirmed dialogs (forked 18x/2xx); 2 × max branches
# The longest a NOTIFY's subscription keeps its dialog known past the BYE. The notifier sets
# the expiry; a REFER's lasts about a minute (baresip: 60 s) and is refreshed by each NOTIFY.
MAX_SUBSCRIPTION_HOLD = 3600.0

CallKey = tuple[str, str]  # (Call-ID, caller's From tag)
Hop = tuple[str, int]  # a Record-Route entry's host (lower case, no brackets) and port


@dataclass(slots=True)  # ~10,000 linger at a few hundred calls/s: no per-instance dict
class Call:
    call_id: str
    caller_tag: str
    caller: Target  # where the caller is reached (its INVITE's source: NAT-safe)
    deadline: float  # when to forget the call (and close its CDR if still open)
    cdr_sid: str | None = None
    # The Client logins on each side whose registered phones are that side ("" when the
    # side is a media worker or a provider): a phone whose NAT mapping changed mid-call
    # registers again from its new address, and its requests come from there.
    caller_login: str = ""
    callee_login: str = ""
    # Callee To tag, its target and its hop (or None), for each dialog: (tag, target, hop,
    # tag, target, hop, ...). A call has one or two, and ~10,000 linger at a few hundred
    # calls/s: a dict costs 3x.
    dialogs: tuple[Any, ...] = ()
    primary_tag: str | None = None  # the first answered dialog: its BYE ends the CDR
    answered: bool = False
    ended: bool = False  # the CDR is closed (or there is none to close)
    keep_credentials: bool = False  # a worker's leg to a gateway: its digest is the provider's
    # Until when a subscription in the dialog (a REFER's, RFC 3515) lasts, as its latest
    # NOTIFY said: the BYE does not end it (RFC 5057 §5.2), so the call is kept for it.
    subscribed_until: float = 0.0

    @property
    def key(self) -> CallKey:
        return (self.call_id, self.caller_tag)

    def callee(self, to_tag: str) -> Target | None:
        """Where the callee of the dialog with TO_TAG is reached, if we know that dialog."""
        dialogs = self.dialogs
        for at in range(0, len(dialogs), 3):
            if dialogs[at] == to_tag:
                return dialogs[at + 1]  # type: ignore[no-any-return]
        return None

    def callee_hop(self, to_tag: str) -> Hop | None:
        """The first hop beyond us toward the callee of the dialog with TO_TAG that its
        answer record-routed and we trust (a gateway's provider's, ``add_dialog``), if any."""
        dialogs = self.dialogs
        for at in range(0, len(dialogs), 3):
            if dialogs[at] == to_tag:
                return dialogs[at + 2]  # type: ignore[no-any-return]
        return None

    def add_dialog(self, to_tag: str, target: Target, hop: Hop | None = None) -> None:
        """Note (or update) the dialog with TO_TAG, up to MAX_DIALOGS_PER_CALL dialogs. HOP
        is the callee side's first Record-Route hop, when it is to be trusted (given only
        on a call out to a gateway); a later answer without one keeps the one noted."""
        dialogs = self.dialogs
        for at in range(0, len(dialogs), 3):
            if dialogs[at] == to_tag:
                hop = hop or dialogs[at + 2]
                if dialogs[at + 1] != target or dialogs[at + 2] != hop:
                    self.dialogs = (*dialogs[: at + 1], target, hop, *dialogs[at + 3 :])
                return
        if len(dialogs) < 3 * MAX_DIALOGS_PER_CALL:
            self.dialogs = (*dialogs, to_tag, target, hop)


def session_idle_limit(session_expires: str | None) -> float:
    """How long an answered dialog may stay silent: the RFC 4028 interval plus a grace of
    64·T1 when one was negotiated, else ``MAX_DIALOG_IDLE``."""
    if session_expires:
        value = session_expires.split(";", 1)[0].strip()
        if value.isdigit() and int(value) > 0:
            return min(float(value) + LINGER, MAX_DIALOG_IDLE)
    return MAX_DIALOG_IDLE


def subscription_hold(subscription_state: str | None) -> float:
    """How long a NOTIFY with SUBSCRIPTION_STATE (RFC 6665 §8.2.3) keeps its subscription,
    and so its dialog, alive: its ``expires`` when ``active`` or ``pending`` (at most
    ``MAX_SUBSCRIPTION_HOLD``), else 0 (``terminated``, or nothing readable)."""
    state, *params = (subscription_state or "").split(";")
    if state.strip().lower() not in ("active", "pending"):
        return 0.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "expires" and value.strip().isdigit():
            return min(float(value.strip()), MAX_SUBSCRIPTION_HOLD)
    return 0.0


def _rank(status: int) -> int:
    # 6xx beats everything, then 2xx, then the lowest class (3xx < 4xx < 5xx).
    if status >= 600:
        return 0
    if 200 <= status < 300:
        return 1
    return status // 100


# RFC 3261 §16.7 step 6: within 4xx, a response that tells the caller how to retry
# (credentials, another body type, fewer extensions, more digits) SHOULD win.
_ACTIONABLE = frozenset({401, 407, 415, 420, 484})


def best_response(statuses: Sequence[int]) -> int:
    """Index of the response to forward among the branches' final STATUSES, in branch
    order (RFC 3261 §16.7 step 6: the best class, within 4xx an actionable one, first)."""
    if not statuses:
        raise ValueError("no final responses to choose from")
    return min(range(len(statuses)),
               key=lambda i: (_rank(statuses[i]), statuses[i] not in _ACTIONABLE, i))


def forwarded_status(status: int) -> int:
    """RFC 3261 §16.7 step 6: a proxy never forwards a 503 (it would tell the caller that
    *we* are overloaded): it becomes 500."""
    return 500 if status == 503 else status


# Final statuses that say the callee declined or was busy: a person's 603 Decline is busy
# (an RCML app's 603, its <Reject>, is read otherwise: `cdr_status` MEANING).
_BUSY = frozenset({486, 600, 603})
_NO_ANSWER = frozenset({408, 480, 487})

# (final status, CDR status) pairs: what a callee's own finals mean where the rule below
# does not fit it (`proxy_ports.Fork.cdr_statuses`).
FinalMeaning = tuple[tuple[int, CallStatus], ...]


def cdr_status(status: int, *, canceled: bool, meaning: FinalMeaning = ()) -> CallStatus:
    """The CDR status of a call that ended with final STATUS without being answered.

    CANCELED when the caller gave up (its CANCEL), whatever the branches answered; then what
    MEANING (the callee's own reading) says of STATUS; else BUSY on 486/600/603; NO_ANSWER on
    408/480 and 487 (Timer C's is a 408 already); FAILED otherwise (404, 403, 5xx, ...). An
    answered call always ends COMPLETED.
    """
    if canceled:
        return CallStatus.CANCELED
    for final, meant in meaning:
        if final == status:
            return meant
    if status in _BUSY:
        return CallStatus.BUSY
    if status in _NO_ANSWER:
        return CallStatus.NO_ANSWER
    return CallStatus.FAILED
