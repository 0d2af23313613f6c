"""NAT keep-alives towards the upstream provider, sans-I/O: when each address is due one.

Theory of operation. The appliance registers upstream over UDP from behind the office's NAT
router, which forgets an idle UDP mapping after 30-180 s (RFC 4787 REQ-5 asks for at least
two minutes; office routers often keep less). Once the mapping is gone, the provider's
INVITEs to the address it registered us at are dropped by the router, and inbound calls fail
until the next REGISTER (the refresh comes at half the granted time, at most 60 s early for
long ones: 59 minutes later for a TTL of 3600). So the
trunk sends a keep-alive from its SIP socket (the REGISTERs' local port: the same mapping) to
each address its registrations go to, once that address has had nothing from us for
INTERVAL seconds: a REGISTER or its retransmission counts as traffic, and puts the next
keep-alive off. What a keep-alive is, and how it is sent, is the trunk's and the transport's
business (``Trunk``, ``Transport.ping``); this module only says when.

The addresses are generic (any hashable): the trunk uses ``wire.Target``. Which addresses
need keeping alive is told with ``watch``, before each ``handle_timer``: one that is no longer
watched (its gateway deleted, unregistered or stopped) gets no more keep-alives, and a newly
watched one gets its first INTERVAL seconds from now.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

A = TypeVar("A", bound=Hashable)


class KeepAlives(Generic[A]):
    def __init__(self, interval: float) -> None:
        """INTERVAL seconds of silence towards an address before a keep-alive goes there;
        0 (or less) turns keep-alives off: nothing is ever due."""
        self.interval = interval
        self._due: dict[A, float] = {}  # watched address -> when its keep-alive is due

    def watch(self, addresses: Iterable[A], now: float) -> None:
        """Keep ADDRESSES alive from NOW on, and only those."""
        if self.interval <= 0:
            return
        wanted = set(addresses)
        for gone in self._due.keys() - wanted:
            del self._due[gone]
        for address in wanted - self._due.keys():
            self._due[address] = now + self.interval

    def sent(self, address: A, now: float) -> None:
        """Something went to ADDRESS at NOW (a REGISTER): its next keep-alive waits."""
        if address in self._due:
            self._due[address] = now + self.interval

    def get_timer(self) -> float | None:
        """When the next keep-alive is due (None: none is watched)."""
        return min(self._due.values(), default=None)

    def handle_timer(self, now: float) -> list[A]:
        """The addresses due a keep-alive at NOW, each then due again INTERVAL later. A
        timer that fired late sends one keep-alive, not one per interval missed."""
        due = [address for address, when in self._due.items() if when <= now]
        for address in due:
            self._due[address] = now + self.interval
        return due
