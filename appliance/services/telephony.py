"""What the SIP front door needs from the rest of the appliance.

- `SipDirectory`: credentials and call policy of a Client by its login (the registrar's
  Directory), and the live registration table the API shows.
- `CallLog`: one CDR row per call, kept current through its states.

The front door (sip.registrar, sip.proxy) calls these; they call the store. The SMS rows
of SIP MESSAGEs between Clients are `services.message_log`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from appliance.errors import StoreBusy
from appliance.models import (
    API_VERSION,
    AccountSid,
    AccountStatus,
    CallRecord,
    CallSid,
    CallStatus,
    Client,
    PhoneNumber,
    mint_sid,
)
from appliance.services.ports import StoreProtocol
from appliance.sip.bindings import Binding
from appliance.sip.uri import hostport

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SipUser:
    """A Client as the registrar and proxy see it."""

    login: str
    client_sid: str
    account_sid: str
    realm: str  # the realm its HA1 was computed with: challenge with this one
    ha1_md5: str
    ha1_sha256: str
    enabled: bool  # Client Status=1 and its account active; False -> 403, never re-challenge
    voice_url: str | None
    voice_application_sid: str | None


def _sip_user(client: Client, account_active: bool) -> SipUser:
    return SipUser(
        login=client.login, client_sid=client.sid, account_sid=client.account_sid,
        realm=client.realm, ha1_md5=client.ha1_md5, ha1_sha256=client.ha1_sha256,
        enabled=client.status == 1 and account_active, voice_url=client.voice_url,
        voice_application_sid=client.voice_application_sid)


async def _outcome(task: asyncio.Task[Any]) -> None:
    """Wait for TASK, a read shared by several lookups, and raise its error if it failed.
    Cancelling the waiter does not cancel TASK, and TASK cancelled (the loop shutting down)
    is not the waiter's cancellation: the waiter looks again."""
    if not task.done():
        await asyncio.wait([task])
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


@dataclasses.dataclass(frozen=True)
class Registration:
    """One live contact of a Client, as the API shows it."""

    login: str
    contact: str
    transport: str
    source: str  # "ip:port" the REGISTER came from
    expires_at: datetime
    user_agent: str = ""

    @classmethod
    def of(cls, login: str, binding: Binding) -> Registration:
        """How the API shows LOGIN's BINDING."""
        return cls(login=login, contact=binding.uri, transport=binding.transport,
                   source=hostport(binding.source),
                   expires_at=datetime.fromtimestamp(binding.expires_at, UTC),
                   user_agent=binding.user_agent)


# Loads and reads a lookup of a login waits for before it reads that login's Client alone: a
# load dropped by an account change, or a read superseded by a later change, is waited for
# again; when changes go on meanwhile (a script), the lookup does not wait for ever.
WAITS_PER_LOOKUP = 4


class SipDirectory:
    """Client credentials by login and IncomingPhoneNumbers by number, cached.

    Every Client is read at once (two queries) on the first lookup, so that any login, known
    or not, is then answered from memory: a scanner guessing extensions (svwar, sip.md §3)
    cannot tell a real one by its answer taking a store query on one path only (an unknown
    login used to cost a query every time, a registered phone's none).

    After that, a change to one Client (``clients_changed``, with its login: the old and the
    new one for a rename) reads that Client's row again, at once and in a task of its own,
    and nothing else: a script creating N Clients while phones are registered costs N reads,
    not N full reloads (O(N²) rows), and the other Clients stay cached for the SIP quick
    path. While its row is read, that login alone is not answered from memory
    (``cached_user``), and a lookup of it waits for the read. An account change
    (``invalidate``) still reads everything again: its status decides whether each of its
    Clients may register."""

    def __init__(self, store: StoreProtocol) -> None:
        self._store = store
        self._users: dict[str, SipUser] | None = None  # every Client, by login
        self._loading: asyncio.Task[dict[str, SipUser]] | None = None
        # Logins changed while the load under way was reading: read again, one by one, once
        # the load is kept (its rows for them may predate the change).
        self._changed_while_loading: set[str] = set()
        # Logins whose Client is being read again after a change, and that read.
        self._rereading: dict[str, asyncio.Task[SipUser | None]] = {}
        self._tasks: set[asyncio.Task[SipUser | None]] = set()  # their owner
        self._numbers: dict[str, PhoneNumber | None] = {}
        # Bumped when every Client is dropped: an answer read before then is not cached.
        self._generation = 0
        self._numbers_generation = 0
        # Per login, the bindings the registrar reported last (``set_bindings``), made
        # Registrations only when they are read (the API, /health): a phone refreshing its
        # binding every minute costs no Registration each time. Bindings are not changed
        # once made (a refresh makes new ones), so these stay as they were reported.
        self._bindings: dict[str, tuple[Binding, ...]] = {}
        # Called with the login when a Client gains a registration (SMS waiting for it).
        self.on_registered: list[Callable[[str], None]] = []

    def invalidate(self) -> None:
        """An account changed: read every Client again (and the numbers)."""
        self._drop_users()
        self.invalidate_numbers()

    def _drop_users(self) -> None:
        self._users = None
        self._loading = None
        self._changed_while_loading = set()
        self._rereading = {}  # reads under way finish, but are not kept
        self._generation += 1

    def clients_changed(self, logins: Collection[str]) -> None:
        """The Clients with these LOGINS were created, updated or deleted (a renamed Client
        gives its old and new login): read only their rows again."""
        users = self._users
        if users is None:
            if self._loading is not None:
                self._changed_while_loading.update(logins)
            return  # nothing cached: the next lookup reads every Client anyway
        for login in logins:
            users.pop(login, None)
            self._reread(login)

    def invalidate_numbers(self) -> None:
        """An IncomingPhoneNumber changed: only the numbers are read again."""
        # A new dict, not clear(): a dict never shrinks, and this one can hold 10,000 entries.
        self._numbers = {}
        self._numbers_generation += 1

    def cached_user(self, login: str) -> tuple[bool, SipUser | None]:
        """(True, the user) when the Clients are loaded and LOGIN's is not being read again,
        else (False, None): the SIP quick path answers only from memory."""
        users = self._users
        if users is None or login in self._rereading:
            return False, None
        return True, users.get(login)

    async def user(self, login: str) -> SipUser | None:
        """LOGIN's Client, from memory once every Client is loaded and LOGIN is not being
        read again. Otherwise the lookup waits for that load or read, then looks again: what
        it waited for may have been dropped meanwhile (an account change during a load, a
        later change of LOGIN during its read), and the Client it read may be gone since.
        After WAITS_PER_LOOKUP waits, it reads LOGIN's Client alone from the store."""
        for _ in range(WAITS_PER_LOOKUP):
            users = self._users
            if users is None:
                await self._load()
                continue
            rereading = self._rereading.get(login)
            if rereading is None:
                return users.get(login)
            await _outcome(rereading)
        # Changes kept dropping what this lookup waited for: ask the store, as of now.
        return await self._read_client(login)

    async def _load(self) -> None:
        """Every Client, read once for all concurrent lookups (in a task of its own, so a
        lookup cancelled meanwhile does not cancel the others')."""
        if self._loading is None:
            self._changed_while_loading = set()
            self._loading = asyncio.get_running_loop().create_task(
                self._read(self._generation))
        await _outcome(self._loading)

    async def _read(self, generation: int) -> dict[str, SipUser]:
        try:
            users = await self._read_users()
        finally:
            if generation == self._generation:
                self._loading = None  # done (or failed: the next lookup reads again)
        if generation == self._generation:  # else an account changed meanwhile: not kept
            self._users = users
            changed, self._changed_while_loading = self._changed_while_loading, set()
            for login in changed:
                users.pop(login, None)
                self._reread(login)
        return users

    async def _read_users(self) -> dict[str, SipUser]:
        active = {a.sid for a in await self._store.all_accounts()
                  if a.status == AccountStatus.ACTIVE}
        return {client.login: _sip_user(client, client.account_sid in active)
                for client in await self._store.all_clients()}

    def _reread(self, login: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._read_one(login, self._generation), name=f"sip directory: {login}")
        self._rereading[login] = task  # a read of LOGIN still under way is superseded
        self._tasks.add(task)
        task.add_done_callback(self._reread_done)

    async def _read_one(self, login: str, generation: int) -> SipUser | None:
        """LOGIN's Client as stored now (None: none has it), kept in the cache unless a
        later change superseded this read."""
        try:
            user = await self._read_client(login)
        except BaseException as err:  # cancelled too (the loop shutting down)
            if self._rereading.get(login) is asyncio.current_task():
                # Its entry is gone from the cache: read everything again on the next
                # lookup, which must not wait for this read any more.
                logger.warning("x reading client %s %s; every client is read again", login,
                               "cancelled" if isinstance(err, asyncio.CancelledError)
                               else "failed")
                self._drop_users()
            raise
        users = self._users
        if (generation == self._generation and users is not None
                and self._rereading.get(login) is asyncio.current_task()):
            del self._rereading[login]
            if user is not None:
                users[login] = user
        return user

    async def _read_client(self, login: str) -> SipUser | None:
        client = await self._store.get_client_by_login(login)
        if client is None:
            return None
        account = await self._store.get_account(client.account_sid)
        return _sip_user(client, account is not None and account.status == AccountStatus.ACTIVE)

    def _reread_done(self, task: asyncio.Task[SipUser | None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # raised to whoever awaited it; logged by _read_one

    async def number(self, phone_number: str) -> PhoneNumber | None:
        """The IncomingPhoneNumber PHONE_NUMBER (as stored), or None; cached like `user`."""
        if phone_number in self._numbers:
            return self._numbers[phone_number]
        generation = self._numbers_generation
        number = await self._store.find_number(phone_number)
        if generation != self._numbers_generation:
            return number
        if len(self._numbers) > 10_000:  # unknown numbers (any dialled user) are cached too
            self._numbers = {}
        self._numbers[phone_number] = number
        return number

    # The registrar reports every change of a login's contacts here (a refresh too).
    def set_bindings(self, login: str, bindings: Sequence[Binding]) -> None:
        """LOGIN's live bindings are now BINDINGS (none: it has no registration left)."""
        if bindings:
            self._bindings[login] = tuple(bindings)
            # Every time, not only for the login's first phone: a phone that comes back (a
            # reboot, a new address, a refresh) is what messages waiting for it wait for.
            for callback in self.on_registered:
                callback(login)
        else:
            self._bindings.pop(login, None)

    def registrations(self, logins: set[str] | None = None) -> list[Registration]:
        result = [Registration.of(login, b) for login, bindings in self._bindings.items()
                  if logins is None or login in logins for b in bindings]
        return sorted(result, key=lambda r: (r.login, r.contact))

    def registered_count(self) -> int:
        """Registered phones: live contacts over all Clients (/health, the status line). A
        Client with a desk phone and a softphone counts two."""
        return sum(len(bindings) for bindings in self._bindings.values())


# CDR group commit (CallLog): a batch that follows the previous commit by less than BUSY_GAP
# waits COMMIT_WINDOW for more changes. Signalling never waits for a CDR (the proxy sends
# first and records after); only the recording task and callers awaiting it do.
BUSY_GAP = 0.005
COMMIT_WINDOW = 0.02
# How often the CDR of each answered call is brought up to date while it lasts (its Duration
# so far and DateUpdated). After a crash or a power cut the next start closes it at its last
# checkpoint: the downtime is never counted as talk time, and at most this much of the talk
# is lost. A minute costs one commit a minute however many calls are live (one transaction
# for all), and nothing while no call is answered: an idle appliance does not write to its
# SD card.
CHECKPOINT_INTERVAL = 60.0
# The rows of failed batches kept for the next one: while the SD card or the database fails
# for long, calls keep changing rows; beyond this many the oldest changes are dropped (and
# logged) rather than growing without bound. Several hours of a busy office's calls.
MAX_FAILED_ROWS = 10_000


def _loop_time() -> float:
    """The running event loop's monotonic time: the default timer clock."""
    return asyncio.get_running_loop().time()


def _transient(error: Exception) -> bool:
    """Whether ERROR is the store's, not a row's: the same rows may be written later (a
    locked database, an I/O error; the store raises StoreBusy for those of SQLite)."""
    return isinstance(error, StoreBusy | OSError)


def _newest(rows: dict[str, tuple[CallRecord, bool]], limit: int,
            ) -> dict[str, tuple[CallRecord, bool]]:
    """The last LIMIT of ROWS (in queue order, the oldest first)."""
    if len(rows) <= limit:
        return rows
    return dict(list(rows.items())[-limit:])


class CallLog:
    """CDRs: a row when a call starts, updated on ringing, answer and end, and every
    CHECKPOINT_INTERVAL while it is answered (`run`, `checkpoint`).

    Writes are **group-committed**: each change is queued (a row's later change replaces its
    earlier one still waiting, and a row not yet inserted is inserted with its latest state),
    and one writer task commits everything queued in one store call, one transaction, while
    the next changes queue up behind it. Every method still returns only once its change is
    committed. At a low rate a change is committed at once, as with one write per change;
    under load (commits back to back) a batch gathers COMMIT_WINDOW of changes, so the ~4
    changes of each call cost at most 1/COMMIT_WINDOW commits a second in all.

    A batch that fails for the store's sake (a locked database, an I/O error: `_transient`)
    raises to the methods waiting for it, and its rows are kept: they are written again
    with the next batch, at the next checkpoint and by `close_all`, unless a later change
    of the same row supersedes them (an INSERT still owed is kept with it). So the final
    state of a call whose last commit failed is not lost, nor the row of a call whose first
    commit did. A batch that fails otherwise may hold a row the store will never take:
    kept, it would fail every later batch with it. Its rows are written again at once, one
    by one; a row that fails alone is dropped, logged with its sid (or kept, if that failure
    is the store's), and only its waiters get the error.
    """

    def __init__(self, store: StoreProtocol, clock: Callable[[], datetime],
                 timer_clock: Callable[[], float] | None = None) -> None:
        """CLOCK is the wall clock: StartTime, EndTime and DateUpdated, as the API shows
        them. TIMER_CLOCK is monotonic seconds (default: the running event loop's):
        Duration and RingDuration are measured on it, so that NTP stepping the wall clock
        of this RTC-less box during a call (by hours, either way) does not count in them."""
        self._store = store
        self._clock = clock
        self._timer_clock = timer_clock or _loop_time
        self.instance_id = "ID" + uuid.uuid4().hex
        self._live: dict[str, CallRecord] = {}
        # timer-clock times of the first 18x and of the answer, by sid
        self._rang_at: dict[str, float] = {}
        self._answered_at: dict[str, float] = {}
        # sid -> (latest record, whether its row still has to be inserted), in queue order
        self._queued: dict[str, tuple[CallRecord, bool]] = {}
        # the rows of the last batch that failed, written again with the next one
        self._failed: dict[str, tuple[CallRecord, bool]] = {}
        # (the sid whose change it waits for, or None for the rows kept), future
        self._waiters: list[tuple[str | None, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._last_commit = float("-inf")  # loop time the last batch was committed

    async def _write(self, record: CallRecord, *, insert: bool) -> None:
        """Queue RECORD's row and wait until the batch holding it is committed."""
        await self._queue(record, insert=insert)

    def _queue(self, record: CallRecord, *, insert: bool) -> asyncio.Future[None]:
        """Queue RECORD's row; the future is done when the batch holding it is committed."""
        queued = self._queued.get(record.sid)
        self._queued[record.sid] = (record, insert or (queued is not None and queued[1]))
        return self._waiter(record.sid)

    def _queue_failed(self) -> bool:
        """Queue again the rows of the last failed batch, in front of those queued since
        (they are older: if the store fails again, MAX_FAILED_ROWS drops them first);
        whether there were any. A row changed since keeps its later record, in its later
        place (and the INSERT either owed)."""
        failed, self._failed = self._failed, {}
        if failed:
            queued = {sid: row for sid, row in failed.items() if sid not in self._queued}
            for sid, (record, insert) in self._queued.items():
                kept = failed.get(sid)
                queued[sid] = (record, insert or (kept is not None and kept[1]))
            self._queued = queued
        return bool(failed)

    def _waiter(self, sid: str | None = None) -> asyncio.Future[None]:
        """A future done when the next batch is committed: with SID, when its change is."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiters.append((sid, done))
        if self._writer is None:
            self._writer = loop.create_task(self._drain())
        return done

    async def _drain(self) -> None:
        try:
            while self._queued:
                # Changes made in this turn of the loop join the batch. When commits follow
                # each other closely (a few hundred calls/s), the batch also waits for the
                # changes of the next COMMIT_WINDOW: commits per second are then bounded
                # whatever the call rate. At a lower rate nothing waits, so a row is as
                # current as with one write per change.
                loop = asyncio.get_running_loop()
                busy = loop.time() - self._last_commit < BUSY_GAP
                await asyncio.sleep(COMMIT_WINDOW if busy else 0)
                self._queue_failed()
                batch, self._queued = self._queued, {}
                waiters, self._waiters = self._waiters, []
                inserts = [r for r, insert in batch.values() if insert]
                updates = [r for r, insert in batch.values() if not insert]
                error: Exception | None = None  # every waiter's
                errors: dict[str, Exception] = {}  # by sid, when the rows went one by one
                try:
                    await self._commit(inserts, updates)
                except Exception as exc:  # noqa: BLE001 - handed to the waiters
                    if _transient(exc):
                        error = exc
                        self._keep(batch)
                        logger.warning("x CDR commit of %d rows failed, written again with "
                                       "the next one: %s", len(batch), exc)
                    else:
                        logger.warning("x CDR commit of %d rows failed, each written "
                                       "alone: %r", len(batch), exc)
                        errors = await self._commit_alone(batch)
                self._last_commit = asyncio.get_running_loop().time()
                kept = next((e for e in errors.values() if _transient(e)), None)
                for sid, waiter in waiters:
                    if not waiter.done():
                        failed = error or (errors.get(sid) if sid is not None else kept)
                        if failed is None:
                            waiter.set_result(None)
                        else:
                            waiter.set_exception(failed)
        finally:
            self._writer = None

    def _keep(self, rows: dict[str, tuple[CallRecord, bool]]) -> None:
        """Keep ROWS, which failed for the store's sake, for the next batch: at most
        MAX_FAILED_ROWS, the newest (those kept before were queued in front of them)."""
        self._failed = _newest(rows, MAX_FAILED_ROWS)
        if len(self._failed) < len(rows):
            logger.error("x %d CDR rows dropped: the store has failed for too long",
                         len(rows) - len(self._failed))

    async def _commit_alone(self, batch: dict[str, tuple[CallRecord, bool]]
                            ) -> dict[str, Exception]:
        """Write each row of BATCH, which failed not for the store's sake, alone, once; the
        errors of those that fail, by sid. A row failing for the store's sake is kept for
        the next batch, any other is dropped: the store refuses that row."""
        errors: dict[str, Exception] = {}
        kept: dict[str, tuple[CallRecord, bool]] = {}
        busy: Exception | None = None
        for sid, (record, insert) in batch.items():
            if busy is not None:
                # The store is busy: the rest waits for the next batch untried, rather than
                # each row waiting out the lock in turn while calls wait for the writer.
                errors[sid] = busy
                kept[sid] = (record, insert)
                continue
            try:
                await self._commit([record] if insert else [], [] if insert else [record])
            except Exception as exc:  # noqa: BLE001 - handed to the row's waiters
                errors[sid] = exc
                if _transient(exc):
                    kept[sid] = (record, insert)
                    busy = exc
                else:
                    logger.error("x CDR row of call %s dropped: the store refuses it: %r",
                                 sid, exc)
        if kept:
            self._keep(kept)
            logger.warning("x %d CDR rows failed alone, written again with the next batch",
                           len(kept))
        return errors

    async def _commit(self, inserts: list[CallRecord], updates: list[CallRecord]) -> None:
        write_calls = getattr(self._store, "write_calls", None)
        if write_calls is not None:
            await write_calls(inserts, updates)
            return
        for record in inserts:  # a store without batches (test fakes)
            await self._store.insert_call(record)
        for record in updates:
            await self._store.update_call(record)

    def new_sid(self) -> CallSid:
        return CallSid(f"{self.instance_id}-{mint_sid('CA')}")

    async def opened(self, *, account_sid: str, from_: str, to: str, direction: str,
                     sid: CallSid | None = None, parent_call_sid: str | None = None,
                     phone_number_sid: str | None = None, caller_name: str | None = None,
                     forwarded_from: str | None = None) -> CallRecord:
        now = self._clock()
        record = CallRecord(
            sid=sid or self.new_sid(), instance_id=self.instance_id,
            account_sid=AccountSid(account_sid), parent_call_sid=parent_call_sid, to=to,
            from_=from_, phone_number_sid=phone_number_sid, status=str(CallStatus.QUEUED),
            start_time=now, end_time=None, duration=0, price=None, price_unit="USD",
            direction=direction, answered_by=None, api_version=API_VERSION,
            forwarded_from=forwarded_from, caller_name=caller_name, conference_sid=None,
            ring_duration=None, date_created=now, date_updated=now)
        self._live[record.sid] = record
        await self._write(record, insert=True)
        return record

    async def _set(self, sid: str, **changes: object) -> CallRecord | None:
        record = self._update(sid, **changes)
        if record is not None:
            await self._write(record, insert=False)
        return record

    def _update(self, sid: str, **changes: object) -> CallRecord | None:
        """The live call SID with CHANGES and DateUpdated now, kept as its latest state. An
        answered call's row always carries its Duration as of that DateUpdated: the last row
        written is what `close_leftovers` closes after a crash."""
        record = self._live.get(sid)
        if record is None:
            return None
        answered = self._answered_at.get(sid)
        if answered is not None and "duration" not in changes:
            changes["duration"] = _seconds(self._timer_clock() - answered)
        record = dataclasses.replace(record, **changes, date_updated=self._clock())  # type: ignore[arg-type]
        self._live[sid] = record
        return record

    async def ringing(self, sid: str) -> None:
        record = self._live.get(sid)
        if record is None or record.status != CallStatus.QUEUED:
            return
        self._rang_at[sid] = self._timer_clock()
        await self._set(sid, status=str(CallStatus.RINGING))

    async def answered(self, sid: str) -> None:
        record = self._live.get(sid)
        if record is None or record.status not in (CallStatus.QUEUED, CallStatus.RINGING):
            return
        now = self._timer_clock()
        self._answered_at[sid] = now
        rang = self._rang_at.get(sid)
        ring = _seconds(now - rang) if rang is not None else 0
        await self._set(sid, status=str(CallStatus.IN_PROGRESS), ring_duration=ring)

    async def conference(self, sid: str, conference_sid: str) -> None:
        """The live call joined the conference CONFERENCE_SID (its CDR's ConferenceSid)."""
        if sid in self._live:
            await self._set(sid, conference_sid=conference_sid)

    async def ended(self, sid: str, status: CallStatus) -> CallRecord | None:
        """Close the call with STATUS; an answered call always ends `completed`.

        The call is over as soon as this is called, whatever becomes of its commit: its
        final record is built and the call dropped from the live ones before the wait, so
        a caller cancelled meanwhile (a BYE's handler when the transport stops) or a commit
        that fails cannot leave it live, for `close_all` to end it again as `failed`.

        A failed commit is logged, not raised: the final record is returned all the same,
        and the row written again later (see the class). Callers end calls in `finally`
        and then post the `completed` status callback, which a locked database must not
        skip. A cancelled wait still raises CancelledError."""
        record = self._live.get(sid)
        if record is None or record.end_time is not None:  # not live, or already final
            return None
        now = self._clock()
        elapsed = self._timer_clock()
        answered = self._answered_at.pop(sid, None)
        rang = self._rang_at.pop(sid, None)
        if answered is not None:
            status = CallStatus.COMPLETED
            duration = _seconds(elapsed - answered)
            ring = record.ring_duration
        else:
            duration = 0
            ring = _seconds(elapsed - rang) if rang is not None else record.ring_duration
        final = self._update(sid, status=str(status), end_time=now, duration=duration,
                             ring_duration=ring)
        del self._live[sid]
        if final is not None:  # always: the call was live
            try:
                await self._write(final, insert=False)
            except Exception as exc:  # noqa: BLE001 - logged; the caller goes on
                if _transient(exc):
                    logger.warning("x end of call %s not committed yet, written again "
                                   "later: %r", sid, exc)
                else:
                    logger.error("x end of call %s not written: %r", sid, exc)
        return final

    def live_count(self) -> int:
        return len(self._live)

    async def checkpoint(self) -> int:
        """Bring the CDR of every answered call up to date (its Duration so far, DateUpdated
        now), all in one commit with the rows of a batch that failed since the last one;
        returns how many calls. Nothing is written when no call is answered and no batch
        failed."""
        # Queued at once, with no await in between: one batch, and no `ended` can slip in
        # between reading a call and queueing it (it pops `_answered_at` first).
        pending = [self._queue(record, insert=False)
                   for record in (self._update(sid) for sid in list(self._answered_at))
                   if record is not None]
        count = len(pending)
        if self._queue_failed():
            pending.append(self._waiter())
        if pending:
            await asyncio.gather(*pending)
        return count

    async def run(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Checkpoint the answered calls every INTERVAL seconds until cancelled (the
        composition root owns this task, as the proxy's timer task)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.checkpoint()
            except Exception:  # noqa: BLE001 - a failed commit is retried at the next one
                logger.exception("x CDR checkpoint failed")

    # A call open when the appliance stops is closed then, or at the next start after a
    # crash or a power cut: no CDR stays queued/ringing/in-progress for ever in the Calls
    # list. The phones of a Client → Client call may well go on talking (their media does
    # not pass through us), but the BYE that would have ended the CDR finds no call to close
    # any more.

    async def close_all(self) -> int:
        """At a clean stop: close every call still open, as `ended` does: an answered call
        `completed` with its duration so far, any other `failed`; returns how many. Returns
        once every change queued is committed (the store may close then): those of calls
        ended just before, whose callers were cancelled, and the rows of a failed batch."""
        sids = list(self._live)
        # Together, so that the group commit writes them in one transaction.
        pending: list[Awaitable[object]] = [self.ended(sid, CallStatus.FAILED) for sid in sids]
        if self._queue_failed():
            pending.append(self._waiter())
        try:
            await asyncio.gather(*pending)
        finally:
            while self._writer is not None:  # a batch still under way, or queued behind
                await asyncio.wait([self._writer])
        return len(sids)

    async def close_leftovers(self) -> int:
        """At start, before any call: close the CDRs a crash left open, each ending at its
        last update (the moment of the crash is not known; the downtime, minutes or days,
        was no call). In progress: `completed` with the Duration its row holds, counted up
        to that update (its last checkpoint, or its answer); not answered yet: `failed`,
        Duration 0. Returns how many."""
        now = self._clock()
        closed = []
        for record in await self._store.open_calls():  # closed rows without an end: left
            if record.status == CallStatus.IN_PROGRESS:
                status, duration = CallStatus.COMPLETED, record.duration
            else:
                status, duration = CallStatus.FAILED, 0
            closed.append(dataclasses.replace(record, status=str(status),
                                              end_time=record.date_updated,
                                              duration=duration, date_updated=now))
        if closed:
            await self._commit([], closed)
            logger.info("- %d calls left open by the last run are closed", len(closed))
        return len(closed)


def _seconds(interval: float) -> int:
    """Whole seconds of a timer-clock INTERVAL, as CDRs count them (truncated)."""
    return max(0, int(interval))
