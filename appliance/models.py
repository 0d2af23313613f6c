"""Frozen records shared across layers, SID types and wire-value enums.

Times are timezone-aware UTC datetimes; formatting for the wire lives in api/render.py.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import uuid
from datetime import datetime
from typing import Generic, NewType, TypeVar

AccountSid = NewType("AccountSid", str)
ClientSid = NewType("ClientSid", str)
PhoneNumberSid = NewType("PhoneNumberSid", str)
ApplicationSid = NewType("ApplicationSid", str)
CallSid = NewType("CallSid", str)
SmsSid = NewType("SmsSid", str)
NotificationSid = NewType("NotificationSid", str)
RecordingSid = NewType("RecordingSid", str)
GatewaySid = NewType("GatewaySid", str)

API_VERSION = "2012-04-24"
ADMIN_SID = AccountSid("ACae6e420f425248d6a26948c17a9e2acf")
ORGANIZATION_SID = "ORafbe225ad37541eba518a74248f0ac4c"
ORGANIZATION_DOMAIN = "default.restcomm.com"
RESERVED_ADMIN_EMAIL = "administrator@company.com"

_SID_SHAPE = re.compile(r"^(?:[a-zA-Z0-9]{34}|ID[a-zA-Z0-9]{32}-CA[a-zA-Z0-9]{32})$")


def mint_sid(prefix: str) -> str:
    """A new SID: two-letter PREFIX plus 32 lowercase hex characters."""
    return prefix + uuid.uuid4().hex


def account_sid_for(email: str) -> AccountSid:
    return AccountSid("AC" + hashlib.md5(email.lower().encode()).hexdigest())  # noqa: S324


def is_sid_shaped(text: str, prefix: str | None = None) -> bool:
    if not _SID_SHAPE.fullmatch(text):
        return False
    return prefix is None or text.startswith(prefix)


def md5_hex(text: str) -> str:
    # Restcomm's AuthToken and SIP digest HA1 are defined as MD5; this is not for new secrets.
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324


class AccountStatus(enum.StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"
    SUSPENDED = "suspended"
    INACTIVE = "inactive"
    UNINITIALIZED = "uninitialized"


class CallStatus(enum.StrEnum):
    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    FAILED = "failed"
    NO_ANSWER = "no-answer"
    CANCELED = "canceled"


class SmsStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    RECEIVED = "received"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"


@dataclasses.dataclass(frozen=True)
class Account:
    sid: AccountSid
    parent_sid: AccountSid | None
    friendly_name: str
    email_address: str
    type: str
    status: AccountStatus
    role: str
    auth_token: str
    date_created: datetime
    date_updated: datetime
    organization_sid: str = ORGANIZATION_SID


@dataclasses.dataclass(frozen=True)
class Client:
    sid: ClientSid
    account_sid: AccountSid
    friendly_name: str
    login: str
    status: int
    voice_url: str | None
    voice_method: str
    voice_fallback_url: str | None
    voice_fallback_method: str
    voice_application_sid: str | None
    push_client_identity: str | None
    api_version: str
    date_created: datetime
    date_updated: datetime
    # Digest secrets: HA1 = md5(login:realm:password), and its SHA-256 twin (RFC 7616).
    ha1_md5: str = dataclasses.field(repr=False, default="")
    ha1_sha256: str = dataclasses.field(repr=False, default="")
    realm: str = ""


@dataclasses.dataclass(frozen=True)
class PhoneNumber:
    sid: PhoneNumberSid
    account_sid: AccountSid
    friendly_name: str
    phone_number: str
    voice_url: str | None
    voice_method: str
    voice_fallback_url: str | None
    voice_fallback_method: str
    status_callback: str | None
    status_callback_method: str
    voice_caller_id_lookup: bool
    voice_application_sid: str | None
    sms_url: str | None
    sms_method: str
    sms_fallback_url: str | None
    sms_fallback_method: str
    sms_application_sid: str | None
    ussd_url: str | None
    ussd_method: str
    ussd_fallback_url: str | None
    ussd_fallback_method: str
    ussd_application_sid: str | None
    refer_url: str | None
    refer_method: str
    refer_application_sid: str | None
    voice_capable: bool
    sms_capable: bool
    mms_capable: bool
    fax_capable: bool
    pure_sip: bool
    api_version: str
    date_created: datetime
    date_updated: datetime


@dataclasses.dataclass(frozen=True)
class Application:
    sid: ApplicationSid
    account_sid: AccountSid
    friendly_name: str
    voice_caller_id_lookup: bool
    rcml_url: str | None
    kind: str | None
    api_version: str
    date_created: datetime
    date_updated: datetime


@dataclasses.dataclass(frozen=True)
class CallRecord:
    sid: CallSid
    instance_id: str | None
    account_sid: AccountSid
    parent_call_sid: str | None
    to: str
    from_: str
    phone_number_sid: str | None
    status: str
    start_time: datetime | None
    end_time: datetime | None
    duration: int
    price: str | None
    price_unit: str
    direction: str
    answered_by: str | None
    api_version: str
    forwarded_from: str | None
    caller_name: str | None
    conference_sid: str | None
    ring_duration: int | None
    date_created: datetime
    date_updated: datetime


@dataclasses.dataclass(frozen=True)
class SmsRecord:
    sid: SmsSid
    account_sid: AccountSid
    from_: str
    to: str
    body: str
    status: str
    direction: str
    error_code: int | None
    error_message: str | None
    price: str
    price_unit: str
    api_version: str
    date_sent: datetime | None
    date_created: datetime
    date_updated: datetime


@dataclasses.dataclass(frozen=True)
class Notification:
    sid: NotificationSid
    account_sid: AccountSid
    call_sid: str | None
    log: int
    error_code: int
    more_info: str
    message_text: str
    message_date: datetime
    request_url: str
    request_method: str
    request_variables: str
    response_headers: str
    response_body: str
    date_created: datetime
    date_updated: datetime


@dataclasses.dataclass(frozen=True)
class Recording:
    sid: RecordingSid
    account_sid: AccountSid
    call_sid: str | None
    duration: float
    file_path: str
    date_created: datetime
    date_updated: datetime


@dataclasses.dataclass(frozen=True)
class Gateway:
    """An upstream SIP provider account the appliance registers to (a trunk)."""

    sid: GatewaySid
    friendly_name: str
    user_name: str
    password: str
    proxy: str  # host[:port] of the provider's registrar/proxy
    register: bool
    ttl: int  # seconds asked for in REGISTER Expires
    date_created: datetime
    date_updated: datetime


ConferenceSid = NewType("ConferenceSid", str)


class ConferenceStatus(enum.StrEnum):
    """Restcomm's conference states (api-behaviour.md §8.8)."""

    RUNNING_MODERATOR_ABSENT = "RUNNING_MODERATOR_ABSENT"  # nobody with startConferenceOnEnter
    RUNNING_MODERATOR_PRESENT = "RUNNING_MODERATOR_PRESENT"
    COMPLETED = "COMPLETED"


@dataclasses.dataclass(frozen=True)
class Conference:
    """A named room of one account, from its first participant to its end."""

    sid: ConferenceSid
    account_sid: AccountSid
    friendly_name: str
    status: ConferenceStatus
    api_version: str
    date_created: datetime
    date_updated: datetime


@dataclasses.dataclass(frozen=True)
class Participant:
    """One call in a conference; ``connected`` is False once it has left."""

    call_sid: str
    conference_sid: ConferenceSid
    account_sid: AccountSid
    muted: bool
    start_conference_on_enter: bool
    end_conference_on_exit: bool
    connected: bool
    date_created: datetime
    date_updated: datetime


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a filtered list, with the total that matched the filter."""

    items: list[T]
    total: int
    page: int
    page_size: int

    @property
    def num_pages(self) -> int:
        # Restcomm's "num_pages" is the index of the last page (floor(total / size)).
        return self.total // self.page_size
