"""Conferences [svc]: <Dial><Conference> rooms and the Conferences/Participants API.

Theory of operation. A conference is a name within an account. The first call that dials a
name opens it (a Conference row, sid CF…); every call that dials it while it lives is a
participant (a conference_participants row, and the call's CDR gets the ConferenceSid). The
room itself is a media worker's conference room (`MediaEngine.conference_join`, keyed by the
CF sid): members hear each other, a muted member is heard by nobody.

One participant, as its RCML's <Dial> runs it (`dial`, called by services.calls):

    arrive   -> the row; RUNNING_MODERATOR_PRESENT once someone with
                startConferenceOnEnter (the default) is there, else RUNNING_MODERATOR_ABSENT
    wait     -> until the conference has started: waitUrl's audio loops meanwhile
    join     -> into the worker's room (muted first when muted="true"); beep to the others
    stay     -> until the caller hangs up, the API removes it (DELETE), the conference ends
                (someone with endConferenceOnExit left), or the Dial's timeLimit
    leave    -> out of the room, the row disconnected; the last one out, or one with
                endConferenceOnExit, ends the conference: COMPLETED, everybody else leaves
    return   -> DialDone(completed, DialCallDuration = seconds in the room, ConferenceSid):
                the caller's RCML goes on with the Dial's action, or the next verb

Every member has a `wake` event: whatever changes its fate (the conference starting or
ending, a DELETE) sets it, and the member's own task does the media work, so each leg's
commands come from one task only.

With `[media] workers` > 1 the members of a room may sit on several workers: the engine
links the room's worker to a satellite room on each other worker with a leg pair
(`media.pool`), invisible here (no participant, no CDR). A link takes a call slot on both
workers; when none is free the join fails (the Dial fails, with a notification).
Recovery: conferences left running by a stop or a crash are closed at start (`start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from appliance.errors import Forbidden, NotFound
from appliance.media.engine import LegId, MediaEngine
from appliance.media.protocol import MediaError
from appliance.models import (
    API_VERSION,
    Account,
    AccountSid,
    Conference,
    ConferenceSid,
    ConferenceStatus,
    Page,
    Participant,
    is_sid_shaped,
    mint_sid,
)
from appliance.queries import Condition, ListQuery
from appliance.rcml.interpreter import DialAction, DialDone, DialStatus
from appliance.rcml.runner import Hungup, LegEvents, PlayRefused, Runner, beep
from appliance.rcml.verbs import Conference as ConferenceNoun
from appliance.services.access import Action, require
from appliance.services.list_filters import (
    check_page,
    checked,
    day_from,
    day_inequalities,
    sort_order,
)
from appliance.services.telephony import CallLog
from appliance.store.conferences import ConferenceStore
from appliance.timefmt import storage
from appliance.webhooks import WebhookError

logger = logging.getLogger(__name__)

COMMAND_S = 10.0  # one media command
KICK_WAIT_S = 5.0  # DELETE waits this long for the participant to be out
MAX_CONFERENCES = 100  # live conferences at once (the workers' slots bound it far lower)
# Notification codes. OURS: Twilio has no code for these.
CONFERENCE_FULL = 13240  # maxParticipants reached
CONFERENCE_FAILED = 13241  # the room could not be joined (no slot for a link, worker gone)
WAIT_AUDIO = 13242  # waitUrl is not audio, or could not be fetched

_SORTS = {"DateCreated": "date_created", "DateUpdated": "date_updated",
          "FriendlyName": "friendly_name", "Status": "status"}


@dataclasses.dataclass(eq=False)
class _Member:
    record: Participant
    leg: LegId
    events: LegEvents
    noun: ConferenceNoun
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    gone: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    joined: bool = False  # in the worker's room
    leaving: str | None = None  # why it must leave: "removed" | "ended"


@dataclasses.dataclass(eq=False)
class _Room:
    record: Conference
    members: dict[str, _Member] = dataclasses.field(default_factory=dict)
    ended: bool = False

    @property
    def started(self) -> bool:
        return self.record.status is ConferenceStatus.RUNNING_MODERATOR_PRESENT


@dataclasses.dataclass(frozen=True)
class ConferenceFilters:
    status: str | None = None
    friendly_name: str | None = None
    # Restcomm's DateCreated= / DateUpdated= (that day or later) and Twilio's >= and <= forms
    # of each (from the start / to the end of that day).
    date_created: str | None = None
    created_from: str | None = None
    created_until: str | None = None
    date_updated: str | None = None
    updated_from: str | None = None
    updated_until: str | None = None
    sort_by: str | None = None


class ConferencesService:
    def __init__(self, store: ConferenceStore, call_log: CallLog,
                 clock: Callable[[], datetime], *, engine: MediaEngine | None) -> None:
        self._store = store
        self._log = call_log
        self._clock = clock
        self._engine = engine
        self._rooms: dict[tuple[str, str], _Room] = {}  # (account sid, name) -> live room
        self._by_sid: dict[str, _Room] = {}

    async def start(self) -> None:
        closed = await self._store.close_all(storage(self._clock()))
        if closed:
            logger.info("- %d conferences left running at the last stop are closed", closed)

    def live_count(self) -> int:
        return len(self._by_sid)

    # -- <Dial><Conference> ------------------------------------------------------------------

    @staticmethod
    def wants(action: DialAction) -> bool:
        """Whether this Dial is a conference (the parser keeps a Conference the only noun)."""
        return any(isinstance(n, ConferenceNoun) for n in action.nouns)

    async def dial(self, runner: Runner, action: DialAction) -> DialDone:
        noun = next(n for n in action.nouns if isinstance(n, ConferenceNoun))
        call = runner.call
        engine = self._engine
        if engine is None:
            return DialDone(DialStatus.FAILED)
        room = await self._room(call.account_sid, noun.name)
        if room is None:
            await self._notify(runner, CONFERENCE_FULL, f"<Conference> {noun.name}: more than "
                               f"{MAX_CONFERENCES} conferences at once")
            return DialDone(DialStatus.FAILED)
        if len(room.members) >= noun.max_participants:
            await self._notify(runner, CONFERENCE_FULL, f"<Conference> {noun.name}: "
                               f"maxParticipants ({noun.max_participants}) reached")
            await self._maybe_end(room)
            return DialDone(DialStatus.FAILED)
        now = self._clock()
        member = _Member(Participant(
            call_sid=call.sid, conference_sid=room.record.sid,
            account_sid=AccountSid(call.account_sid), muted=noun.muted,
            start_conference_on_enter=noun.start_conference_on_enter,
            end_conference_on_exit=noun.end_conference_on_exit, connected=True,
            date_created=now, date_updated=now), call.leg, runner.events, noun)
        room.members[call.sid] = member
        loop = asyncio.get_running_loop()
        joined_at = 0.0
        logger.info("> call %s enters conference %s (%s)", call.sid, room.record.sid, noun.name)
        try:
            # The CDR's ConferenceSid first: once the participant is listed, Calls filtered by
            # ConferenceSid must list its call too (CDR writes may wait for a shared commit).
            await self._log.conference(call.sid, room.record.sid)
            await self._store.save_participant(member.record)
            if noun.start_conference_on_enter and not room.started:
                await self._set_status(room, ConferenceStatus.RUNNING_MODERATOR_PRESENT)
                for other in room.members.values():
                    other.wake.set()
            if not room.started:
                await self._wait_for_start(runner, room, member, float(action.time_limit))
            if member.leaving is None and not room.ended:
                async with asyncio.timeout(COMMAND_S):
                    await engine.conference_mute(member.leg, member.record.muted)
                    await engine.conference_join(member.leg, room.record.sid)
                member.joined = True
                joined_at = loop.time()
                if noun.beep:
                    await self._beep(runner, room, member)
                await self._stay(member, float(action.time_limit))
        except (MediaError, TimeoutError) as err:
            logger.info("x call %s: conference %s failed: %s", call.sid, room.record.sid, err)
            await self._notify(runner, CONFERENCE_FAILED,
                               f"<Conference> {noun.name}: the room could not be joined: {err}")
        finally:
            await self._leave(runner, room, member)
        if runner.events.ended:
            raise Hungup
        if not joined_at:
            return DialDone(DialStatus.FAILED, conference_sid=room.record.sid)
        return DialDone(DialStatus.COMPLETED, duration=int(loop.time() - joined_at),
                        conference_sid=room.record.sid)

    async def _room(self, account_sid: str, name: str) -> _Room | None:
        room = self._rooms.get((account_sid, name))
        if room is not None:
            return room
        if len(self._rooms) >= MAX_CONFERENCES:
            return None
        now = self._clock()
        room = _Room(Conference(
            sid=ConferenceSid(mint_sid("CF")), account_sid=AccountSid(account_sid),
            friendly_name=name, status=ConferenceStatus.RUNNING_MODERATOR_ABSENT,
            api_version=API_VERSION, date_created=now, date_updated=now))
        # Registered before the first await: a second caller of the same name finds it.
        self._rooms[(account_sid, name)] = room
        self._by_sid[room.record.sid] = room
        await self._store.insert(room.record)
        logger.info("- conference %s (%s) opened", room.record.sid, name)
        return room

    async def _set_status(self, room: _Room, status: ConferenceStatus) -> None:
        if room.record.status is status:
            return
        room.record = dataclasses.replace(room.record, status=status,
                                          date_updated=self._clock())
        await self._store.update(room.record)
        logger.info("- conference %s is %s", room.record.sid, status)

    async def _until(self, member: _Member, seconds: float) -> bool:
        """Drain the leg's events until WAKE is set (True) or SECONDS pass (False); Hungup
        when the leg ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not member.wake.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return False
            event = asyncio.ensure_future(member.events.next(left))
            woken = asyncio.ensure_future(member.wake.wait())
            try:
                done, _ = await asyncio.wait({event, woken},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                event.cancel()
                woken.cancel()
            if event in done:
                event.result()  # raises Hungup when the leg has ended
        return True

    async def _wait_for_start(self, runner: Runner, room: _Room, member: _Member,
                              limit: float) -> None:
        engine = self._engine
        assert engine is not None  # noqa: S101 - checked by dial()
        music = await self._wait_audio(runner, member.noun) if member.noun.wait_url else None
        if music is not None:
            async with asyncio.timeout(COMMAND_S):
                await engine.play(member.leg, str(music), loop=0)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit
            while not room.started and member.leaving is None and not room.ended:
                member.wake.clear()
                if not await self._until(member, deadline - loop.time()):
                    member.leaving = "time-limit"
        finally:
            if music is not None and not member.events.ended:
                with contextlib.suppress(MediaError, TimeoutError):
                    async with asyncio.timeout(COMMAND_S):
                        await engine.stop_play(member.leg)

    async def _stay(self, member: _Member, limit: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while member.leaving is None:
            member.wake.clear()
            if not await self._until(member, deadline - loop.time()):
                return

    async def _leave(self, runner: Runner, room: _Room, member: _Member) -> None:
        """Out of the room and the books; the conference ends with its last member, or
        with one that has endConferenceOnExit."""
        engine = self._engine
        if member.joined and engine is not None and not member.events.ended:
            with contextlib.suppress(MediaError, TimeoutError):
                async with asyncio.timeout(COMMAND_S):
                    await engine.conference_leave(member.leg)
        member.joined = False
        room.members.pop(member.record.call_sid, None)
        member.record = dataclasses.replace(member.record, connected=False,
                                            date_updated=self._clock())
        try:
            await self._store.save_participant(member.record)
            logger.info("< call %s leaves conference %s", member.record.call_sid,
                        room.record.sid)
            if member.noun.end_conference_on_exit and room.started:
                await self._end(room)
            else:
                await self._maybe_end(room)
            if member.noun.beep and room.members:
                await self._beep(runner, room, None)
        finally:
            member.gone.set()

    async def _maybe_end(self, room: _Room) -> None:
        if not room.members:
            await self._end(room)

    async def _end(self, room: _Room) -> None:
        if room.ended:
            return
        room.ended = True
        key = (room.record.account_sid, room.record.friendly_name)
        if self._rooms.get(key) is room:
            del self._rooms[key]
        self._by_sid.pop(room.record.sid, None)
        for other in room.members.values():
            other.leaving = other.leaving or "ended"
            other.wake.set()
        await self._set_status(room, ConferenceStatus.COMPLETED)

    async def _beep(self, runner: Runner, room: _Room, newcomer: _Member | None) -> None:
        """The beep to everyone in the room but the newcomer (entries and exits)."""
        engine = self._engine
        if engine is None:
            return
        path = str(beep(runner.out.cache_dir))
        for other in list(room.members.values()):
            if other is newcomer or not other.joined or other.events.ended:
                continue
            with contextlib.suppress(MediaError, TimeoutError):
                async with asyncio.timeout(COMMAND_S):
                    await engine.play(other.leg, path)

    async def _wait_audio(self, runner: Runner, noun: ConferenceNoun) -> Path | None:
        """waitUrl as a local WAV file, fetched once and cached by URL; None (and a
        notification) when it cannot be: only audio is played, an RCML document is not run."""
        url = noun.wait_url or ""
        try:
            return await runner.fetch_audio(url, noun.wait_method, audio_type=True)
        except WebhookError as err:
            await self._notify(runner, WAIT_AUDIO, f"<Conference> waitUrl: {err}", url=url)
        except PlayRefused as err:
            await self._notify(runner, WAIT_AUDIO, f"<Conference> waitUrl: only WAV audio is "
                               f"played ({err}); waiting in silence", url=url)
        return None

    async def _notify(self, runner: Runner, code: int, message: str, url: str = "") -> None:
        try:
            await runner.out.notify(runner.call.account_sid, code, message, warning=True,
                                    call_sid=runner.call.sid, request_url=url,
                                    request_method="")
        except Exception:  # noqa: BLE001 - a lost notification must not end the call
            logger.exception("x notification %s for call %s not written", code, runner.call.sid)

    # -- the API -----------------------------------------------------------------------------

    async def page(self, actor: Account, account: Account, filters: ConferenceFilters,
                   page: int, page_size: int) -> Page[Conference]:
        require(actor, Action.READ, "Conferences")
        conditions: list[Condition] = []
        if status := checked(filters.status, "Status"):
            conditions.append(Condition("status", "like", status))
        if name := checked(filters.friendly_name, "FriendlyName"):
            conditions.append(Condition("friendly_name", "like", name))
        conditions += (day_from("date_created", "DateCreated", filters.date_created)
                       + day_inequalities("date_created", "DateCreated", filters.created_from,
                                          filters.created_until)
                       + day_from("date_updated", "DateUpdated", filters.date_updated)
                       + day_inequalities("date_updated", "DateUpdated", filters.updated_from,
                                          filters.updated_until))
        query = ListQuery(account_sids=(account.sid,), conditions=tuple(conditions),
                          order=sort_order(filters.sort_by, _SORTS) or (("date_created", True),),
                          page=page, page_size=page_size)
        result = await self._store.page(query)
        check_page(result)
        return result

    async def get(self, actor: Account, account: Account, sid: str) -> Conference:
        require(actor, Action.READ, "Conferences")
        conf = await self._store.get(sid) if is_sid_shaped(sid, "CF") else None
        if conf is None:
            raise NotFound(f"The conference {sid} was not found")
        if conf.account_sid != account.sid:
            raise Forbidden("The conference belongs to another account")
        return conf

    async def page_participants(self, actor: Account, account: Account, sid: str, page: int,
                                page_size: int) -> Page[Participant]:
        conf = await self.get(actor, account, sid)
        result = await self._store.page_participants(account.sid, conf.sid, page, page_size)
        check_page(result)
        return result

    async def get_participant(self, actor: Account, account: Account, sid: str,
                              call_sid: str) -> Participant:
        conf = await self.get(actor, account, sid)
        found = await self._store.get_participant(conf.sid, call_sid)
        if found is None or not found.connected:
            raise NotFound(f"The call {call_sid} is not in conference {sid}")
        return found

    def _member(self, sid: str, call_sid: str) -> _Member:
        room = self._by_sid.get(sid)
        member = room.members.get(call_sid) if room is not None else None
        if member is None or member.leaving is not None:
            raise NotFound(f"The call {call_sid} is not in conference {sid}")
        return member

    async def set_muted(self, actor: Account, account: Account, sid: str, call_sid: str,
                        muted: bool) -> Participant:
        """Mute or unmute a participant: the others stop (or start again) hearing it."""
        require(actor, Action.MODIFY, "Calls")
        await self.get_participant(actor, account, sid, call_sid)
        return await self._mute(sid, self._member(sid, call_sid), muted)

    async def mute_call(self, call_sid: str, muted: bool) -> bool:
        """POST /Calls/{sid} Mute=…: mute the call in the conference it is in; False when it
        is in none (the caller has checked the call's account and permission)."""
        for room in self._by_sid.values():
            member = room.members.get(call_sid)
            if member is not None and member.leaving is None:
                await self._mute(room.record.sid, member, muted)
                return True
        return False

    async def _mute(self, sid: str, member: _Member, muted: bool) -> Participant:
        if member.joined and self._engine is not None:
            async with asyncio.timeout(COMMAND_S):
                await self._engine.conference_mute(member.leg, muted)
        # else: applied when it joins the room
        member.record = dataclasses.replace(member.record, muted=muted,
                                            date_updated=self._clock())
        await self._store.save_participant(member.record)
        logger.info("- call %s %s in conference %s", member.record.call_sid,
                    "muted" if muted else "unmuted", sid)
        return member.record

    async def remove(self, actor: Account, account: Account, sid: str, call_sid: str) -> None:
        """Take a participant out: its Dial ends and its RCML goes on (action or next verb)."""
        require(actor, Action.MODIFY, "Calls")
        await self.get_participant(actor, account, sid, call_sid)
        member = self._member(sid, call_sid)
        member.leaving = "removed"
        member.wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KICK_WAIT_S):
                await member.gone.wait()



