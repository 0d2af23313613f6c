"""Which app a call runs [svc]: the RCML app of a Client's or a provider's call.

Theory of operation (architecture.md "Who handles a call", api-behaviour.md §8.5). A call
runs an RCML app when the calling Client has its own VoiceUrl or VoiceApplicationSid
(whatever it dials), when it dials an IncomingPhoneNumber of its account that has one, or a
Client that has one (`app_for`, for the router's hook `CallsService.route_invite`). A
dialled number is matched as given, in E.164 and with the + added or removed
(`match_number`), and what a number's calls run is one rule (`number_app`) for calls from a
Client, from a gateway (`CallsService.route_gateway_invite`) and from the GSM modem
(`services.gsm_calls`). A VoiceApplicationSid stands for its Application's RcmlUrl; a
``client:<login>`` VoiceUrl is no app (that Client's phones ring instead), and a number, a
document or POST /Calls reaches only its own account's Clients (`account_client`).

An account that is not active (suspended, closed, inactive: `access.is_active`) is cut
off: a call to its numbers or to its Clients runs none of their apps, whoever places it.
Each entry refuses it as it refuses a number with no app (a provider's call the 404 of an
unknown DID, a GSM call AT+CHUP, a Client's call whatever the router answers next), and
`refused_inactive` logs why and writes the account a Notification (20005, at most once a
minute per number or Client, since outside traffic causes it at will). The account comes
from the account service's memory (``account``, set by the composition root), so the
check costs no store query.

Lookups go through the SIP front door's cached view of Clients and numbers (`directory`, a
`SipDirectory` set by the composition root) when there is one, so that a plain
Client-to-Client call makes no store query here; only a call that does run an app reads
the full row.

`AppResolver` is the app-resolving part of `services.calls.CallsService` (its ``apps``),
kept in its own module for size. It only reads (the store, the directory) and decides
nothing about legs, CDRs or workers, so it needs none of the service's tables; the
service and its other parts (`services.dialing`, `services.gsm_calls`,
`services.api_calls`) ask it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.models import Account, Client, PhoneNumber
from appliance.rcml.runner import App
from appliance.services.access import ACCOUNT_NOT_ACTIVE, account_client, is_active
from appliance.services.ports import StoreProtocol
from appliance.services.provisioning import number_forms
from appliance.services.telephony import SipDirectory
from appliance.services.throttle import Throttle
from appliance.sip.proxy_ports import Caller

logger = logging.getLogger(__name__)

UNKNOWN_DID_WARN_S = 60.0  # "calls to an unknown DID" is a warning at most this often
INVALID_APPLICATION = 21218  # Notification: a VoiceApplicationSid naming no application
# The same 21218 (same number or Client, application and outcome) at most this often: every
# call to such a number would otherwise write one, whoever places it.
INVALID_APPLICATION_WARN_S = 60.0
NOT_ACTIVE_WARN_S = 60.0  # ACCOUNT_NOT_ACTIVE for one number or Client at most this often


class AppResolver:
    """Which RCML app a call runs, and which Client a number or a document reaches (see the
    module docstring)."""

    def __init__(self, store: StoreProtocol,
                 notify: Callable[..., Awaitable[Any]] | None = None) -> None:
        self._store = store
        self._notify = notify  # HistoryService.notify: the account's Notifications
        # The SIP front door's cached view of Clients and numbers (set by the composition
        # root); without it every lookup reads the store.
        self.directory: SipDirectory | None = None
        # An account by its sid (the composition root sets the account service's, which
        # answers from memory; without it the store is asked).
        self.account: Callable[[str], Awaitable[Account | None]] = store.get_account
        self._unknown_warned = -UNKNOWN_DID_WARN_S
        self._missing_warned = Throttle(INVALID_APPLICATION_WARN_S)
        self._inactive_warned = Throttle(NOT_ACTIVE_WARN_S)

    async def app_for(self, caller: Caller, user: str) -> tuple[App | None, str | None]:
        """The app that CALLER's INVITE to USER runs and the sid of the number it reached
        (None when no number), or (None, None) when it runs none."""
        # The caller's and the callee's app fields come from the SIP directory's cache (the
        # caller's are on CALLER already), numbers too: a plain Client-to-Client call makes
        # no store query here. Only a call that does run an app reads the full row. The
        # caller's account is active (the proxy authenticated its Client just now), and
        # so is that of a number it reaches (its own account's only).
        if caller.voice_url or caller.voice_application_sid:
            client = await self._store.get_client_by_login(caller.login)
            if client is not None:
                return await self._client_app(client), None
        number = await self.match_number(user)
        if number is not None and number.account_sid == caller.account_sid and (
                number.voice_url or number.voice_application_sid):
            return await self.number_app(number), number.sid
        if self.directory is not None:
            callee = await self.directory.user(user)
            if callee is None or not (callee.voice_url or callee.voice_application_sid):
                return None, None
        client = await self._store.get_client_by_login(user)
        if client is not None and (client.voice_url or client.voice_application_sid):
            if await self.refused_inactive(client.account_sid, f"Client {client.login}",
                                           f"call from {caller.login}"):
                return None, None  # its phones are refused too: the router answers 480
            return await self._client_app(client), None
        return None, None

    async def refused_inactive(self, account_sid: str, callee: str, what: str) -> bool:
        """True when ACCOUNT_SID, the account of CALLEE (``number +1555…``, ``Client
        bob``), is not active: WHAT (``call from …``, ``SMS SM… from …``) to it then runs
        no app. Logged, and said to the account by a Notification (20005) at most once a
        minute for each CALLEE."""
        account = await self.account(account_sid)
        if account is not None and is_active(account):
            return False
        status = account.status if account is not None else "gone"
        message = f"{what} to {callee} refused: account {account_sid} is {status}"
        if self._notify is None or account is None or not self._inactive_warned.allow(
                (account_sid, callee)):
            logger.info("x %s", message)
        else:
            await self._notify(account_sid, ACCOUNT_NOT_ACTIVE, message, warning=True)
        return True

    async def match_number(self, dialled: str) -> PhoneNumber | None:
        """api-behaviour.md §8.5 "Matching an inbound call to a number": as given, its US
        E.164 form, with the + added or removed (`number_forms`), the first that exists."""
        for candidate in number_forms(dialled):
            number = await self._find_number(candidate)
            if number is not None:
                return number
        return None

    async def number_app(self, number: PhoneNumber) -> App | None:
        """The RCML app that calls to NUMBER run, carrying NUMBER's StatusCallback; None
        when it has none (neither VoiceUrl nor VoiceApplicationSid, or a ``client:<login>``
        VoiceUrl, which rings that Client instead). One rule for calls from a Client, from
        a gateway and from the GSM modem."""
        if not (number.voice_url or number.voice_application_sid):
            return None
        app = await self._app(number.voice_url, number.voice_method, number.voice_fallback_url,
                              number.voice_fallback_method, number.voice_application_sid,
                              number)
        if app is not None and number.status_callback:
            app = dataclasses.replace(app, status_callback=number.status_callback,
                                      status_callback_method=number.status_callback_method)
        return app

    async def account_client(self, account_sid: str, login: str) -> Client | None:
        """Client LOGIN when it belongs to ACCOUNT_SID, else None: a document, a number or
        POST /Calls reaches its own account's Clients only."""
        return await account_client(self._store, account_sid, login)

    def unknown_did(self, number: str, caller: Caller) -> None:
        """A provider's call (CALLER) to NUMBER, which is no IncomingPhoneNumber: logged,
        and warned about at most once every UNKNOWN_DID_WARN_S."""
        logger.info("x call from gateway %s (%s) to %s: no such IncomingPhoneNumber",
                    caller.gateway, caller.login, number)
        now = time.monotonic()
        if now - self._unknown_warned >= UNKNOWN_DID_WARN_S:
            self._unknown_warned = now
            logger.warning("x a gateway sends calls to %s, which is no IncomingPhoneNumber here "
                           "(answered 404; warned at most once a minute)", number)

    async def _find_number(self, phone_number: str) -> PhoneNumber | None:
        if self.directory is not None:
            return await self.directory.number(phone_number)
        return await self._store.find_number(phone_number)

    async def _client_app(self, client: Client) -> App | None:
        return await self._app(client.voice_url, client.voice_method, client.voice_fallback_url,
                               client.voice_fallback_method, client.voice_application_sid,
                               client)

    async def _app(self, url: str | None, method: str, fallback: str | None,
                   fallback_method: str, application_sid: str | None,
                   owner: Client | PhoneNumber) -> App | None:
        if not url and application_sid:
            application = await self._store.get_application(application_sid)
            if application is not None and application.account_sid == owner.account_sid:
                url = application.rcml_url
            else:
                # Left by an older version's application delete: the VoiceFallbackUrl
                # stands in for the missing VoiceUrl, as for an application that fails.
                url, method, fallback = fallback, fallback_method, None
                await self._missing_app(owner, application_sid, url)
        if not url or url.startswith("client:"):  # client:<login>: no app (route_*_invite)
            return None
        return App(url, method or "POST", fallback, fallback_method or "POST")

    async def _missing_app(self, owner: Client | PhoneNumber, application_sid: str,
                           instead: str | None) -> None:
        name = (f"number {owner.phone_number}" if isinstance(owner, PhoneNumber)
                else f"Client {owner.login}")
        message = (f"{name}: VoiceApplicationSid {application_sid} is no application of its "
                   "account; " + (f"used {instead} instead" if instead
                                  else "no VoiceUrl or VoiceFallbackUrl to use"))
        if self._notify is None or not self._missing_warned.allow(
                (owner.sid, application_sid, instead)):
            # No history service (tests), or said less than a minute ago: the log says it.
            logger.info("x %s", message)
            return
        await self._notify(owner.account_sid, INVALID_APPLICATION, message,
                           warning=bool(instead))
