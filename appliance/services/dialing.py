"""RCML <Dial> [svc]: ring every noun at once, bridge the first to answer.

Theory of operation. Each noun of a <Dial> becomes a *branch*, run as its own task:

- ``<Client>alice``: one leg from the caller's worker to ``sip:alice@<front door>``; the
  proxy forks it to alice's registered phones, which are shown the Dial's ``callerId``, else
  the parent call's caller (its number or Client login: `caller_id.client_caller`).
- ``<Sip>sip:alice@<our domain or address></Sip>``: the same, when ``alice`` is a Client of
  the account.
- ``<Sip>`` to any other domain: refused with Notification 13214. No open relay: a
  document must not place calls on the office's bill to anywhere; calls leave only through
  the outbound routes, which a ``<Number>`` takes.
- ``<Number>``: out through the number's outbound route with failover
  (``OutboundCalls.dial_number``, `services.outbound_calls`). Not dialled (a Notification
  says why: 20005, or 13214 for the role) when the call's account may not call out: its
  role lacks Create:Calls, or it is no longer active (suspended while its app runs).

Every leg is placed on the caller's worker (``near``), so the winner can be bridged there.
The first branch to answer wins: it is bridged to the caller and the others are cancelled
(their legs hung up, their child CDRs closed ``canceled``). ``timeout`` bounds the ringing of
every branch. Without a winner, DialCallStatus is ``canceled`` when the caller left, else
``no-answer`` when any branch rang out, else ``busy`` when any was busy, else ``failed``.
``DialCallSid`` is the winner's CDR (or, with a single Client/Sip noun, its unanswered CDR).

A branch is cancelled through its own `LegEvents` whose ``ended`` flag is set: that is what
``ring_client``/``dial_number`` already poll for the caller's hang-up.

`Dialer` is the <Dial> part of `CallsService`, kept in its own module for size. The service
owns the legs, CDRs and outbound lines; the Dialer goes through its public operations
(`open_child_cdr`, `ring_client`, `end_child`, its app part's `account_client`
(`services.call_apps`) and its outbound part's `lines_for` and `dial_number`) and the
runner's own notifier, as `services.conferences` does.

Not built: the nouns' ``url`` (screening), ``statusCallback*`` and ``<Sip>`` credentials
(they only matter for a foreign domain, which is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Collection, Coroutine
from typing import TYPE_CHECKING, Any

from appliance.media.protocol import MediaError
from appliance.rcml.interpreter import DialAction, DialDone, DialStatus
from appliance.rcml.runner import CallInfo, Hungup, LegEvents, Runner
from appliance.rcml.verbs import Conference, DialNoun, Number, Sip
from appliance.services.access import ACCOUNT_NOT_ACTIVE, NOT_ACTIVE
from appliance.services.caller_id import client_caller

if TYPE_CHECKING:
    from appliance.services.calls import CallsService, LiveCall

logger = logging.getLogger(__name__)

POLL_S = 0.2  # how often the dial loop looks at the caller's leg
DIAL_SECONDS = 10.0  # for a media worker to accept a command (every voice service waits this)
NO_ROUTE = 13214  # Notification: a noun that cannot be dialled

Ring = Callable[[LegEvents], Coroutine[Any, Any, tuple["LiveCall | None", int]]]


@dataclasses.dataclass
class _Branch:
    noun: DialNoun
    ring: Ring
    cancel: LegEvents = dataclasses.field(default_factory=LegEvents)
    sid: str | None = None  # its child CDR, when it has exactly one (Client/Sip)


def dial_status(codes: list[int], caller_left: bool) -> DialStatus:
    """DialCallStatus of a <Dial> nobody answered, from the branches' final SIP codes."""
    if caller_left or (codes and all(c == 487 for c in codes)):
        return DialStatus.CANCELED
    if any(c in (408, 480, 487) for c in codes):
        return DialStatus.NO_ANSWER
    if any(c in (486, 600) for c in codes):
        return DialStatus.BUSY
    return DialStatus.FAILED


def sip_user(uri: str, local_hosts: Collection[str]) -> str | None:
    """The user part of a sip:/sips: URI at one of LOCAL_HOSTS (any host when the set is
    empty), else None (a foreign domain, or no user)."""
    m = re.fullmatch(r"sips?:([^@;?]+)@(\[[^\]]+\]|[^:;?]+)(?::\d+)?(?:[;?].*)?", uri.strip(),
                     re.IGNORECASE)
    if m is None:
        return None
    host = m.group(2).strip("[]").lower()
    if local_hosts and host not in {h.lower() for h in local_hosts}:
        return None
    return m.group(1)


async def until_either_ends(a: LegEvents, b: LegEvents, limit: float | None) -> None:
    """Until leg A or leg B ends, or LIMIT seconds pass: how long a bridge of the two lasts.
    The events either leg receives meanwhile are consumed (a bridged leg has no runner)."""
    async def drain(events: LegEvents) -> None:
        with contextlib.suppress(Hungup):
            while True:
                await events.next(None)

    waits = [asyncio.ensure_future(drain(a)), asyncio.ensure_future(drain(b))]
    try:
        await asyncio.wait(waits, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


class Dialer:
    """<Dial> for the calls service (which owns the legs, CDRs and outbound lines)."""

    def __init__(self, calls: CallsService) -> None:
        self._calls = calls

    async def dial(self, runner: Runner, action: DialAction) -> DialDone:
        parent = runner.call
        branches: list[_Branch] = []
        for noun in action.nouns:
            branch = await self._branch(runner, action, noun)
            if branch is not None:
                branches.append(branch)
        if not branches:
            return DialDone(DialStatus.FAILED)
        winner, codes = await self._race(runner, branches, float(action.timeout))
        if winner is None:
            sids = [b.sid for b in branches]
            single = sids[0] if len(sids) == 1 else None
            return DialDone(dial_status(codes, runner.events.ended), single)
        return await self._bridge(runner, action, winner, parent)

    async def _branch(self, runner: Runner, action: DialAction, noun: DialNoun
                      ) -> _Branch | None:
        """The branch that rings NOUN, or None (a Notification says why)."""
        calls, parent = self._calls, runner.call
        if isinstance(noun, Number):
            return await self._number_branch(runner, action, noun)
        notify = runner.out.notify
        if isinstance(noun, Conference):
            await notify(parent.account_sid, NO_ROUTE, "<Dial><Conference> is not "
                         "available here", call_sid=parent.sid)
            return None
        if isinstance(noun, Sip):
            login = sip_user(noun.uri, calls.local_hosts())
            if login is None:
                await notify(parent.account_sid, NO_ROUTE, f"<Dial><Sip>{noun.uri}: "
                             "only this appliance's Clients can be dialled by SIP URI "
                             "(no relay to other domains)", call_sid=parent.sid)
                return None
        else:
            login = noun.name  # a Client
        client = await calls.apps.account_client(parent.account_sid, login)
        if client is None:
            await notify(parent.account_sid, NO_ROUTE, f"<Dial>: no Client {login} in "
                         "this account", call_sid=parent.sid)
            return None
        sid = await calls.open_child_cdr(parent, client.login)
        # The phone is shown callerId, else whoever called the app (as Twilio does).
        from_user = client_caller(action.caller_id, parent.from_)

        async def ring(cancel: LegEvents) -> tuple[LiveCall | None, int]:
            return await calls.ring_client(parent, client.login, sid,
                                           ring_seconds=float(action.timeout), cancel=cancel,
                                           from_user=from_user)

        return _Branch(noun, ring, sid=sid)

    async def _number_branch(self, runner: Runner, action: DialAction, noun: Number
                             ) -> _Branch | None:
        calls, parent = self._calls, runner.call
        dialled = re.sub(r"[\s\-.()]", "", noun.number)
        lines = calls.outbound.lines_for(dialled)
        if not lines:
            await runner.out.notify(parent.account_sid, NO_ROUTE, f"<Dial>: no outbound route "
                                    f"for {dialled}", call_sid=parent.sid)
            return None
        # A call out costs money on the account's behalf: not for an account that may not
        # place calls (its role), nor for one suspended while its app runs.
        refusal = await calls.outbound.refusal(parent.account_sid)
        if refusal is not None:
            code = ACCOUNT_NOT_ACTIVE if refusal == NOT_ACTIVE else NO_ROUTE
            await runner.out.notify(parent.account_sid, code, f"<Dial>: {dialled} not "
                                    f"dialled: {refusal}", call_sid=parent.sid)
            return None

        async def ring(cancel: LegEvents) -> tuple[LiveCall | None, int]:
            child, code = await calls.outbound.dial_number(
                parent, cancel, dialled, lines, ring_seconds=float(action.timeout),
                caller_id=action.caller_id)
            if child is not None and noun.send_digits:
                with contextlib.suppress(MediaError, TimeoutError):
                    async with asyncio.timeout(DIAL_SECONDS):
                        await calls.need_engine().send_dtmf(child.info.leg, noun.send_digits)
            return child, code

        return _Branch(noun, ring)

    async def _race(self, runner: Runner, branches: list[_Branch], ring_s: float
                    ) -> tuple[LiveCall | None, list[int]]:
        """Run every branch; the first answered child wins, the rest are cancelled.
        Returns the winner (None if nobody answered) and the losers' final codes."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + ring_s + 2 * DIAL_SECONDS  # the branches time out first
        pending = {loop.create_task(b.ring(b.cancel), name=f"dial {runner.call.sid}")
                   for b in branches}
        winner: LiveCall | None = None
        codes: list[int] = []
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=POLL_S,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    child, code = self._outcome(task, runner.call.sid)
                    if child is None:
                        codes.append(code)
                    elif winner is None:
                        winner = child
                        logger.info("- call %s: <Dial> %s answered", runner.call.sid,
                                    child.info.to)
                    else:  # answered just after the winner: it is not wanted
                        await self._drop(child)
                if winner is not None or runner.events.ended or loop.time() > give_up:
                    for b in branches:
                        b.cancel.ended = True
        finally:
            for b in branches:
                b.cancel.ended = True
            if pending:
                await asyncio.wait(pending)
                for task in pending:
                    child, code = self._outcome(task, runner.call.sid)
                    if child is None:
                        codes.append(code)
                    elif winner is None and not runner.events.ended:
                        winner = child
                    else:
                        await self._drop(child)
        return winner, codes

    @staticmethod
    def _outcome(task: asyncio.Task[tuple[LiveCall | None, int]], sid: str
                 ) -> tuple[LiveCall | None, int]:
        try:
            return task.result()
        except Exception:  # noqa: BLE001 - one branch's bug must not lose the others
            logger.exception("x call %s: a <Dial> branch failed", sid)
            return None, 503

    async def _drop(self, child: LiveCall) -> None:
        """Hang up an answered child that lost the race; its CDR ends completed."""
        with contextlib.suppress(MediaError, TimeoutError):
            async with asyncio.timeout(DIAL_SECONDS):
                await self._calls.need_engine().hangup(child.info.leg)
        await self._calls.end_child(child)

    async def _bridge(self, runner: Runner, action: DialAction, child: LiveCall,
                      parent: CallInfo) -> DialDone:
        calls, engine = self._calls, self._calls.need_engine()
        loop = asyncio.get_running_loop()
        answered_at = loop.time()
        try:
            async with asyncio.timeout(DIAL_SECONDS):
                await engine.bridge(parent.leg, child.info.leg)
            await until_either_ends(runner.events, child.events, float(action.time_limit))
        except (MediaError, TimeoutError) as err:
            logger.info("x call %s: <Dial> bridge to %s failed: %s", parent.sid,
                        child.info.to, err)
        finally:
            if not child.events.ended:
                with contextlib.suppress(MediaError, TimeoutError):
                    async with asyncio.timeout(DIAL_SECONDS):
                        await engine.hangup(child.info.leg)
            await calls.end_child(child)
        return DialDone(DialStatus.COMPLETED, child.info.sid, int(loop.time() - answered_at))
