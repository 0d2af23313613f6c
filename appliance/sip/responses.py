"""What the responses to a forked request's branches do (RFC 3261 §16.7), and the CANCELs
they cause.

Theory of operation. The proxy hands every response to ``on_response``. One that no client
transaction of ours expects is dropped, a 2xx too (RFC 6026: an INVITE branch's Accepted
state carries the 2xx retransmissions), except a 2xx to an INVITE branch we gave up on
recently (``sip.ended``: its transaction ended without a 2xx, or is in Completed after the
branch's own non-2xx final): the caller has its final already, so we ACK that 2xx and BYE
its dialog ourselves (``late_2xx``), and ACK its retransmissions again. The rest reach
``branch_response`` through the branch's client transaction.

100 is absorbed (we sent our own at once); other 1xx are forwarded; every 2xx is forwarded at
once and the other branches are CANCELled; a 6xx also cancels the others. When every branch
has a final response and none was a 2xx, the best one (6xx, then 2xx, then the lowest class;
503 → 500; a 401/407 carrying the challenges of every 401/407 branch) goes to the caller
(``maybe_finish``). A branch with no provisional yet cannot be CANCELled (RFC 3261 §9.1):
``cancel_branch`` gives it a local 487 at once and cancels it when its provisional arrives;
a cancelled branch gets a reaping deadline (``sip.cancel``). A 2xx after the caller got a
non-2xx final (that local 487, say) cannot reach the caller's finished transaction: we ACK it
and BYE its dialog ourselves (``_hang_up``), and ACK its retransmissions again. A re-INVITE's
dialog is the call's own: its late 2xx is only ACKed (``end_dialog``).

Once the caller has its final and every branch is done, the request is over (``maybe_done``):
each branch's client transaction keeps only what can still happen to it (``settle``), so that
its Branch and Context go; an answered INVITE branch leaves a ``Late``, through which a 2xx
retransmission still reaches the caller (``late_response``). The CDR steps (ringing, answered,
ended unanswered) and a MESSAGE's SMS row are written here, after the signalling
(``sip.records``).

``Responses`` is owned by the proxy, not a mixin: it is handed the proxy's tables (the very
same dicts), its sender and its ``drain`` (which runs a transaction's actions and brings the
responses back here). Not a core module: it logs and writes records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.sip.deadlines import Deadlines
from appliance.sip.dialogs import (
    LINGER,
    best_response,
    cdr_status,
    forwarded_status,
    session_idle_limit,
)
from appliance.sip.ended import EndedBranches
from appliance.sip.errors import SipParseError, SipStateError
from appliance.sip.forwarding import (
    REAP_AFTER,
    RINGING_LIFETIME,
    TIMER_C,
    Branch,
    Context,
    Drain,
    Late,
    LocalResponse,
    hang_up,
    local_response,
    strip_top_via,
    trim,
    with_challenges,
)
from appliance.sip.hop import make_cancel
from appliance.sip.message import Request, Response
from appliance.sip.proxy_ports import CallLog, MessageLog
from appliance.sip.records import cdr, record_message
from appliance.sip.routeset import (
    callee_side_hop,
    remaining_route_target,
    route_to_strict_next_hop,
)
from appliance.sip.transaction import (
    InviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    State,
    Transaction,
    Transmit,
    client_transaction,
)
from appliance.sip.transaction_keys import client_key
from appliance.sip.transaction_table import TransactionTable
from appliance.sip.wire import Sender, Target

# The proxy's log lines keep the proxy's logger name: moving code between modules changes no log.
logger = logging.getLogger("appliance.sip.proxy")


class Responses:
    """The response side of the proxy; see the module docstring."""

    def __init__(self, *, sender: Sender, table: TransactionTable, deadlines: Deadlines,
                 calls: CallLog, messages: MessageLog, contexts: dict[Transaction, Context],
                 branches: dict[Transaction, Branch], late: dict[Transaction, Late],
                 ended: EndedBranches, drain: Drain,
                 ours: Callable[[str], bool] = lambda _uri: False) -> None:
        """CONTEXTS, BRANCHES, LATE and ENDED are the proxy's own tables; OURS says whether
        a Record-Route URI is one of ours."""
        self._sender = sender
        self._table = table
        self._deadlines = deadlines
        self._calls = calls
        self._messages = messages
        self._contexts = contexts
        self._branches = branches
        self._late = late
        self._ended = ended
        self._drain = drain
        self._ours = ours

    async def on_response(self, response: Response, now: float) -> None:
        try:
            txn = self._table.match_response(response)
        except SipParseError:
            return
        late_2xx = 200 <= response.status < 300 and response.cseq.method == "INVITE" and (
            txn is None or txn.state is State.COMPLETED)
        if late_2xx:
            # A 2xx on an INVITE branch whose transaction ended without one, or that has
            # its non-2xx final already (Completed drops a 2xx): ended by us, if the branch
            # is one we remember (sip.ended).
            await self.late_2xx(txn, response, now)
            return
        if txn is None:
            # RFC 6026 (updating §16.7 step 1): a response no client transaction of ours
            # expects is not forwarded, not even a 2xx. The INVITE branch's Accepted state
            # (Timer M, 64·T1) already carries every retransmission its callee may send;
            # a stateless relay would let anyone who puts our Via on top of a forged
            # response have us send it wherever its next Via points.
            logger.debug("x %d response matching no transaction: dropped", response.status)
            return
        txn.receive(response, now)
        await self._drain(txn, txn.pop_actions(), now)

    async def late_2xx(self, txn: Transaction | None, response: Response, now: float) -> None:
        """RESPONSE, a 2xx to an INVITE, matches no live branch of ours (TXN None) or one in
        Completed (TXN): its callee answered after we gave the branch up (Timer B, a
        cancelled branch reaped, its own 487 then a 2xx from a proxy behind it). The caller
        has its final response (or another phone's 2xx): we end this dialog ourselves, ACK
        then BYE, and ACK its retransmissions again. Only for a branch we remember
        (``sip.ended``): any other 2xx is dropped, as RFC 6026 wants."""
        key = client_key(response)
        ended = self._ended.get(key, now)
        if ended is None and txn is not None and txn.peer is not None:
            ended = self._ended.remember(key, txn.request, txn.peer, now)
        if ended is None:
            logger.debug("x %d to an INVITE matching no branch of ours: dropped",
                         response.status)
            return
        if ended.ack is not None:
            self._sender.send(*ended.ack)
            return
        logger.info("x %d on %s to %s:%s after its branch ended: ACKed%s", response.status,
                    ended.request.call_id, ended.target.host, ended.target.port,
                    "" if ended.request.to.tag else " and hung up")
        ended.ack = await self.end_dialog(ended.request, ended.target, response, now)

    async def branch_response(self, branch: Branch, response: Response, now: float) -> None:
        context = branch.context
        status = response.status
        if status < 200:
            branch.provisional = True
            if branch.cancel_wanted and not branch.cancelled:
                self.send_cancel(branch, now)
            elif branch.deadline is not None and not branch.cancelled:
                branch.deadline = now + TIMER_C  # each provisional restarts Timer C
                call = context.call
                if call is not None and not call.answered and not context.final_sent:
                    # ... and keeps the call known as long (pushed later: no re-arm needed)
                    call.deadline = max(call.deadline, now + RINGING_LIFETIME)
            if status == 100 or context.final_sent or branch.done:
                return
            self._note_dialog(context, branch, response)
            # Signalling first, CDR second: while the CDR write awaits the store, the 200
            # may already be here, and a 180 sent after it would be refused by the server
            # transaction (and would be wrong on the wire).
            await self._forward_response(context, response, now)
            if context.call is not None and 180 <= status < 190 and context.call.cdr_sid:
                await cdr(self._calls.ringing, context.call.cdr_sid)
            return
        if 200 <= status < 300 and context.refused and context.request.method == "INVITE":
            await self._hang_up(branch, response, now)
            return
        if 200 <= status < 300:
            first = not context.final_sent
            if branch.final is None or branch.final.status >= 300:
                branch.final = response
            branch.deadline = None
            self._note_dialog(context, branch, response)
            context.final_sent = True
            await self._forward_response(context, response, now)
            if context.request.method == "INVITE":
                self.cancel_others(context, branch, now)
            await self._answered(context, branch, response, now, first=first)
            self.maybe_done(context)
            return
        if branch.done:
            if branch.deadline is not None and branch.cancelled:
                branch.deadline = None
            return  # a late final after our local 487, or a retransmission
        if branch.timed_out and status == 487:
            response = local_response(context.request, 408)
        branch.final = response
        branch.deadline = None
        if status >= 600 and context.request.method == "INVITE":
            self.cancel_others(context, branch, now)
        await self.maybe_finish(context, now)

    def _note_dialog(self, context: Context, branch: Branch, response: Response) -> None:
        call = context.call
        if call is None:
            return
        tag = response.to.tag
        if tag:
            # A gateway's provider may record-route an edge proxy of its own, elsewhere than
            # where our INVITE went: the worker's requests then go there, and it is the
            # call's next hop (sip.in_dialog). Only a provider's answer is trusted to name
            # it: a phone's Record-Route would be any Client's way to any host.
            hop = callee_side_hop(response, branch.request) if call.keep_credentials else None
            call.add_dialog(tag, branch.target, hop)

    async def _answered(self, context: Context, branch: Branch, response: Response, now: float,
                        *, first: bool) -> None:
        call = context.call
        if call is not None and not call.answered:
            call.answered = True
            call.primary_tag = response.to.tag
            call.deadline = now + session_idle_limit(response.get("session-expires"))
            self._deadlines.arm(call)
            logger.debug("- call %s %s -> %s answered", call.call_id, context.caller.login
                         if context.caller else "?", context.callee)
            if call.cdr_sid:
                await cdr(self._calls.answered, call.cdr_sid)
        if first and context.request.method == "MESSAGE":
            await record_message(self._messages, context, response.status, response.reason)

    async def maybe_finish(self, context: Context, now: float) -> None:
        """Send the best final response once every branch has one (§16.7 step 6)."""
        if context.final_sent:
            self.maybe_done(context)
            return
        if not all(b.done for b in context.branches):
            return
        finals = [b.final for b in context.branches if b.final is not None]
        if context.request.method != "INVITE":
            # RFC 4320 §4.2: never a 408 to a non-INVITE; with no other final, no answer.
            finals = [r for r in finals if r.status != 408]
            if not finals:
                await self._abandon(context, now)
                return
        chosen = finals[best_response([r.status for r in finals])]
        status = forwarded_status(chosen.status)
        if status != chosen.status:
            chosen = local_response(context.request, status)
        chosen = with_challenges(chosen, finals)
        context.final_sent = True
        context.refused = True  # a 2xx would have been forwarded at once (branch_response)
        await self._forward_response(context, chosen, now)
        await self._unanswered(context, chosen.status, chosen.reason, now)
        self.maybe_done(context)

    async def _abandon(self, context: Context, now: float) -> None:
        """Every branch of a non-INVITE timed out: the caller gets nothing (RFC 4320), its
        server transaction absorbs the last retransmissions and ends; recorded as a 408."""
        context.final_sent = True
        server = context.server
        if isinstance(server, NonInviteServerTransaction) and not server.terminated:
            try:
                server.abandon(now)
            except SipStateError:
                pass  # answered already (nothing else sends on it, but never raise here)
            else:
                await self._drain(server, server.pop_actions(), now)
        await self._unanswered(context, 408, "Request Timeout", now)
        self.maybe_done(context)

    async def _unanswered(self, context: Context, status: int, reason: str, now: float) -> None:
        call = context.call
        if call is not None and not call.answered:
            call.deadline = min(call.deadline, now + LINGER)
            self._deadlines.arm(call)
            if call.cdr_sid and not call.ended:
                call.ended = True
                await cdr(self._calls.ended, call.cdr_sid,
                          cdr_status(status, canceled=context.cancelled,
                                     meaning=context.cdr_statuses))
        if context.request.method == "MESSAGE":
            await record_message(self._messages, context, status, reason)

    def maybe_done(self, context: Context) -> None:
        if context.final_sent and all(b.done for b in context.branches):
            if self._contexts.pop(context.server, None) is not None:
                for branch in context.branches:
                    self.settle(branch)
                if any(self._branches.get(b.txn) is b for b in context.branches):
                    trim(context)  # a branch still waits for its final: it keeps the context
                else:
                    # Nothing reaches the context or its branches any more, but they refer
                    # to each other (branch.context, context.branches): left as a cycle,
                    # the whole request (messages, headers) waits for the collector, which
                    # under load means seconds and megabytes. Every branch is done and the
                    # final was sent, so a handler still holding the context reads the
                    # same from an empty list (nothing to cancel, nothing to wait for).
                    context.branches.clear()

    def settle(self, branch: Branch) -> None:
        """BRANCH's request is over: keep for its client transaction only what can still
        happen to it, so that its Branch and Context (and all they hold) go.

        An INVITE branch in Accepted may still deliver 2xx retransmissions, which go to the
        caller (``late_response``); a transaction in Completed absorbs what comes (an INVITE
        one ACKs a retransmitted final itself, to its ``peer``). A branch still waiting for
        its real final (after a local 487 or 408) or with a deadline (reaping) keeps its
        Branch until then."""
        txn = branch.txn
        if (self._branches.get(txn) is not branch or not branch.done
                or branch.deadline is not None):
            return
        if txn.state is State.ACCEPTED:
            context = branch.context
            self._late[txn] = Late(context.server, context.source, context.call, branch.ack)
        elif txn.state not in (State.COMPLETED, State.TERMINATED):
            return
        del self._branches[txn]

    async def _forward_response(self, context: Context, response: Response, now: float) -> None:
        await self._forward(context.server, context.source, context.request.method, response,
                            now)

    async def _forward(self, server: ServerTransaction, source: Target, method: str,
                       response: Response, now: float) -> None:
        """RESPONSE to a METHOD request, through its SERVER transaction to SOURCE."""
        if isinstance(response, LocalResponse):
            forwarded: Response | None = response
        else:
            forwarded = strip_top_via(response)
        if forwarded is None:
            return
        if server.terminated:
            # A late 2xx to an INVITE is still end to end: send it. A second final to a
            # non-INVITE (another phone of a forked MESSAGE, after a TCP server transaction
            # ended with the first) stays here (RFC 3261 §16.7 step 5).
            if 200 <= forwarded.status < 300 and method == "INVITE":
                self._sender.send(forwarded, source)
            return
        try:
            server.send(forwarded, now)
        except SipStateError:
            # Too late for the transaction: a 2xx to an INVITE still goes out, end to end
            # (one after our own non-2xx final is not forwarded: ``_hang_up``); a second
            # final to a non-INVITE request has nowhere to go.
            if 200 <= forwarded.status < 300 and method == "INVITE":
                self._sender.send(forwarded, source)
            return
        await self._drain(server, server.pop_actions(), now)

    async def late_response(self, txn: Transaction, late: Late, response: Response,
                            now: float) -> None:
        """A 2xx retransmission (the only response an INVITE client transaction delivers in
        Accepted) on a branch whose request is over: what ``branch_response`` does with a
        2xx then (the branches are all done and the call answered already), i.e. note its
        dialog and forward it to the caller; or, on a branch we hung up, send our ACK again."""
        if late.ack is not None:
            self._sender.send(*late.ack)
            return
        if late.call is not None:
            tag = response.to.tag
            if tag and txn.peer is not None:  # the branch's target
                late.call.add_dialog(tag, txn.peer)
        await self._forward(late.server, late.source, "INVITE", response, now)

    async def _hang_up(self, branch: Branch, response: Response, now: float) -> None:
        """A 2xx on a branch of an INVITE whose caller already has a non-2xx final: the 487
        we gave it at once for a branch that had sent no provisional yet (§9.1 forbids the
        CANCEL then), or the best final of the others. Its INVITE client transaction is over,
        so the 2xx reaches no transaction there (a UA just ACKs its 487 again); forwarded,
        the callee would talk into silence until it gives up waiting for the ACK, and a
        provider would bill it. We are the UAC of that dialog now: ACK it and BYE it
        (RFC 3261 §15: a 2xx after a CANCEL is ACKed, then the session ended with BYE); a
        re-INVITE's 2xx only ACKed, its call goes on (``end_dialog``)."""
        branch.final = response
        branch.deadline = None
        logger.info("x %d on %s to %s:%s after the caller's final: ACKed%s", response.status,
                    branch.request.call_id, branch.target.host, branch.target.port,
                    "" if branch.request.to.tag else " and hung up")
        call = branch.context.call
        hop = callee_side_hop(response, branch.request) \
            if call is not None and call.keep_credentials else None
        branch.ack = await self.end_dialog(branch.request, branch.target, response, now,
                                           hop=hop)
        self.maybe_done(branch.context)

    async def end_dialog(self, invite: Request, target: Target, response: Response,
                         now: float, *, hop: tuple[str, int] | None = None
                         ) -> tuple[Request, Target]:
        """ACK RESPONSE, a 2xx to INVITE (our branch, as sent to TARGET, or its stub), and
        BYE the dialog it opened; returns the ACK and where it went, to send it again for
        each retransmission. A re-INVITE's 2xx (INVITE has a To tag) is only ACKed: its
        dialog is the call's, which goes on (the phone, without an ACK, would end it).

        Their route set is the 2xx's Record-Route below ours, which the callee wrote: it is
        followed only to TARGET (an edge proxy the phone is registered through) or to HOP
        (on a call out to a gateway, the provider's record-routed hop), as
        ``sip.in_dialog`` does; else the two go straight to TARGET, without it (a phone's
        Record-Route is no way for any Client to have us send to any host)."""
        ack, bye = hang_up(invite, response, self._ours)
        where = target
        route = remaining_route_target(ack)
        if route is not None and ((route.host.lower(), route.port) == hop or (
                route.host.lower(), route.port) == (target.host.lower(), target.port)):
            where = route
        elif route is not None:
            for request in (ack, bye):
                request.remove("route")
        for request in (ack, bye):
            route_to_strict_next_hop(request)
        self._sender.send(ack, where)
        if invite.to.tag is None:
            txn = client_transaction(bye, reliable=where.transport != "udp", now=now)
            txn.peer = where
            self._table.add(txn)
            await self._drain(txn, txn.pop_actions(), now)  # its response is for nobody
        return ack, where

    # --- the CANCELs a response calls for (and sip.cancel's) -----------------------------

    def cancel_others(self, context: Context, winner: Branch, now: float) -> None:
        for branch in context.branches:
            if branch is not winner:
                self.cancel_branch(branch, now)

    def cancel_branch(self, branch: Branch, now: float) -> None:
        if branch.done or branch.cancelled or branch.cancel_wanted:
            return
        if not isinstance(branch.txn, InviteClientTransaction):
            return  # a non-INVITE cannot be cancelled usefully: let it complete
        if branch.provisional:
            self.send_cancel(branch, now)
        else:
            # RFC 3261 §9.1: no CANCEL before a provisional. Count the branch as done with a
            # local 487 now, and cancel it when (if) its provisional arrives.
            branch.cancel_wanted = True
            branch.final = local_response(branch.context.request, 487)
            branch.deadline = now + REAP_AFTER
            self._deadlines.arm(branch)

    def send_cancel(self, branch: Branch, now: float) -> None:
        branch.cancelled = True
        branch.deadline = now + REAP_AFTER
        self._deadlines.arm(branch)
        cancel = make_cancel(branch.request)
        txn = client_transaction(cancel, reliable=branch.target.transport != "udp", now=now)
        txn.peer = branch.target
        self._table.add(txn)
        for action in txn.pop_actions():
            if isinstance(action, Transmit):
                self._sender.send(action.message, branch.target)
