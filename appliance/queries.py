"""Pure descriptions of list queries: what the API asked for, in column terms.

Services build them from request parameters; the store turns them into SQL against a
whitelist of columns, so no user text ever becomes an identifier.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Condition:
    column: str
    op: str  # "like", "=", ">=", "<", "<="
    value: str


@dataclasses.dataclass(frozen=True)
class ListQuery:
    account_sids: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()
    # (column, descending) pairs, most significant first.
    order: tuple[tuple[str, bool], ...] = (("date_created", True),)
    page: int = 0
    page_size: int = 50
