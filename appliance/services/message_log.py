"""The SMS rows of SIP MESSAGEs between Clients, kept current from relay to final answer.

A text MESSAGE the proxy relays is listed as soon as it is accepted: ``opened`` makes its row
`sending`, ``ended`` turns it `sent` or `failed` with the final status. ``opened`` is called
before the relay and does not wait for the database: the row joins a queue one writer task
drains, each batch in one transaction (an upsert per row, as CDRs, so a change still lands
when the batch holding its insert failed). A row still queued when its final comes is written
once, final. ``ended`` waits for its row's commit, never raises, and cannot lose the change if
its caller is cancelled meanwhile: the write belongs to the writer.

A MESSAGE still waiting for an answer when the appliance stops is `failed` 408 (``close_all``,
at a clean stop; ``close_leftovers`` at the next start after a crash or a power cut): the
sender's phone got no final either, and the callee's may have taken the text all the same,
which the error message says. Only rows without a modem queue entry are these: an SMS `sending`
through the modem is the messaging service's to recover.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime

from appliance.errors import StoreBusy
from appliance.models import API_VERSION, AccountSid, SmsRecord, SmsSid, SmsStatus, mint_sid
from appliance.services.ports import StoreProtocol

logger = logging.getLogger(__name__)

# What the sender's phone got too (no final: its own transaction timed out).
STOPPED_CODE = 408
STOPPED = ("The appliance stopped before the callee's phone answered; it may have received "
           "the message.")
LEFT_OVER = ("Outcome unknown: the appliance stopped (crash or power cut) before the callee's "
             "phone answered; it may have received the message.")


class MessageLog:
    """The SMS rows of SIP MESSAGEs; see the module docstring. ``sip.proxy_ports.MessageLog``."""

    def __init__(self, store: StoreProtocol, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock
        self._live: dict[str, SmsRecord] = {}  # rows `sending`, by sid
        self._queued: dict[str, SmsRecord] = {}  # the next batch, each row's latest record
        self._waiters: list[asyncio.Future[None]] = []  # done with the next batch
        self._writer: asyncio.Task[None] | None = None

    def opened(self, *, account_sid: str, from_: str, to: str, body: str,
               direction: str) -> str:
        """A MESSAGE accepted for relay: its row, `sending`, queued (not awaited). Its sid."""
        now = self._clock()
        record = SmsRecord(
            sid=SmsSid(mint_sid("SM")), account_sid=AccountSid(account_sid), from_=from_,
            to=to, body=body, status=str(SmsStatus.SENDING), direction=direction,
            error_code=None, error_message=None, price="0", price_unit="USD",
            api_version=API_VERSION, date_sent=None, date_created=now, date_updated=now)
        self._live[record.sid] = record
        self._queue(record)
        return record.sid

    async def ended(self, sid: str, *, sent: bool, error_code: int | None = None,
                    error_message: str | None = None) -> SmsRecord | None:
        """The final answer to the MESSAGE SID: `sent` (DateSent now) or `failed` with
        ERROR_CODE. Once only: None for a row not `sending` (ended already)."""
        record = self._live.pop(sid, None)
        if record is None:
            return None
        now = self._clock()
        final = dataclasses.replace(
            record, status=str(SmsStatus.SENT if sent else SmsStatus.FAILED),
            error_code=None if sent else error_code,
            error_message=None if sent else error_message,
            date_sent=now if sent else None, date_updated=now)
        await asyncio.shield(self._queue(final))
        return final

    async def record(self, *, account_sid: str, from_: str, to: str, body: str,
                     direction: str, error_code: int, error_message: str | None) -> None:
        """A MESSAGE refused before any relay: its row, `failed` at once."""
        sid = self.opened(account_sid=account_sid, from_=from_, to=to, body=body,
                          direction=direction)
        await self.ended(sid, sent=False, error_code=error_code, error_message=error_message)

    def live_count(self) -> int:
        return len(self._live)

    async def close_all(self) -> int:
        """At a clean stop, once nothing relays any more: every row still `sending` failed
        (see the module docstring). Returns how many, once every change is committed."""
        sids = list(self._live)
        await asyncio.gather(*(self.ended(sid, sent=False, error_code=STOPPED_CODE,
                                          error_message=STOPPED) for sid in sids))
        while self._writer is not None:
            await asyncio.wait([self._writer])
        return len(sids)

    async def close_leftovers(self) -> int:
        """At start, before any MESSAGE: fail the rows a crash left `sending`."""
        closed = await self._store.fail_sip_messages(
            str(SmsStatus.SENDING), STOPPED_CODE, LEFT_OVER, self._clock())
        if closed:
            logger.info("- %d SIP MESSAGEs left sending by the last run are failed", closed)
        return closed

    def _queue(self, record: SmsRecord) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        self._queued[record.sid] = record
        done: asyncio.Future[None] = loop.create_future()
        self._waiters.append(done)
        if self._writer is None:
            self._writer = loop.create_task(self._drain(), name="sms rows of SIP MESSAGEs")
        return done

    async def _drain(self) -> None:
        try:
            while self._queued:
                await asyncio.sleep(0)  # the changes of this turn of the loop join the batch
                batch, self._queued = self._queued, {}
                waiters, self._waiters = self._waiters, []
                try:
                    await self._store.write_sms(list(batch.values()))
                except Exception:  # noqa: BLE001 - then each alone: one bad row sinks none else
                    for record in batch.values():
                        try:
                            await self._store.write_sms([record])
                        except StoreBusy as err:  # its store logged it, once a minute
                            logger.debug("x SMS row %s of a SIP MESSAGE from %s not written: "
                                         "%s", record.sid, record.from_, err)
                        except Exception:  # noqa: BLE001 - logged; relaying goes on
                            logger.exception("x SMS row %s of a SIP MESSAGE from %s not "
                                             "written", record.sid, record.from_)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._writer = None
