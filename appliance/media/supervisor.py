"""Supervisor: runs the media worker processes and keeps them running.

Each worker gets its own SIP port on 127.0.0.1, its own slice of the RTP range and its own
control socket. The supervisor waits for ``ready``, restarts a worker that exits (back-off
from 0.5 s doubling to 30 s, reset after a minute of good health), kills one whose pj thread
stops beating, and reports the legs of a dead worker as ended (reason ``worker-died``) so
the pool fails those calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from appliance import logsetup
from appliance.media import protocol as p
from appliance.media.client import WorkerClient
from appliance.media.engine import WorkerGone

logger = logging.getLogger(__name__)

PJSUA_CALL_CAP = 4  # the PyPI wheel's PJSUA_MAX_CALLS (sip.md §1.3 #1)
_PORTS_PER_CALL = 2  # RTP + RTCP
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
_STABLE_S = 60.0  # a worker up this long resets the back-off

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

WorkerEventHandler = Callable[[str, p.Event], None]


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    id: str
    sip_port: int
    rtp_ports: tuple[int, int]
    control: str
    max_calls: int = PJSUA_CALL_CAP
    public_address: str = ""


def plan_workers(count: int, rtp_ports: tuple[int, int], runtime_dir: Path, *,
                 sip_ports: Sequence[int] | None = None, max_calls: int = PJSUA_CALL_CAP,
                 public_address: str = "", avoid: Collection[int] = ()) -> list[WorkerSpec]:
    """Split ``rtp_ports`` into ``count`` even-aligned slices, one per worker.

    ``sip_ports`` default to free UDP ports on 127.0.0.1 picked now (kept across restarts,
    so the front door's routes stay valid), none in AVOID (ports the appliance binds later,
    free when picked: its own SIP port) and no two the same.
    """
    lo, hi = rtp_ports
    size = ((hi - lo + 1) // max(count, 1)) & ~1
    if size < max_calls * _PORTS_PER_CALL + 2:
        raise ValueError(f"rtp_ports {lo}-{hi} too small for {count} workers")
    if sip_ports is not None and len(sip_ports) < count:
        raise ValueError("not enough sip ports")
    specs = []
    taken = set(avoid)
    for i in range(count):
        control = str(runtime_dir / f"media-{i}.sock")
        if len(control) > _MAX_SOCKET_PATH:
            raise ValueError(f"socket path too long for AF_UNIX: {control}")
        start = lo + i * size
        sip_port = sip_ports[i] if sip_ports is not None else free_udp_port(taken)
        taken.add(sip_port)
        specs.append(WorkerSpec(
            id=str(i), sip_port=sip_port,
            rtp_ports=(start, start + size - 1), control=control, max_calls=max_calls,
            public_address=public_address))
    return specs


def free_udp_port(avoid: Collection[int] = ()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


@dataclasses.dataclass(eq=False)
class WorkerHandle:
    """What the supervisor knows about one worker; read by the pool."""

    spec: WorkerSpec
    client: WorkerClient | None = None
    ready: p.Ready | None = None
    proc: asyncio.subprocess.Process | None = None
    legs: set[str] = dataclasses.field(default_factory=set)
    restarts: int = 0
    last_beat: float = 0.0
    beat_age: float = 0.0
    up_event: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def up(self) -> bool:
        return self.client is not None and self.ready is not None and not self.client.closed


class Supervisor:
    def __init__(self, specs: Sequence[WorkerSpec], *, on_event: WorkerEventHandler,
                 on_worker_down: Callable[[str], None] | None = None,
                 python: str = sys.executable, ready_timeout: float = 15.0,
                 backoff: tuple[float, float] = (0.5, 30.0),
                 heartbeat_timeout: float = 5.0, pj_log_level: int = 1,
                 log_level: str | None = None) -> None:
        """LOG_LEVEL is the workers' ``--log-level``; None: the main process's level when
        each worker starts (logsetup.current_level)."""
        self._handles = {s.id: WorkerHandle(s) for s in specs}
        self._on_event = on_event
        self._on_worker_down = on_worker_down
        self._python = python
        self._ready_timeout = ready_timeout
        self._backoff = backoff
        self._hb_timeout = heartbeat_timeout
        self._pj_log_level = pj_log_level
        self._log_level = log_level
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def workers(self) -> Mapping[str, WorkerHandle]:
        return self._handles

    async def start(self, *, seconds: float | None = None) -> None:
        """Spawn every worker and wait until all are ready (TimeoutError if not)."""
        for h in self._handles.values():
            task = asyncio.create_task(self._keep(h), name=f"media-worker-{h.spec.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        async with asyncio.timeout(seconds or self._ready_timeout):
            for h in self._handles.values():
                await h.up_event.wait()

    async def stop(self, seconds: float = 5.0) -> None:
        """Shut every worker down cleanly (SIGKILL after ``seconds``); no restarts."""
        self._stopping = True
        await asyncio.gather(*(self._stop_one(h, seconds) for h in self._handles.values()))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def request(self, worker: str, cmd: p.Command, *,
                      seconds: float = 5.0) -> p.Reply:
        h = self._handles[worker]
        if not h.up or h.client is None:
            raise WorkerGone(f"media worker {worker} is down")
        leg = getattr(cmd, "leg", None)
        if isinstance(cmd, p.Dial):
            h.legs.add(cmd.leg)  # known before any event, so a crash still reports it
        try:
            return await h.client.request(cmd, seconds=seconds)
        except Exception:
            if isinstance(cmd, p.Dial) and leg is not None:
                h.legs.discard(leg)
            raise

    def kill(self, worker: str) -> None:
        """SIGKILL a worker (wedged pj thread; tests). The supervisor restarts it."""
        proc = self._handles[worker].proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)

    # ------------------------------------------------------------------ internals

    async def _keep(self, h: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff[0]
        while not self._stopping:
            started = loop.time()
            try:
                await self._run_once(h)
            except Exception:
                logger.exception("x media worker %s failed", h.spec.id)
            self._down(h)
            if self._stopping:
                return
            if loop.time() - started > _STABLE_S:
                delay = self._backoff[0]
            logger.warning("x media worker %s exited; restart in %.1f s", h.spec.id, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])
            h.restarts += 1

    async def _run_once(self, h: WorkerHandle) -> None:
        s = h.spec
        args = ["-m", "appliance.media.worker", "--control", s.control,
                "--sip-port", str(s.sip_port), "--rtp-ports", f"{s.rtp_ports[0]}-{s.rtp_ports[1]}",
                "--max-calls", str(s.max_calls), "--id", s.id,
                "--pj-log-level", str(self._pj_log_level),
                "--log-level", self._log_level or logsetup.current_level(),
                "--log-format", logsetup.worker_format(s.id)]
        if s.public_address:
            args += ["--public-address", s.public_address]
        env = dict(os.environ)
        root = _PACKAGE_ROOT  # so `-m appliance…` always imports
        env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH")) if x)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s.control)  # a stale socket would be mistaken for the new worker's
        proc = h.proc = await asyncio.create_subprocess_exec(
            self._python, *args, stdin=asyncio.subprocess.DEVNULL, env=env)
        try:
            client = await self._connect(h, proc)
            if client is None:
                return
            h.client = client
            h.ready = await client.wait_ready(self._ready_timeout)
            h.last_beat = asyncio.get_running_loop().time()
            logger.info("- media worker %s up: pid %d, sip 127.0.0.1:%d", s.id, proc.pid,
                        s.sip_port)
            h.up_event.set()
            waits = [asyncio.create_task(proc.wait()), asyncio.create_task(client.wait_closed()),
                     asyncio.create_task(self._watchdog(h))]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        finally:
            if proc.returncode is None and not self._stopping:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await proc.wait()
            if h.client is not None:
                await h.client.close()

    async def _connect(self, h: WorkerHandle,
                       proc: asyncio.subprocess.Process) -> WorkerClient | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        while loop.time() < deadline:
            if proc.returncode is not None:
                logger.error("x media worker %s exited with %s before ready", h.spec.id,
                             proc.returncode)
                return None
            try:
                return await WorkerClient.connect(
                    h.spec.control, on_event=lambda ev: self._event(h, ev))
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.05)
        logger.error("x media worker %s: no control socket after %.0f s", h.spec.id,
                     self._ready_timeout)
        return None

    async def _watchdog(self, h: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            silent = loop.time() - h.last_beat
            if silent > self._hb_timeout or h.beat_age > self._hb_timeout:
                logger.error("x media worker %s wedged (no beat for %.1f s, pj age %.1f s); "
                             "killing it", h.spec.id, silent, h.beat_age)
                self.kill(h.spec.id)
                return

    def _event(self, h: WorkerHandle, ev: p.Event) -> None:
        if isinstance(ev, p.Heartbeat):
            h.last_beat = asyncio.get_running_loop().time()
            h.beat_age = ev.age
            return
        if isinstance(ev, p.LegEvent):
            if ev.state == "ended":
                h.legs.discard(ev.leg)
            else:
                h.legs.add(ev.leg)
        self._on_event(h.spec.id, ev)

    def _down(self, h: WorkerHandle) -> None:
        was_up = h.ready is not None
        h.client, h.ready = None, None
        h.up_event.clear()
        legs, h.legs = h.legs, set()
        for leg in sorted(legs):
            self._on_event(h.spec.id, p.LegEvent(leg=leg, state="ended", code=500,
                                                 reason=p.REASON_WORKER_DIED))
        if was_up and self._on_worker_down is not None:
            self._on_worker_down(h.spec.id)

    async def _stop_one(self, h: WorkerHandle, seconds: float) -> None:
        proc = h.proc
        if h.up and h.client is not None:
            with contextlib.suppress(Exception):
                await h.client.request(p.Shutdown(), seconds=seconds)
        if proc is not None and proc.returncode is None:
            try:
                async with asyncio.timeout(seconds):
                    await proc.wait()
            except TimeoutError:
                logger.error("x media worker %s ignored shutdown; killing it", h.spec.id)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
