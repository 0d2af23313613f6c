"""What cancels a proxied INVITE's branches from outside its responses: the caller's CANCEL
(RFC 3261 §16.10), Timer C (§16.6 step 11) and the reaping of cancelled branches.

Theory of operation. A CANCEL from the caller is matched to the INVITE server transaction
(none → 481) and answered 200 by its own server transaction. An INVITE still being
authenticated or routed (no Context yet) is answered 487 at once; otherwise the request is
marked cancelled and each of its branches is cancelled (``Responses.cancel_branch``): the
CANCEL goes on to each branch that has answered provisionally; a branch with no provisional
yet is given a local 487 at once and cancelled when its provisional arrives (§9.1 forbids
CANCEL before one). The best final response is then chosen as for any other (sip.responses).

A branch's deadline (``Branch.deadline``, kept in the proxy's ``sip.deadlines`` heap) comes
due in ``branch_timer``. While the branch rings it is Timer C (``TIMER_C``, 3 min, reset by
each provisional): the branch is cancelled, and its 487 then counts as 408; one without a
provisional yet gets a local 408 and is dropped. Once cancelled, it is the reaping deadline
(``REAP_AFTER``, 64·T1): a branch still silent is dropped, its final a 487 if it had none
and the caller cancelled (a 408 after Timer C), and the caller gets the best final then.

``Cancels`` is owned by the proxy, not a mixin: it cancels branches and finishes their
request through the proxy's ``Responses``, and answers through the proxy's reply and server
transactions. Not a core module: it logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.sip.forwarding import Branch, Context, Reply, local_response
from appliance.sip.message import Request
from appliance.sip.responses import Responses
from appliance.sip.transaction import ServerTransaction, State, Transaction
from appliance.sip.transaction_table import TransactionTable
from appliance.sip.wire import Target

# The proxy's log lines keep the proxy's logger name: moving code between modules changes no log.
logger = logging.getLogger("appliance.sip.proxy")


class Cancels:
    """The caller's CANCEL and the branches' deadlines; see the module docstring."""

    def __init__(self, *, table: TransactionTable, responses: Responses,
                 contexts: dict[Transaction, Context],
                 server: Callable[[Request, Target, float], ServerTransaction],
                 reply: Reply, forget: Callable[[Transaction, float], None]) -> None:
        """CONTEXTS is the proxy's table of requests in flight; SERVER makes (and tables) a
        server transaction for a request, FORGET drops what the proxy keeps for a finished
        transaction (at the time given)."""
        self._table = table
        self._responses = responses
        self._contexts = contexts
        self._server = server
        self._reply = reply
        self._forget = forget

    async def on_cancel(self, request: Request, source: Target, now: float) -> None:
        invite = self._table.match_cancel(request)
        server = self._server(request, source, now)
        if invite is None:
            await self._reply(server, 481, now=now)
            return
        await self._reply(server, 200, now=now)
        context = self._contexts.get(invite)
        if context is None:
            if invite.state is State.PROCEEDING:  # still being authenticated or routed
                await self._reply(invite, 487, now=now)
            return
        context.cancelled = True
        logger.info("< CANCEL %s from %s", request.call_id,
                    context.caller.login if context.caller else "?")
        for branch in context.branches:
            self._responses.cancel_branch(branch, now)
        await self._responses.maybe_finish(context, now)

    async def branch_timer(self, branch: Branch, now: float) -> None:
        branch.deadline = None
        if branch.cancelled or branch.cancel_wanted:
            # Cancelled and still silent after 64·T1: give up on it (§9.1). Its final is set
            # before ``forget`` (which would make it a 408): the caller's own CANCEL ends in
            # 487 Request Terminated, Timer C in 408; either way the caller gets a final now.
            if branch.final is None:
                context = branch.context
                status = 487 if context.cancelled and not branch.timed_out else 408
                branch.final = local_response(context.request, status)
            self._table.remove(branch.txn)
            self._forget(branch.txn, now)
            await self._responses.maybe_finish(branch.context, now)
            return
        if branch.done:
            return
        logger.info("x Timer C on %s to %s:%s", branch.request.call_id, branch.target.host,
                    branch.target.port)
        branch.timed_out = True
        if branch.provisional:
            self._responses.send_cancel(branch, now)
        else:
            branch.final = local_response(branch.context.request, 408)
            self._table.remove(branch.txn)
            self._forget(branch.txn, now)
            await self._responses.maybe_finish(branch.context, now)
