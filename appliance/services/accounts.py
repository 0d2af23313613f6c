"""Accounts: bootstrap of the administrator, authentication, the account tree, updates."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol

from appliance import passwords
from appliance.errors import Conflict, Duplicate, Forbidden, InvalidInput, NotFound, Unauthorized
from appliance.models import (
    ADMIN_SID,
    RESERVED_ADMIN_EMAIL,
    Account,
    AccountSid,
    AccountStatus,
    account_sid_for,
    md5_hex,
)
from appliance.services.access import (
    ADMINISTRATOR,
    ROLES,
    Action,
    is_active,
    is_super_admin,
    require,
)
from appliance.services.ports import StoreProtocol
from appliance.timefmt import storage

logger = logging.getLogger(__name__)

_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?$")
MAX_TREE_DEPTH = 3  # top-level, child, grandchild (api-behaviour.md §4)
MAX_FIELD = 255
_EMAIL_TAKEN = "The email address used for the new account is already in use."
MAX_VERIFIED = 1024  # remembered (login, secret) pairs; cleared whole when full


@dataclasses.dataclass(frozen=True)
class AccountChanges:
    friendly_name: str | None = None
    password: str | None = None
    status: str | None = None
    role: str | None = None


class LinkedClients(Protocol):
    """What the account service needs from the client side: the per-account SIP client."""

    async def create_linked(self, account: Account, login: str, password: str) -> None: ...

    async def sync_linked(self, account: Account, login: str, password: str | None) -> None: ...


class AccountService:
    def __init__(self, store: StoreProtocol, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock
        self._cache: dict[str, Account] = {}
        self._by_email: dict[str, Account] = {}
        # (login, secret) -> the AuthToken they were verified against: a script polling the
        # API sends the same credentials every time, and the md5 and constant-time compares
        # need not be redone while the account's token is unchanged.
        self._verified: dict[tuple[str, str], str] = {}
        self.linked: LinkedClients | None = None
        # Called after any account change (status matters to SIP: a suspended account's
        # phones are refused).
        self.on_change: list[Callable[[], None]] = []
        # Called with the sids of the accounts that a change made not active (suspended,
        # closed, inactive), once the change is stored: their calls in progress are ended.
        self.on_cut_off: list[Callable[[list[str]], None]] = []

    async def load(self) -> None:
        self._cache, self._by_email = {}, {}
        for account in await self._store.all_accounts():
            self._index(account)
            if account.role not in ROLES and account.status != AccountStatus.CLOSED:
                # Left by an older version, which stored any string: no permission at all.
                logger.warning("x account %s (%s) has the role %r, which grants nothing (its "
                               "phones may not call out or send SMS either): set Role to "
                               "Administrator or Developer", account.sid,
                               account.email_address, account.role[:64])

    def _index(self, account: Account) -> None:
        # Every account is in memory (the tree is small); these are its lookup keys. The
        # store stays the truth: load() fills them, every write goes through _remember.
        self._cache[account.sid] = account
        self._by_email[account.email_address] = account

    def _remember(self, account: Account, *, changed: bool = True) -> Account:
        self._index(account)
        if changed:
            for callback in self.on_change:
                callback()
        return account

    # -- bootstrap ---------------------------------------------------------------------------

    async def bootstrap_admin(self, email: str, configured_password: str, data_dir: Path
                              ) -> Account:
        """Create the administrator on first start. No well-known password ever works."""
        existing = await self._store.get_account(ADMIN_SID)
        if existing is not None:
            return self._remember(existing, changed=False)  # at start: nothing cached yet
        password = configured_password or passwords.generate()
        if configured_password and not passwords.is_strong(configured_password):
            logger.warning("x admin.password in the config is weak; it is used as configured")
        now = self._clock()
        admin = Account(sid=ADMIN_SID, parent_sid=None,
                        friendly_name="Default Administrator Account",
                        email_address=email.lower(), type="Full", status=AccountStatus.ACTIVE,
                        role=ADMINISTRATOR, auth_token=md5_hex(password), date_created=now,
                        date_updated=now)
        await self._store.insert_account(admin)
        if not configured_password:
            write_secret(data_dir / "admin-password", password)
            logger.info("- generated the administrator password in %s",
                        data_dir / "admin-password")
        return self._remember(admin)

    async def reset_admin_password(self, data_dir: Path) -> str:
        """Console-only recovery: a new password, and the account active and Administrator."""
        admin = await self._store.get_account(ADMIN_SID)
        if admin is None:
            raise NotFound("the administrator account does not exist yet; start the appliance once")
        password = passwords.generate()
        # Also undoes a lock-out of an older version, which let the API suspend, close or
        # demote the administrator.
        updated = dataclasses.replace(admin, auth_token=md5_hex(password),
                                      status=AccountStatus.ACTIVE, role=ADMINISTRATOR,
                                      date_updated=self._clock())
        await self._store.update_account(updated)
        write_secret(data_dir / "admin-password", password)
        return password

    # -- authentication ------------------------------------------------------------------------

    async def authenticate(self, user: str, secret: str) -> Account:
        verified_token = self._verified.get((user, secret))
        account = self._lookup_cached(user)
        if verified_token is not None and account is not None \
                and account.auth_token == verified_token:
            return account
        if account is None:
            account = await self._store.find_account(user)
            if account is not None:
                self._remember(account, changed=False)
        if account is None:
            raise Unauthorized()
        token = account.auth_token
        if not (secrets.compare_digest(secret.encode(), token.encode())
                or secrets.compare_digest(md5_hex(secret).encode(), token.encode())):
            raise Unauthorized()
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[(user, secret)] = token
        return account

    def _lookup_cached(self, user: str) -> Account | None:
        return self._by_email.get(user.lower()) or self._cache.get(user)

    # -- tree ---------------------------------------------------------------------------------

    async def get(self, sid: str) -> Account | None:
        cached = self._cache.get(sid)
        if cached is not None:
            return cached
        account = await self._store.get_account(sid)
        return self._remember(account, changed=False) if account else None

    async def ancestors(self, account: Account) -> list[Account]:
        chain: list[Account] = []
        current = account
        while current.parent_sid is not None and len(chain) < MAX_TREE_DEPTH:
            parent = await self.get(current.parent_sid)
            if parent is None:
                break
            chain.append(parent)
            current = parent
        return chain

    async def is_in_subtree(self, actor: Account, target: Account) -> bool:
        if actor.sid == target.sid:
            return True
        return any(a.sid == actor.sid for a in await self.ancestors(target))

    async def descendants(self, account: Account) -> list[Account]:
        """All descendants, deepest first (children-first order for recursive updates)."""
        result: list[Account] = []
        frontier = [account]
        for _ in range(MAX_TREE_DEPTH):
            children: list[Account] = []
            for parent in frontier:
                children.extend(await self._store.child_accounts(parent.sid))
            if not children:
                break
            result = children + result
            frontier = children
        return result

    async def resolve_operated(self, actor: Account, key: str, *, creating: bool = False
                               ) -> Account:
        """The `{AccountSid}` of a sub-resource path: SID, email or friendly name; tree rule.

        A SID or an email always means its own account: any account may name itself, so a
        friendly name equal to another account's SID or email must not capture that
        account's paths. A friendly name counts only if it names one account of the actor's
        tree. CREATING something in a closed account is refused: closed is final.
        """
        target = self._cache.get(key) or self._by_email.get(key.lower())
        if target is None:
            target = await self._store.find_account(key)
        if target is None:
            target = await self._named(actor, key)
        if target is None:
            raise NotFound(f"The account {key} was not found")
        self._remember(target, changed=False)
        if not await self.is_in_subtree(actor, target):
            raise Forbidden("The account is outside your account tree")
        if creating and target.status == AccountStatus.CLOSED:
            raise InvalidInput("Account is closed")
        return target

    async def _named(self, actor: Account, name: str) -> Account | None:
        named = await self._store.accounts_named(name)
        if any(a.sid == actor.sid for a in named):
            return actor  # its own name, whatever a descendant calls itself
        mine = [a for a in named if await self.is_in_subtree(actor, a)]
        if len(mine) > 1:
            raise InvalidInput(f"{len(mine)} accounts are named {name!r}: use the AccountSid")
        # None of the actor's: the first other one, for the tree rule's 403 (as for a SID)
        return mine[0] if mine else (named[0] if named else None)

    async def resolve_self_resource(self, actor: Account, key: str) -> Account:
        """`/Accounts/{id}` itself: Administrator on self and descendants, others on self only."""
        target = await self._store.find_account(key)
        if target is None:
            raise NotFound(f"The account {key} was not found")
        if target.sid == actor.sid:
            return target
        if actor.role != ADMINISTRATOR or not await self.is_in_subtree(actor, target):
            raise Forbidden("The account is outside your account tree")
        return target

    async def scope_sids(self, account: Account, include_subaccounts: bool) -> tuple[str, ...]:
        if not include_subaccounts:
            return (account.sid,)
        return (account.sid, *(d.sid for d in await self.descendants(account)))

    # -- list / create / update ----------------------------------------------------------------

    async def list_children(self, actor: Account) -> list[Account]:
        require(actor, Action.READ, "Accounts")
        return await self._store.child_accounts(actor.sid)

    async def create(self, actor: Account, email: str | None, password: str | None,
                     friendly_name: str | None, status: str | None, role: str | None,
                     organization_sid: str | None) -> Account:
        require(actor, Action.CREATE, "Accounts")
        if len(await self.ancestors(actor)) >= MAX_TREE_DEPTH - 1:
            raise InvalidInput("This account is not allowed to have sub-accounts",
                               json_message=True)
        if not email:
            raise InvalidInput("Email address can not be null.")
        if password is None or password == "":
            raise InvalidInput("Password can not be null.")
        if len(email) > MAX_FIELD or not _EMAIL.fullmatch(email):
            raise InvalidInput(f"Provided email address {email} is not valid")
        local = email.split("@", 1)[0]
        if any(c in local for c in "?=@"):
            raise InvalidInput(f"Login {local} contains invalid character(s) ")
        if organization_sid and organization_sid != actor.organization_sid:
            if not is_super_admin(actor):
                raise Forbidden("Only a super administrator may choose the organization")
            raise InvalidInput(f"Organization {organization_sid} is unknown")
        if not passwords.is_strong(password):
            raise InvalidInput("Password too weak", json_message=True)
        new_status = _parse_status(status) if status else AccountStatus.ACTIVE
        email = email.lower()
        sid = account_sid_for(email)
        if email == RESERVED_ADMIN_EMAIL or await self._store.get_account(sid) is not None \
                or await self._store.find_account(email) is not None:
            raise Conflict(_EMAIL_TAKEN)
        if actor.status != AccountStatus.ACTIVE:
            raise Forbidden("Provided Account is not active")
        if friendly_name is not None and len(friendly_name) > MAX_FIELD:
            raise InvalidInput(f"FriendlyName is longer than {MAX_FIELD} characters")
        new_role = _parse_role(role) if (role and actor.role == ADMINISTRATOR) else actor.role
        now = self._clock()
        account = Account(sid=AccountSid(sid), parent_sid=actor.sid,
                          friendly_name=friendly_name or email, email_address=email, type="Full",
                          status=new_status, role=new_role, auth_token=md5_hex(password),
                          date_created=now, date_updated=now)
        try:
            await self._store.insert_account(account)
        except Duplicate as err:
            # Created by another request since the check above: the same answer.
            raise Conflict(_EMAIL_TAKEN) from err
        self._remember(account)
        if self.linked is not None:
            await self.linked.create_linked(account, local, password)
        logger.info("- account %s created under %s", account.sid, actor.sid)
        return account

    async def update(self, actor: Account, target: Account, changes: AccountChanges) -> Account:
        require(actor, Action.MODIFY, "Accounts")
        if target.status == AccountStatus.CLOSED:
            raise InvalidInput("Account is closed")
        new_status = _parse_status(changes.status) if changes.status is not None else None
        if changes.role is not None and actor.role != ADMINISTRATOR:
            raise Forbidden("Only Administrator allowed")
        if changes.password is not None and not passwords.is_strong(changes.password):
            raise InvalidInput("Password too weak")
        if changes.friendly_name is not None and not 0 < len(changes.friendly_name) <= MAX_FIELD:
            raise InvalidInput(f"FriendlyName must be 1 to {MAX_FIELD} characters")
        new_role = _parse_role(changes.role) if changes.role is not None else None
        if target.parent_sid is None:
            # No account above the top-level one can undo a change of its own: a suspended,
            # closed or demoted administrator would lock the whole appliance out of its API
            # (closing would also purge every Client and number of the tree).
            if new_status is not None and new_status != target.status:
                raise Forbidden("The top-level account's Status cannot be changed")
            if new_role is not None and new_role != target.role:
                raise Forbidden("The top-level account's Role cannot be changed")
        now = self._clock()
        updated = target
        if changes.friendly_name is not None:
            updated = dataclasses.replace(updated, friendly_name=changes.friendly_name)
        if new_role is not None:
            updated = dataclasses.replace(updated, role=new_role)
        if changes.password is not None:
            updated = dataclasses.replace(updated, auth_token=md5_hex(changes.password))
            if updated.status == AccountStatus.UNINITIALIZED:
                updated = dataclasses.replace(updated, status=AccountStatus.ACTIVE)
        updated = dataclasses.replace(updated, date_updated=now)
        await self._store.update_account(updated)
        self._remember(updated)
        if new_status is not None and new_status != updated.status:
            # Closed is final: a later change above it (suspend, then active) must not bring a
            # closed account, whose Clients and numbers are gone, back to life.
            subtree = [*(d for d in await self.descendants(updated)
                         if d.status != AccountStatus.CLOSED), updated]
            await self._store.set_status_recursive(
                [a.sid for a in subtree], str(new_status), storage(now),
                purge=new_status == AccountStatus.CLOSED)
            for account in subtree:
                self._remember(dataclasses.replace(account, status=new_status, date_updated=now))
            updated = self._cache[updated.sid]
            if not is_active(updated):
                logger.info("- account %s and %d below it %s", updated.sid, len(subtree) - 1,
                            new_status)
                for callback in self.on_cut_off:
                    callback([a.sid for a in subtree])
        if self.linked is not None and (changes.password is not None
                                        or changes.friendly_name is not None):
            await self.linked.sync_linked(updated, updated.email_address.split("@", 1)[0],
                                          changes.password)
        return updated


def _parse_status(text: str) -> AccountStatus:
    try:
        return AccountStatus(text.lower())
    except ValueError:
        raise InvalidInput(
            f"Status {text} is not one of active, closed, suspended, inactive, uninitialized"
        ) from None


def _parse_role(text: str) -> str:
    # Only these two grant anything (access.py): any other string, "administrator" say, made an
    # account that could do nothing, not even change its role back.
    for role in ROLES:
        if text.lower() == role.lower():
            return role
    raise InvalidInput(f"Role {text} is not one of {', '.join(ROLES)}")


def write_secret(path: Path, secret: str) -> None:
    """Write SECRET to PATH readable by the owner only (0600), replacing any old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
