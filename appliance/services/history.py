"""Read access to what happened: CDRs, SMS records, notifications and recordings.

Also the Notifications writer: every error a user should see becomes a row here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.errors import Forbidden, InvalidInput, NotFound
from appliance.models import (
    Account,
    AccountSid,
    CallRecord,
    Notification,
    NotificationSid,
    Page,
    Recording,
    SmsRecord,
    is_sid_shaped,
    mint_sid,
)
from appliance.queries import Condition, ListQuery
from appliance.services.access import Action, require
from appliance.services.list_filters import (
    Order,
    check_page,
    checked,
    day_from,
    day_inequalities,
    day_to,
    sort_order,
)
from appliance.services.ports import StoreProtocol

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000  # Twilio's cap; bounds the work one request can ask for.
MAX_PAGE = 2**31 - 1  # Restcomm's Integer; keeps Page * PageSize within SQLite's INTEGER


@dataclasses.dataclass(frozen=True)
class Paging:
    page: int = 0
    page_size: int = 50


@dataclasses.dataclass(frozen=True)
class ListFilters:
    """Query parameters of a list request, by meaning (the API maps Restcomm's names)."""

    to: str | None = None
    from_: str | None = None
    status: str | None = None
    body: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    # Twilio's inequality forms, which Restcomm's docs list too: ``StartTime>=day`` and
    # ``StartTime<=day`` (a query string splits them into ``StartTime>``/``StartTime<``),
    # the same for EndTime, and Twilio's DateSent (SMS) with its own two.
    started_from: str | None = None
    started_until: str | None = None
    ended_from: str | None = None
    ended_until: str | None = None
    date_sent: str | None = None
    sent_from: str | None = None
    sent_until: str | None = None
    # Twilio's day filters of Recordings (DateCreated) and Notifications (MessageDate), each
    # with its two inequality forms, as DateSent.
    date_created: str | None = None
    created_from: str | None = None
    created_until: str | None = None
    message_date: str | None = None
    logged_from: str | None = None
    logged_until: str | None = None
    parent_call_sid: str | None = None
    conference_sid: str | None = None
    call_sid: str | None = None
    error_code: str | None = None
    request_url: str | None = None
    message_text: str | None = None
    sub_accounts: bool = False
    sort_by: str | None = None
    reverse: str | None = None


# SortBy field names per resource -> column (api-behaviour.md §8.3, §8.4, §8.8).
_SORTS = {
    "calls": {"DateCreated": "date_created", "From": "from", "To": "to",
              "Direction": "direction", "Status": "status", "Duration": "duration",
              "Price": "price"},
    "sms_messages": {"DateCreated": "date_created", "From": "from", "To": "to",
                     "Direction": "direction", "Status": "status", "Body": "body",
                     "Price": "price"},
    "notifications": {"DateCreated": "date_created", "Log": "log", "ErrorCode": "error_code",
                      "CallSid": "call_sid", "MessageText": "message_text"},
    "recordings": {"DateCreated": "date_created", "Duration": "duration",
                   "CallSid": "call_sid"},
}


def parse_paging(page: str | None, page_size: str | None) -> Paging:
    try:
        p = int(page) if page not in (None, "") else 0
        s = int(page_size) if page_size not in (None, "") else 50
    except (TypeError, ValueError):
        raise InvalidInput("Page and PageSize must be integers") from None
    if p < 0:
        raise InvalidInput("Page must be 0 or more")
    if p > MAX_PAGE:
        raise InvalidInput("")  # past any last page: out of range, 400 with an empty body
    if not 0 < s <= MAX_PAGE_SIZE:
        raise InvalidInput(f"PageSize must be between 1 and {MAX_PAGE_SIZE}")
    return Paging(p, s)


def _order(table: str, filters: ListFilters) -> Order:
    order = sort_order(filters.sort_by, _SORTS[table])
    if order is not None:
        return order
    if filters.reverse is not None and filters.reverse.lower() == "false":
        return (("date_created", False),)
    return (("date_created", True),)


def _time_range(filters: ListFilters, start_column: str, end_column: str) -> list[Condition]:
    """StartTime/EndTime as Restcomm applies them: from StartTime's day, to the end of
    EndTime's day."""
    return (day_from(start_column, "StartTime", filters.start_time)
            + day_to(end_column, "EndTime", filters.end_time, "<="))


def _created_range(filters: ListFilters) -> list[Condition]:
    """StartTime/EndTime on a record that has one time, its creation (SMS, notifications,
    recordings): both bound date_created, so their inequality forms are bounds on it too."""
    return (_time_range(filters, "date_created", "date_created")
            + day_inequalities("date_created", "StartTime", filters.started_from,
                               filters.started_until)
            + day_inequalities("date_created", "EndTime", filters.ended_from,
                               filters.ended_until))


def _twilio_day(column: str, name: str, day: str | None, from_day: str | None,
                until_day: str | None) -> list[Condition]:
    """Twilio's `NAME=day`, unlike Restcomm's StartTime=, is that day only; `NAME>=day` and
    `NAME<=day` from the start / to the end of the day."""
    return (day_from(column, name, day) + day_to(column, name, day, "<")
            + day_inequalities(column, name, from_day, until_day))


class HistoryService:
    def __init__(self, store: StoreProtocol, clock: Callable[[], datetime],
                 scope: Callable[[Account, bool], Awaitable[tuple[str, ...]]]) -> None:
        self._store = store
        self._clock = clock
        # AccountService.scope_sids: the account, plus its descendants for SubAccounts=true.
        self._scope = scope

    def data_version(self) -> tuple[int, int] | None:
        """Changes whenever stored data may have changed (Store.data_version); None if unknown."""
        return self._store.data_version()

    async def _accounts(self, account: Account, filters: ListFilters) -> tuple[str, ...]:
        return await self._scope(account, filters.sub_accounts)

    # -- calls -------------------------------------------------------------------------------

    async def page_calls(self, actor: Account, account: Account, filters: ListFilters,
                         paging: Paging) -> Page[CallRecord]:
        page = await self._store.page_calls(await self._calls_query(actor, account, filters,
                                                                    paging))
        check_page(page)
        return page

    async def page_calls_stored(self, actor: Account, account: Account, filters: ListFilters,
                                paging: Paging) -> Page[Sequence[Any]]:
        """page_calls with each CDR as its stored values in CallRecord field order,
        timestamps as storage text (Store.page_calls_stored): for list renderers that need
        no models."""
        page = await self._store.page_calls_stored(await self._calls_query(actor, account,
                                                                           filters, paging))
        check_page(page)
        return page

    async def _calls_query(self, actor: Account, account: Account, filters: ListFilters,
                           paging: Paging) -> ListQuery:
        require(actor, Action.READ, "Calls")
        conditions: list[Condition] = []
        if to := checked(filters.to, "To"):
            conditions.append(Condition("to", "like", "%" + to))
        if frm := checked(filters.from_, "From"):
            conditions.append(Condition("from", "like", "%" + frm))
        for column, value, name in (("status", filters.status, "Status"),
                                    ("parent_call_sid", filters.parent_call_sid,
                                     "ParentCallSid"),
                                    ("conference_sid", filters.conference_sid,
                                     "ConferenceSid")):
            if text := checked(value, name):
                conditions.append(Condition(column, "like", text))
        conditions += _time_range(filters, "start_time", "end_time")
        conditions += day_inequalities("start_time", "StartTime", filters.started_from,
                                       filters.started_until)
        conditions += day_inequalities("end_time", "EndTime", filters.ended_from,
                                       filters.ended_until)
        return ListQuery(account_sids=await self._accounts(account, filters),
                         conditions=tuple(conditions), order=_order("calls", filters),
                         page=paging.page, page_size=paging.page_size)

    async def get_call(self, actor: Account, account: Account, sid: str) -> CallRecord:
        require(actor, Action.READ, "Calls")
        call = await self._store.get_call(sid) if is_sid_shaped(sid) else None
        if call is None:
            raise NotFound(f"The call {sid} was not found")
        if call.account_sid != account.sid:
            raise Forbidden("The call belongs to another account")
        return call

    # -- SMS ---------------------------------------------------------------------------------

    async def page_sms(self, actor: Account, account: Account, filters: ListFilters,
                       paging: Paging) -> Page[SmsRecord]:
        require(actor, Action.READ, "SmsMessages")
        conditions: list[Condition] = []
        if to := checked(filters.to, "To"):
            conditions.append(Condition("to", "like", "%" + to))
        if frm := checked(filters.from_, "From"):
            conditions.append(Condition("from", "like", "%" + frm))
        if status := checked(filters.status, "Status"):
            conditions.append(Condition("status", "like", status))
        if body := checked(filters.body, "Body"):
            conditions.append(Condition("body", "like", f"%{body}%"))
        conditions += _created_range(filters)
        conditions += _twilio_day("date_sent", "DateSent", filters.date_sent,
                                  filters.sent_from, filters.sent_until)
        query = ListQuery(account_sids=await self._accounts(account, filters),
                          conditions=tuple(conditions), order=_order("sms_messages", filters),
                          page=paging.page, page_size=paging.page_size)
        page = await self._store.page_sms(query)
        check_page(page)
        return page

    async def get_sms(self, actor: Account, account: Account, sid: str) -> SmsRecord:
        require(actor, Action.READ, "SmsMessages")
        sms = await self._store.get_sms(sid) if is_sid_shaped(sid, "SM") else None
        if sms is None:
            raise NotFound(f"The message {sid} was not found")
        if sms.account_sid != account.sid:
            raise Forbidden("The message belongs to another account")
        return sms

    # -- notifications -------------------------------------------------------------------------

    async def page_notifications(self, actor: Account, account: Account, filters: ListFilters,
                                 paging: Paging) -> Page[Notification]:
        require(actor, Action.READ, "Notifications")
        conditions: list[Condition] = []
        conditions += _created_range(filters)
        conditions += _twilio_day("message_date", "MessageDate", filters.message_date,
                                  filters.logged_from, filters.logged_until)
        if code := checked(filters.error_code, "ErrorCode"):
            if not code.isdigit():
                raise InvalidInput("ErrorCode must be a number")
            conditions.append(Condition("error_code", "=", code))
        if url := checked(filters.request_url, "RequestUrl"):
            conditions.append(Condition("request_url", "like", url))
        if text := checked(filters.message_text, "MessageText"):
            conditions.append(Condition("message_text", "like", f"%{text}%"))
        if call := checked(filters.call_sid, "CallSid"):
            conditions.append(Condition("call_sid", "=", call))
        query = ListQuery(account_sids=await self._accounts(account, filters),
                          conditions=tuple(conditions), order=_order("notifications", filters),
                          page=paging.page, page_size=paging.page_size)
        page = await self._store.page_notifications(query)
        check_page(page)
        return page

    async def get_notification(self, actor: Account, account: Account, sid: str
                               ) -> Notification:
        require(actor, Action.READ, "Notifications")
        note = await self._store.get_notification(sid) if is_sid_shaped(sid, "NO") else None
        if note is None:
            raise NotFound(f"The notification {sid} was not found")
        if note.account_sid != account.sid:
            raise Forbidden("The notification belongs to another account")
        return note

    async def notify(self, account_sid: str, error_code: int, message: str, *,
                     warning: bool = False, call_sid: str | None = None,
                     request_url: str = "", request_method: str = "",
                     request_variables: str = "", response_headers: str = "",
                     response_body: str = "") -> Notification:
        """Record an error (or warning) the account's owner should see."""
        now = self._clock()
        note = Notification(
            sid=NotificationSid(mint_sid("NO")), account_sid=AccountSid(account_sid),
            call_sid=call_sid, log=1 if warning else 0, error_code=error_code,
            more_info=f"https://www.twilio.com/docs/errors/{error_code}",
            message_text=message[:4000], message_date=now, request_url=request_url[:2048],
            request_method=request_method, request_variables=request_variables[:4000],
            response_headers=response_headers[:4000], response_body=response_body[:4000],
            date_created=now, date_updated=now)
        await self._store.insert_notification(note)
        logger.warning("x notification %s for %s: %s %s", note.sid, account_sid, error_code,
                       message)
        return note

    # -- recordings --------------------------------------------------------------------------

    async def page_recordings(self, actor: Account, account: Account, filters: ListFilters,
                              paging: Paging) -> Page[Recording]:
        require(actor, Action.READ, "Recordings")
        conditions: list[Condition] = []
        conditions += _created_range(filters)
        conditions += _twilio_day("date_created", "DateCreated", filters.date_created,
                                  filters.created_from, filters.created_until)
        if call := checked(filters.call_sid, "CallSid"):
            conditions.append(Condition("call_sid", "=", call))
        query = ListQuery(account_sids=await self._accounts(account, filters),
                          conditions=tuple(conditions), order=_order("recordings", filters),
                          page=paging.page, page_size=paging.page_size)
        page = await self._store.page_recordings(query)
        check_page(page)
        return page

    async def get_recording(self, actor: Account, account: Account, sid: str) -> Recording:
        require(actor, Action.READ, "Recordings")
        rec = await self._store.get_recording(sid) if is_sid_shaped(sid, "RE") else None
        if rec is None:
            raise NotFound(f"The recording {sid} was not found")
        if rec.account_sid != account.sid:
            raise Forbidden("The recording belongs to another account")
        return rec

    async def delete_recording(self, actor: Account, account: Account, sid: str) -> None:
        require(actor, Action.DELETE, "Recordings")
        rec = await self.get_recording(actor, account, sid)
        await self._store.delete_recording(rec.sid)
        await asyncio.to_thread(Path(rec.file_path).unlink, missing_ok=True)

    async def recording_path(self, sid: str) -> Path | None:
        rec = await self._store.get_recording(sid) if is_sid_shaped(sid, "RE") else None
        return Path(rec.file_path) if rec is not None else None
