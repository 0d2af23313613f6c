"""Calls the API places [svc]: ``POST /Calls`` to a Client (CDR direction ``outbound-api``).

Theory of operation (architecture.md "Who handles a call", api-behaviour.md §8.3). `originate`
writes the CDR; a worker dials ``sip:<login>@<front door>`` with `X-Leg-Id`; the proxy
accepts that INVITE without a challenge only from a worker's own loopback address and only
for a leg the calls service admitted (`CallsService.admit_leg`, `CallsService.media_caller`),
forks it to the Client's registered phones like any call (NAT, TCP connections, several
phones), and writes no CDR of its own (`Fork.cdr_sid` is empty). Once the leg is answered
its RCML runs. The phone is shown the API's ``From`` as the caller (a number, or a
Client's login: `caller_id.client_caller`). A Client with several registered phones gets
one such call per phone (own CDR, own RCML run): each leg's INVITE is routed to its one
phone by the Fork `CallsService.route_media_leg` hands the proxy. A ``To`` that is a phone
number goes out through the outbound routes instead (`OutboundCalls.originate`,
`services.outbound_calls`).
Only Clients of the caller's account are reached: ``client:<login>``, or a sip: URI at our
own domain or address (`_client_target`); no other SIP domain (no open relay).

`ApiCalls` is the ``POST /Calls`` part of `services.calls.CallsService` (its
``api_calls``), kept in its own module for size, as `services.dialing`,
`services.gsm_calls` and `services.outbound_calls` are. It writes the CDRs of the calls it
places itself (CALL_LOG); for the rest it goes through the service's public operations: the
live-call table (`track_call`, `forget`, `need_room`), `dial_client`, `spawn`,
`need_engine`, `local_hosts`, `post_status`, `run_app`, its app part's `account_client`
(`services.call_apps`) and its outbound part's `originate`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from appliance.errors import Forbidden, InvalidInput, NotFound, Unavailable
from appliance.media.engine import LegChanged, LegId, LegState
from appliance.media.protocol import MediaError
from appliance.models import CallRecord, CallStatus, mint_sid
from appliance.rcml.runner import App, CallInfo
from appliance.services.caller_id import client_caller, dialable
from appliance.services.dialing import sip_user
from appliance.services.outbound_calls import no_plus_as_space
from appliance.sip.proxy_ports import Contact, Fork
from appliance.timefmt import iso

if TYPE_CHECKING:
    from appliance.services.calls import CallsService, LiveCall
    from appliance.services.ports import StoreProtocol
    from appliance.services.telephony import CallLog


class ApiCalls:
    """The ``POST /Calls`` part of `services.calls.CallsService` (see the module
    docstring)."""

    def __init__(self, calls: CallsService, store: StoreProtocol, call_log: CallLog,
                 clock: Callable[[], datetime]) -> None:
        self._calls = calls
        self._store = store
        self._log = call_log
        self._clock = clock
        # Set by the composition root: a Client login's registered phones (POST /Calls rings
        # each).
        self.contacts_of: Callable[[str], tuple[Contact, ...]] = lambda _login: ()

    async def originate(self, account_sid: str, *, from_: str, to: str, app: App,
                        ring_seconds: int) -> list[CallRecord]:
        """POST /Calls. A Client with several registered phones gets one call per phone,
        each with its own CDR and its own run of the RCML (api-behaviour.md §8.3: the answer
        is then an array); one phone, or none (the proxy answers 480), one call."""
        calls = self._calls
        await self._check_from(account_sid, from_)
        no_plus_as_space("To", to)
        number = dialable(to)
        if number is not None:
            return [await calls.outbound.originate(account_sid, from_=from_, number=number,
                                                   app=app, ring_seconds=ring_seconds)]
        # A To that reaches nobody is the request's fault (4xx) even while no media worker
        # runs; only a call that could be placed gets the 503.
        login = await self._client_target(account_sid, to)
        calls.need_engine()  # 503 without a media worker, before any CDR
        contacts = self.contacts_of(login)
        forks: list[Fork | None] = [None]  # the proxy forks the one leg to the Client
        if len(contacts) > 1:
            forks = [Fork(callee=login, contacts=(c,), cdr_sid="", phones=True)
                     for c in contacts]
        calls.need_room(len(forks))
        records: list[CallRecord] = []
        failure: Unavailable | None = None
        for fork in forks:
            try:
                records.append(await self._originate_leg(account_sid, from_, to, login, app,
                                                         ring_seconds, fork))
            except Unavailable as err:  # its CDR is closed failed; the other phones ring
                failure = failure or err
        if not records and failure is not None:
            raise failure
        return records

    async def _originate_leg(self, account_sid: str, from_: str, to: str, login: str,
                             app: App, ring_seconds: int, fork: Fork | None) -> CallRecord:
        """One outbound-api call to LOGIN: through the proxy's fork to all its phones, or
        with FORK (`route_media_leg`) to the one phone it names."""
        calls = self._calls
        record = await self._log.opened(account_sid=account_sid, from_=from_, to=to,
                                        direction="outbound-api")
        leg = LegId("LG" + mint_sid("CA")[2:])
        info = CallInfo(sid=record.sid, account_sid=account_sid, from_=from_, to=login,
                        direction="outbound-api", leg=leg, app=app, answered=True,
                        timestamp=iso(self._clock()))
        live = calls.track_call(info)
        try:
            # The phone is shown the API's From: a number, or the Client's login.
            await calls.dial_client(leg, account_sid, login, ring_seconds=float(ring_seconds),
                                    from_user=client_caller(from_), fork=fork)
        except (MediaError, TimeoutError) as err:
            calls.forget(live)
            await self._log.ended(record.sid, CallStatus.FAILED)
            raise Unavailable(f"The call could not be placed: {err}") from err
        calls.post_status(info, "initiated")
        calls.spawn(self._run_outbound(live), f"call {record.sid}")
        return record

    async def _check_from(self, account_sid: str, from_: str) -> None:
        """From is a phone number (an optional + and 3-20 digits; spaces, dashes, dots and
        brackets allowed between them) or a Client of the account (``client:alice`` or
        ``alice``), as an SMS's To is; InvalidInput otherwise."""
        no_plus_as_space("From", from_)
        if dialable(from_) is not None:
            return
        login = from_[len("client:"):] if from_.lower().startswith("client:") else from_
        if not login or await self._calls.apps.account_client(account_sid, login) is None:
            raise InvalidInput(f"From {from_} is neither a phone number nor a Client of the "
                               "account (client:<login>)")

    async def _client_target(self, account_sid: str, to: str) -> str:
        """The Client login TO reaches. Policy: Clients only (``client:alice``, or a sip: URI
        at our own domain or address whose user is a local Client); no other SIP domain (no
        open relay: numbers go out through the outbound routes)."""
        target = to.split("?", 1)[0].strip()
        if target.lower().startswith("client:"):
            login = target[7:].strip()
            if not login:
                raise InvalidInput("To client: names no Client (client:<login>)")
        elif target.lower().startswith(("sip:", "sips:")) or "@" in target:
            uri = target if target.lower().startswith(("sip:", "sips:")) else f"sip:{target}"
            login = sip_user(uri, self._calls.local_hosts()) or ""
            if not login:
                raise Forbidden("No route to that SIP URI: only local Clients can be called")
            client = await self._store.get_client_by_login(login)
            if client is None:
                raise Forbidden("No route to that SIP URI: only local Clients can be called")
        else:
            raise Forbidden(f"No route to {target}: call client:<login>, a local Client's "
                            "sip: URI or a phone number")
        client = await self._calls.apps.account_client(account_sid, login)
        if client is None:
            raise NotFound(f"The client {login} was not found")
        return client.login

    async def _run_outbound(self, live: LiveCall) -> None:
        calls = self._calls
        info, status = live.info, CallStatus.FAILED
        try:
            while True:
                event = await live.events.next(None)
                if isinstance(event, LegChanged) and event.state is LegState.RINGING:
                    await self._log.ringing(info.sid)
                    calls.post_status(info, "ringing")
                elif isinstance(event, LegChanged) and event.state is LegState.ANSWERED:
                    await self._log.answered(info.sid)
                    calls.post_status(info, "answered")
                    break
            await calls.run_app(live)
            status = CallStatus.COMPLETED
        except Exception as err:  # noqa: BLE001 - Hungup, or a bug: the CDR is closed anyway
            status = live.final_status(err)
        finally:
            calls.forget(live)
            final = await self._log.ended(info.sid, live.closing_status(status))
            calls.post_status(info, "completed", final.duration if final is not None else 0)
