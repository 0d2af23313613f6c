"""Wire formats for dates (api-behaviour.md §1.5). Pure: callers pass the datetime."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_LENIENT_DATE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})")


def rfc2822(d: datetime) -> str:
    """Java `EEE, d MMM yyyy HH:mm:ss Z` in English: `Sun, 3 Mar 2024 09:05:07 +0000`."""
    d = d.astimezone(UTC)
    return (f"{_DAYS[d.weekday()]}, {d.day} {_MONTHS[d.month - 1]} {d.year:04d} "
            f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} +0000")


def callback_time(d: datetime) -> str:
    """A status callback's `Timestamp`, `EEE, dd MMM yyyy HH:mm:ss` with the day zero-padded
    (api-behaviour.md §1.5) and a `+0000` offset, as Twilio writes it:
    `Sun, 03 Mar 2024 09:05:07 +0000`."""
    d = d.astimezone(UTC)
    return (f"{_DAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year:04d} "
            f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} +0000")


def iso(d: datetime) -> str:
    """Joda `DateTime.toString()`: milliseconds and `Z` for UTC."""
    d = d.astimezone(UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def storage(d: datetime) -> str:
    """Sortable text kept in SQLite (UTC, microseconds)."""
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_storage(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def parse_filter_date(text: str) -> datetime | None:
    """Lenient `yyyy-MM-dd` with trailing text ignored, as Restcomm's query filters; None if bad."""
    match = _LENIENT_DATE.match(text)
    if not match:
        return None
    try:
        return datetime(int(match[1]), int(match[2]), int(match[3]), tzinfo=UTC)
    except ValueError:
        return None


ONE_DAY = timedelta(days=1)
