"""The checks every list resource applies to its query parameters (api-behaviour.md §9):
filter values bounded in length, dates as Restcomm reads them, SortBy's `Field:asc|desc`,
and a page past the last one answered 400 with an empty body. Shared by the CDR/SMS/
recording/notification lists (services.history) and the Conferences list, with the day
bounds their date filters make."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from appliance.errors import InvalidInput
from appliance.models import Page
from appliance.queries import Condition
from appliance.timefmt import ONE_DAY, parse_filter_date, storage

MAX_FILTER = 255  # characters in one filter value: bounds the LIKE work a request asks for

Order = tuple[tuple[str, bool], ...]


def checked(value: str | None, name: str) -> str | None:
    """VALUE of filter NAME, None when absent or empty; 400 when too long."""
    if not value:
        return None
    if len(value) > MAX_FILTER:
        raise InvalidInput(f"{name} is longer than {MAX_FILTER} characters")
    return value


def filter_date(name: str, value: str) -> datetime:
    """The day a date filter names (lenient `yyyy-MM-dd`); 400 otherwise."""
    parsed = parse_filter_date(value)
    if parsed is None:
        raise InvalidInput(f"{name} must be a date like 2024-03-03")
    return parsed


def day_from(column: str, name: str, value: str | None) -> list[Condition]:
    """COLUMN from the start of the day the filter NAME gives (lenient `yyyy-MM-dd`;
    anything else is 400)."""
    if day := checked(value, name):
        return [Condition(column, ">=", storage(filter_date(name, day)))]
    return []


def day_to(column: str, name: str, value: str | None, op: str) -> list[Condition]:
    """COLUMN up to the end of the day the filter NAME gives (OP: "<=" or "<" the next
    midnight)."""
    if day := checked(value, name):
        start = filter_date(name, day)
        try:
            end = start + ONE_DAY
        except OverflowError:  # 9999-12-31, whose next midnight is past what a date holds
            end = start.replace(hour=23, minute=59, second=59, microsecond=999999)
        return [Condition(column, op, storage(end))]
    return []


def day_inequalities(column: str, name: str, from_day: str | None, until_day: str | None
                     ) -> list[Condition]:
    """Twilio's `NAME>=day` (COLUMN from the start of that day) and `NAME<=day` (to the end
    of that day); a row without a value in COLUMN matches neither."""
    return (day_from(column, f"{name}>=", from_day)
            + day_to(column, f"{name}<=", until_day, "<"))


def sort_order(sort_by: str | None, columns: Mapping[str, str]) -> Order | None:
    """The ORDER BY that SortBy asks for, over COLUMNS (API field -> column), newest first
    among equals; None when it names no sortable field (the list's default applies). A
    direction other than asc/desc is 400, as Restcomm answers it."""
    if sort_by is None:
        return None
    field, sep, direction = sort_by.partition(":")
    if sep and (not field or direction.lower() not in ("asc", "desc")):
        raise InvalidInput(f"Error parsing the SortBy parameter: {sort_by}", json_message=True)
    column = columns.get(field.strip())
    if column is None:
        return None
    descending = sep != "" and direction.lower() == "desc"
    if column == "date_created":
        return ((column, descending),)
    return ((column, descending), ("date_created", True))


def check_page(page: Page[Any]) -> None:
    """A page past the last one: out of range, 400 with an empty body (§9)."""
    if page.page > page.num_pages:
        raise InvalidInput("")
