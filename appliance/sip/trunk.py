"""The trunk client: keeps every gateway with Register=true registered upstream.

One `UpstreamRegistration` (sip.upstream, pure) per gateway, driven here: requests go out
through the transport inside non-INVITE client transactions (retransmissions and Timer F),
responses come back from the front door (a response whose CSeq method is REGISTER), and one
timer task re-arms from the earliest refresh, retry, keep-alive or transaction timer.
Back-off uses a random jitter factor so boxes behind one NAT do not retry in step.

NAT keep-alives (docs/gateways.md "Behind the office's NAT"): while a line is registering,
registered or retrying, its provider address (the one its REGISTERs go to) gets a CRLFCRLF
datagram from the SIP socket (``KeepAliveSender``, the transport) after every ``keepalive_interval``
seconds without a REGISTER to it; when and where is ``keepalive.KeepAlives``'s business.
Several gateways at one provider address share its keep-alives. Lines are UDP only (their
targets are resolved for UDP, their Contact has no transport), so there is no TCP flow to
ping the RFC 5626 way.

Behind NAT the Contact a line registers is the public address and port the provider's 200
reports in our Via (``received``/``rport``), once it says so (``upstream``; on unless
``learn_public_address`` is off): a provider that sends its calls to the Contact then reaches
the office through the same mapping. The provider's INVITEs to that Contact are recognised by
their source address and Request-URI user (``gateways_at``, ``services.routing``), never by
the Request-URI host, so the public host needs no place among our local addresses. The
proxy's Record-Route toward the provider names it (``public_address``), so that the
provider's BYE and re-INVITEs, sent to the route set, come through the same mapping.
That public Contact is kept (``PublicContacts``, the store) while it may be bound at the
provider: a start after a crash, or after a stop whose unregistration went unanswered,
removes it (``;expires=0``) in its first REGISTER, as the NAT may map another port now.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import secrets
import socket
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

from appliance.addresses import Network, unmapped, unmapped_network
from appliance.models import Gateway
from appliance.services.gateways import GatewayStatus
from appliance.sip.errors import SipParseError
from appliance.sip.keepalive import KeepAlives
from appliance.sip.message import Request, Response
from appliance.sip.transaction import (
    ClientTransaction,
    Deliver,
    TimedOut,
    Transmit,
    client_transaction,
)
from appliance.sip.transaction_table import TransactionTable
from appliance.sip.upstream import LocalAddress, State, UpstreamAccount, UpstreamRegistration
from appliance.sip.wire import Incoming, KeepAliveSender, Sender, Target

logger = logging.getLogger(__name__)

RESOLVE_TIMEOUT = 5.0
MAX_PROVIDER_ADDRESSES = 16  # addresses kept per registrar name (a hostile DNS answer is big)
IDLE_WAKE = 60.0  # the timer task's longest sleep
CLOSE_TIMEOUT = 2.5  # seconds ``close`` waits for the unregistrations, all lines together
CLOSE_POLL = 0.02  # how often ``close`` looks whether they are done
# The states in which a line's provider address is kept alive: from its first REGISTER on,
# through failures too (a failed refresh may leave the last registration standing at the
# provider, whose calls need the mapping as much), until it is unregistered or stopped.
KEPT_ALIVE = frozenset({State.REGISTERING, State.REGISTERED, State.FAILED})


class PublicContacts(Protocol):
    """Where each gateway's public Contact outlives the process (``store.gateways``)."""

    async def public_contacts(self) -> dict[str, tuple[str, int]]:
        """Per gateway sid, the address and port kept by ``set_public_contact``."""

    async def set_public_contact(self, sid: str, address: tuple[str, int] | None) -> None:
        """Keep ADDRESS for the gateway SID; None: forget it."""


@dataclasses.dataclass
class _Line:
    gateway: Gateway
    machine: UpstreamRegistration
    target: Target | None = None
    addresses: tuple[Target, ...] = ()  # every address the Proxy name resolved to
    txn: ClientTransaction | None = None

    @property
    def provider_addresses(self) -> tuple[Target, ...]:
        return self.addresses or ((self.target,) if self.target else ())


def _token() -> str:
    return secrets.token_hex(8)


def _jitter() -> float:
    return random.uniform(0.8, 1.2)  # noqa: S311 - spreading retries, not a secret


def _split_proxy(proxy: str) -> tuple[str, int]:
    """A gateway's Proxy (host or address, optional :port) as host and port (5060)."""
    host, _, port_text = proxy.rpartition(":") if proxy.count(":") == 1 else (proxy, "", "")
    return host, int(port_text) if port_text.isdigit() else 5060


async def _resolve_all(proxy: str) -> tuple[Target, ...]:
    """A gateway's Proxy (host or address, optional :port) as UDP targets: every address
    the name resolves to (providers publish several for one registrar name)."""
    host, port = _split_proxy(proxy)
    async with asyncio.timeout(RESOLVE_TIMEOUT):
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    targets = (Target("udp", str(info[4][0]), int(info[4][1])) for info in infos)
    return tuple(dict.fromkeys(targets))[:MAX_PROVIDER_ADDRESSES]


async def _resolve(proxy: str) -> Target:
    """A gateway's Proxy as one UDP target (the first address)."""
    return (await _resolve_all(proxy))[0]


def parse_sources(pairs: tuple[tuple[str, int | None], ...]
                  ) -> tuple[tuple[Network, int | None], ...]:
    """``[inbound.sources]`` entries as validated by the config parser (network text, port
    or None = any port) as networks; an IPv4-mapped one (``::ffff:a.b.c.0/120``) as the IPv4
    network it maps, as sources are matched in their IPv4 form (``dualstack.unmapped``)."""
    return tuple((unmapped_network(ipaddress.ip_network(text, strict=False)), port)
                 for text, port in pairs)


class Trunk:
    def __init__(self, sender: Sender, *, clock: Callable[[], float],
                 local: Callable[[], tuple[str, int]],
                 wall_clock: Callable[[], float], keepalive_sender: KeepAliveSender | None = None,
                 keepalive_interval: float = 0.0, learn_public_address: bool = True,
                 public_contacts: PublicContacts | None = None) -> None:
        """CLOCK is monotonic seconds: it drives the retransmissions, refreshes, retries and
        keep-alives, which a step of the wall clock (NTP, on a box without an RTC) must
        neither fire all at once nor stall (a stalled refresh lets the provider registration
        lapse and the office's inbound calls with it). WALL_CLOCK only dates a
        registration's expiry for the API. KEEPALIVE_SENDER sends the NAT keep-alives,
        after KEEPALIVE_INTERVAL seconds without a REGISTER to a provider address (0, or no
        KEEPALIVE_SENDER: none). LEARN_PUBLIC_ADDRESS: register the public address the
        provider's 200 reports (``upstream.UpstreamRegistration``) instead of LOCAL's.
        PUBLIC_CONTACTS keeps, per gateway, the public Contact that may be bound at the
        provider, for the next start to remove (``restore``); None: nothing is kept."""
        self._sender = sender
        self._clock = clock
        self._wall_clock = wall_clock
        self._local = local  # our advertised address and SIP port
        self._learn_public = learn_public_address
        self._public_contacts = public_contacts
        # Per gateway sid: the public Contact the last run left (``restore``), until a line
        # of the gateway takes it; the one kept now, as last asked of PUBLIC_CONTACTS; and
        # the changes the writer task has yet to make.
        self._restored: dict[str, LocalAddress] = {}
        self._kept: dict[str, LocalAddress | None] = {}
        self._unsaved: dict[str, LocalAddress | None] = {}
        self._writer: asyncio.Task[None] | None = None
        self._lines: dict[str, _Line] = {}
        self._gateways: dict[str, Gateway] = {}  # every gateway, Register or not, by sid
        # [inbound.sources]: gateway FriendlyName -> the networks (and ports) its provider
        # sends calls from besides its registrar (docs/gateways.md "Calls from the provider")
        self.sources: dict[str, tuple[tuple[Network, int | None], ...]] = {}
        self._table = TransactionTable()
        self._by_txn: dict[ClientTransaction, _Line] = {}
        self._wake = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()
        self._keepalive_sender = keepalive_sender
        self._keepalives: KeepAlives[Target] = KeepAlives(
            keepalive_interval if keepalive_sender is not None else 0.0)

    # -- services.gateways.Trunk -------------------------------------------------------------

    def apply(self, gateway: Gateway) -> None:
        """A gateway was created or changed: (re)start its registration, or stop it. The
        line it replaces ends its REGISTER transaction (no more retransmissions); it
        unregisters unless the new line registers the same AoR and Contact at the same
        Proxy, which then continues its Call-ID and CSeq (RFC 3261 §10.2) rather than
        racing an unregistration of the same binding."""
        self._gateways[gateway.sid] = gateway
        old = self._lines.pop(gateway.sid, None)
        host, port = self._local()
        account = UpstreamAccount(user=gateway.user_name, password=gateway.password,
                                  domain=gateway.proxy.split(":")[0], expires=gateway.ttl)
        local = LocalAddress(host, port)
        continued = (old is not None and gateway.register
                     and old.gateway.proxy == gateway.proxy
                     and old.machine.account.user == account.user
                     and old.machine.local == local)
        if old is not None:
            if continued:
                old.machine.drop()
                self._end_transaction(old)
            else:
                self._stop_line(old)
            self._watch()  # its address, unless another line's, is kept alive no longer
        if not gateway.register:
            return
        if continued and old is not None:
            # The same binding: at the public address learned for it, if any.
            machine = UpstreamRegistration(account, local, call_id=old.machine.call_id,
                                           from_tag=old.machine.from_tag, token=_token,
                                           cseq=old.machine.cseq,
                                           learn_public=self._learn_public,
                                           contact=old.machine.contact,
                                           stale=old.machine.stale)
        else:
            # The gateway's first line since the start removes the public Contact the last
            # run may have left bound (a crash: no unregistration), unless it registers it.
            # Its Contact is still LOCAL's: the NAT's mapping may have changed meanwhile,
            # and the 200 tells the one now.
            stale = self._restored.pop(gateway.sid, None) if old is None else None
            machine = UpstreamRegistration(account, local, call_id=f"{_token()}@{host}",
                                           from_tag=_token(), token=_token,
                                           learn_public=self._learn_public, stale=stale)
        line = _Line(gateway, machine)
        self._lines[gateway.sid] = line
        self._spawn(self._begin(line))

    def remove(self, sid: str) -> None:
        self._gateways.pop(sid, None)
        line = self._lines.pop(sid, None)
        if line is not None:
            self._stop_line(line)
            self._watch()

    def status(self, sid: str) -> GatewayStatus:
        line = self._lines.get(sid)
        if line is None:
            return GatewayStatus("disabled")
        machine = line.machine
        expires = (datetime.fromtimestamp(
                       self._wall_clock() + machine.expires_at - self._clock(), UTC)
                   if machine.expires_at is not None else None)
        # A line just created or updated is idle only until its first REGISTER goes out (its
        # Proxy being resolved meanwhile): to the API it is registering already.
        state = State.REGISTERING if machine.state is State.IDLE else machine.state
        return GatewayStatus(state.value, machine.last_error, expires)

    def gateway_at(self, host: str, port: int) -> Gateway | None:
        """The gateway whose provider sends from HOST:PORT: a request from there is the
        provider's, e.g. a call to one of our DIDs. Its provider addresses are the
        registrar's (any address its Proxy name resolved to, at the Proxy's port; gateways
        with Register=true) and the networks ``[inbound.sources]`` lists for its
        FriendlyName (any gateway; a listed port must match, else any port). The first,
        when several accounts share the provider (``gateways_at``)."""
        found = self._providers(host, port)
        return found[0] if found else None

    def gateways_at(self, host: str, port: int) -> list[Gateway]:
        """Every gateway whose provider sends from HOST:PORT: an office with two accounts
        at one provider has two gateways at the same address."""
        return self._providers(host, port)

    def providers_at(self, host: str, port: int) -> frozenset[str]:
        """The sids of the gateways whose provider is at HOST:PORT: an address it sends from
        (``gateways_at``), or the name (and port, 5060 when none) its Proxy is written with,
        as a provider's Record-Route may name it. Who may send, and be sent, a call's
        in-dialog requests on the provider's side (the proxy's ``provider_of``)."""
        found = {gateway.sid for gateway in self._providers(host, port)}
        name = host.strip("[]").lower()
        for gateway in self._gateways.values():
            proxy_host, proxy_port = _split_proxy(gateway.proxy)
            if proxy_host.strip("[]").lower() == name and proxy_port == port:
                found.add(gateway.sid)
        return frozenset(found)

    def public_address(self, host: str, port: int) -> tuple[str, int] | None:
        """The public address and port that the provider sending from HOST:PORT reaches us
        at (the Contact its 200 taught a line, ``learn_public_address``), when that is not
        our own: the proxy's Record-Route toward it names that (RFC 5658). Else None."""
        for gateway in self._providers(host, port):  # none for a phone: nothing more
            machine = self._lines[gateway.sid].machine
            if machine.contact != machine.local:
                return machine.contact.host, machine.contact.port
        return None

    def is_provider(self, host: str) -> bool:
        """Whether HOST is one of a gateway's provider addresses, at any port (the Guard's
        exemption from the unauthenticated budget: its inbound calls come unauthenticated
        from there, and cutting it to the budget would cut the office's inbound calls)."""
        return bool(self._providers(host, None, first=True))

    def _providers(self, host: str, port: int | None, *, first: bool = False
                   ) -> list[Gateway]:
        """The gateways whose provider addresses hold HOST at PORT (None: at any port),
        registrars' first; only the first one found when FIRST."""
        host = unmapped(host)
        found: list[Gateway] = []
        for line in self._lines.values():
            if any(t.host == host and (port is None or t.port == port)
                   for t in line.provider_addresses):
                found.append(line.gateway)
                if first:
                    return found
        if not self.sources:
            return found
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return found
        for gateway in self._gateways.values():
            if gateway in found:
                continue
            for network, want in self.sources.get(gateway.friendly_name, ()):
                if address in network and (port is None or want is None or want == port):
                    found.append(gateway)
                    if first:
                        return found
                    break
        return found

    async def resolve(self, gateway: Gateway) -> Target | None:
        """Where calls to GATEWAY go: its registration's address, else its Proxy resolved now
        (a gateway with Register=false). None when the name does not resolve."""
        line = self._lines.get(gateway.sid)
        if line is not None and line.target is not None and line.gateway == gateway:
            return line.target
        try:
            return await _resolve(gateway.proxy)
        except (OSError, TimeoutError) as err:
            logger.warning("x gateway %s: cannot resolve %s: %s", gateway.friendly_name,
                           gateway.proxy, err)
            return None

    def registered_count(self) -> int:
        return sum(1 for line in self._lines.values()
                   if line.machine.state is State.REGISTERED)

    # -- lifecycle -----------------------------------------------------------------------------

    async def restore(self) -> None:
        """Read the public Contacts the last run kept, for the lines ``apply`` starts next."""
        if self._public_contacts is None:
            return
        kept = await self._public_contacts.public_contacts()
        self._restored = {sid: LocalAddress(host, port) for sid, (host, port) in kept.items()}
        self._kept = dict(self._restored)

    async def run(self) -> None:
        """Drive the timers (``handle_timer``) until cancelled."""
        while True:
            self._wake.clear()
            await self.handle_timer(self._clock())
            when = self.get_timer()
            delay = max(0.01, when - self._clock()) if when is not None else IDLE_WAKE
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, IDLE_WAKE)):
                    await self._wake.wait()

    async def handle_timer(self, now: float) -> None:
        """Do what is due at NOW: retransmissions, refreshes and retries, keep-alives."""
        for txn, actions in self._table.handle_timer(now):
            line = next((ln for t, ln in self._by_txn.items() if t is txn), None)
            if line is not None and line.txn is not None:
                await self._actions(line, line.txn, list(actions))
        for line in list(self._lines.values()):
            request = line.machine.handle_timer(now)
            if request is not None:
                self._spawn(self._send(line, request))
        if self._keepalive_sender is not None:
            self._watch(now)
            for target in self._keepalives.handle_timer(now):
                self._keepalive_sender.ping(target)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` next has something to do (None: nothing is pending)."""
        timers = [t for t in [self._table.get_timer(), self._keepalives.get_timer(),
                              *(line.machine.get_timer() for line in self._lines.values())]
                  if t is not None]
        return min(timers, default=None)

    async def close(self) -> None:
        """Unregister every line and stop. Waits, CLOSE_TIMEOUT seconds at most for all the
        lines together, until each unregistration has finished — the provider's 401/407
        answered, its final response come — or timed out, driving the retransmissions
        meanwhile: the transport must still be up (``Appliance.stop`` closes the trunk
        before it), and a provider that does not answer delays the stop by CLOSE_TIMEOUT."""
        stopping: list[_Line] = []
        for line in list(self._lines.values()):
            self._stop_line(line)
            if line.machine.state is State.UNREGISTERING:
                stopping.append(line)
        self._lines.clear()
        self._watch()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                while self._pending or any(line.machine.state is State.UNREGISTERING
                                           for line in stopping):
                    await self.handle_timer(self._clock())
                    await asyncio.sleep(CLOSE_POLL)
        for line in stopping:
            self._end_transaction(line)
        for task in list(self._pending):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- sending -------------------------------------------------------------------------------

    async def _begin(self, line: _Line) -> None:
        await self._send(line, line.machine.start(self._clock()))

    def _watch(self, now: float | None = None) -> None:
        """Tell the keep-alives which provider addresses the lines need kept alive now."""
        self._keepalives.watch(
            (line.target for line in self._lines.values()
             if line.target is not None and line.machine.state in KEPT_ALIVE),
            self._clock() if now is None else now)

    def _stop_line(self, line: _Line) -> None:
        """Stop LINE: its REGISTER transaction in flight ends (no more retransmissions), and
        an unregistration (Expires: 0) goes out in a transaction of its own when it was
        registered."""
        request = line.machine.stop(self._clock())
        if request is not None and line.target is not None:
            self._transmit(line, request)  # ends the transaction in flight
            return
        self._end_transaction(line)
        if request is not None:  # registered but never resolved: nothing to unregister
            line.machine.on_timeout(self._clock())

    def _end_transaction(self, line: _Line) -> None:
        """LINE's client transaction, if any, ends here: no more retransmissions, and a late
        response to it matches nothing."""
        if line.txn is not None:
            self._table.remove(line.txn)
            self._by_txn.pop(line.txn, None)
            line.txn = None

    async def _resolve(self, line: _Line) -> Target | None:
        try:
            line.addresses = await _resolve_all(line.gateway.proxy)
            return line.addresses[0]
        except (OSError, TimeoutError, IndexError) as err:
            line.machine.on_timeout(self._clock(), _jitter())
            line.machine.last_error = f"cannot resolve {line.gateway.proxy}: {err}"
            self._wake.set()
            return None

    async def _send(self, line: _Line, request: Request) -> None:
        if self._lines.get(line.gateway.sid) is not line:
            return  # replaced or removed meanwhile
        if line.target is None:
            line.target = await self._resolve(line)
            if line.target is None:
                return
        if ":" in line.machine.local.host and ":" not in line.target.host:
            # [sip] listen on one IPv6 address: its socket cannot reach an IPv4 provider
            # (an IPv6 Proxy is refused), and waiting 32 s for "no answer" would hide why.
            line.machine.on_timeout(self._clock(), _jitter())
            line.machine.last_error = (
                f"the SIP socket on [{line.machine.local.host}] cannot reach the IPv4 "
                f"provider {line.target.host}: listen on 0.0.0.0 or [::]")
            self._wake.set()
            return
        self._transmit(line, request)

    def _transmit(self, line: _Line, request: Request) -> None:
        self._end_transaction(line)
        now = self._clock()
        txn = client_transaction(request, reliable=False, now=now)
        line.txn = txn
        self._table.add(txn)
        self._by_txn[txn] = line
        for action in txn.pop_actions():
            if isinstance(action, Transmit) and line.target is not None:
                self._sender.send(action.message, line.target)
        if line.target is not None:
            self._watch(now)  # a line's first REGISTER: its keep-alives start
            self._keepalives.sent(line.target, now)
        logger.debug("> REGISTER %s to %s", line.gateway.user_name, line.gateway.proxy)
        self._wake.set()

    async def _actions(self, line: _Line, txn: ClientTransaction, actions: list[object]
                       ) -> None:
        for action in actions:
            if isinstance(action, Transmit) and line.target is not None:
                self._sender.send(action.message, line.target)
                self._keepalives.sent(line.target, self._clock())
            elif isinstance(action, Deliver) and isinstance(action.message, Response):
                contact = line.machine.contact
                awaited = line.machine.state in (State.REGISTERING, State.UNREGISTERING)
                follow = line.machine.on_response(action.message, self._clock(), _jitter())
                if line.machine.contact != contact:
                    logger.info("- gateway %s: the provider sees us at %s:%d; registering "
                                "that Contact", line.gateway.friendly_name,
                                line.machine.contact.host, line.machine.contact.port)
                self._log_state(line, action.message.status)
                if awaited and 200 <= action.message.status < 300:
                    self._keep(line)
                if follow is not None:
                    self._transmit(line, follow)
            elif isinstance(action, TimedOut):
                line.machine.on_timeout(self._clock(), _jitter())
                self._log_state(line, 408)
        self._wake.set()

    def _keep(self, line: _Line) -> None:
        """After a 200 to LINE's REGISTER: keep the public Contact it may leave bound at the
        provider, or none (unregistered, or not behind NAT). That is the one the 200
        confirmed; when that was the LAN Contact and the 200 told the public one, the public
        one now registered (a crash before its 200 may leave it bound). Only one is kept: of
        an old public Contact and a new one replacing it, the confirmed old one."""
        machine, sid = line.machine, line.gateway.sid
        if self._public_contacts is None or self._lines.get(sid, line) is not line:
            return  # a newer line of the gateway keeps its own
        if machine.state is State.STOPPED:
            address = None  # unregistered: our Contacts are all gone
        else:
            confirmed = machine.stale if machine.state is State.REGISTERING else machine.contact
            address = next((a for a in (confirmed, machine.contact)
                            if a is not None and a != machine.local), None)
        if self._kept.get(sid) == address:
            return
        self._kept[sid] = address
        self._unsaved[sid] = address
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
            self._pending.add(self._writer)  # ``close`` waits for it too
            self._writer.add_done_callback(self._pending.discard)

    async def _write(self) -> None:
        """Hand the kept public Contacts to the store, one at a time and in order."""
        try:
            while self._unsaved and self._public_contacts is not None:
                sid = next(iter(self._unsaved))
                address = self._unsaved.pop(sid)
                try:
                    await self._public_contacts.set_public_contact(
                        sid, None if address is None else (address.host, address.port))
                except Exception:
                    # Costs the removal after a crash only; the registration goes on.
                    logger.exception("x gateway %s: keeping its public Contact failed", sid)
        finally:
            self._writer = None

    def _log_state(self, line: _Line, status: int) -> None:
        machine = line.machine
        if machine.state is State.REGISTERED:
            logger.info("- gateway %s registered (%d)", line.gateway.friendly_name, status)
        elif machine.state is State.FAILED:
            logger.warning("x gateway %s: %s", line.gateway.friendly_name, machine.last_error)

    # -- responses from the front door ---------------------------------------------------------

    async def handle(self, incoming: Incoming) -> None:
        message = incoming.message
        if not isinstance(message, Response):
            return
        try:
            txn = self._table.match_response(message)
        except SipParseError:
            return
        if txn is None:
            return
        line = self._by_txn.get(txn)
        txn.receive(message, self._clock())
        if line is not None:
            await self._actions(line, txn, list(txn.pop_actions()))

    def connection_closed(self, connection_id: str) -> None:
        """Trunk lines run over UDP; nothing to do."""


