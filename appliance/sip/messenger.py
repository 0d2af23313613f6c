"""The SIP MESSAGEs the appliance sends itself: an SMS delivered to a Client's phones.

Theory of operation. ``send_message`` tries the Client's contacts in turn until one accepts
the text: one MESSAGE each (From the sender's user and To the Client, both at our realm, a
fresh Call-ID, ``text/plain`` in UTF-8), sent from our address on a non-INVITE client
transaction in the proxy's table. Nothing is proxied here, so there is no Context and no
Branch: the transaction's future (in the proxy's ``originated`` table) receives the final
status when the proxy drains its actions, or 408 when it times out or is forgotten. The first
2xx is returned, else the last failure (408 when nobody answered ``within`` seconds, 480
without contacts, 503 when the proxy was given no address of its own).

``Messenger`` is owned by the proxy (``Proxy.messenger``), whose transaction table, drain and
timer wake-up it uses; the composition root hands its ``send_message`` to the messaging
service. Not a core module: it waits on futures and timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from appliance.sip.forwarding import DEFAULT_MAX_FORWARDS, Drain, make_via, token
from appliance.sip.message import Header, Request
from appliance.sip.proxy_ports import Contact
from appliance.sip.transaction import Transaction, client_transaction
from appliance.sip.transaction_table import TransactionTable
from appliance.sip.uri import SipUri


class Messenger:
    """Sends the appliance's own MESSAGEs; see the module docstring."""

    def __init__(self, *, table: TransactionTable,
                 originated: dict[Transaction, asyncio.Future[int]], drain: Drain,
                 wake: asyncio.Event, address: tuple[str, int] | None,
                 realm: Callable[[], str], clock: Callable[[], float]) -> None:
        """ORIGINATED is the proxy's table of these MESSAGEs' futures, WAKE its timer task's
        wake-up; ADDRESS is the proxy's own (None: it has none, and nothing can be sent)."""
        self._table = table
        self._originated = originated
        self._drain = drain
        self._wake = wake
        self._address = address
        self._realm = realm
        self._clock = clock

    async def send_message(self, contacts: Collection[Contact], *, from_user: str,
                           to_user: str, body: str, within: float = 40.0) -> int:
        """Send BODY as a SIP MESSAGE to each contact in turn until one accepts it.

        Returns the final status: the first 2xx, else the last failure (408 when nobody
        answered). Used to deliver an SMS to a Client's phones.
        """
        if self._address is None:
            return 503
        realm = self._realm()
        # The sender is an SMS's free-text From (an API caller's, an app's, a network's
        # alphanumeric sender): never written raw, or a line break would add headers and a
        # space split the URI. SipUri %-escapes every character RFC 3261 keeps out of a user.
        from_uri = SipUri(host=realm, user=from_user or "anonymous")
        to_uri = SipUri(host=realm, user=to_user)
        status = 480
        for contact in contacts:
            now = self._clock()
            request = Request(method="MESSAGE", uri=contact.uri, headers=[
                Header.make("Via", make_via(self._address, contact.target.transport)),
                Header.make("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
                Header.make("From", f"<{from_uri}>;tag={token()}"),
                Header.make("To", f"<{to_uri}>"),
                Header.make("Call-ID", f"{token()}@{realm}"),
                Header.make("CSeq", "1 MESSAGE"),
                Header.make("Content-Type", "text/plain;charset=UTF-8"),
            ], body=body.encode("utf-8"))
            txn = client_transaction(request, reliable=contact.target.transport != "udp",
                                     now=now)
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._originated[txn] = future
            txn.peer = contact.target
            self._table.add(txn)
            await self._drain(txn, txn.pop_actions(), now)
            self._wake.set()
            try:
                async with asyncio.timeout(within):
                    status = await future
            except TimeoutError:
                status = 408
            if 200 <= status < 300:
                return status
        return status
