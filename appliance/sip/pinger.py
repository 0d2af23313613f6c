"""The registrar's keep-alive: OPTIONS to every registered contact, dead ones dropped.

Theory of operation. ``sip.ping_schedule`` (pure) says when each binding is pinged and when one
is dead; this drives it. The registrar tells it which bindings exist (``track``, after each
change) and which a REGISTER refreshed (``heard``); each ping is an OPTIONS on a non-INVITE
client transaction of our own table (retransmissions over UDP, Timer F), sent where a call
to that contact would go (``Binding.target``: the NAT address it registered from, over its
TCP connection if it registered over TCP). The front door hands us every response whose
CSeq method is OPTIONS (``on_response``); we keep only those that match a ping in flight by
Via branch *and* Call-ID, both random, so a stranger cannot keep a dead binding alive with
a spoofed 200 without seeing our OPTIONS; the rest go on to the proxy (OPTIONS it forwarded
between phones). A dead contact is handed to ``on_dead`` (``Registrar.unreachable``), which
removes its binding as an expiry does.

The OPTIONS carries no User-Agent or Server (docs/sip.md, "Nothing to fingerprint"), a
fresh Call-ID, From tag and branch each, and Max-Forwards 70:

    OPTIONS sip:alice@192.168.1.10:5060 SIP/2.0
    Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK…
    Max-Forwards: 70
    From: <sip:pbx.example.com>;tag=…
    To: <sip:alice@192.168.1.10:5060>
    Call-ID: …@pbx.example.com
    CSeq: 1 OPTIONS
    Content-Length: 0

Times are monotonic seconds (the event loop's): an NTP step must not fire every ping at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable, Collection

from appliance.sip.bindings import Binding
from appliance.sip.errors import SipParseError
from appliance.sip.forwarding import DEFAULT_MAX_FORWARDS, make_via, token
from appliance.sip.message import Header, Request, Response
from appliance.sip.ping_schedule import MAX_IN_FLIGHT, Key, Ping, PingSchedule
from appliance.sip.transaction import (
    Action,
    ClientTransaction,
    Deliver,
    TimedOut,
    Transmit,
    TransportFailed,
    client_transaction,
)
from appliance.sip.transaction_table import TransactionTable
from appliance.sip.wire import Sender

logger = logging.getLogger(__name__)

MAX_SLEEP = 60.0


class Pinger:
    def __init__(self, sender: Sender, *, interval: float, clock: Callable[[], float],
                 address: tuple[str, int], realm: Callable[[], str],
                 binding: Callable[[str, str], Binding | None],
                 on_dead: Callable[[str, str], None],
                 max_in_flight: int = MAX_IN_FLIGHT,
                 spread: Callable[[], float] = random.random) -> None:
        """CLOCK is monotonic seconds; ADDRESS our advertised SIP address (the Via);
        BINDING (AoR, contact URI) gives the live binding to ping, ON_DEAD is told of a
        contact that stopped answering."""
        self._sender = sender
        self._clock = clock
        self._address = address
        self._realm = realm
        self._binding = binding
        self._on_dead = on_dead
        self._spread = spread
        self.schedule = PingSchedule(interval, max_in_flight=max_in_flight)
        self._table = TransactionTable()
        self._pings: dict[ClientTransaction, tuple[Ping, str]] = {}  # -> (ping, Call-ID)
        self._txns: dict[Key, ClientTransaction] = {}  # the ping in flight per contact
        self._wake = asyncio.Event()

    # --- what the registrar tells -----------------------------------------------------------

    def track(self, aor: str, uris: Collection[str]) -> None:
        """AOR's bindings are now URIS."""
        self.schedule.track(aor, uris, self._clock(), self._spread)
        self._wake.set()

    def heard(self, aor: str, uris: Collection[str]) -> None:
        """A REGISTER from AOR's phone refreshed URIS: they are alive."""
        for uri in uris:
            self.schedule.heard((aor, uri))

    # --- responses from the front door ------------------------------------------------------

    def on_response(self, response: Response) -> bool:
        """Take RESPONSE if it answers a ping in flight (Via branch and Call-ID); False: it
        is someone else's."""
        try:
            txn = self._table.match_response(response)
        except SipParseError:
            return False
        if txn is None:
            return False
        entry = self._pings.get(txn)
        if entry is None or entry[1] != response.call_id:
            return False
        now = self._clock()
        txn.receive(response, now)
        self._carry_out(txn, txn.pop_actions(), now)
        self._wake.set()
        return True

    # --- the timer task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Send the pings when due and end those unanswered, until cancelled."""
        while True:
            self._wake.clear()
            try:
                self.handle_timer(self._clock())
            except Exception:
                # A fault here must not end every phone's keep-alive for the rest of the run.
                logger.exception("x keep-alive pings")
            timers = [t for t in (self._table.get_timer(), self.schedule.get_timer())
                      if t is not None]
            delay = min(timers) - self._clock() if timers else MAX_SLEEP
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(delay, 0.0), MAX_SLEEP)):
                    await self._wake.wait()

    def handle_timer(self, now: float) -> None:
        for txn, actions in self._table.handle_timer(now):
            if isinstance(txn, ClientTransaction):
                self._carry_out(txn, actions, now)
        tick = self.schedule.handle_timer(now)
        for ping in tick.missed:
            self._forget(self._txns.get(ping.key), ping)
        for aor, uri in tick.dead:
            self._dead(aor, uri)
        for ping in tick.ping:
            self._send(ping, now)

    # --- sending ----------------------------------------------------------------------------

    def _send(self, ping: Ping, now: float) -> None:
        aor, uri = ping.key
        binding = self._binding(aor, uri)
        if binding is None:
            # Expired, not swept yet: the expiry removes it (and tells us). Not a miss.
            self.schedule.answered(ping)
            return
        target = binding.target()
        realm = self._realm()
        call_id = f"{token()}@{realm}"
        request = Request(method="OPTIONS", uri=uri, headers=[
            Header.make("Via", make_via(self._address, target.transport)),
            Header.make("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
            Header.make("From", f"<sip:{realm}>;tag={token()}"),
            Header.make("To", f"<{uri}>"),
            Header.make("Call-ID", call_id),
            Header.make("CSeq", "1 OPTIONS"),
            Header.make("Content-Length", "0"),
        ])
        txn = client_transaction(request, reliable=target.transport != "udp", now=now)
        txn.peer = target
        self._table.add(txn)
        self._pings[txn] = (ping, call_id)
        self._txns[ping.key] = txn
        logger.debug("> OPTIONS %s (%s) to %s %s:%d", aor, uri, target.transport, target.host,
                     target.port)
        self._carry_out(txn, txn.pop_actions(), now)

    def _carry_out(self, txn: ClientTransaction, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                if txn not in self._pings or txn.peer is None:
                    continue
                sent = self._sender.send(action.message, txn.peer, action.data,
                                         on_error=functools.partial(self._unreachable, txn))
                if sent is False:
                    # Refused at once: our side could not send it (no socket, no route from
                    # here, our network down). The phone was not asked, so this is no miss:
                    # an outage of ours must not unregister every phone.
                    self._not_sent(txn)
                    return
            elif isinstance(action, Deliver) and isinstance(action.message, Response):
                if action.message.status >= 200:
                    self._ended(txn, answered=True)
            elif isinstance(action, TimedOut | TransportFailed):
                self._ended(txn, answered=False)

    def _not_sent(self, txn: ClientTransaction) -> None:
        entry = self._pings.get(txn)
        if entry is None:
            return
        ping = entry[0]
        logger.debug("x OPTIONS %s (%s) could not be sent from here", *ping.key)
        self._forget(txn, ping)
        self.schedule.not_sent(ping)

    def _unreachable(self, txn: ClientTransaction) -> None:
        """The transport could not send a ping after all (a TCP connect refused or timed
        out): its transaction fails (RFC 3261 §17.1.4)."""
        if txn not in self._pings:
            return
        now = self._clock()
        txn.transport_error(now)
        self._carry_out(txn, txn.pop_actions(), now)
        self._wake.set()

    def _ended(self, txn: ClientTransaction, *, answered: bool) -> None:
        entry = self._pings.get(txn)
        if entry is None:
            return
        ping = entry[0]
        self._forget(txn, ping)
        if answered:
            self.schedule.answered(ping)
        elif self.schedule.failed(ping):
            self._dead(*ping.key)

    def _forget(self, txn: ClientTransaction | None, ping: Ping) -> None:
        if txn is None or self._pings.get(txn, (None,))[0] != ping:
            return
        del self._pings[txn]
        if self._txns.get(ping.key) is txn:
            del self._txns[ping.key]
        self._table.remove(txn)

    def _dead(self, aor: str, uri: str) -> None:
        try:
            self._on_dead(aor, uri)
        except Exception:
            logger.exception("x dropping %s's unreachable contact %s failed", aor, uri)
