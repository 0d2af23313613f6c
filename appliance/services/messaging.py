"""SMS through the GSM modem: the durable outbound queue, inbound store-and-forward, SmsUrl.

Outbound (`send`): the SMS row and its queue entry are committed together before the API
answers, so an accepted message survives a power cut. One sender task drains the modem's
queue part by part (each part marked in the store before it reaches the modem); statuses go
queued -> sending -> sent | failed, then delivered | undelivered from status reports;
StatusCallback is requested on each final status. Messages to Clients (SIP MESSAGE, up to
40 s each for a phone that does not answer) go apart from the modem's: one Client's at a
time, in the order accepted, and up to CLIENT_CONCURRENCY Clients side by side, so a dead
phone holds up neither the modem nor another Client.

Crash policy (what "never twice" costs): a part that was handed to the modem with no answer
recorded is *in doubt* -- the modem may already have sent it. Such a message is not resent; it
is marked failed with error 30008 and a message saying it may have been delivered, and a
Notification is written. Messages still queued, or stopped between two parts, are sent (or
continued) after the restart. The same holds while running: a part the modem stopped
answering for *after* its PDU was written is in doubt; one it hung on *before* its `> ` prompt
was never written (the channel says which, `ModemError.pdu_written`) and goes back to the queue.
A clean stop starts no message or part from its first moment, and gives the part the modem
has up to SEND_GRACE to be answered before the modem's port closes (`finish_sending`).
A fault of our own (the store, the OS) is no fault of the message: before a part is handed
over it stays queued and the sender pauses; after, it is in doubt. A fault counts against
the message only when another message went through before its next try (a lasting fault of
the appliance meets every message, and fails none); MAX_SENDER_FAULTS such in a row fail it.
A Client's phone that answered 2xx has the message: a fault recording that is settled later,
never by delivering it again. Only what the message's own content raises (its encoding)
fails it at once. The first final status stays (a status report never turns `failed` into
`undelivered`), and StatusCallbacks carry the status each change wrote, queued before
anything else is awaited.

Inbound (`on_sms_received`, the driver's callback): the raw PDU and what it produced are
committed in one transaction before the driver deletes it from the modem; multipart messages
are reassembled by (sender, reference, total), out of order and with duplicates tolerated;
parts missing after FRAGMENT_TIMEOUT are released with an "[incomplete]" marker. Then the
SmsUrl (or SmsApplicationSid's RcmlUrl) of the IncomingPhoneNumber matching the SIM's number
is requested (not when the number's account is not active: the message is kept, handed to
nothing, and a Notification says why); SmsFallbackUrl on failure; an <Sms> in the reply is
queued as outbound-reply, in the transaction that marks the message's job handed: from then
on a retry, or the restart after a crash, only finishes the job and never runs the app again
(no reply goes out twice).
Messages of different conversations (sender, receiving number) are handed side by side, at
most INBOUND_CONCURRENCY at once; those of one conversation one at a time, in the order
received. A message put off for a retry no longer holds its conversation: the ones after it
go on, and it is handed when its retry is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from math import ceil
from typing import Protocol

from appliance.errors import Forbidden, InvalidInput, NotFound, TooManyRequests, Unavailable
from appliance.gsm.alphabet import MAX_PARTS, Encoding, split_text
from appliance.gsm.errors import (
    CmeError,
    CmsError,
    CommandError,
    ModemError,
    ModemTimeout,
    ModemUnavailable,
    PduError,
    SmsSendError,
)
from appliance.gsm.pdu import (
    TP_ST_NAMES,
    Deliver,
    SubmitPdu,
    decode_sms_pdu,
    encode_address,
    encode_sms_submit,
)
from appliance.gsm.pdu import Concat as PduConcat
from appliance.gsm.state import DeliveryReported, ModemEvent, ModemState, ModemStateChanged
from appliance.gsm.urc import UssdResponse
from appliance.models import (
    ADMIN_SID,
    API_VERSION,
    Account,
    AccountSid,
    SmsRecord,
    SmsSid,
    mint_sid,
)
from appliance.rcml.parse import RcmlError, parse_document
from appliance.rcml.verbs import Redirect, Sms, Unsupported, absolute_url
from appliance.services.access import (
    ACCOUNT_NOT_ACTIVE,
    Action,
    account_client,
    is_active,
    require,
    require_active,
)
from appliance.services.history import HistoryService
from appliance.services.ordered_jobs import OrderedJobs
from appliance.services.ports import StoreProtocol
from appliance.services.rate_limit import TokenBucket
from appliance.services.throttle import Throttle
from appliance.services.urls import check_http_url
from appliance.store.sms import (
    Callback,
    Fragment,
    InboundJob,
    OutboxItem,
    SmsStore,
    StatusChange,
)
from appliance.timefmt import from_storage, storage
from appliance.webhooks import WebhookError, Webhooks

logger = logging.getLogger(__name__)

FRAGMENT_TIMEOUT = timedelta(hours=1)  # parts of one message may travel different SMSCs
RETRY_DELAYS = (5, 15, 60, 300, 900)  # seconds before the next try, by failed tries so far
# An inbound SMS whose delivery to its app fails on our side (not the app's answer, which
# has its own notifications) is tried again after 1, 2, 4, 8 minutes, then given up.
INBOUND_ATTEMPTS = 5
INBOUND_RETRY = timedelta(minutes=1)
# Received messages are handed to their apps side by side, one conversation (sender and
# receiving number) each: a slow app (10 s a request, with fallback and redirects) must not
# delay the others. Bounded, as each holds a connection to an app and a job in memory: an
# office's inbound traffic rarely needs more, and a flood waits in the table, not in memory.
INBOUND_CONCURRENCY = 8
INBOUND_POLL = 30.0  # seconds between looks for jobs whose retry came due (no wake-up for those)
# Messages to Clients' phones are sent side by side, one Client each: a registered phone that
# never answers takes up to 40 s a MESSAGE and must not delay the others. Bounded, as each
# holds a SIP transaction and a message in memory; the rest wait in the table.
CLIENT_CONCURRENCY = 8
# A job whose fault could not even be recorded (the store failing) leaves its conversation
# alone this long, instead of being picked again at once and failing in a loop.
INBOUND_FAULT_PAUSE = 30.0
MAX_QUEUE_AGE = timedelta(days=2)  # an accepted message that could not go out by then fails
TRANSIENT_CMS = {38, 41, 42, 47, 331, 332}  # network out of order/congestion/no service
MAX_TRANSIENT_ATTEMPTS = 3  # retries of a message after network errors or a hung modem
MAX_RCML_DOCUMENTS = 10  # redirects and actions followed for one inbound SMS
REPORT_WINDOW = timedelta(days=3)  # status reports match parts sent within this window
MAX_BODY_CHARS = 1600
MAX_FROM_CHARS = 64
_PHONE = re.compile(r"^\+?[0-9]{3,20}$")
# StatusCallback requests run in the background (see OrderedJobs), a few at a time; at stop
# the pending ones get CALLBACK_GRACE seconds, then are dropped.
CALLBACK_CONCURRENCY = 8
CALLBACK_BACKLOG = 1000
CALLBACK_GRACE = 2.0
# At stop, a part the modem was given gets this long (from the stop's start) to be answered,
# so its outcome is known (sent, or a real error) instead of "may have been delivered".
# Within systemd's TimeoutStopSec=30s with the rest of the stop (media 5 s, the modem's port
# 2 s, callbacks 2 s, the trunk 2.5 s); AT+CMGS's own 60 s would not fit.
SEND_GRACE = 10.0
SENDER_FAULT_PAUSE = 5.0  # seconds the sender rests after a fault it could not pin on a message
# A message that meets a fault of ours (the store, the OS: not its content) this many times
# in a row, each time with another message going through before its next try, is failed: a
# fault tied to it somehow must not keep it queued for good. A fault no other message gets
# past is the appliance's: it fails nothing, however long it lasts.
MAX_SENDER_FAULTS = 5
SENDER_FAULT_LOG_S = 60.0  # a lasting fault is logged with its traceback at most this often
# The same 21218 (a number's SmsApplicationSid naming no application, same outcome) at most
# this often: every SMS to the number, whoever sends it, would otherwise write one.
INVALID_APPLICATION_WARN_S = 60.0
NOT_ACTIVE_WARN_S = 60.0  # the same for a 20005 (an SMS to a number of an account not active)
# A Client's phones' MESSAGEs to numbers (docs/sms.md "Limits"): each SMS is modem time and
# money, and a phone (a softphone on a compromised PC) can send hundreds a second. Per Client
# login a burst of PHONE_SMS_BURST, then one every PHONE_SMS_INTERVAL seconds (10 a minute:
# about what one modem sends); and none while MAX_PHONE_SMS_QUEUED messages from calls
# (direction outbound-call) wait for the modem, so many Clients together cannot queue days of
# it either. The API's POST SMS/Messages is the admin's (or an account's) own: not limited.
PHONE_SMS_BURST = 10
PHONE_SMS_INTERVAL = 6.0
MAX_PHONE_SMS_QUEUED = 1000
PHONE_SMS_FULL_RETRY = 60  # Retry-After (s) while the queue is full: the modem needs minutes
PHONE_SMS_LOG_S = 60.0  # a Client's refusals are logged at most this often


class ModemPort(Protocol):
    """What messaging needs from the modem driver (gsm.modem.Modem)."""

    @property
    def state(self) -> ModemState: ...

    async def send_sms(self, parts: Sequence[SubmitPdu], *, tag: str | None = None
                       ) -> list[int]: ...

    async def ussd(self, request: str) -> UssdResponse: ...


class ClientMessenger(Protocol):
    """Delivers a message to a Client's phones as SIP MESSAGE (services.routing)."""

    async def deliver(self, login: str, from_: str, body: str) -> int | None:
        """The final SIP status, or None when the Client has no phone registered."""


def _now_text(clock: Callable[[], datetime]) -> str:
    return storage(clock())


def _unencodable(item: OutboxItem) -> tuple[int, str] | None:
    """Why ITEM can never be written as PDUs, as (code, message); None when it can. Every
    path into the queue checks this first; what still gets here (an older appliance's row,
    a bug) is failed rather than tried again forever ahead of every later message."""
    try:
        encode_address(item.destination)
    except PduError as err:
        return 21211, f"Invalid 'To' phone number, not sent: {err}"
    try:
        split_text(item.body, Encoding.UCS2 if item.ucs2 else None)
    except PduError as err:
        return 21617, f"The message body is too long, not sent: {err}"
    return None


class _InDoubt(Exception):  # noqa: N818 - not an error of the message, a state of it
    """A fault once a part was handed to the modem: the part may have gone out, so the
    message is failed as "may have been delivered", never sent again."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _SenderFault(Exception):
    """A fault of ours while sending a message, logged; the sender pauses."""


class _Delivered(Exception):  # noqa: N818 - not an error of the message, a state of it
    """A Client's phone took the message (SIP 2xx) and recording it failed: the message is
    recorded `sent` later, never delivered again."""


@dataclasses.dataclass
class _Suspect:
    """A queued message that met a fault of ours: COUNTED faults were followed by another
    message going through (so plausibly its own); PENDING: its last fault is not judged yet."""

    item: OutboxItem
    counted: int = 0
    pending: bool = True


def _error_of(err: ModemError) -> tuple[int, str]:
    """Twilio-style error code and a message a person can act on."""
    cause = err.cause if isinstance(err, SmsSendError) else err
    if isinstance(cause, CmsError):
        return 30008, f"The modem refused the message: +CMS ERROR {cause.code}: {cause.text}"
    if isinstance(cause, CmeError):
        return 30008, f"The modem refused the message: +CME ERROR {cause.code}: {cause.text}"
    return 30008, f"The modem failed to send the message: {cause}"


# A failed status report's TP-ST (TS 23.040 §9.2.3.15) as a Twilio-style error code: the SC
# gave up on a handset that stayed busy, silent or switched off -> 30003 (unreachable
# destination handset); the destination cannot take SMS -> 30006 (landline or unreachable
# carrier); anything else -> 30008 (unknown error). The message names the TP-ST either way.
_UNDELIVERED_CODES = {0x46: 30003, 0x61: 30003, 0x62: 30003, 0x41: 30006, 0x45: 30006}


def _undelivered_error(status: int) -> tuple[int, str]:
    name = TP_ST_NAMES.get(status, "unknown status")
    return (_UNDELIVERED_CODES.get(status, 30008),
            f"The network reported the message undelivered: TP-ST 0x{status:02X} ({name})")


class MessagingService:
    def __init__(self, store: StoreProtocol, sms_store: SmsStore, history: HistoryService,
                 webhooks: Webhooks, clock: Callable[[], datetime], sim_number: str) -> None:
        self._store = store
        self._sms = sms_store
        self._history = history
        self._webhooks = webhooks
        self._clock = clock
        self.sim_number = sim_number
        self.modem: ModemPort | None = None
        self.client_messenger: ClientMessenger | None = None
        self._wake = asyncio.Event()  # the modem's sender
        self._client_wake = asyncio.Event()  # the Clients' sender
        # Destinations (`client:<login>`) with a message put back until their phone answers
        # or registers; None: not known yet (after a start, every waiting one is tried).
        self._waiting_for_phone: set[str] | None = None
        self._registered: set[str] = set()  # of those, the ones whose phone registered since
        # Destinations whose phone registered while a MESSAGE to them was in flight: if that
        # one goes unanswered (the phone rebooted under it), it is tried again at once.
        self._came_back: set[str] = set()
        self._wake_modem = False
        self._modem_ready = False
        self._jobs_wake = asyncio.Event()
        self._stopping_at: float | None = None  # monotonic: no part goes to the modem since
        self._idle = asyncio.Event()  # clear while any message is being sent
        self._idle.set()
        self._working = 0  # messages being sent (the modem's one, the Clients')
        self._tasks: set[asyncio.Task[None]] = set()
        self.phone_sms = TokenBucket(PHONE_SMS_BURST, PHONE_SMS_INTERVAL)
        self._phone_sms_log = Throttle(PHONE_SMS_LOG_S)
        self._callbacks = OrderedJobs("SMS status callback", concurrency=CALLBACK_CONCURRENCY,
                                      backlog=CALLBACK_BACKLOG)
        # Keyed by conversation; at most one job of each is picked, so none waits unstarted.
        self._inbound = OrderedJobs("inbound SMS delivery", concurrency=INBOUND_CONCURRENCY,
                                    backlog=INBOUND_CONCURRENCY)
        self._inbound_running: set[tuple[str, str]] = set()  # conversations with a job started
        self._inbound_resting: dict[tuple[str, str], float] = {}  # -> monotonic end of pause
        # Keyed by destination; at most one message of each is picked, so none waits unstarted.
        self._client_sends = OrderedJobs("SMS delivery to a Client",
                                         concurrency=CLIENT_CONCURRENCY,
                                         backlog=CLIENT_CONCURRENCY)
        self._client_running: set[str] = set()  # `client:<login>` destinations being sent to
        # A destination whose send met a fault of ours rests this long (monotonic end), as
        # the modem's sender pauses: its message is due again at once and would loop.
        self._client_resting: dict[str, float] = {}
        self._settling = asyncio.Lock()  # one _settle_delivered at a time: one callback each
        # In-doubt failures not recorded yet (the store failed too): settled at the next
        # drain; the message is not due meanwhile (its queue entry says `submitting`).
        self._in_doubt: dict[str, tuple[OutboxItem, str]] = {}
        # Messages a Client's phone took (2xx) whose `sent` is not recorded yet: settled
        # before the queue (where they are still due) is read again, and never picked.
        self._delivered: dict[str, OutboxItem] = {}
        self._suspects: dict[str, _Suspect] = {}  # queued messages that met a fault of ours
        self._fault_logged_at: float | None = None
        self._missing_app_warned = Throttle(INVALID_APPLICATION_WARN_S)
        self._inactive_warned = Throttle(NOT_ACTIVE_WARN_S)

    # -- API: send -----------------------------------------------------------------------------

    async def send(self, actor: Account, account: Account, *, from_: str | None,
                   to: str | None, body: str | None, encoding: str | None,
                   status_callback: str | None, status_callback_method: str | None,
                   x_headers: Mapping[str, str], direction: str = "outbound-api"
                   ) -> SmsRecord:
        require(actor, Action.CREATE, "SmsMessages")
        if not from_:
            raise InvalidInput("From can not be null.")
        if not to:
            raise InvalidInput("To can not be null.")
        if body is None or body == "":
            raise InvalidInput("Body can not be null.")
        ucs2 = False
        if encoding:
            normalised = encoding.upper().replace("-", "_")
            if normalised not in ("GSM", "UCS_2"):
                raise InvalidInput(f"Encoding {encoding} is not GSM or UCS-2")
            ucs2 = normalised == "UCS_2"
        # Every parameter is checked before the modem is asked for: a bad one is 400 even
        # where a message could not go anyway (503, no modem).
        if status_callback:
            check_http_url("StatusCallback", status_callback)
        method = (status_callback_method or "POST").upper()
        if method not in ("GET", "POST"):
            raise InvalidInput("StatusCallbackMethod must be GET or POST")
        destination = await self._checked(account.sid, from_, to, body, ucs2)
        return await self._enqueue(account.sid, from_, destination, body, ucs2,
                                   Callback(status_callback, method) if status_callback else None,
                                   dict(x_headers), direction)

    async def _checked(self, account_sid: str, from_: str, to: str, body: str,
                       ucs2: bool) -> str:
        """What every message of ACCOUNT_SID is checked for before it is queued, whoever
        sends it (the API, an app's <Sms>): the normalised destination, or InvalidInput."""
        if len(from_) > MAX_FROM_CHARS:
            raise InvalidInput(f"From is longer than {MAX_FROM_CHARS} characters")
        if any(unicodedata.category(ch) == "Cc" for ch in from_):
            # A line break in a From is no sender's name, and one that reached a SIP
            # MESSAGE's header would have been an injected header (sip.messenger escapes).
            raise InvalidInput("From must not contain control characters (such as a line "
                               "break or a tab)")
        destination = await self._destination(account_sid, to)
        self._check_body(body, ucs2)
        self._require_modem(destination)
        return destination

    def _require_modem(self, destination: str) -> None:
        """503 for a message to a phone number when no modem is configured: it could only
        wait in the queue for two days and fail. (A configured modem that is down is
        another matter: the message waits for it, as documented.)"""
        if self.modem is None and not destination.startswith("client:"):
            raise Unavailable("No modem is configured ([modem] device): SMS to phone numbers "
                              "cannot be sent")

    async def _destination(self, account_sid: str, to: str) -> str:
        """`client:<login>` for a Client of ACCOUNT_SID (as `client:alice` or a bare login),
        else the number. Another account's Client is answered as a missing one (as POST
        Calls does), so its login cannot be probed."""
        login = to[len("client:"):] if to.startswith("client:") else None
        if login is None and not _PHONE.match(re.sub(r"[\s\-.()]", "", to)):
            login = to
        if login is not None:
            if await account_client(self._store, account_sid, login) is None:
                raise InvalidInput(f"To {to} is neither a phone number nor a Client")
            return f"client:{login}"
        return re.sub(r"[\s\-.()]", "", to)

    async def send_from_client(self, account_sid: str, login: str, number: str,
                               body: str) -> SmsRecord:
        """A call's app's ``<Sms>`` (or a Client's SIP MESSAGE: see send_from_phone) to a
        phone number, queued for the modem. It costs money on behalf of ACCOUNT_SID, so
        that account needs Create:SmsMessages, as ``POST SMS/Messages`` does (Forbidden)."""
        destination = await self._from_client(account_sid, number, body)
        return await self._enqueue(account_sid, login, destination, body, False, None, {},
                                   "outbound-call")

    async def send_from_phone(self, account_sid: str, login: str, number: str, body: str,
                              now: float) -> SmsRecord:
        """A Client's SIP MESSAGE to a phone number: send_from_client, within the phones'
        limits (PHONE_SMS_BURST): TooManyRequests, with nothing queued, over them. NOW:
        seconds (any clock that moves forward)."""
        destination = await self._from_client(account_sid, number, body)
        # Only a message that would be queued takes a token: a refused one costs nothing.
        wait = self.phone_sms.take(login, now)
        if wait:
            self._refused_from_phone(login, "sends SMS faster than the limit")
            raise TooManyRequests(f"Too many SMS from {login}: try again in {ceil(wait)} s",
                                  retry_after=max(1, ceil(wait)))
        if await self._sms.queued_from_calls(MAX_PHONE_SMS_QUEUED) >= MAX_PHONE_SMS_QUEUED:
            self._refused_from_phone(login, f"sends SMS while {MAX_PHONE_SMS_QUEUED} from "
                                            "phones wait for the modem")
            raise TooManyRequests("Too many SMS waiting for the modem",
                                  retry_after=PHONE_SMS_FULL_RETRY)
        return await self._enqueue(account_sid, login, destination, body, False, None, {},
                                   "outbound-call")

    def _refused_from_phone(self, login: str, why: str) -> None:
        if self._phone_sms_log.allow(login):
            logger.warning("x Client %s %s: its MESSAGEs to numbers are refused 503 (logged "
                           "at most once a minute)", login, why)

    async def _from_client(self, account_sid: str, number: str, body: str) -> str:
        """The number a Client's message goes to, once checked (see send_from_client)."""
        await self._may_send_sms(account_sid)
        if not body:
            raise InvalidInput("Body can not be null.")
        destination = re.sub(r"[\s\-.()]", "", number)
        if not _PHONE.match(destination):
            raise InvalidInput(f"{number} is not a phone number")
        self._check_body(body, False)
        self._require_modem(destination)
        return destination

    async def _may_send_sms(self, account_sid: str) -> None:
        """Forbidden unless ACCOUNT_SID may send SMS (Create:SmsMessages) and is active, as
        POST SMS/Messages requires: an app of an account suspended while it runs sends no
        more."""
        account = await self._store.get_account(account_sid)
        if account is None:
            raise Forbidden(f"Account {account_sid} not found")
        require(account, Action.CREATE, "SmsMessages")
        require_active(account)

    def client_registered(self, login: str) -> None:
        """A phone of Client LOGIN registered (its first, another, the same one again from
        a new address, or a refresh): messages waiting for it may go now. Called on every
        REGISTER, so it only looks in memory."""
        destination = f"client:{login}"
        if destination in self._client_running:
            self._came_back.add(destination)
        if self._waiting_for_phone is not None and destination not in self._waiting_for_phone:
            return
        self._registered.add(destination)
        self._client_wake.set()

    @staticmethod
    def _check_body(body: str, ucs2: bool) -> None:
        if len(body) > MAX_BODY_CHARS:
            raise InvalidInput(f"Body is longer than {MAX_BODY_CHARS} characters")
        try:
            split_text(body, Encoding.UCS2 if ucs2 else None)
        except PduError:
            raise InvalidInput(
                f"Body is too long: at most {MAX_PARTS} parts of 153 GSM-7 characters, or of 67 "
                "UCS-2 units when it needs UCS-2. A character that takes two (GSM-7: € [ ] { } "
                "~ ^ \\ |; UCS-2: an emoji) is never split across parts, so fewer may fit"
                ) from None

    async def _enqueue(self, account_sid: str, from_: str, destination: str, body: str,
                       ucs2: bool, callback: Callback | None, x_headers: dict[str, str],
                       direction: str, handing: str | None = None) -> SmsRecord:
        """Queue a message; HANDING is the received message whose app it answers (its job is
        marked handed in the same transaction: see _deliver_inbound_guarded)."""
        now = self._clock()
        record = SmsRecord(
            sid=SmsSid(mint_sid("SM")), account_sid=AccountSid(account_sid), from_=from_,
            to=destination, body=body, status="queued", direction=direction, error_code=None,
            error_message=None, price="0", price_unit="USD", api_version=API_VERSION,
            date_sent=None, date_created=now, date_updated=now)
        await self._sms.enqueue(record, body=body, ucs2=ucs2, status_report=True,
                                concat_ref=secrets.randbelow(256), x_headers=x_headers,
                                callback=callback, now=storage(now), handing=handing)
        logger.info("- SMS %s queued for %s (%d characters)", record.sid, destination, len(body))
        if destination.startswith("client:"):
            # It waits behind the Client's earlier messages (their order is kept): one put
            # back for later (its phone answered 480) is tried again now, not in minutes.
            with contextlib.suppress(Exception):  # accepted anyway: it goes in turn
                await self._sms.make_clients_due(storage(now), destination)
        (self._client_wake if destination.startswith("client:") else self._wake).set()
        return record

    # -- the sender ------------------------------------------------------------------------------

    def start(self) -> None:
        for coro in (self._sender(), self._client_sender(), self._inbound_jobs(),
                     self._fragment_sweeper()):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def stop_sending(self) -> None:
        """A stop began: no message (or next part) starts from now on; those being sent
        may finish (`finish_sending`). The rest stay queued for the restart."""
        if self._stopping_at is None:
            self._stopping_at = time.monotonic()

    async def finish_sending(self) -> None:
        """Once the messages being sent are done (a part answered and recorded, a Client's
        MESSAGE answered), or
        SEND_GRACE after the stop began. Call before the modem stops: a part cut off by the
        port's close is failed as "may have been delivered"."""
        self.stop_sending()
        started = self._stopping_at
        if self._idle.is_set() or started is None:
            return
        left = started + SEND_GRACE - time.monotonic()
        logger.info("- waiting up to %.1f s for the %d message(s) being sent", left,
                    self._working)
        try:
            async with asyncio.timeout(max(0.0, left)):
                await self._idle.wait()
        except TimeoutError:
            logger.warning("x %d message(s) being sent not done %.0f s into the stop; "
                           "stopping anyway", self._working, SEND_GRACE)

    async def stop(self) -> None:
        self.stop_sending()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Cut short at once, as ever: the jobs stay in their table and run again after the
        # restart (only finished, when their app's reply was queued). So do the MESSAGEs
        # to Clients still unanswered after finish_sending: still queued, sent again.
        await self._inbound.close(0, resumed=True)
        await self._client_sends.close(0, resumed=True)
        await self._callbacks.close(CALLBACK_GRACE)

    async def recover(self) -> None:
        """After a restart: settle what a crash left mid-send (see the module docstring)."""
        in_doubt, resumed = await self._sms.recover_after_restart()
        for sid in in_doubt:
            message = ("Interrupted while the modem was sending this message (power cut or "
                       "crash); it may have been delivered. Not resent, to avoid a duplicate.")
            change = await self._sms.fail(sid, 30008, message, _now_text(self._clock))
            if change is not None:
                await self._status_callback(change)
                await self._history.notify(change.record.account_sid, 30008,
                                           f"SMS {sid}: {message}", warning=True)
        for sid in resumed:
            logger.info("- SMS %s resumes after a restart", sid)

    async def queue_depth(self) -> int:
        """Messages accepted and not yet finished (queued or being sent)."""
        return await self._sms.queued_count()

    async def _sender(self) -> None:
        while True:
            # Cleared before looking at the queue: a message accepted while we drain sets it
            # again, so it is never left waiting for the timeout.
            self._wake.clear()
            try:
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the queue must go on after a fault of ours
                # Not one message's content (_drain fails those): the store, say. A pause
                # that no new message cuts short, so a lasting fault neither spins the loop
                # nor counts faults faster; what came meanwhile is drained right after.
                if not isinstance(err, _SenderFault):
                    self._log_fault("x SMS sender: a fault of the appliance; it pauses "
                                    "%.0f s", SENDER_FAULT_PAUSE)
                await asyncio.sleep(SENDER_FAULT_PAUSE)
                continue
            timeout = 60.0
            with contextlib.suppress(Exception):
                next_due = await self._sms.next_due(clients=False)
                if next_due is not None:
                    timeout = (from_storage(next_due) - self._clock()).total_seconds()
            timeout = max(0.05, timeout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(timeout, 60.0)):
                    await self._wake.wait()

    async def _drain(self) -> None:
        """Send the modem's due messages one after the other (one modem)."""
        if self._wake_modem:
            self._wake_modem = False
            await self._sms.make_modem_due(_now_text(self._clock))
        await self._settle_in_doubt()
        while self._stopping_at is None:
            due = await self._sms.due(_now_text(self._clock))
            if not due:
                return
            faulted = False
            # The whole batch, past a message's fault: whether the next one goes through
            # tells its own fault from the appliance's (and a bad one holds up no other).
            for item in due:
                if self._stopping_at is not None:
                    return  # it stays queued for the restart
                self._begin_work()
                try:
                    faulted = await self._send_and_settle(item) or faulted
                finally:
                    self._end_work()
            if faulted:
                raise _SenderFault

    def _begin_work(self) -> None:
        self._working += 1
        self._idle.clear()

    def _end_work(self) -> None:
        self._working -= 1
        if not self._working:
            self._idle.set()

    async def _client_sender(self) -> None:
        while True:
            # Cleared before looking: a message accepted, a phone registered or a send
            # ended meanwhile sets it again.
            self._client_wake.clear()
            try:
                timeout = await self._start_client_sends()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the queue must go on after a fault of ours
                self._log_fault("x SMS to Clients: a fault of the appliance; it pauses %.0f s",
                                SENDER_FAULT_PAUSE)
                await asyncio.sleep(SENDER_FAULT_PAUSE)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._client_wake.wait()

    async def _start_client_sends(self) -> float:
        """Start the first due message of as many idle Clients as there are free slots; the
        seconds until the next look (each send ending wakes it before)."""
        if self._waiting_for_phone is None:  # the first look since the start: try them all
            await self._sms.make_clients_due(_now_text(self._clock))
            self._waiting_for_phone, self._registered = set(), set()
        while self._registered:
            destination = next(iter(self._registered))
            await self._sms.make_clients_due(_now_text(self._clock), destination)
            self._registered.discard(destination)  # not before: a failed call keeps it
            self._waiting_for_phone.discard(destination)
        await self._settle_delivered()
        now = time.monotonic()
        for destination, until in list(self._client_resting.items()):
            if until <= now:
                del self._client_resting[destination]
        timeout = min([60.0, *(until - now for until in self._client_resting.values())])
        room = CLIENT_CONCURRENCY - len(self._client_running)
        if self._stopping_at is not None or room <= 0:
            return max(0.05, timeout)
        busy = self._client_running | set(self._client_resting)
        for item in await self._sms.due_for_clients(_now_text(self._clock), room, busy):
            if item.sid in self._delivered or item.destination in self._client_running:
                continue  # took its message (settled next time) / one started meanwhile
            self._client_running.add(item.destination)
            self._begin_work()
            try:
                await self._client_sends.put(item.destination,
                                             functools.partial(self._client_turn, item))
            except BaseException:
                self._client_running.discard(item.destination)
                self._end_work()
                raise
        next_due = await self._sms.next_due(
            clients=True, skip=self._client_running | set(self._client_resting))
        if next_due is not None:
            timeout = min(timeout, (from_storage(next_due) - self._clock()).total_seconds())
        return max(0.05, timeout)

    async def _client_turn(self, item: OutboxItem) -> None:
        try:
            if self._stopping_at is not None:
                return  # it stays queued for the restart
            try:
                faulted = await self._send_and_settle(item)
            except Exception:  # noqa: BLE001 - settling a delivered one failed: settled later
                self._log_fault("x SMS %s: a fault of the appliance after its delivery",
                                item.sid)
                faulted = True
            if faulted:
                self._client_resting[item.destination] = time.monotonic() + SENDER_FAULT_PAUSE
        finally:
            self._client_running.discard(item.destination)
            self._came_back.discard(item.destination)
            self._end_work()
            self._client_wake.set()

    async def _send_and_settle(self, item: OutboxItem) -> bool:
        """Send ITEM and record the outcome; True after a fault of ours."""
        suspect = self._suspects.get(item.sid)
        if suspect is not None:
            # Its next try began: its last fault is judged no more. Another message going
            # through meanwhile (the other sender) must not count against a try in flight.
            suspect.pending = False
        try:
            await self._send_one(item)
        except asyncio.CancelledError:
            raise
        except _InDoubt as err:
            logger.warning("x SMS %s: %s", item.sid, err.message,
                           exc_info=err.__cause__ is not None)
            self._suspects.pop(item.sid, None)
            self._in_doubt[item.sid] = (item, err.message)
            await self._settle_in_doubt()
        except _Delivered:
            logger.warning("x SMS %s: delivered to the Client, but the appliance "
                           "could not record it; recorded later, not delivered again",
                           item.sid, exc_info=True)
            self._suspects.pop(item.sid, None)
            self._delivered[item.sid] = item
            await self._settle_delivered()
        except Exception:  # noqa: BLE001 - a fault of ours, not of the message
            await self._queue_fault(item)
            return True
        else:
            await self._went_through(item.sid)
        return False

    async def _queue_fault(self, item: OutboxItem) -> None:
        """A fault of ours (the store, the OS) while sending ITEM, with nothing in doubt:
        ITEM stays queued, judged by what the other messages meet (_went_through)."""
        suspect = self._suspects.setdefault(item.sid, _Suspect(item))
        suspect.item, suspect.pending = item, True
        self._log_fault("x SMS %s: a fault of the appliance while sending it (%d counted "
                        "against it); it stays queued", item.sid, suspect.counted)
        # The fault may have come after a step that took it off the queue (a modem error
        # recorded, not its requeue): back, due now. Nothing is in doubt (that is _InDoubt),
        # so no part is lost; a store still failing leaves it as it is, for a restart.
        with contextlib.suppress(Exception):
            await self._sms.requeue(item.sid, _now_text(self._clock))

    async def _went_through(self, sid: str) -> None:
        """SID was handled without a fault of ours: the appliance works, so the last fault
        of every other queued message was plausibly that message's own."""
        self._suspects.pop(sid, None)
        for other in list(self._suspects.values()):
            if not other.pending:
                continue
            other.pending = False
            other.counted += 1
            if other.counted >= MAX_SENDER_FAULTS:
                logger.error("x SMS %s: a fault of the appliance while sending it, %d times "
                             "in a row while other messages went out", other.item.sid,
                             other.counted)
                await self._fail(other.item, 30008,
                                 f"The appliance failed to send the message {other.counted} "
                                 "times in a row (an internal error: see its log); not "
                                 "retried.")
                self._suspects.pop(other.item.sid, None)

    def _log_fault(self, message: str, *args: object) -> None:
        """With its traceback at most every SENDER_FAULT_LOG_S: a lasting fault (a full disk)
        meets every message on every try."""
        now = time.monotonic()
        if self._fault_logged_at is None or now - self._fault_logged_at >= SENDER_FAULT_LOG_S:
            self._fault_logged_at = now
            logger.exception(message, *args)
        else:
            logger.debug(message, *args, exc_info=True)

    async def _settle_in_doubt(self) -> None:
        for sid, (item, message) in list(self._in_doubt.items()):
            await self._fail(item, 30008, message)
            del self._in_doubt[sid]

    async def _settle_delivered(self) -> None:
        async with self._settling:
            for sid, item in list(self._delivered.items()):
                change = await self._sms.client_delivered(sid, _now_text(self._clock))
                del self._delivered[sid]
                logger.info("> SMS %s delivered to %s as SIP MESSAGE (recorded late)", sid,
                            item.destination)
                await self._status_callback(change)

    @staticmethod
    def _encoded(item: OutboxItem) -> list[SubmitPdu]:
        """ITEM's parts as PDUs. Depends on nothing but the message: what fails here fails
        every time, so it fails the message (PduError or a bug alike)."""
        encoding, texts = split_text(item.body, Encoding.UCS2 if item.ucs2 else None)
        total = len(texts)
        return [encode_sms_submit(item.destination, text, encoding=encoding,
                                  concat=PduConcat(item.concat_ref, total, index + 1)
                                  if total > 1 else None,
                                  status_report=item.status_report)
                for index, text in enumerate(texts)]

    async def _send_one(self, item: OutboxItem) -> None:
        if item.destination.startswith("client:"):
            await self._send_to_client(item)
            return
        problem = _unencodable(item)
        if problem is not None:
            await self._fail(item, *problem)
            return
        try:
            parts = self._encoded(item)
        except Exception:  # noqa: BLE001 - this message's own fault: it alone is failed
            logger.exception("x SMS %s: could not be encoded", item.sid)
            await self._fail(item, 30008, "The appliance failed to encode the message (an "
                                          "internal error: see its log); not retried.")
            return
        modem = self.modem
        now = self._clock()
        if modem is None or modem.state.phase.value != "ready":
            if now - from_storage(item.accepted_at) > MAX_QUEUE_AGE:
                await self._fail(item, 30008, "The modem was unavailable for too long; the "
                                              "message was not sent.")
                return
            delay = RETRY_DELAYS[min(item.attempts, len(RETRY_DELAYS) - 1)]
            await self._sms.requeue(item.sid, storage(now + timedelta(seconds=delay)))
            return
        total = len(parts)
        for index in range(item.parts_done, total):
            if index > item.parts_done and self._stopping_at is not None:
                return  # stopped between two parts: continued after the restart
            # A fault before this is committed: nothing was handed over (it stays queued).
            await self._sms.begin_part(item.sid, index, total, item.destination,
                                       _now_text(self._clock))
            try:
                (mr,) = await modem.send_sms([parts[index]], tag=f"{item.sid}:{index}")
            except ModemError as err:
                await self._part_failed(item, index, err)
                return
            except Exception as err:  # noqa: BLE001 - not the driver's own kind of fault
                raise _InDoubt(f"The appliance failed while the modem was sending part "
                               f"{index + 1} (an internal error: see its log); it may have "
                               "been delivered. Not resent, to avoid a duplicate.") from err
            try:
                change = await self._sms.part_sent(item.sid, index, mr, _now_text(self._clock))
            except Exception as err:  # noqa: BLE001 - the store's: the modem has the part
                raise _InDoubt(f"The modem took part {index + 1}, but the appliance could not "
                               "record it (an internal error: see its log); it may have been "
                               "delivered. Not resent, to avoid a duplicate.") from err
            if change is not None:
                logger.info("> SMS %s sent in %d part(s)", item.sid, total)
                await self._status_callback(change)

    async def _send_to_client(self, item: OutboxItem) -> None:
        """Deliver as SIP MESSAGE; kept (up to MAX_QUEUE_AGE) until the Client registers."""
        login = item.destination[len("client:"):]
        now = self._clock()
        status = None
        if self.client_messenger is not None:
            status = await self.client_messenger.deliver(login, item.from_, item.body)
        if status is not None and 200 <= status < 300:
            # The phone has it: a fault from here on is no reason to deliver it again.
            try:
                change = await self._sms.client_delivered(item.sid, _now_text(self._clock))
            except Exception as err:  # noqa: BLE001 - settled by _settle_delivered
                raise _Delivered from err
            logger.info("> SMS %s delivered to %s as SIP MESSAGE", item.sid, login)
            await self._status_callback(change)
            return
        if now - from_storage(item.accepted_at) > MAX_QUEUE_AGE:
            await self._fail(item, 30003, f"{login} did not take the message within "
                                          f"{MAX_QUEUE_AGE.days} days")
            return
        if status is not None and (400 <= status < 500 and status not in (408, 480)
                                   or status >= 600):  # 603 Decline: refused everywhere
            await self._fail(item, 30008, f"{login}'s phone refused the message: SIP {status}")
            return
        # Not registered, or no answer: wait for a registration (or retry in a while), unless
        # the phone registered again meanwhile (a reboot under the MESSAGE): at once then.
        if item.destination in self._came_back:
            await self._sms.requeue(item.sid, _now_text(self._clock))
            return
        await self._sms.requeue(item.sid, storage(now + timedelta(minutes=10)))
        if self._waiting_for_phone is not None:
            self._waiting_for_phone.add(item.destination)

    async def _part_failed(self, item: OutboxItem, index: int, err: ModemError) -> None:
        cause = err.cause if isinstance(err, SmsSendError) else err
        now = self._clock()
        delay = RETRY_DELAYS[min(item.attempts, len(RETRY_DELAYS) - 1)]
        retry_at = storage(now + timedelta(seconds=delay))
        if isinstance(cause, ModemUnavailable) and not cause.pdu_written:
            # The modem was away: nothing was sent, and it is no fault of the message. Back
            # to the queue; the modem's recovery makes it due again.
            await self._sms.requeue(item.sid, retry_at)
            return
        if isinstance(cause, ModemTimeout) and not cause.pdu_written:
            # The modem hung before its `> ` prompt: the PDU never reached the port, so
            # nothing can have been sent. A failed try (a modem that hangs on every send
            # must not loop forever); after recovery it goes again.
            if item.attempts < MAX_TRANSIENT_ATTEMPTS:
                logger.info("x SMS %s part %d: the modem hung before its prompt; try %d "
                            "again in %g s", item.sid, index + 1, item.attempts + 2, delay)
                await self._sms.requeue(item.sid, retry_at, failed=True)
                return
            await self._fail(item, 30008, f"The modem stopped answering before it took part "
                                          f"{index + 1}, {item.attempts + 1} times; not sent.")
            return
        if isinstance(cause, ModemUnavailable | ModemTimeout):
            # The PDU was handed to the modem, then no answer (or the port went): in doubt.
            raise _InDoubt(f"The modem did not answer while sending part {index + 1}; it may "
                           "have been delivered. Not resent, to avoid a duplicate.")
        if isinstance(cause, CmsError) and cause.code in TRANSIENT_CMS \
                and item.attempts < MAX_TRANSIENT_ATTEMPTS:
            # A temporary network error: the same part again later (same concatenation
            # reference). `attempts` counts the message's failed tries, not its parts.
            logger.info("x SMS %s part %d: %s; try %d again in %g s", item.sid, index + 1,
                        cause, item.attempts + 2, delay)
            await self._sms.requeue(item.sid, retry_at, failed=True)
            return
        if isinstance(cause, CmsError | CmeError | CommandError | PduError | ModemError):
            code, message = _error_of(err)
            if index > 0:
                message += f" (part {index + 1} of the message; earlier parts went out)"
            await self._fail(item, code, message)

    async def _fail(self, item: OutboxItem, code: int, message: str) -> None:
        """Fail ITEM, unless it already has a final status (`sent`, say: then nothing)."""
        change = await self._sms.fail(item.sid, code, message, _now_text(self._clock))
        if change is None:
            logger.info("- SMS %s not failed, its status is final already (%s)", item.sid,
                        message)
            return
        logger.warning("x SMS %s failed: %s", item.sid, message)
        # Queued before anything else is awaited: what runs meanwhile (a status report) must
        # not get its callback in ahead of this one.
        await self._status_callback(change)
        try:
            await self._history.notify(item.account_sid, code, f"SMS {item.sid}: {message}")
        except Exception:  # noqa: BLE001 - the status is recorded: the message is done
            logger.exception("x SMS %s: its Notification could not be written", item.sid)

    # -- delivery reports ------------------------------------------------------------------------

    def on_modem_event(self, event: ModemEvent) -> None:
        if isinstance(event, DeliveryReported):
            task = asyncio.create_task(self._delivery(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(event, ModemStateChanged):
            ready = event.state.phase.value == "ready"
            if ready and not self._modem_ready:
                # Back (or up for the first time): what waited for it goes now, a partly
                # sent message included, instead of at its back-off time.
                self._wake_modem = True
                self._wake.set()
            self._modem_ready = ready

    async def _delivery(self, event: DeliveryReported) -> None:
        outcome = event.outcome.value
        delivered = None if outcome == "pending" else outcome == "delivered"
        now = self._clock()
        digits = "".join(c for c in event.recipient if c.isdigit())
        error = _undelivered_error(event.status) if delivered is False else None
        change = await self._sms.delivery_report(event.mr, digits, delivered, event.status,
                                                 storage(now - REPORT_WINDOW), storage(now),
                                                 error)
        if change is not None:
            logger.info("< SMS %s %s", change.record.sid, change.record.status)
            await self._status_callback(change)

    async def _status_callback(self, change: StatusChange | None) -> None:
        """Queue the StatusCallback of CHANGE (None: no change, no callback) with the status
        it wrote: a later read could find the next status already (a status report right
        after +CMGS), and `sent` would never be requested. It is requested in the
        background (a slow server holds up no other message), after the earlier callbacks
        of the same message; nothing here reads the store, so no fault of its turns a
        recorded status into another."""
        if change is None or change.callback is None:
            return
        record, callback = change.record, change.callback
        params = {"MessageSid": record.sid, "SmsSid": record.sid, "AccountSid": record.account_sid,
                  "From": record.from_, "To": record.to, "Body": record.body,
                  "MessageStatus": record.status, "SmsStatus": record.status,
                  "ApiVersion": API_VERSION}
        if record.error_code is not None:
            params["ErrorCode"] = str(record.error_code)
        try:
            await self._callbacks.put(record.sid, functools.partial(
                self._request_callback, record.account_sid, record.sid, callback, params))
        except Exception:  # noqa: BLE001 - the status is recorded; the callback is extra
            logger.exception("x SMS %s: its %s StatusCallback could not be queued",
                             record.sid, record.status)

    async def _request_callback(self, account_sid: str, sid: str, callback: Callback,
                                params: dict[str, str]) -> None:
        try:
            await self._webhooks.request(callback.url, callback.method, params)
        except WebhookError as err:
            await self._history.notify(account_sid, 11200,
                                       f"SMS {sid} status callback failed: {err.message}",
                                       warning=True, request_url=callback.url,
                                       request_method=callback.method)

    # -- inbound -------------------------------------------------------------------------------

    async def on_sms_received(self, pdu: str, index: int | None) -> None:
        """The driver's callback: returns only once the message is durably stored."""
        now = self._clock()
        sha = hashlib.sha256(pdu.upper().encode()).hexdigest()
        account_sid, to = await self._owner()
        try:
            decoded = decode_sms_pdu(pdu)
        except PduError as err:
            decoded = None
            note = f"undecodable: {err}"
        else:
            note = "ok"
        if not isinstance(decoded, Deliver):
            if decoded is not None:
                note = f"unexpected {type(decoded).__name__}"
            record = self._received(account_sid, "unknown", to, "[undecodable message]", now)
            result = await self._sms.store_inbound(index=index if index is not None else -1,
                                                   pdu=pdu, pdu_sha=sha, note=note,
                                                   record=record, fragment=None,
                                                   now=storage(now))
            if not result.duplicate:
                await self._history.notify(account_sid, 30008,
                                           f"Received an SMS that could not be decoded ({note}); "
                                           f"the raw PDU is kept (SMS {record.sid})",
                                           warning=True)
                self._jobs_wake.set()  # its app runs too, as for any received message
            return
        text = decoded.text if decoded.text is not None else "[binary message]"
        record = self._received(account_sid, decoded.sender, to, text, now)
        fragment = None
        concat = decoded.concat
        if concat is not None and concat.total > 1:
            fragment = Fragment(decoded.sender, concat.reference, concat.total, concat.seq, text)
        result = await self._sms.store_inbound(index=index if index is not None else -1,
                                               pdu=pdu, pdu_sha=sha, note=note, record=record,
                                               fragment=fragment, now=storage(now))
        if result.message is not None:
            logger.info("< SMS %s from %s (%d characters)", result.message.sid,
                        result.message.from_, len(result.message.body))
            self._jobs_wake.set()

    def _received(self, account_sid: str, sender: str, to: str, body: str, now: datetime
                  ) -> SmsRecord:
        return SmsRecord(
            sid=SmsSid(mint_sid("SM")), account_sid=AccountSid(account_sid), from_=sender, to=to,
            body=body, status="received", direction="inbound", error_code=None,
            error_message=None, price="0", price_unit="USD", api_version=API_VERSION,
            date_sent=now, date_created=now, date_updated=now)

    async def _owner(self) -> tuple[str, str]:
        """The account that owns the SIM's number (the admin when no number is provisioned)."""
        if self.sim_number:
            number = await self._store.find_number(self.sim_number)
            if number is not None:
                return number.account_sid, self.sim_number
        return ADMIN_SID, self.sim_number or "unknown"

    async def _fragment_sweeper(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                await self.release_stale_fragments()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                logger.exception("x fragment sweep")

    async def release_stale_fragments(self, age: timedelta = FRAGMENT_TIMEOUT) -> int:
        now = self._clock()
        groups = await self._sms.stale_fragment_groups(storage(now - age))
        account_sid, to = await self._owner()
        for group in groups:
            have = {f.seq: f.text for f in group}
            text = "".join(have.get(seq, "") for seq in range(1, group[0].total + 1))
            body = f"{text} [incomplete: {len(have)} of {group[0].total} parts]"
            record = self._received(account_sid, group[0].sender, to, body, now)
            await self._sms.release_fragments(group, record, storage(now))
            logger.warning("x SMS %s from %s released incomplete", record.sid, record.from_)
        if groups:
            self._jobs_wake.set()
        return len(groups)

    async def _inbound_jobs(self) -> None:
        while True:
            # Cleared before the table is read: a message received, or a job ended, while
            # reading sets it again, so nothing waits for the poll.
            self._jobs_wake.clear()
            try:
                await self._start_inbound_jobs()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broken app must not stop inbound delivery
                logger.exception("x inbound SMS delivery")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INBOUND_POLL):
                    await self._jobs_wake.wait()

    async def _start_inbound_jobs(self) -> None:
        """Start the first due job of as many idle conversations as there are free slots.
        Each job ending wakes the loop for the next, so a backlog goes without pauses."""
        now = time.monotonic()
        for conversation, until in list(self._inbound_resting.items()):
            if until <= now:
                del self._inbound_resting[conversation]
        room = INBOUND_CONCURRENCY - len(self._inbound_running)
        if room <= 0:
            return
        busy = self._inbound_running | set(self._inbound_resting)
        for job in await self._sms.due_inbound_jobs(_now_text(self._clock), room, busy):
            self._inbound_running.add(job.conversation)
            try:
                await self._inbound.put("\n".join(job.conversation),
                                        functools.partial(self._inbound_turn, job))
            except BaseException:
                self._inbound_running.discard(job.conversation)
                raise

    async def _inbound_turn(self, job: InboundJob) -> None:
        try:
            await self._deliver_inbound_guarded(job)
        except Exception:  # noqa: BLE001 - its retry could not be recorded: the store's fault
            logger.exception("x inbound SMS %s: delivery failed and could not be put off; its "
                             "conversation waits %.0f s", job.sid, INBOUND_FAULT_PAUSE)
            self._inbound_resting[job.conversation] = time.monotonic() + INBOUND_FAULT_PAUSE
        finally:
            self._inbound_running.discard(job.conversation)
            self._jobs_wake.set()

    async def _deliver_inbound_guarded(self, job: InboundJob) -> None:
        """Deliver JOB; a fault of ours on the way is retried later, with back-off, up to
        INBOUND_ATTEMPTS times, and never keeps the jobs behind it from their turn (those
        of its own conversation included: put off, it no longer holds the conversation).

        A job marked handed (its app's reply or forward was queued, in the same transaction)
        is only finished, whether the fault was ours a minute ago or a crash before the last
        run could finish it: the app never runs twice, so no reply goes out twice."""
        sid, attempts = job.sid, job.attempts
        try:
            if job.handed:
                await self._sms.finish_inbound_job(sid)
            else:
                await self._deliver_inbound(sid)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one bad job must not block the others
            logger.exception("x inbound SMS %s: delivery to its app failed", sid)
            if attempts + 1 >= INBOUND_ATTEMPTS:
                await self._sms.finish_inbound_job(sid)
                record = await self._store.get_sms(sid)
                if record is not None:
                    await self._history.notify(
                        record.account_sid, 11200,
                        f"SMS {sid}: not handed to its application after {INBOUND_ATTEMPTS} "
                        "tries (see the appliance log); it stays in the SMS list")
                return
            delay = INBOUND_RETRY.total_seconds() * 2 ** attempts
            await self._sms.retry_inbound_job(
                sid, storage(self._clock() + timedelta(seconds=delay)))

    async def _deliver_inbound(self, sid: str) -> None:
        record = await self._store.get_sms(sid)
        if record is None:
            await self._sms.finish_inbound_job(sid)
            return
        number = await self._store.find_number(record.to) if record.to else None
        if number is not None and not await self._owner_active(record, number.account_sid,
                                                               number.phone_number):
            number = None  # kept and listed, but handed to nothing: as with no SmsUrl
        url, method, fallback, fallback_method = None, "POST", None, "POST"
        if number is not None:
            missing = False
            if number.sms_application_sid:
                app = await self._store.get_application(number.sms_application_sid)
                missing = app is None or app.account_sid != number.account_sid
                if app is not None and not missing and app.rcml_url:
                    url, method = app.rcml_url, "POST"
            if url is None:
                url, method = number.sms_url, number.sms_method
            fallback, fallback_method = number.sms_fallback_url, number.sms_fallback_method
            if missing:
                # Left by an older version's application delete: the number's own URLs
                # answer, the fallback standing in for a missing SmsUrl.
                if not url:
                    url, method, fallback = fallback, fallback_method, None
                message = (f"SMS {record.sid}: SmsApplicationSid {number.sms_application_sid} "
                           f"of {number.phone_number} is no application of its account; "
                           + (f"used {url} instead" if url
                              else "no SmsUrl or SmsFallbackUrl to use"))
                if self._missing_app_warned.allow((number.sid, number.sms_application_sid,
                                                   url)):
                    await self._history.notify(record.account_sid, 21218, message,
                                               warning=bool(url))
                else:
                    logger.info("x %s", message)
        if url and url.startswith("client:"):
            try:
                # The Client must exist; the body is not limited (a SIP MESSAGE, not PDUs).
                await self._enqueue(record.account_sid, record.from_,
                                    await self._destination(record.account_sid, url),
                                    record.body, False,
                                    None, {}, "outbound-api", handing=sid)
            except InvalidInput as err:
                await self._history.notify(record.account_sid, 14101,
                                           f"SMS {record.sid} not forwarded to {url}: "
                                           f"{err.message}")
            await self._sms.finish_inbound_job(sid)
            return
        if not url:
            await self._sms.finish_inbound_job(sid)
            return
        params = {"SmsSid": record.sid, "AccountSid": record.account_sid, "From": record.from_,
                  "To": record.to, "Body": record.body}
        await self._run_sms_app(record, url, method, fallback, fallback_method, params)
        await self._sms.finish_inbound_job(sid)

    async def _owner_active(self, record: SmsRecord, account_sid: str, number: str) -> bool:
        """Whether ACCOUNT_SID, the owner of NUMBER that RECORD was sent to, is active: a
        suspended (or inactive) account's SmsUrl is not requested, nor its forward to a
        Client made. Its Notification (20005) says so at most once a minute per number, as
        anyone can send SMS to it."""
        account = await self._store.get_account(account_sid)
        if account is None or is_active(account):
            return True  # no account to cut off (a number left without one has no app)
        message = (f"SMS {record.sid} from {record.from_} to {number} not handed to its "
                   f"application: account {account_sid} is {account.status}")
        if self._inactive_warned.allow((account_sid, number)):
            await self._history.notify(account_sid, ACCOUNT_NOT_ACTIVE, message, warning=True)
        else:
            logger.info("x %s", message)
        return False

    async def _run_sms_app(self, record: SmsRecord, url: str, method: str,
                           fallback: str | None, fallback_method: str,
                           params: dict[str, str]) -> None:
        fetched = 0
        target: tuple[str, str] | None = (url, method)
        first = True
        while target is not None and fetched < MAX_RCML_DOCUMENTS:
            fetched += 1
            doc_url, doc_method = target
            target = None
            try:
                response = await self._webhooks.request(doc_url, doc_method, params)
                verbs = parse_document(response.body) if response.body.strip() else []
            except (WebhookError, RcmlError) as err:
                code = err.code if isinstance(err, RcmlError) else 11200
                await self._history.notify(record.account_sid, code,
                                           f"SMS {record.sid}: {err.message}",
                                           request_url=doc_url, request_method=doc_method)
                if first and fallback:
                    first = False
                    target = (fallback, fallback_method)
                continue
            first = False
            for verb in verbs:
                if isinstance(verb, Sms):
                    if not verb.text:
                        await self._history.notify(record.account_sid, 14103,
                                                   f"SMS {record.sid}: <Sms> without a body")
                        return
                    # Relative URLs are the document's, as in voice RCML (rcml.verbs).
                    status_callback = absolute_url(doc_url, verb.status_callback)
                    from_ = verb.from_ or record.to
                    try:
                        if verb.to is None and not _PHONE.match(record.from_):
                            # "Vodafone", or "unknown" for an undecodable PDU: no answer
                            # can reach it (nor is it a Client's login to look up).
                            raise InvalidInput(f"the sender {record.from_} is not a phone "
                                               "number to reply to")
                        to = await self._checked(record.account_sid, from_,
                                                 verb.to or record.from_,
                                                 verb.text, False)
                        if not to.startswith("client:"):
                            # It costs money on the account's behalf, as POST SMS does.
                            await self._may_send_sms(record.account_sid)
                        reply = await self._enqueue(
                            record.account_sid, from_, to, verb.text,
                            False, Callback(status_callback, "POST")
                            if status_callback else None, {}, "outbound-reply",
                            handing=record.sid)
                    except (InvalidInput, Unavailable, Forbidden) as err:
                        await self._history.notify(
                            record.account_sid, 14101,
                            f"SMS {record.sid}: <Sms> not sent: {err.message}")
                        continue
                    if verb.action:
                        params = {**params, "SmsSid": reply.sid, "SmsStatus": "sending"}
                        target = (absolute_url(doc_url, verb.action) or verb.action,
                                  verb.method)
                        break
                elif isinstance(verb, Redirect):
                    target = (absolute_url(doc_url, verb.url) or verb.url, verb.method)
                    break
                elif isinstance(verb, Unsupported):
                    await self._history.notify(record.account_sid, 12200,
                                               f"SMS {record.sid}: <{verb.name}> is not "
                                               "allowed in an SMS application", warning=True)
        if target is not None:
            await self._history.notify(record.account_sid, 12300,
                                       f"SMS {record.sid}: more than {MAX_RCML_DOCUMENTS} "
                                       "documents (redirect loop?)")

    # -- USSD and state ------------------------------------------------------------------------

    async def ussd(self, actor: Account, request: str | None) -> UssdResponse:
        require(actor, Action.CREATE, "UssdPush")
        if not request:
            raise InvalidInput("To can not be null.")
        if not re.fullmatch(r"[0-9*#+]{1,40}", request):
            raise InvalidInput("To must be a USSD code like *100#")
        if self.modem is None:
            raise Unavailable("No modem is configured ([modem] device).")
        try:
            return await self.modem.ussd(request)
        except ModemError as err:
            raise Unavailable(f"USSD failed: {err}") from err

    def modem_state(self, actor: Account) -> ModemState | None:
        if actor.parent_sid is not None:
            raise Forbidden("Only the top-level administrator account may read the modem state")
        return self.modem.state if self.modem is not None else None

    async def get_outbound(self, sid: str) -> SmsRecord:
        record = await self._store.get_sms(sid)
        if record is None:
            raise NotFound(f"The message {sid} was not found")
        return record
