"""Who may do what: the account tree, roles and permission strings (api-behaviour.md §4)."""

from __future__ import annotations

import enum
from typing import Protocol

from appliance.errors import Forbidden
from appliance.models import Account, AccountStatus, Client

ADMINISTRATOR = "Administrator"
DEVELOPER = "Developer"
ROLES = (ADMINISTRATOR, DEVELOPER)


class Action(enum.StrEnum):
    READ = "Read"
    CREATE = "Create"
    MODIFY = "Modify"
    DELETE = "Delete"


# The Developer role: everything except sending SMS and writing notifications (Restcomm #1454).
_DEVELOPER_DENIED = {
    ("Create", "SmsMessages"), ("Modify", "SmsMessages"), ("Delete", "SmsMessages"),
    ("Create", "Notifications"), ("Modify", "Notifications"), ("Delete", "Notifications"),
    ("Create", "Recordings"), ("Modify", "Recordings"),
}


def has_permission(actor: Account, action: Action, resource: str) -> bool:
    if actor.role == ADMINISTRATOR:
        return True
    if actor.role == DEVELOPER:
        return (str(action), resource) not in _DEVELOPER_DENIED
    return False


def require(actor: Account, action: Action, resource: str) -> None:
    if not has_permission(actor, action, resource):
        raise Forbidden(f"Missing permission RestComm:{action}:{resource}")


NOT_ACTIVE = "Provided Account is not active"
# The Notification of a call or SMS that an account not active may no longer make or take
# (Twilio's error 20005, "Account not active").
ACCOUNT_NOT_ACTIVE = 20005


def is_active(account: Account) -> bool:
    """Whether ACCOUNT may act: its API answers, its apps run and its calls and SMS go out.
    Suspended, closed and inactive accounts are cut off (api-behaviour.md §2); an
    uninitialized one is only waiting for a new password."""
    return account.status in (AccountStatus.ACTIVE, AccountStatus.UNINITIALIZED)


def require_active(actor: Account) -> None:
    if not is_active(actor):
        raise Forbidden(NOT_ACTIVE)


def is_super_admin(actor: Account) -> bool:
    return actor.parent_sid is None and actor.status == AccountStatus.ACTIVE


class _ClientsByLogin(Protocol):
    async def get_client_by_login(self, login: str) -> Client | None: ...


async def account_client(store: _ClientsByLogin, account_sid: str, login: str) -> Client | None:
    """Client LOGIN when it belongs to ACCOUNT_SID, else None. Logins are unique across
    accounts, yet an account reaches only its own Clients (a call, an SMS, a document of its
    apps); callers answer a foreign login exactly as a missing one, so no account can probe
    another's logins."""
    client = await store.get_client_by_login(login)
    if client is None or client.account_sid != account_sid:
        return None
    return client
