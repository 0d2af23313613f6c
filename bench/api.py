"""REST API throughput and latency benchmark (run on demand; not part of the test suite).

    .venv/bin/python bench/api.py [--duration 10] [--warmup 1] [--connections 50]

One run (see bench/README.md):

1. prepares two temporary data dirs with the appliance itself (``python -m appliance serve``,
   its own process, on 127.0.0.1): "large" gets 100 Clients created through the API and
   100,000 CDRs, "small" 1,000 CDRs; CDRs go straight into the SQLite file through
   ``Store.insert_calls`` while no server runs;
2. serves both and measures serial (one connection) latency of ``Calls.json?PageSize=50`` on
   each, alternating between them, to show list latency does not grow with the table;
3. measures requests/s and p50/p99 at 50 keep-alive connections for ``Clients.json`` and
   ``Calls.json?PageSize=50`` with Basic auth: once repeating the URL (the response cache
   answers) and once with a new, ignored query parameter per request (every request reaches
   SQLite and the renderer);
4. measures a bare aiohttp handler (another process) answering the same bytes and headers
   for the same URLs, and prints the appliance/bare ratios against the targets.

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio protocols, in separate
process(es), checking status and body of every response; it costs far less CPU per request
than the server under test, and the client CPU column shows whether it was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import multiprocessing as mp
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from appliance import models  # noqa: E402
from appliance.store.db import Store  # noqa: E402

ADMIN_SID = "ACae6e420f425248d6a26948c17a9e2acf"
HOST = "127.0.0.1"
API = f"/restcomm/{models.API_VERSION}/Accounts/{ADMIN_SID}"
CLIENTS_URL = f"{API}/Clients.json"
CALLS_URL = f"{API}/Calls.json?PageSize=50"
N_CLIENTS = 100
SMALL_TABLE = 1_000
LARGE_TABLE = 100_000
INSERT_BATCH = 10_000
SERIAL_ROUNDS = 3
TARGET_RATIO = 0.6
TARGET_P99_MS = 10.0


# -- helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of PID from /proc (Linux); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_request(path: str, port: int, auth: str | None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


# -- load generator (runs in worker processes) ---------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection: send, read one Content-Length response, repeat."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buf = bytearray()
        self.sent = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None  # noqa: S101
        self.sent = time.perf_counter_ns()
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.run.fail("response without Content-Length")
            return
        eol = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:eol if eol >= 0 else len(head)])
        total = head_end + 4 + length
        if len(self.buf) < total:
            return
        now = time.perf_counter_ns()
        ok = head[9:12] == b"200" and self.buf[head_end + 4:total] == self.run.expected
        del self.buf[:total]
        if self.run.record(self.sent, now, ok):
            self.send()
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


class _Run:
    def __init__(self, request: bytes, expected: bytes, warmup_ns: int, duration_ns: int,
                 max_requests: int, bust: bool) -> None:
        self.request = request
        # With BUST every request gets its own URL (an extra query parameter the API ignores,
        # so the body is unchanged), which defeats any response cache.
        self.bust = bust
        self.head, _, self.tail = request.partition(b" HTTP/1.1\r\n")
        self.separator = b"&" if b"?" in self.head else b"?"
        self.count = 0
        self.expected = expected
        start = time.perf_counter_ns()
        self.measure_from = start + warmup_ns
        self.stop_at = self.measure_from + duration_ns
        self.max_requests = max_requests
        self.latencies = array("d")
        self.errors = 0
        self.error_text = ""
        self.open = 0
        self.done = asyncio.get_running_loop().create_future()
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None
        self.first_measured: int | None = None
        self.last_measured = 0

    def next_request(self) -> bytes:
        if not self.bust:
            return self.request
        self.count += 1
        return b"%s%sBenchNonce=%d-%d HTTP/1.1\r\n%s" % (
            self.head, self.separator, os.getpid(), self.count, self.tail)

    def record(self, sent: int, now: int, ok: bool) -> bool:
        if sent >= self.measure_from:
            if self.cpu_start is None:
                self.cpu_start = time.process_time()
                self.first_measured = sent
            if ok:
                self.latencies.append((now - sent) / 1e6)
            else:
                self.errors += 1
            self.last_measured = now
        if now >= self.stop_at or len(self.latencies) >= self.max_requests:
            if self.cpu_end is None:
                self.cpu_end = time.process_time()
            return False
        return True

    def fail(self, text: str) -> None:
        self.errors += 1
        self.error_text = text

    def lost(self, conn: _Conn) -> None:
        self.open -= 1
        if self.open == 0 and not self.done.done():
            self.done.set_result(None)


async def _drive(port: int, request: bytes, expected: bytes, connections: int, warmup: float,
                 duration: float, max_requests: int, bust: bool) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    run = _Run(request, expected, int(warmup * 1e9), int(duration * 1e9), max_requests, bust)
    for _ in range(connections):
        await loop.create_connection(lambda: _Conn(run), HOST, port)
        run.open += 1
    await asyncio.wait_for(run.done, warmup + duration + 30)
    window_ns = run.last_measured - (run.first_measured or run.last_measured)
    cpu = ((run.cpu_end or time.process_time()) - (run.cpu_start or 0.0)
           if run.cpu_start is not None else 0.0)
    return {"latencies": run.latencies.tobytes(), "errors": run.errors,
            "error_text": run.error_text, "window": window_ns / 1e9, "cpu": cpu}


def _worker(out: Connection, port: int, request: bytes, expected: bytes, connections: int,
            warmup: float, duration: float, max_requests: int, bust: bool) -> None:
    try:
        out.send(asyncio.run(_drive(port, request, expected, connections, warmup, duration,
                                    max_requests, bust)))
    finally:
        out.close()


@dataclasses.dataclass
class Result:
    requests: int
    errors: int
    rps: float
    p50: float
    p99: float
    client_cpu: float  # busiest client process: CPU seconds / wall seconds
    server_cpu: float | None
    latencies: list[float] = dataclasses.field(repr=False, default_factory=list)


def merged(results: Sequence[Result]) -> Result:
    """Several short runs as one: all their latencies, their summed requests and errors."""
    latencies = sorted(v for r in results for v in r.latencies)
    return Result(len(latencies), sum(r.errors for r in results),
                  statistics.fmean(r.rps for r in results), percentile(latencies, 0.50),
                  percentile(latencies, 0.99), max(r.client_cpu for r in results), None,
                  latencies)


def load(port: int, path: str, auth: str | None, expected: bytes, *, connections: int,
         processes: int, warmup: float, duration: float, max_requests: int,
         server_pid: int | None, bust: bool = False) -> Result:
    """CONNECTIONS keep-alive connections split over PROCESSES client processes."""
    ctx = mp.get_context("spawn")
    request = raw_request(path, port, auth)
    procs: list[tuple[mp.process.BaseProcess, Connection]] = []
    share = [connections // processes + (1 if i < connections % processes else 0)
             for i in range(processes)]
    for n in share:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(child, port, request, expected, n, warmup,
                                                 duration, max_requests // processes, bust))
        proc.start()
        child.close()
        procs.append((proc, parent))
    time.sleep(0.2 + warmup)  # the workers start measuring after their own warm-up
    cpu_before = cpu_seconds(server_pid) if server_pid else None
    wall_before = time.monotonic()
    outputs = []
    for worker, parent in procs:
        outputs.append(parent.recv())
        worker.join()
    cpu_after = cpu_seconds(server_pid) if server_pid else None
    wall = time.monotonic() - wall_before
    latencies: list[float] = []
    errors = 0
    rps = 0.0
    client_cpu = 0.0
    for out in outputs:
        values = array("d")
        values.frombytes(out["latencies"])
        latencies.extend(values)
        errors += int(out["errors"])
        if out["error_text"]:
            print(f"  ! client error: {out['error_text']}", file=sys.stderr)
        window = float(out["window"]) or 1.0
        rps += len(values) / window
        client_cpu = max(client_cpu, float(out["cpu"]) / window)
    latencies.sort()
    server_cpu = ((cpu_after - cpu_before) / wall
                  if cpu_before is not None and cpu_after is not None else None)
    return Result(len(latencies), errors, rps, percentile(latencies, 0.50),
                  percentile(latencies, 0.99), client_cpu, server_cpu, latencies)


def serial(port: int, path: str, auth: str, expected: bytes, seconds: float, bust: bool
           ) -> Result:
    return load(port, path, auth, expected, connections=1, processes=1, warmup=0.2,
                duration=seconds, max_requests=1 << 30, server_pid=None, bust=bust)


# -- the bare handler (a separate process) -----------------------------------------------------


def _bare_main(port: int, responses: dict[str, tuple[str, bytes]]) -> None:
    from aiohttp import web

    def handler_for(content_type: str, body: bytes):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body, headers={"Content-Type": content_type})
        return handler

    app = web.Application()
    for path, (content_type, body) in responses.items():
        app.router.add_get(path, handler_for(content_type, body))
    web.run_app(app, host=HOST, port=port, access_log=None, print=None,
                handle_signals=True)


# -- the appliance (a separate process) and its data --------------------------------------------


class ApplianceProcess:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.port = port
        self.config = data_dir.parent / f"{data_dir.name}.toml"
        self.config.write_text(
            f'data_dir = "{data_dir}"\n\n[api]\nlisten = "{HOST}:{port}"\n\n'
            f'[sip]\nlisten = "{HOST}:{free_port()}"\ndomain = "pbx.bench.invalid"\n')
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ApplianceProcess:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "appliance", "serve", "--config", str(self.config),
             "--log-level", "warning"], cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"appliance exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health",  # noqa: S310
                                            timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("appliance did not answer /health within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101
        return self.proc.pid


def fetch(port: int, path: str, auth: str | None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}")  # noqa: S310
    if auth:
        req.add_header("Authorization", auth)
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return resp.status, resp.headers["Content-Type"], resp.read()


def raw_head(port: int, path: str, auth: str | None) -> list[str]:
    """The response's header names and values, Date excepted, as the wire carries them."""
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(raw_request(path, port, auth))
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return [line for line in lines if not line.lower().startswith("date:")]


def create_clients(port: int, auth: str, count: int) -> None:
    import urllib.parse

    for i in range(count):
        body = urllib.parse.urlencode({
            "Login": f"bench{i:03d}", "Password": f"Bench-{i:03d}-Kq7vZt",
            "FriendlyName": f"Bench client {i}",
            "VoiceUrl": f"http://apps.bench.invalid/voice/{i}" if i % 3 == 0 else "",
        }).encode()
        req = urllib.request.Request(f"http://{HOST}:{port}{API}/Clients.json",  # noqa: S310
                                     data=body, method="POST")
        req.add_header("Authorization", auth)
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            if resp.status != 200:
                raise RuntimeError(f"creating client {i}: HTTP {resp.status}")


_STATUSES = ("completed", "completed", "completed", "no-answer", "busy", "failed",
             "canceled", "in-progress")
_DIRECTIONS = ("inbound", "outbound-api", "outbound-dial")


def make_calls(rng: random.Random, count: int, start: datetime, span: timedelta
               ) -> list[models.CallRecord]:
    calls = []
    for _ in range(count):
        created = start + timedelta(seconds=rng.uniform(0, span.total_seconds()))
        status = rng.choice(_STATUSES)
        answered = status in ("completed", "in-progress")
        duration = rng.randint(1, 1800) if answered else 0
        begin = created + timedelta(seconds=rng.randint(0, 30))
        client = f"client:bench{rng.randrange(N_CLIENTS):03d}"
        number = f"+1555{rng.randrange(10_000_000):07d}"
        inbound = rng.random() < 0.5
        calls.append(models.CallRecord(
            sid=models.CallSid(f"CA{rng.getrandbits(128):032x}"), instance_id=None,
            account_sid=models.AccountSid(ADMIN_SID), parent_call_sid=None,
            to=client if inbound else number, from_=number if inbound else client,
            phone_number_sid=None, status=status,
            start_time=begin if answered else None,
            end_time=begin + timedelta(seconds=duration) if answered else None,
            duration=duration, price=None, price_unit="USD",
            direction=rng.choice(_DIRECTIONS), answered_by=None,
            api_version=models.API_VERSION, forwarded_from=None,
            caller_name=f"Caller {rng.randrange(1000)}" if rng.random() < 0.3 else None,
            conference_sid=None, ring_duration=rng.randint(0, 25),
            date_created=created, date_updated=created + timedelta(seconds=duration + 31)))
    return calls


def insert_calls(db_path: Path, count: int, rng: random.Random) -> None:
    """COUNT more CDRs for the admin account, in batches, through the store's own insert."""
    async def run() -> None:
        store = Store(db_path)
        await store.open()
        try:
            start = datetime(2025, 1, 1, tzinfo=UTC)
            for done in range(0, count, INSERT_BATCH):
                batch = make_calls(rng, min(INSERT_BATCH, count - done), start,
                                   timedelta(days=365))
                await store.insert_calls(batch)
        finally:
            await store.close()
    asyncio.run(run())


# -- the run ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    url: str
    cached: Result  # the same URL again and again: the response cache answers
    uncached: Result  # a new URL each time: every request reaches SQLite and the renderer
    bare: Result


def start_bare(responses: dict[str, tuple[str, bytes]]) -> tuple[mp.process.BaseProcess, int]:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=_bare_main, args=(port, responses),
                                           daemon=True)
    proc.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or not proc.is_alive():
                raise RuntimeError("the bare server did not start") from None
            time.sleep(0.1)


def stop_bare(proc: mp.process.BaseProcess) -> None:
    if proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
    proc.join(10)
    if proc.is_alive():
        proc.kill()


def line(label: str, url: str, r: Result) -> str:
    srv = f"{r.server_cpu:6.0%}" if r.server_cpu is not None else "    n/a"
    return (f"{url:<24} {label:<18} {r.rps:8.0f} {r.p50:8.2f} {r.p99:8.2f} {r.errors:6d} "
            f"{srv:>7} {r.client_cpu:6.0%}")


def report(args: argparse.Namespace, rows: list[Row], small: int,
           serial_runs: dict[tuple[int, bool], Result]) -> bool:
    print()
    print(f"Throughput and latency at {args.connections} keep-alive connections "
          f"({args.client_processes} client process(es), {args.duration:g} s measured each)")
    header = (f"{'URL':<24} {'server':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'errors':>6} {'srv CPU':>7} {'cli CPU':>7}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(line("appliance", row.url, row.cached))
        print(line("appliance uncached", row.url, row.uncached))
        print(line("bare aiohttp", row.url, row.bare))
    print()
    print(f"{'URL':<33} {'appliance/bare req/s':>20} {'(target >= 0.6)':>15}  "
          f"{'p99 ms':>7} {'(target < 10)':>13}")
    ok = True
    for row in rows:
        for label, r in (("", row.cached), (" uncached", row.uncached)):
            ratio = r.rps / row.bare.rps if row.bare.rps else float("nan")
            r_ok, p_ok = ratio >= TARGET_RATIO, r.p99 < TARGET_P99_MS
            if not label:
                ok = ok and r_ok and p_ok
            print(f"{row.url + label:<33} {ratio:20.3f} {'ok' if r_ok else 'MISS':>15}  "
                  f"{r.p99:7.2f} {'ok' if p_ok else 'MISS':>13}")
    print("(bare aiohttp p99: " + ", ".join(f"{row.url} {row.bare.p99:.2f} ms" for row in rows)
          + ")")
    print()
    print("List latency vs table size: Calls.json?PageSize=50, one connection, serial")
    print(f"{'rows':>9} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9}   "
          f"{'uncached p50':>12} {'p99 ms':>8} {'requests':>9}")
    for size in sorted({k[0] for k in serial_runs}):
        c, u = serial_runs[(size, False)], serial_runs[(size, True)]
        print(f"{size:9,} {c.p50:8.2f} {c.p99:8.2f} {c.requests:9d}   "
              f"{u.p50:12.2f} {u.p99:8.2f} {u.requests:9d}")
    sizes = sorted({k[0] for k in serial_runs})
    growth = serial_runs[(sizes[-1], True)].p50 / serial_runs[(sizes[0], True)].p50
    flat = growth < 1.5
    print(f"uncached p50 {sizes[-1]:,} rows / {sizes[0]:,} rows: {growth:.2f} "
          f"({'flat' if flat else 'GROWS'})")
    ok = ok and flat
    if any(r.client_cpu > 0.9 for row in rows for r in (row.cached, row.uncached, row.bare)):
        print("\nwarning: a client process was above 90% CPU; the load generator may be the "
              "limit (try --client-processes 2)")
    errors = sum(r.errors for row in rows for r in (row.cached, row.uncached, row.bare))
    errors += sum(r.errors for r in serial_runs.values())
    if errors:
        print(f"\nwarning: {errors} responses were not 200 with the expected body")
    print(f"\nall targets met: {'yes' if ok else 'no'}")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds per load run (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="unmeasured seconds before each load run (default 1)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=1,
                        help="load generator processes (default 1; the machine has "
                             f"{os.cpu_count()} CPUs and the server needs one)")
    parser.add_argument("--max-requests", type=int, default=1_000_000,
                        help="stop a load run after this many measured requests")
    parser.add_argument("--rows", type=int, default=LARGE_TABLE)
    parser.add_argument("--serial-seconds", type=float, default=3.0,
                        help="seconds of one-connection requests per table size and mode")
    args = parser.parse_args(argv)
    rng = random.Random(20240303)  # noqa: S311 - benchmark data, not secrets
    small = min(SMALL_TABLE, args.rows)
    rows: list[Row] = []

    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        # Two data dirs: "small" (1,000 CDRs) only for the table-size comparison, "large"
        # (100 clients, 100,000 CDRs) for that and for everything else.
        dirs = {size: Path(tmp) / f"var-{size}" for size in (small, args.rows)}
        ports = {size: free_port() for size in dirs}
        port = ports[args.rows]
        print(f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; data in {tmp}")

        t0 = time.monotonic()
        auths: dict[int, str] = {}
        for size, data_dir in dirs.items():
            with ApplianceProcess(data_dir, ports[size]):
                auths[size] = basic(ADMIN_SID,
                                    (data_dir / "admin-password").read_text().strip())
                if size == args.rows:
                    create_clients(port, auths[size], N_CLIENTS)
        auth = auths[args.rows]
        print(f"created {N_CLIENTS} clients through the API in {time.monotonic() - t0:.1f} s")
        for size, data_dir in dirs.items():
            t0 = time.monotonic()
            insert_calls(data_dir / "appliance.db", size, rng)
            print(f"inserted {size:,} CDRs in {time.monotonic() - t0:.1f} s")

        with ApplianceProcess(dirs[args.rows], port) as appliance:
            # Both sizes served at once and measured in alternation, so that whatever else
            # the machine is doing falls on both alike.
            with ApplianceProcess(dirs[small], ports[small]):
                bodies = {size: fetch(ports[size], CALLS_URL, auths[size])[2] for size in dirs}
                parts: dict[tuple[int, bool], list[Result]] = {}
                for _ in range(SERIAL_ROUNDS):
                    for bust in (False, True):
                        for size in dirs:
                            parts.setdefault((size, bust), []).append(serial(
                                ports[size], CALLS_URL, auths[size], bodies[size],
                                args.serial_seconds / SERIAL_ROUNDS, bust))
                serial_runs = {key: merged(runs) for key, runs in parts.items()}

            urls = {"Clients.json": CLIENTS_URL, "Calls.json?PageSize=50": CALLS_URL}
            expected: dict[str, tuple[str, bytes]] = {}
            for name, url in urls.items():
                status, content_type, body = fetch(port, url, auth)
                if status != 200:
                    raise RuntimeError(f"{name}: HTTP {status}")
                expected[url.split("?")[0]] = (content_type, body)
                print(f"{name}: {len(body):,} bytes, {content_type}")

            bare, bare_port = start_bare(expected)
            try:
                for name, url in urls.items():
                    a_head = raw_head(port, url, auth)
                    b_head = raw_head(bare_port, url, None)
                    b_body = fetch(bare_port, url, None)[2]
                    if a_head != b_head or b_body != expected[url.split("?")[0]][1]:
                        raise RuntimeError(f"{name}: bare response differs:\n"
                                           f"{a_head}\n{b_head}")
                for name, url in urls.items():
                    body = expected[url.split("?")[0]][1]
                    print(f"loading {name} ({args.connections} connections, "
                          f"{args.warmup:g} s warm-up + {args.duration:g} s) ...")
                    runs = [load(p, url, a, body, connections=args.connections,
                                 processes=args.client_processes, warmup=args.warmup,
                                 duration=args.duration, max_requests=args.max_requests,
                                 server_pid=pid, bust=bust)
                            for p, a, pid, bust in ((port, auth, appliance.pid, False),
                                                    (port, auth, appliance.pid, True),
                                                    (bare_port, None, bare.pid, False))]
                    rows.append(Row(name, *runs))
            finally:
                stop_bare(bare)

    report(args, rows, small, serial_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
