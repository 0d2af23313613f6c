"""Main-process composition root: config -> store -> services -> API; signals; shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import __version__, accel
from appliance.api.app import make_app
from appliance.api.context import ApiServices
from appliance.api.server import ApiServer, ConnectionLimits
from appliance.config import Config
from appliance.errors import ApplianceError, StoreBusy
from appliance.gsm.state import ModemSettings
from appliance.gsm.urc import RegStatus
from appliance.media.engine import MediaEngine
from appliance.media.pool import WorkerPool
from appliance.media.supervisor import Supervisor, plan_workers
from appliance.media.tts import Tts
from appliance.platform import rlimits, systemd, tls
from appliance.platform.gpio import Indicators, SystemState, open_indicators
from appliance.platform.rlimits import ensure_open_files
from appliance.services.accounts import AccountService
from appliance.services.calls import CallsService
from appliance.services.conferences import ConferencesService
from appliance.services.gateways import GatewayService
from appliance.services.history import HistoryService
from appliance.services.message_log import MessageLog
from appliance.services.messaging import MessagingService
from appliance.services.outbound import OutboundProxies
from appliance.services.provisioning import ProvisioningService
from appliance.services.routing import (
    ClientMessenger,
    ClientRouter,
    gateway_callers,
    sms_gateway,
)
from appliance.services.telephony import CallLog, SipDirectory
from appliance.sip import memory
from appliance.sip.bindings import Location
from appliance.sip.digest import Algorithm
from appliance.sip.frontdoor import FrontDoor
from appliance.sip.guard import Guard
from appliance.sip.pinger import Pinger
from appliance.sip.proxy import Proxy
from appliance.sip.registrar import Registrar
from appliance.sip.transport import MAX_TCP_CONNECTIONS, Limits, Transport, idle_timeout_for
from appliance.sip.trunk import Trunk, parse_sources
from appliance.store.backup import keep_copy, own_like_data_dir
from appliance.store.conferences import ConferenceStore
from appliance.store.db import Store
from appliance.store.gateways import GatewayStore
from appliance.store.sms import SmsStore
from appliance.webhooks import Webhooks

if TYPE_CHECKING:
    from appliance.gsm.modem import Modem

logger = logging.getLogger(__name__)

REALM_SETTING = "sip_realm"
# The HMAC key of SIP digest nonces, kept so that nonces phones hold survive a restart.
NONCE_SECRET_SETTING = "sip_nonce_secret"


def utc_now() -> datetime:
    return datetime.now(UTC)


def primary_address() -> str:
    """The first non-loopback IPv4 address of this host, without sending any packet."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return "127.0.0.1"
    for info in infos:
        address = str(info[4][0])
        if not address.startswith("127."):
            return address
    return "127.0.0.1"


class InstanceLock:
    """An exclusive lock on the data directory: one appliance per database, no restore under it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "appliance.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ApplianceError(
                f"another appliance is running on {self.path.parent} (lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        # A console command run with sudo must not leave a lock the service cannot open.
        own_like_data_dir(self.path, self.path.parent)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Appliance:
    """Everything the main process runs, built from one Config."""

    def __init__(self, config: Config, clock: Callable[[], datetime] = utc_now,
                 timer_clock: Callable[[], float] | None = None,
                 api_limits: ConnectionLimits | None = None) -> None:
        """CLOCK is the wall clock; TIMER_CLOCK monotonic seconds (default: the event
        loop's), see ``timer_clock``; API_LIMITS the HTTP server's (default: ConnectionLimits)."""
        self.config = config
        self.clock = clock
        # The SIP layer's seconds since the epoch (``wall_clock``): on the real clock,
        # time.time itself, which the front door asks a few times per message.
        self.sip_clock: Callable[[], float] = time.time if clock is utc_now else self.wall_clock
        self._timer_clock = timer_clock
        self.lock = InstanceLock(config.data_dir)
        self.store = Store(config.data_dir / "appliance.db")
        self.realm = ""
        self.accounts = AccountService(self.store, clock)
        self.provisioning = ProvisioningService(self.store, clock, lambda: self.realm)
        self.accounts.linked = self.provisioning
        self.history = HistoryService(self.store, clock, self.accounts.scope_sids)
        self.webhooks = Webhooks()
        self.gateway_store = GatewayStore(self.store)
        self.gateways = GatewayService(self.gateway_store, clock)
        self.messaging = MessagingService(self.store, SmsStore(self.store), self.history,
                                          self.webhooks, clock, config.modem.number)
        self.modem: Modem | None = None
        if config.modem.device:
            # Imported only with a modem configured: the driver brings pyserial and
            # serial_asyncio_fast, ~0.7 MB of idle RSS a box without one need not carry.
            from appliance.gsm.modem import Modem

            self.modem = Modem(ModemSettings(path=config.modem.device,
                                             pin=config.modem.pin or None),
                               on_sms_received=self.messaging.on_sms_received,
                               on_event=self._on_modem_event)
            self.messaging.modem = self.modem
        self.started_at = time.monotonic()
        # The HTTP server's connection caps and deadlines (docs/api.md, Limits); tests shrink them.
        self.api_server = ApiServer(api_limits)
        self.api_address: tuple[str, int] | None = None
        self._build_sip()

    def _build_sip(self) -> None:
        """The SIP front door: directory, location table, guard, registrar, dispatcher and
        the UDP+TCP transport. ``frontdoor.proxy`` stays None until a proxy is plugged in."""
        sip = self.config.sip
        self.sip_directory = SipDirectory(self.store)
        self.provisioning.on_clients_change.append(self.sip_directory.clients_changed)
        self.provisioning.on_numbers_change.append(self.sip_directory.invalidate_numbers)
        self.accounts.on_change.append(self.sip_directory.invalidate)
        self.location = Location(min_expires=sip.min_expires, max_expires=sip.max_expires,
                                 max_contacts=sip.max_contacts)
        self.guard = Guard(max_failures=sip.max_auth_failures, ban_time=sip.ban_seconds,
                           unauthenticated_per_minute=sip.unauthenticated_per_minute)
        self.registrar = Registrar(directory=self.sip_directory, location=self.location,
                                   guard=self.guard, store=self.store, clock=self.sip_clock,
                                   realm=lambda: self.realm,
                                   algorithms=[Algorithm(a) for a in sip.digest_algorithms])
        # After the directory is told: a deleted or disabled Client loses its bindings.
        self.provisioning.on_clients_change.append(
            lambda _logins: self.registrar.request_revoke())
        self.accounts.on_change.append(self.registrar.request_revoke)
        self.frontdoor = FrontDoor(registrar=self.registrar, guard=self.guard,
                                   clock=self.sip_clock)
        wildcard = sip.listen.host in ("0.0.0.0", "::")
        self.transport = Transport(
            self.frontdoor, sip.listen.host, sip.listen.port,
            advertised=primary_address() if wildcard else sip.listen.host,
            is_blocked=self.frontdoor.is_blocked,
            quick=self.frontdoor.quick,
            may_answer=self.frontdoor.may_answer,
            limits=Limits(idle_timeout=idle_timeout_for(sip.max_expires)))
        if sip.domain:
            self.transport.local_hosts.add(sip.domain.lower())
        self.frontdoor.sender = self.transport
        self.frontdoor.activity = self.transport  # what keeps a stranger's connection open
        self.registrar.flows = self.transport  # phones registered over TCP keep their flows
        # Keep-alive OPTIONS to the registered phones ([sip] ping_interval; 0: none).
        self.pinger: Pinger | None = None
        if sip.ping_interval > 0:
            self.pinger = Pinger(self.transport, interval=sip.ping_interval,
                                 clock=self.timer_clock,
                                 address=(self.transport.advertised, sip.listen.port),
                                 realm=lambda: self.realm, binding=self.registrar.binding,
                                 on_dead=self.registrar.unreachable)
            self.registrar.keepalive = self.pinger
            self.frontdoor.pinger = self.pinger
        self.sip_error: str | None = "not started"
        self.call_log = CallLog(self.store, self.clock, self.timer_clock)
        self.message_log = MessageLog(self.store, self.clock)
        self.router = ClientRouter(self.sip_directory, self.location,
                                   local_hosts=self.transport.local_hosts)
        self.proxy = Proxy(self.transport, self.sip_directory, self.router, self.call_log,
                           self.message_log,
                           clock=self.sip_clock, timer_clock=self.timer_clock,
                           realm=lambda: self.realm,
                           local_hosts=self.transport.local_hosts, guard=self.guard,
                           algorithms=[Algorithm(a) for a in sip.digest_algorithms],
                           address=(self.transport.advertised, sip.listen.port))
        self.frontdoor.proxy = self.proxy
        self.proxy.flows = self.transport
        # SMS <-> Clients: a Client's MESSAGE to a number goes out by the modem; an SMS for a
        # number whose SmsUrl is client:<login> reaches that Client's phones.
        self.router.outbound_sms = sms_gateway(self.messaging.send_from_phone)
        self.messaging.client_messenger = ClientMessenger(self.router,
                                                          self.proxy.messenger.send_message,
                                                          self.sip_clock)
        self.sip_directory.on_registered.append(self.messaging.client_registered)
        self.trunk = Trunk(self.transport, clock=self.timer_clock, wall_clock=self.sip_clock,
                           local=lambda: (self.transport.advertised, sip.listen.port),
                           keepalive_sender=self.transport,
                           keepalive_interval=sip.nat_keepalive_interval,
                           learn_public_address=sip.trunk_learn_public_address,
                           public_contacts=self.gateway_store)
        self.frontdoor.trunk = self.trunk
        self.guard.exempt = self.trunk.is_provider  # served past the unauthenticated budget
        self.gateways.trunk = self.trunk
        self._trunk_task: asyncio.Task[None] | None = None
        self._pinger_task: asyncio.Task[None] | None = None
        self._proxy_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None  # CDRs of calls in progress
        self._build_media()

    def _build_media(self) -> None:
        """Media workers and the voice applications on them. ``[media] workers = 0``: no
        engine, and every call that would run RCML is answered 503."""
        media = self.config.media
        self.supervisor: Supervisor | None = None
        self._media_dir: Path | None = None
        engine: MediaEngine | None = None
        if media.workers > 0:
            # AF_UNIX paths are short (108 bytes): keep the control sockets out of data_dir.
            self._media_dir = Path(tempfile.mkdtemp(
                prefix="appliance-media-", dir=os.environ.get("RUNTIME_DIRECTORY") or None))
            pool = WorkerPool()
            specs = plan_workers(media.workers, media.rtp_ports, self._media_dir,
                                 public_address=media.public_address,
                                 avoid={self.config.sip.listen.port,
                                        self.config.api.listen.port})
            self.supervisor = Supervisor(specs, on_event=pool.on_worker_event,
                                         on_worker_down=pool.on_worker_down)
            pool.attach(self.supervisor)
            engine = pool
        self.media_engine = engine
        self.tts = Tts(self.config.data_dir / "cache" / "tts")
        sip = self.config.sip

        def worker_ports() -> set[int]:
            if self.supervisor is None:
                return set()
            return {w.spec.sip_port for w in self.supervisor.workers.values()}

        self.calls = CallsService(
            self.store, self.call_log, self.webhooks, self.clock, engine=engine,
            notify=self.history.notify,
            say=lambda text, language, voice: self.tts.say(text, language=language,
                                                            voice=voice),
            data_dir=self.config.data_dir, public_base=self._public_base,
            front_door=lambda: (self.transport.advertised, sip.listen.port),
            worker_ports=worker_ports)
        self.calls.apps.directory = self.sip_directory
        # An account that stops being active is cut off: its numbers' and Clients' apps no
        # longer run (the account service answers from memory), and its calls are ended.
        self.calls.apps.account = self.accounts.get
        self.accounts.on_cut_off.append(self.calls.cut_off)
        self.conferences = ConferencesService(ConferenceStore(self.store), self.call_log,
                                              self.clock, engine=engine)
        self.calls.conferences = self.conferences
        self.router.apps = self.calls.route_invite
        self.proxy.media_caller = self.calls.media_caller

        def from_worker(host: str, port: int) -> bool:
            return host == "127.0.0.1" and port in worker_ports()

        # A worker's address is never counted nor banned by the guard, and never challenged.
        self.guard.spared = from_worker
        self.proxy.media_source = from_worker
        # Outside lines (docs/gateways.md): calls from a gateway's provider to our DIDs, and
        # calls to numbers out through the [outbound] routes.
        self.proxy.gateway_caller = gateway_callers(self.trunk.gateways_at)
        self.proxy.public_address = self.trunk.public_address
        self.proxy.provider_of = self.trunk.providers_at
        self.trunk.sources = {name: parse_sources(pairs)
                              for name, pairs in self.config.inbound.sources}
        self.router.from_gateway = self.calls.route_gateway_invite
        self.router.outbound = self.calls.outbound.route
        self.router.media_legs = self.calls.route_media_leg
        self.outbound_proxies = OutboundProxies(self.config.outbound)
        self.calls.outbound.lines_for = self.outbound_proxies.lines_for
        self.calls.outbound.max_calls = self.config.outbound.max_calls
        self.calls.outbound.gateways = self.gateways.all
        self.calls.outbound.resolve = self.trunk.resolve
        self.calls.send_sms = self.messaging.send_from_client
        # <Dial><Sip> rings only URIs at our own domain/addresses; POST /Calls rings each
        # registered phone of a Client as its own call.
        self.calls.local_hosts = lambda: self.transport.local_hosts
        self.calls.api_calls.contacts_of = lambda login: self.router.contacts_of(
            login, self.wall_clock())
        # GSM voice (docs: "Outside lines" item 4): calls to [modem] number, the modem line.
        self.calls.gsm.modem = self.modem
        self.calls.gsm.audio = self.config.modem.audio_device
        self.calls.gsm.number = self.config.modem.number

    def _on_modem_event(self, event: Any) -> None:
        """The modem's events go to messaging (SMS, state) and to calls (voice)."""
        self.messaging.on_modem_event(event)
        calls = getattr(self, "calls", None)
        if calls is not None:
            calls.on_modem_event(event)

    def wall_clock(self) -> float:
        """Seconds since the epoch from the appliance clock (SIP expiry, nonces, bans)."""
        if self.clock is utc_now:
            # The real clock: the same seconds, without a datetime built and converted on
            # every SIP message (the front door asks ~2 times per REGISTER).
            return time.time()
        return self.clock().timestamp()

    def timer_clock(self) -> float:
        """Monotonic seconds (the event loop's) for the proxy's timers and call deadlines
        and the CDRs' durations: NTP steps the wall clock of this RTC-less box by hours at
        boot, this one never."""
        if self._timer_clock is not None:
            return self._timer_clock()
        return asyncio.get_running_loop().time()

    async def _start_sip(self) -> None:
        secret = await self.store.set_setting_if_absent(NONCE_SECRET_SETTING,
                                                        secrets.token_hex(32))
        await self.registrar.start(nonce_secret=bytes.fromhex(secret))
        # Bindings saved for a Client deleted or disabled since (a restored database, a change
        # the last run did not live to apply) are not restored.
        await self.registrar.revoke()
        self.proxy.nonces = self.registrar.nonces
        self._proxy_task = asyncio.get_running_loop().create_task(self.proxy.run(),
                                                                  name="sip proxy timers")
        self._trunk_task = asyncio.get_running_loop().create_task(self.trunk.run(),
                                                                  name="sip trunk timers")
        try:
            await self.transport.start()
        except OSError as err:
            # The API stays up so the configuration can be fixed; /health reports SIP down.
            # No keep-alive pings then: they could not leave, and the phones are not to blame.
            self.sip_error = f"cannot listen on {self.config.sip.listen}: {err.strerror or err}"
            logger.error("x sip %s", self.sip_error)
            return
        self.sip_error = None
        if self.pinger is not None:
            self._pinger_task = asyncio.get_running_loop().create_task(
                self.pinger.run(), name="sip keep-alive pings")
        await self.trunk.restore()
        for gateway in await self.gateways.all():
            self.trunk.apply(gateway)

    async def start(self) -> None:
        data_dir = self.config.data_dir
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = data_dir.stat()
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            # Made by an older version or by hand under umask 0022: what it holds (the
            # admin password, backups: copies of the database) is ours alone. Closing the
            # directory closes everything in it. (Not ours, or a file system without modes:
            # a warning, not a failed start; the files in it are 0600 anyway.)
            try:
                data_dir.chmod(0o700)
            except OSError as err:
                logger.warning("x data dir %s stays open to others: %s", data_dir, err)
        elif info.st_mode & 0o077:
            logger.warning("x data dir %s is open to others and not ours to close", data_dir)
        self.lock.acquire()
        ensure_open_files(MAX_TCP_CONNECTIONS + self.api_server.count.limits.max_connections
                          + rlimits.MARGIN)
        _warn_if_database_lost(data_dir)
        await self.store.open()
        default_realm = self.config.sip.domain or primary_address()
        stored = await self.store.set_setting_if_absent(REALM_SETTING, default_realm)
        # An explicit [sip] domain wins; otherwise keep the realm chosen on first start, so an
        # address change never invalidates the stored HA1 hashes (api-behaviour.md §8.2.2).
        self.realm = self.config.sip.domain or stored
        await self.accounts.bootstrap_admin(self.config.admin.email, self.config.admin.password,
                                            self.config.data_dir)
        await self.accounts.load()
        await self.call_log.close_leftovers()
        await self.message_log.close_leftovers()
        await self.calls.recover_recordings()
        self._checkpoint_task = asyncio.get_running_loop().create_task(self.call_log.run(),
                                                                       name="cdr checkpoints")
        await self._start_sip()
        await self.webhooks.start()
        if self.supervisor is not None:
            try:
                await self.supervisor.start()
            except (TimeoutError, OSError) as err:  # the rest runs; /health says media down
                logger.error("x media workers not ready: %s", err or type(err).__name__)
        await self.conferences.start()
        await self.messaging.recover()
        self.messaging.start()
        if self.modem is not None:
            await self.modem.__aenter__()
        services = ApiServices(accounts=self.accounts, provisioning=self.provisioning,
                               history=self.history, health=self.health,
                               public_base=self._public_base(),
                               max_body=self.config.api.max_body_bytes,
                               sip_directory=self.sip_directory,
                               messaging=self.messaging, gateways=self.gateways,
                               calls=self.calls, outbound=self.outbound_proxies,
                               conferences=self.conferences)
        app = make_app(services)
        listen = self.config.api.listen
        await self.api_server.start(app, listen.host, listen.port, self._tls_context())
        self.api_address = self.api_server.address
        logger.info("- appliance %s: API on %s, data in %s", __version__, listen,
                    self.config.data_dir)
        logger.info("- %s", accel.describe())

    def _tls_paths(self) -> tuple[Path, Path]:
        api = self.config.api
        cert = Path(api.tls_cert) if api.tls_cert else self.config.data_dir / "tls" / "cert.pem"
        key = Path(api.tls_key) if api.tls_key else self.config.data_dir / "tls" / "key.pem"
        return cert, key

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.config.api.tls:
            return None
        cert, key = self._tls_paths()
        addresses = sorted({primary_address(), "127.0.0.1"})
        tls.ensure_certificate(cert, key, addresses)
        return tls.server_context(cert, key)

    def _public_base(self) -> str:
        listen = self.config.api.listen
        host = listen.host if listen.host not in ("0.0.0.0", "::") else primary_address()
        scheme = "https" if self.config.api.tls else "http"
        return f"{scheme}://{host}:{listen.port}"

    async def health(self) -> tuple[bool, dict[str, Any]]:
        components: dict[str, Any] = {}
        try:
            async with asyncio.timeout(2):
                store_ok = await self.store.ping()
        except (TimeoutError, RuntimeError, OSError, StoreBusy) as err:
            store_ok = False
            components["store_error"] = str(err) or type(err).__name__
        failing = self.store.write_failure() if store_ok else None
        if failing is not None:
            # Reads (and so the ping) still work on a full disk or beside another process's
            # lock: only the writes tell, and health writes nothing to find out.
            cause, ago = failing
            store_ok = False
            components["store"] = "failing"
            components["store_error"] = (f"writes fail: {cause} (the last one {int(ago)} s "
                                         "ago; none has succeeded since)")
        else:
            components["store"] = "up" if store_ok else "down"
        components["api"] = "up"
        full = self.frontdoor.full_budgets() + self.proxy.full_budgets()
        if self.sip_error is not None:
            components["sip"] = f"down: {self.sip_error}"
        elif full:
            # A flood (or a load past what the box was sized for) that leaves every new call
            # answered 503 is a fault the admin must see, though the port is open.
            components["sip"] = "overloaded: new requests answered 503; full: " + ", ".join(full)
        else:
            components["sip"] = "up"
        components["sip_registered_phones"] = self.sip_directory.registered_count()
        healthy = store_ok and self.sip_error is None and not full
        if self.modem is None:
            components["modem"] = "not configured"
        else:
            state = self.modem.state
            components["modem"] = {
                "phase": state.phase.value,
                "sim": state.sim.value if state.sim else None,
                "operator": state.operator,
                "registration": state.registration.name.lower()
                if state.registration is not None else None,
                "signal_rssi": state.signal.rssi if state.signal else None,
                "signal_dbm": state.signal.dbm if state.signal else None,
                "last_error": state.last_error,
            }
            healthy = healthy and state.phase.value == "ready"
        components["sms_queue"] = await self.messaging.queue_depth()
        gateways = {}
        for gateway in await self.gateways.all():
            status = self.gateways.status(gateway.sid)
            # Names are unique, except in a database an older version let duplicates into
            # (a warning at start): those are listed too, the later ones with their sid.
            key = gateway.friendly_name
            if key in gateways:
                key = f"{key} ({gateway.sid})"
            gateways[key] = {"sid": gateway.sid, "state": status.state,
                             "last_error": status.last_error}
            # Down: refused or unanswered and waiting to retry, or retrying. A first
            # registration or a refresh (no error yet) is not a fault.
            if status.state == "failed" or (status.state == "registering"
                                            and status.last_error is not None):
                healthy = False
        components["gateways"] = gateways
        if self.supervisor is None:
            components["media"] = "no workers ([media] workers = 0): voice apps answer 503"
        else:
            up = sum(1 for w in self.supervisor.workers.values() if w.up)
            components["media"] = {"workers": len(self.supervisor.workers), "up": up,
                                   "app_calls": self.calls.live_count()}
        components["uptime_seconds"] = int(time.monotonic() - self.started_at)
        components["version"] = __version__
        return healthy, components

    def panel(self) -> tuple[bool, int | None]:
        """What the line and signal LEDs show: (line up, the modem's +CSQ rssi or None).

        The line is up while a gateway with Register=true is registered (the trunk only
        registers those) or the modem is registered on the network, home or roaming. The
        signal is None without a modem or while its signal is unknown."""
        line = self.trunk.registered_count() > 0
        rssi: int | None = None
        if self.modem is not None:
            state = self.modem.state
            line = line or state.registration in (RegStatus.HOME, RegStatus.ROAMING)
            rssi = state.signal.rssi if state.signal is not None else None
        return line, rssi

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what is up and where."""
        modem = "no modem"
        if self.modem is not None:
            state = self.modem.state
            modem = f"modem {state.phase.value}"
            if state.signal is not None and state.signal.dbm is not None:
                modem += f", signal {state.signal.dbm} dBm"
            if state.operator:
                modem += f" on {state.operator}"
        if self.sip_error is None:
            sip = (f"SIP on {self.config.sip.listen}, "
                   f"{self.sip_directory.registered_count()} phones registered")
        else:
            sip = f"SIP down ({self.sip_error})"
        line = f"API on {self.config.api.listen}; {sip}; {modem}"
        failing = self.store.write_failure()
        return line if failing is None else f"database writes fail ({failing[0]}); {line}"

    async def wait_modem(self, seconds: float) -> None:
        """Give a configured modem up to SECONDS to become ready (READY=1 waits for it)."""
        if self.modem is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.modem.wait_for(lambda st: st.phase.value == "ready")

    async def stop(self) -> None:
        """Stop everything, the store last. Each step is tried on its own: one that raises
        is logged here (once, with its traceback) and the next ones still run. The SIP
        front door, the CDRs and the store stop in `finally`, each of their steps even if
        an earlier one raised or the stop was cancelled meanwhile: the trunk and proxy tasks
        are cancelled, the transport and front door closed, the checkpoint task cancelled,
        the calls still open closed as far as the store allows, the database closed and the
        instance lock released. Then the first error is raised (`serve` lets it end the
        process, which prints it again)."""
        errors: list[Exception] = []
        # From now on no SMS (part) goes to the modem; the one it has meanwhile gets until
        # "sends" (SEND_GRACE from here) to be answered, so its outcome is known.
        self.messaging.stop_sending()
        try:
            for name, step in (("calls", self.calls.stop), ("media", self._stop_media),
                               ("sends", self.messaging.finish_sending),
                               ("modem", self._stop_modem), ("messaging", self.messaging.stop),
                               ("webhooks", self.webhooks.close), ("api", self._stop_api)):
                await _attempt(name, step, errors)
        finally:
            # SIP before the store: the trunk unregisters first, while the transport still
            # carries the provider's 401/407 and our answer (bounded: trunk.CLOSE_TIMEOUT);
            # the transport stops taking messages, the registrar finishes its binding
            # writes, then the database closes.
            await _attempt_all((("the trunk", self.trunk.close),
                                ("the trunk task", self._cancel_trunk),
                                ("the proxy task", self._cancel_proxy),
                                ("the keep-alive task", self._cancel_pinger),
                                ("the transport", self.transport.stop),
                                ("the front door", self._close_frontdoor),
                                ("the registrar", self.registrar.stop),
                                ("the CDRs", self._stop_calls),
                                ("the SIP MESSAGE rows", self._stop_messages),
                                ("the store", self._stop_store)), errors)
        if errors:
            raise errors[0]
        logger.info("- appliance stopped")

    async def _stop_media(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self._media_dir is not None:
            shutil.rmtree(self._media_dir, ignore_errors=True)

    async def _stop_modem(self) -> None:
        if self.modem is not None:
            await self.modem.__aexit__(None, None, None)

    async def _stop_api(self) -> None:
        await self.api_server.stop()

    async def _cancel_trunk(self) -> None:
        await _cancel(self._trunk_task)
        self._trunk_task = None

    async def _cancel_pinger(self) -> None:
        await _cancel(self._pinger_task)
        self._pinger_task = None

    async def _cancel_proxy(self) -> None:
        await _cancel(self._proxy_task)
        self._proxy_task = None

    async def _close_frontdoor(self) -> None:
        self.frontdoor.close()

    async def _stop_calls(self) -> None:
        """The CDRs: the checkpoint task cancelled, the calls still open closed (best
        effort: logged, the store is closed all the same)."""
        await _cancel(self._checkpoint_task)
        self._checkpoint_task = None
        try:
            closed = await self.call_log.close_all()
        except Exception:  # noqa: BLE001 - logged; the store closes anyway
            logger.exception("x closing the calls still open failed")
        else:
            if closed:
                logger.info("- %d calls still open are closed", closed)
        self.sip_error = "stopped"

    async def _stop_messages(self) -> None:
        """The SIP MESSAGEs still waiting for an answer (none comes now) failed."""
        closed = await self.message_log.close_all()
        if closed:
            logger.info("- %d SIP MESSAGEs still unanswered are failed", closed)

    async def _stop_store(self) -> None:
        try:
            await self.store.close()
        finally:
            self.lock.release()


async def _attempt(name: str, step: Callable[[], Awaitable[None]],
                   errors: list[Exception]) -> None:
    """Run one stop STEP; an error is logged and added to ERRORS, not raised."""
    try:
        await step()
    except Exception as err:  # noqa: BLE001 - logged, raised after the rest
        logger.exception("x stopping %s failed", name)
        errors.append(err)


async def _attempt_all(steps: Sequence[tuple[str, Callable[[], Awaitable[None]]]],
                       errors: list[Exception]) -> None:
    """Each of STEPS in order as `_attempt`, the later ones even if the stop is cancelled
    during an earlier one (each runs in the `finally` of the one before)."""
    if steps:
        (name, step), rest = steps[0], steps[1:]
        try:
            await _attempt(name, step, errors)
        finally:
            await _attempt_all(rest, errors)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel one of the appliance's own background tasks and wait until it is over."""
    if task is not None:
        task.cancel()
        # Waited for, not awaited: awaiting it would take the caller's own cancellation (a
        # stop that is itself cancelled) for the task's, and swallow it.
        await asyncio.wait([task])
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


STATUS_INTERVAL = 15.0
PANEL_INTERVAL = 1.0  # the line and signal LEDs follow the trunk and modem this promptly
MODEM_READY_WAIT = 30.0  # READY=1 waits this long for a configured modem, then goes ahead
# The collector's thresholds once started. With Python's (700, 10, 10) a SIP load ran ~1,100
# young collections and 9 full ones (72 ms each, scanning every lingering transaction) in
# 20 s: ~7 % of the main thread. Few of our objects form cycles, so collecting less often
# costs little memory (bench/README.md, "SIP benchmark").
GC_THRESHOLDS = (20_000, 20, 20)


def factory_reset(data_dir: Path) -> Path | None:
    """Keep a timestamped copy of the database, then remove it and the admin password file.

    The next start creates a fresh database with a new random administrator password.
    """
    db_path = data_dir / "appliance.db"
    kept = keep_copy(db_path) if db_path.exists() else None
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"),
                 data_dir / "admin-password"):
        path.unlink(missing_ok=True)
    logger.warning("- factory reset: database moved to %s", kept)
    return kept


async def _report(appliance: Appliance, indicators: Indicators) -> None:
    """Keep systemd's STATUS= line and the status LED in step with /health (every
    STATUS_INTERVAL), and the line and signal LEDs with the trunk and the modem (every
    PANEL_INTERVAL: both are read from memory, no store query)."""
    next_status = 0.0
    failing = False
    while True:
        try:
            line, rssi = appliance.panel()
            indicators.set_line(line)
            indicators.set_signal(rssi)
            if time.monotonic() >= next_status:
                ok, _ = await appliance.health()
                indicators.set_state(SystemState.HEALTHY if ok else SystemState.FAULT)
                systemd.status(appliance.status_line() if ok
                               else "degraded: " + appliance.status_line())
                next_status = time.monotonic() + STATUS_INTERVAL
            failing = False
        except Exception:
            # This task shares a TaskGroup with the service: a fault in the LEDs or the
            # status line must not stop the appliance. Logged once until it recovers; a
            # health check that cannot even answer is a fault the panel and systemd show.
            if not failing:
                logger.exception("x status and LEDs")
            failing = True
            next_status = time.monotonic() + STATUS_INTERVAL
            with contextlib.suppress(Exception):
                indicators.set_state(SystemState.FAULT)
                systemd.status("degraded: the status check failed (see the log)")
        await asyncio.sleep(PANEL_INTERVAL)


def _warn_if_database_lost(data_dir: Path) -> None:
    """A data dir that was in use (its admin password written, backups taken) has lost its
    database (deleted, or a 0-byte file left by a broken card): SQLite would silently start
    an empty one, with every account gone and a new administrator password."""
    db = data_dir / "appliance.db"
    if db.exists() and db.stat().st_size > 0:
        return
    signs = [name for name, there in (
        ("admin-password", (data_dir / "admin-password").exists()),
        ("backups", any((data_dir / "backups").glob("*.db")))) if there]
    if signs:
        logger.warning("x no database at %s, although this data dir was in use (%s): starting "
                       "with an EMPTY one and a new administrator password. To get the "
                       "accounts back, stop the appliance and `appliance restore` a backup",
                       db, " and ".join(signs))


async def _unless(stop: asyncio.Event, work: Awaitable[None]) -> None:
    """WORK, cut short when STOP is set: a SIGTERM during the start-up wait for a modem that
    is not ready (SIM busy, unplugged) stops at once, not when the wait ends."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopping):
            pending.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then shut down in order.

    A 10-second press of the front-panel button asks for a factory reset: the appliance stops,
    keeps a copy of the database, and starts again on a fresh one.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reset_requested = False

    def request_reset() -> None:
        nonlocal reset_requested
        reset_requested = True
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    indicators = open_indicators(config.gpio, on_factory_reset=request_reset,
                                 address=primary_address)
    try:
        while True:
            indicators.set_state(SystemState.BOOTING)
            appliance = Appliance(config)
            try:
                await appliance.start()
                # Start-up objects live as long as the process: the collector need not
                # scan them again and again under load (bench/README.md, "SIP benchmark").
                gc.collect()
                gc.freeze()
                gc.set_threshold(*GC_THRESHOLDS)
                # Importing and starting freed a few MB that glibc keeps mapped in its
                # heaps (module source read for unmarshalling, the migrations' garbage):
                # give them back, ~4.5 MB of idle RSS (issue #3). A few ms, once.
                memory.give_back()
                await _unless(stop, appliance.wait_modem(MODEM_READY_WAIT))
                systemd.ready(appliance.status_line())
                watchdog = systemd.Watchdog([appliance.store.ping])
                async with asyncio.TaskGroup() as tasks:
                    background = [tasks.create_task(watchdog.run()),
                                  tasks.create_task(_report(appliance, indicators))]
                    await stop.wait()
                    for task in background:
                        task.cancel()
            finally:
                systemd.stopping("factory reset" if reset_requested else "stopping")
                await appliance.stop()
            if not reset_requested:
                break
            factory_reset(config.data_dir)
            reset_requested = False
            stop.clear()
            systemd.reloading()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        indicators.close()
