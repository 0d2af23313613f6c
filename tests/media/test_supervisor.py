"""Supervisor + WorkerPool with real worker processes: readiness, a call through the pool,
capacity, and a killed worker restarted with its legs reported ended."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from pathlib import Path

import pytest

from appliance.media import protocol as p
from appliance.media.engine import (
    HangupCause,
    LegChanged,
    LegId,
    LegState,
    MediaEvent,
    NoCapacity,
)
from appliance.media.pool import WorkerPool
from appliance.media.supervisor import Supervisor, plan_workers
from tests.media.conftest import Events, rtp_slice

pytest.importorskip("pjsua2")


def test_plan_workers_slices_rtp_ports(tmp_path: Path) -> None:
    specs = plan_workers(3, (10000, 10999), Path("/run/x"), sip_ports=[5071, 5072, 5073])
    assert [s.rtp_ports for s in specs] == [(10000, 10331), (10332, 10663), (10664, 10995)]
    assert [s.sip_port for s in specs] == [5071, 5072, 5073]
    assert specs[1].control == "/run/x/media-1.sock"
    with pytest.raises(ValueError):
        plan_workers(64, (10000, 10100), Path("/run/x"))
    with pytest.raises(ValueError):
        plan_workers(1, (10000, 10999), Path("/x" * 60))


def test_worker_sip_ports_avoid_the_appliances_own_and_each_other(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may hand out a port that is free now yet bound later: the appliance's own
    SIP port before its start, or the port just picked for another worker."""
    from appliance.media import supervisor

    offered = iter([5080, 5080, 5090, 5090, 6000])

    class Socket:  # what the kernel would answer to bind(0)
        def __init__(self, *_: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def bind(self, _: object) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(supervisor.socket, "socket", Socket)
    specs = plan_workers(2, (10000, 10999), Path("/run/x"), avoid={5090})
    assert [s.sip_port for s in specs] == [5080, 6000]


async def test_pool_over_supervised_workers(sock_dir: Path, phones) -> None:
    lo, _ = rtp_slice(80)
    specs = plan_workers(2, (lo, lo + 79), sock_dir, max_calls=1)
    pool = WorkerPool()
    sup = Supervisor(specs, on_event=pool.on_worker_event, on_worker_down=pool.on_worker_down,
                     backoff=(0.1, 1.0))
    pool.attach(sup)
    events = Events()
    pool.subscribe(events.add)
    await sup.start()
    try:
        assert all(h.up for h in sup.workers.values())
        # One call per worker (max_calls=1): the third reservation finds no capacity.
        slot = await pool.reserve_incoming(LegId("CAone"))
        other = await pool.reserve_incoming()
        assert {slot.worker, other.worker} == {"0", "1"}
        with pytest.raises(NoCapacity):
            await pool.reserve_incoming()
        phone = await phones("--call", f"sip:app@{slot.host}:{slot.port}",
                             "--header", f"X-Leg-Id:{slot.leg}", "--tone", "300",
                             "--timeout", "15")
        incoming: LegChanged = await events.wait_for(
            lambda e: isinstance(e, LegChanged) and e.state is LegState.INCOMING)
        assert incoming.leg == "CAone"
        await pool.answer(incoming.leg)
        await events.wait_for(lambda e: isinstance(e, LegChanged)
                              and e.state is LegState.ANSWERED)
        # Kill the worker holding the call: the leg ends with WORKER_DIED, the worker returns.
        victim = sup.workers[slot.worker]
        old_pid = victim.ready.pid if victim.ready else 0
        sup.kill(slot.worker)
        ended: MediaEvent = await events.wait_for(
            lambda e: isinstance(e, LegChanged) and e.state is LegState.ENDED
            and e.leg == "CAone")
        assert isinstance(ended, LegChanged) and ended.cause is HangupCause.WORKER_DIED
        async with asyncio.timeout(10):
            await victim.up_event.wait()
        assert victim.restarts == 1 and victim.ready and victim.ready.pid != old_pid
        reply = await sup.request(slot.worker, p.Ping())
        assert reply.ok and reply.heartbeat_age is not None
        phone.kill()
    finally:
        await sup.stop()
        await pool.close()
    assert all(h.proc and h.proc.returncode == 0 for h in sup.workers.values())


async def test_wedged_worker_is_killed_and_restarted(sock_dir: Path) -> None:
    lo, _ = rtp_slice(40)
    specs = plan_workers(1, (lo, lo + 39), sock_dir)
    downs: list[str] = []
    sup = Supervisor(specs, on_event=lambda w, e: None, on_worker_down=downs.append,
                     backoff=(0.1, 1.0), heartbeat_timeout=1.5)
    await sup.start()
    try:
        h = sup.workers["0"]
        assert h.proc is not None and h.ready is not None
        os.kill(h.proc.pid, signal.SIGSTOP)  # no heartbeats from here on
        first_pid = h.ready.pid
        async with asyncio.timeout(8):
            while not (h.up and h.ready and h.ready.pid != first_pid):
                await asyncio.sleep(0.1)
        assert downs == ["0"] and h.restarts == 1
    finally:
        await sup.stop()


async def test_workers_log_at_the_main_process_level_and_format(
        sock_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """`appliance serve --log-level warning` left the workers at INFO, in a format of their
    own (`2026-11-30 16:03:30,452 media-0 INFO - worker 0 ready…`). The workers write to the
    main process's stderr, which capfd reads here."""
    main = logging.getLogger("appliance")
    saved = main.level
    lo, _ = rtp_slice(40)
    try:
        for level in ("warning", "info"):
            main.setLevel(level.upper())
            sup = Supervisor(plan_workers(1, (lo, lo + 39), sock_dir),
                             on_event=lambda w, e: None)
            await sup.start()
            try:
                assert sup.workers["0"].ready is not None
            finally:
                await sup.stop()
            err = capfd.readouterr().err
            info = [line for line in err.splitlines() if line.startswith("INFO")]
            if level == "warning":
                assert not info and "worker 0 ready" not in err, err
            else:
                assert any(re.fullmatch(r"INFO appliance\.media\.worker\S*\[media-0\]: "
                                        r"- worker 0 ready: .*", line) for line in info), err
            assert not re.search(r"^\d{4}-\d\d-\d\d ", err, re.M), err  # no own timestamps
    finally:
        main.setLevel(saved)
