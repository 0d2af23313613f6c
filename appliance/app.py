"""Main-process composition root: config -> store -> services -> API; signals; shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance.api.app import make_app
from appliance.api.context import ApiServices
from appliance.config import Config
from appliance.services.accounts import AccountService
from appliance.services.history import HistoryService
from appliance.services.provisioning import ProvisioningService
from appliance.store.db import Store

logger = logging.getLogger(__name__)

REALM_SETTING = "sip_realm"


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


class Appliance:
    """Everything the main process runs, built from one Config."""

    def __init__(self, config: Config, clock: Callable[[], datetime] = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.store = Store(config.data_dir / "appliance.db")
        self.realm = ""
        self.accounts = AccountService(self.store, clock)
        self.provisioning = ProvisioningService(self.store, clock, lambda: self.realm)
        self.accounts.linked = self.provisioning
        self.history = HistoryService(self.store, clock, self.accounts.scope_sids)
        self.started_at = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.api_address: tuple[str, int] | None = None

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        default_realm = self.config.sip.domain or primary_address()
        stored = await self.store.set_setting_if_absent(REALM_SETTING, default_realm)
        # An explicit [sip] domain wins; otherwise keep the realm chosen on first start, so an
        # address change never invalidates the stored HA1 hashes (api-behaviour.md §8.2.2).
        self.realm = self.config.sip.domain or stored
        await self.accounts.bootstrap_admin(self.config.admin.email, self.config.admin.password,
                                            self.config.data_dir)
        await self.accounts.load()
        services = ApiServices(accounts=self.accounts, provisioning=self.provisioning,
                               history=self.history, health=self.health,
                               public_base=self._public_base())
        app = make_app(services)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        listen = self.config.api.listen
        site = web.TCPSite(self._runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        if self._runner.addresses:
            self.api_address = tuple(self._runner.addresses[0][:2])  # type: ignore[assignment]
        logger.info("- appliance %s: API on %s, data in %s", __version__, listen,
                    self.config.data_dir)

    def _public_base(self) -> str:
        listen = self.config.api.listen
        host = listen.host if listen.host not in ("0.0.0.0", "::") else primary_address()
        return f"http://{host}:{listen.port}"

    async def health(self) -> tuple[bool, dict[str, Any]]:
        components: dict[str, Any] = {}
        try:
            async with asyncio.timeout(2):
                store_ok = await self.store.ping()
        except (TimeoutError, RuntimeError, OSError) as err:
            store_ok = False
            components["store_error"] = str(err) or type(err).__name__
        components["store"] = "up" if store_ok else "down"
        components["api"] = "up"
        components["sip"] = "not built in this version"
        components["modem"] = ("not configured" if not self.config.modem.device
                               else "configured, driver not built in this version")
        components["media"] = "not built in this version"
        components["uptime_seconds"] = int(time.monotonic() - self.started_at)
        components["version"] = __version__
        return store_ok, components

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.store.close()
        logger.info("- appliance stopped")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then shut down in order."""
    appliance = Appliance(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await appliance.start()
        await stop.wait()
        logger.info("- stopping on signal")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await appliance.stop()
