"""The durable SMS pipeline's tables: one transaction per step, so a power cut loses nothing.

Outbound: `enqueue` writes the SMS row and its queue entry together; each part is marked
`submitting` *before* it goes to the modem and `sent` after, so a restart knows exactly which
parts are in doubt (handed to the modem, no answer recorded) and never sends those twice.
Inbound: the raw PDU, keyed on (storage index, PDU hash), is committed together with what it
produced (an SMS row, or a fragment awaiting its siblings), so re-reading it after a crash
that came before the modem-side delete is recognised and creates nothing twice. A reply to a
received message (or its forward to a Client) is queued in the transaction that marks the
message's inbound job `handed`, so no crash can leave the reply queued and the app due to run
again.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Collection
from typing import Any

from appliance import models
from appliance.store import rows
from appliance.store.db import Store


@dataclasses.dataclass(frozen=True)
class OutboxItem:
    sid: str
    account_sid: str
    from_: str
    destination: str
    body: str
    ucs2: bool
    status_report: bool
    concat_ref: int
    x_headers: dict[str, str]
    parts_total: int
    parts_done: int
    attempts: int  # failed tries of the message (not parts handed over): back-off and limit
    accepted_at: str


@dataclasses.dataclass(frozen=True)
class Fragment:
    sender: str
    reference: int
    total: int
    seq: int
    text: str


@dataclasses.dataclass(frozen=True)
class InboundResult:
    """What storing one received PDU produced."""

    duplicate: bool = False  # this PDU at this index was already stored
    message: models.SmsRecord | None = None  # a complete message (single, or the last part)


@dataclasses.dataclass(frozen=True)
class InboundJob:
    """A received message still to be handed to its app."""

    sid: str
    attempts: int  # failed tries so far
    handed: bool  # its app's reply (or forward) is queued: only finish it, never run it again
    # (sender, receiving number): its messages are handed to their app one at a time, in order
    conversation: tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Callback:
    url: str
    method: str


@dataclasses.dataclass(frozen=True)
class StatusChange:
    """A message's row as a status change just wrote it, read in the same transaction, and
    its StatusCallback: the callback's parameters are the status written, not whatever a
    later read finds (a status report may have come in between)."""

    record: models.SmsRecord
    callback: Callback | None


def _status_change(conn: sqlite3.Connection, sid: str) -> StatusChange:
    cur = conn.execute("SELECT * FROM sms_messages WHERE sid = ?", (sid,))
    cur.row_factory = sqlite3.Row  # type: ignore[assignment]
    row = cur.fetchone()
    callback = (Callback(row["status_callback"], row["status_callback_method"] or "POST")
                if row["status_callback"] else None)
    return StatusChange(rows.sms(row), callback)


# Outbox row O is its destination's turn: no message to the same destination accepted before
# it (ties by rowid) is still queued. One probe of ``sms_outbox_turn`` (m010).
_FIRST = ("NOT EXISTS (SELECT 1 FROM sms_outbox AS p WHERE p.destination = o.destination "
          "AND p.state = 'queued' AND (p.accepted_at < o.accepted_at "
          "OR (p.accepted_at = o.accepted_at AND p.rowid < o.rowid)))")


class SmsStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store._conn()  # noqa: SLF001 - same package: runs on the store thread

    def _atomic(self) -> Any:
        return self._store._database().atomic()  # noqa: SLF001

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await self._store._run(fn, *args)  # noqa: SLF001

    # -- outbound ----------------------------------------------------------------------------

    async def enqueue(self, record: models.SmsRecord, *, body: str, ucs2: bool,
                      status_report: bool, concat_ref: int, x_headers: dict[str, str],
                      callback: Callback | None, now: str, handing: str | None = None) -> None:
        """Queue RECORD. HANDING: the received message whose app this answers; its inbound
        job is marked handed in the same transaction, so no retry or restart runs the app again."""
        def run() -> None:
            values = rows.sms_values(record)
            values["x_headers"] = json.dumps(x_headers) if x_headers else None
            if callback is not None:
                values["status_callback"] = callback.url
                values["status_callback_method"] = callback.method
            conn = self._conn()
            with self._atomic():
                columns = ", ".join(f'"{c}"' for c in values)
                marks = ", ".join("?" for _ in values)
                conn.execute(f"INSERT INTO sms_messages ({columns}) VALUES ({marks})",
                             tuple(values.values()))
                conn.execute(
                    "INSERT INTO sms_outbox (sid, destination, body, ucs2, status_report, "
                    "concat_ref, x_headers, state, next_attempt_at, accepted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (record.sid, record.to, body, int(ucs2), int(status_report), concat_ref,
                     json.dumps(x_headers), now, now))
                if handing is not None:
                    conn.execute("UPDATE sms_inbound_jobs SET handed = 1 WHERE sid = ?",
                                 (handing,))
        await self._run(run)

    async def due(self, now: str, limit: int = 20) -> list[OutboxItem]:
        """The modem's due messages (not those to Clients), the earliest accepted first, at
        most one per number: the earliest accepted one queued for it, when it is due. A later
        message to a number waits behind one put back for a retry (a network error, the
        modem not ready), so a number gets its messages in the order accepted."""
        items: list[OutboxItem] = await self._run(self._firsts_due, now, limit, False)
        return items

    async def due_for_clients(self, now: str, limit: int,
                              skip: Collection[str] = ()) -> list[OutboxItem]:
        """The earliest accepted message of each Client (`client:<login>` destination) when
        it is due, the earliest first, for at most LIMIT Clients, leaving out the
        destinations in SKIP (a send to them is running): a Client's later messages wait
        for its first, even one put back for later (its phone did not answer), so they keep
        their order."""
        # Each destination in SKIP takes at most one of the rows.
        items = await self._run(self._firsts_due, now, limit + len(skip), True)
        return [item for item in items if item.destination not in skip][:limit]

    def _firsts_due(self, now: str, limit: int, clients: bool) -> list[OutboxItem]:
        """Each destination's earliest accepted queued message, when due (to Clients, or
        to numbers), the earliest first, at most LIMIT; on the store's thread. The queue is
        read in accepted order (``sms_outbox_order``), so a long backlog costs only the rows
        read up to LIMIT (m010)."""
        cur = self._conn().execute(
            "SELECT o.*, m.account_sid, m.\"from\" FROM sms_outbox AS o "
            "INDEXED BY sms_outbox_order JOIN sms_messages m ON m.sid = o.sid "
            "WHERE o.state = 'queued' AND o.next_attempt_at <= ? AND o.destination "
            + ("LIKE" if clients else "NOT LIKE") + " 'client:%' AND " + _FIRST +
            " ORDER BY o.accepted_at, o.rowid LIMIT ?", (now, limit))
        names = [d[0] for d in cur.description]
        return [_outbox_item(dict(zip(names, r, strict=True))) for r in cur.fetchall()]

    async def next_due(self, *, clients: bool = False,
                       skip: Collection[str] = ()) -> str | None:
        """When the next message for the modem (CLIENTS: to a Client, leaving out the
        destinations in SKIP) is due; None when none is queued."""
        def run() -> str | None:
            marks = ", ".join("?" for _ in skip)
            # Each destination's first message only: the others wait for it.
            row = self._conn().execute(
                "SELECT MIN(o.next_attempt_at) FROM sms_outbox AS o "
                "WHERE o.state = 'queued' AND o.destination "
                + ("LIKE" if clients else "NOT LIKE") + " 'client:%' AND " + _FIRST
                + (f" AND o.destination NOT IN ({marks})" if skip else ""),
                tuple(skip)).fetchone()
            return row[0] if row and row[0] else None
        result: str | None = await self._run(run)
        return result

    async def queued_count(self) -> int:
        def run() -> int:
            return int(self._conn().execute(
                "SELECT COUNT(*) FROM sms_outbox WHERE state IN ('queued', 'submitting')"
            ).fetchone()[0])
        result: int = await self._run(run)
        return result

    async def queued_from_calls(self, limit: int) -> int:
        """Messages to numbers with direction outbound-call (a phone's MESSAGE, a call's
        app's <Sms>) not finished yet, counted up to LIMIT (the count costs no more). Read
        from the live rows by index: finished ones stay in the table for good."""
        def run() -> int:
            return int(self._conn().execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM sms_outbox AS o "
                "JOIN sms_messages m ON m.sid = o.sid WHERE o.state IN ('queued', 'submitting') "
                "AND o.destination NOT LIKE 'client:%' AND m.direction = 'outbound-call' "
                "LIMIT ?)", (limit,)).fetchone()[0])
        result: int = await self._run(run)
        return result

    async def begin_part(self, sid: str, part: int, total: int, recipient: str,
                         now: str) -> None:
        """Mark PART as handed to the modem, before the bytes go out."""
        def run() -> None:
            conn = self._conn()
            with self._atomic():
                conn.execute("UPDATE sms_outbox SET state = 'submitting', parts_total = ? "
                             "WHERE sid = ?", (total, sid))
                conn.execute("INSERT OR REPLACE INTO sms_parts (sms_sid, part, mr, recipient, "
                             "outcome, sent_at) VALUES (?, ?, NULL, ?, 'submitting', ?)",
                             (sid, part, recipient, now))
                conn.execute("UPDATE sms_messages SET status = 'sending', date_updated = ? "
                             "WHERE sid = ? AND status = 'queued'", (now, sid))
        await self._run(run)

    async def part_sent(self, sid: str, part: int, mr: int, now: str) -> StatusChange | None:
        """Record PART's message reference; the change when it was the last part and the
        message is now `sent`. A message an earlier part's status report already settled (say
        `undelivered`) keeps that status: the network's answer is not overwritten by ours."""
        def run() -> StatusChange | None:
            conn = self._conn()
            with self._atomic():
                conn.execute("UPDATE sms_parts SET outcome = 'sent', mr = ?, sent_at = ? "
                             "WHERE sms_sid = ? AND part = ?", (mr, now, sid, part))
                conn.execute("UPDATE sms_outbox SET parts_done = parts_done + 1 WHERE sid = ?",
                             (sid,))
                done, total = conn.execute("SELECT parts_done, parts_total FROM sms_outbox "
                                           "WHERE sid = ?", (sid,)).fetchone()
                if done < total:
                    return None
                conn.execute("UPDATE sms_outbox SET state = 'done' WHERE sid = ?", (sid,))
                changed = conn.execute(
                    "UPDATE sms_messages SET status = 'sent', date_sent = ?, date_updated = ? "
                    "WHERE sid = ? AND status IN ('queued', 'sending')", (now, now, sid)).rowcount
                if not changed:
                    conn.execute("UPDATE sms_messages SET date_sent = ? WHERE sid = ?",
                                 (now, sid))
                    return None
                return _status_change(conn, sid)
        result: StatusChange | None = await self._run(run)
        return result

    async def requeue(self, sid: str, next_attempt_at: str, *, failed: bool = False) -> None:
        """Back to the queue; parts already sent stay sent. FAILED: this try failed (a network
        error, a modem that hung before taking the part), so it counts in `attempts`; a modem
        that was simply not there does not."""
        def run() -> None:
            with self._atomic():
                # Never a finished message's entry back (the sender's retry after a fault
                # that came once the message was settled).
                self._conn().execute(
                    "UPDATE sms_outbox SET state = 'queued', next_attempt_at = ?, "
                    "attempts = attempts + ? WHERE sid = ? AND state != 'done'",
                    (next_attempt_at, int(failed), sid))
                self._conn().execute("DELETE FROM sms_parts WHERE sms_sid = ? "
                                     "AND outcome = 'submitting'", (sid,))
        await self._run(run)

    async def client_delivered(self, sid: str, now: str) -> StatusChange | None:
        """A message to a Client was accepted by its phone (a SIP 2xx): the change, or None
        when the message was no longer queued or sending."""
        def run() -> StatusChange | None:
            conn = self._conn()
            with self._atomic():
                conn.execute("UPDATE sms_outbox SET state = 'done', parts_done = 1, "
                             "parts_total = 1 WHERE sid = ?", (sid,))
                changed = conn.execute(
                    "UPDATE sms_messages SET status = 'sent', date_sent = ?, date_updated = ? "
                    "WHERE sid = ? AND status IN ('queued', 'sending')", (now, now, sid)).rowcount
                return _status_change(conn, sid) if changed else None
        result: StatusChange | None = await self._run(run)
        return result

    async def make_modem_due(self, now: str) -> None:
        """The modem is (back) ready: messages for it go now, partly sent ones included."""
        def run() -> None:
            with self._atomic():
                self._conn().execute(
                    "UPDATE sms_outbox SET next_attempt_at = ? WHERE state = 'queued' AND "
                    "destination NOT LIKE 'client:%' AND next_attempt_at > ?", (now, now))
        await self._run(run)

    async def make_clients_due(self, now: str, destination: str | None = None) -> None:
        """Messages waiting for a Client's registration (or for DESTINATION only, a
        `client:<login>`) become due now."""
        def run() -> None:
            with self._atomic():
                self._conn().execute(
                    "UPDATE sms_outbox SET next_attempt_at = ? WHERE state = 'queued' AND "
                    "destination LIKE 'client:%' AND next_attempt_at > ?"
                    + (" AND destination = ?" if destination is not None else ""),
                    (now, now) + ((destination,) if destination is not None else ()))
        await self._run(run)

    async def fail(self, sid: str, error_code: int, message: str,
                   now: str) -> StatusChange | None:
        """Make SID `failed`, unless it already has a final status (then nothing changes
        and None is returned): a message once `sent` stays sent."""
        def run() -> StatusChange | None:
            conn = self._conn()
            with self._atomic():
                changed = conn.execute(
                    "UPDATE sms_messages SET status = 'failed', error_code = ?, "
                    "error_message = ?, date_updated = ? WHERE sid = ? "
                    "AND status IN ('queued', 'sending')", (error_code, message, now, sid)).rowcount
                conn.execute("UPDATE sms_outbox SET state = 'done' WHERE sid = ?", (sid,))
                conn.execute("UPDATE sms_parts SET outcome = 'failed' WHERE sms_sid = ? "
                             "AND outcome = 'submitting'", (sid,))
                return _status_change(conn, sid) if changed else None
        result: StatusChange | None = await self._run(run)
        return result

    async def recover_after_restart(self) -> tuple[list[str], list[str]]:
        """Sort out what a crash left mid-send.

        Returns (in_doubt, resumed): messages with a part handed to the modem but no answer
        recorded (never resent: the modem may have sent it), and messages stopped between two
        parts (back in the queue, to continue with the next part).
        """
        def run() -> tuple[list[str], list[str]]:
            conn = self._conn()
            in_doubt: list[str] = []
            resumed: list[str] = []
            with self._atomic():
                for (sid,) in conn.execute("SELECT sid FROM sms_outbox "
                                           "WHERE state = 'submitting'").fetchall():
                    doubtful = conn.execute("SELECT COUNT(*) FROM sms_parts WHERE sms_sid = ? "
                                            "AND outcome = 'submitting'", (sid,)).fetchone()[0]
                    if doubtful:
                        in_doubt.append(sid)
                    else:
                        conn.execute("UPDATE sms_outbox SET state = 'queued' WHERE sid = ?",
                                     (sid,))
                        resumed.append(sid)
            return in_doubt, resumed
        result: tuple[list[str], list[str]] = await self._run(run)
        return result

    async def delivery_report(self, mr: int, recipient_digits: str, delivered: bool | None,
                              status_code: int, since: str, now: str,
                              error: tuple[int, str] | None = None) -> StatusChange | None:
        """Apply a status report to the newest matching part sent after SINCE.

        DELIVERED None = still pending (recorded, no status change). Returns the change when
        the message's status changed to delivered or undelivered; ERROR (code, message) is
        the message's error when this report makes it undelivered. A `failed` message (a
        later part refused, say) stays failed with its error: the part's outcome is recorded,
        the message's first final status kept.
        """
        def run() -> StatusChange | None:
            conn = self._conn()
            with self._atomic():
                candidates = conn.execute(
                    "SELECT sms_sid, part, recipient FROM sms_parts WHERE mr = ? AND sent_at >= ? "
                    "AND outcome IN ('sent', 'pending') ORDER BY sent_at DESC",
                    (mr, since)).fetchall()
                match = next((c for c in candidates if not c[2].startswith("client:")
                              and _digits(c[2]).endswith(recipient_digits[-7:])), None)
                if match is None:
                    return None
                sid, part, _ = match
                outcome = "pending" if delivered is None else (
                    "delivered" if delivered else "undelivered")
                conn.execute("UPDATE sms_parts SET outcome = ?, status_code = ? "
                             "WHERE sms_sid = ? AND part = ?", (outcome, status_code, sid, part))
                outcomes = [r[0] for r in conn.execute(
                    "SELECT outcome FROM sms_parts WHERE sms_sid = ?", (sid,)).fetchall()]
                total = conn.execute("SELECT parts_total FROM sms_outbox WHERE sid = ?",
                                     (sid,)).fetchone()[0]
                if "undelivered" in outcomes:
                    status = "undelivered"
                elif len(outcomes) == total and all(o == "delivered" for o in outcomes):
                    status = "delivered"
                else:
                    return None
                code, text = error if status == "undelivered" and error else (None, None)
                changed = conn.execute(
                    "UPDATE sms_messages SET status = ?, date_updated = ?, "
                    "error_code = COALESCE(?, error_code), "
                    "error_message = COALESCE(?, error_message) WHERE sid = ? "
                    "AND status NOT IN (?, 'failed')",
                    (status, now, code, text, sid, status)).rowcount
                return _status_change(conn, sid) if changed else None
        result: StatusChange | None = await self._run(run)
        return result

    # -- inbound -----------------------------------------------------------------------------

    async def store_inbound(self, *, index: int, pdu: str, pdu_sha: str, note: str,
                            record: models.SmsRecord | None, fragment: Fragment | None,
                            now: str) -> InboundResult:
        """Commit one received PDU and what it produced, or recognise it as already stored.

        RECORD is a complete message (single part or undecodable); FRAGMENT a part of a
        concatenated one, with RECORD as the template for the message its parts make.
        """
        def run() -> InboundResult:
            conn = self._conn()
            with self._atomic():
                cur = conn.execute(
                    "INSERT OR IGNORE INTO sms_inbox_pdus (idx, pdu_sha, pdu, note, received_at) "
                    "VALUES (?, ?, ?, ?, ?)", (index, pdu_sha, pdu, note, now))
                if cur.rowcount == 0:
                    return InboundResult(duplicate=True)
                message: models.SmsRecord | None = None
                if fragment is None:
                    message = record
                else:
                    conn.execute(
                        "INSERT OR IGNORE INTO sms_fragments (sender, ref, total, seq, text, "
                        "first_seen) VALUES (?, ?, ?, ?, ?, ?)",
                        (fragment.sender, fragment.reference, fragment.total, fragment.seq,
                         fragment.text, now))
                    parts = conn.execute(
                        "SELECT seq, text FROM sms_fragments WHERE sender = ? AND ref = ? "
                        "AND total = ? ORDER BY seq",
                        (fragment.sender, fragment.reference, fragment.total)).fetchall()
                    if len(parts) == fragment.total and record is not None:
                        message = dataclasses.replace(record, body="".join(p[1] for p in parts))
                        conn.execute("DELETE FROM sms_fragments WHERE sender = ? AND ref = ? "
                                     "AND total = ?",
                                     (fragment.sender, fragment.reference, fragment.total))
                if message is not None:
                    self._insert_received(conn, message, now)
                    conn.execute("UPDATE sms_inbox_pdus SET sms_sid = ? WHERE idx = ? "
                                 "AND pdu_sha = ?", (message.sid, index, pdu_sha))
                return InboundResult(message=message)
        result: InboundResult = await self._run(run)
        return result

    @staticmethod
    def _insert_received(conn: sqlite3.Connection, message: models.SmsRecord, now: str) -> None:
        values = rows.sms_values(message)
        columns = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        conn.execute(f"INSERT INTO sms_messages ({columns}) VALUES ({marks})",
                     tuple(values.values()))
        conn.execute("INSERT OR IGNORE INTO sms_inbound_jobs (sid, next_attempt_at) "
                     "VALUES (?, ?)", (message.sid, now))

    async def stale_fragment_groups(self, older_than: str) -> list[list[Fragment]]:
        def run() -> list[list[Fragment]]:
            groups = self._conn().execute(
                "SELECT sender, ref, total FROM sms_fragments GROUP BY sender, ref, total "
                "HAVING MIN(first_seen) < ?", (older_than,)).fetchall()
            result = []
            for sender, ref, total in groups:
                parts = self._conn().execute(
                    "SELECT seq, text FROM sms_fragments WHERE sender = ? AND ref = ? AND "
                    "total = ? ORDER BY seq", (sender, ref, total)).fetchall()
                result.append([Fragment(sender, ref, total, seq, text) for seq, text in parts])
            return result
        result: list[list[Fragment]] = await self._run(run)
        return result

    async def release_fragments(self, group: list[Fragment], message: models.SmsRecord,
                                now: str) -> None:
        """Store an incomplete message made of GROUP and forget the fragments."""
        def run() -> None:
            conn = self._conn()
            first = group[0]
            with self._atomic():
                conn.execute("DELETE FROM sms_fragments WHERE sender = ? AND ref = ? AND "
                             "total = ?", (first.sender, first.reference, first.total))
                self._insert_received(conn, message, now)
        await self._run(run)

    async def due_inbound_jobs(self, now: str, limit: int = 20,
                               skip: Collection[tuple[str, str]] = ()) -> list[InboundJob]:
        """The first due job of each conversation, the earliest due first, at most LIMIT,
        leaving out the conversations in SKIP (those with a job running): a conversation's
        later messages are not due before its first is done, so they keep their order. A
        job whose message is gone is a conversation of its own."""
        def run() -> list[InboundJob]:
            found = self._conn().execute(
                "SELECT sid, attempts, handed, sender, receiver FROM ("
                " SELECT j.sid, j.attempts, j.handed, j.next_attempt_at AS due, j.rowid AS seq,"
                "  COALESCE(m.\"from\", '') AS sender, COALESCE(m.\"to\", j.sid) AS receiver,"
                "  ROW_NUMBER() OVER (PARTITION BY COALESCE(m.\"from\", ''),"
                "   COALESCE(m.\"to\", j.sid) ORDER BY j.next_attempt_at, j.rowid) AS turn"
                " FROM sms_inbound_jobs j LEFT JOIN sms_messages m ON m.sid = j.sid"
                " WHERE j.next_attempt_at <= ?) WHERE turn = 1 ORDER BY due, seq LIMIT ?",
                # Each conversation in SKIP takes at most one of the rows.
                (now, limit + len(skip))).fetchall()
            jobs = [InboundJob(r[0], int(r[1]), bool(r[2]), (r[3], r[4])) for r in found]
            return [job for job in jobs if job.conversation not in skip][:limit]
        result: list[InboundJob] = await self._run(run)
        return result

    async def finish_inbound_job(self, sid: str) -> None:
        def run() -> None:
            with self._atomic():
                self._conn().execute("DELETE FROM sms_inbound_jobs WHERE sid = ?", (sid,))
        await self._run(run)

    async def retry_inbound_job(self, sid: str, next_attempt_at: str) -> None:
        def run() -> None:
            with self._atomic():
                self._conn().execute("UPDATE sms_inbound_jobs SET attempts = attempts + 1, "
                                     "next_attempt_at = ? WHERE sid = ?", (next_attempt_at, sid))
        await self._run(run)

    async def x_headers_of(self, sid: str) -> dict[str, str]:
        def run() -> dict[str, str]:
            row = self._conn().execute("SELECT x_headers FROM sms_messages WHERE sid = ?",
                                       (sid,)).fetchone()
            return json.loads(row[0]) if row and row[0] else {}
        result: dict[str, str] = await self._run(run)
        return result


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())


def _outbox_item(r: dict[str, Any]) -> OutboxItem:
    return OutboxItem(
        sid=r["sid"], account_sid=r["account_sid"], from_=r["from"], destination=r["destination"],
        body=r["body"], ucs2=bool(r["ucs2"]), status_report=bool(r["status_report"]),
        concat_ref=int(r["concat_ref"]), x_headers=json.loads(r["x_headers"] or "{}"),
        parts_total=int(r["parts_total"]), parts_done=int(r["parts_done"]),
        attempts=int(r["attempts"]), accepted_at=r["accepted_at"])
