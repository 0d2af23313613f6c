"""SIP front door benchmark against Kamailio (run on demand; not part of the test suite).

    .venv/bin/python bench/sip.py [--duration 10] [--users 1000] [--rates 100,200,300,...]
                                  [--hold-ms 500] [--only appliance|kamailio] [--floor]
                                  [--profile FILE.prof] [--settle 45] [--keep]

Needs sipp (Debian ``sip-tester``) and Kamailio (``apt-get install -y kamailio``; this script
installs nothing and stops with that hint when ``kamailio`` is missing, unless
``--only appliance``). Everything runs on 127.0.0.1. In one run, for the appliance and for
Kamailio in turn:

a. **REGISTER with digest.** ``bench/sip/register-users.xml``: sipp registers N distinct users
   taken in turn from an injection file (REGISTER -> 401 -> REGISTER with Authorization -> 200),
   with a fixed number of registrations in flight, for a fixed time. The figure is successful
   registrations per CPU-second of the server (utime + stime from /proc/<pid>/stat, every
   process of Kamailio's tree; CPU is read before sipp starts and again once the server has
   gone idle after it, so work the server deferred, such as the appliance's binding writes,
   is counted), and the raw rate.
b. **Calls through the proxy.** Two users register from two sipp ports; a sipp UAS
   (``bench/sip/call-uas.xml``) answers on the callee's port while a sipp UAC
   (``bench/sip/call-uac.xml``) places calls at increasing rates, each for the fixed time:
   INVITE -> 407 -> ACK, INVITE with Proxy-Authorization -> 180 -> 200 -> ACK, hold, BYE -> 200.
   A rate is sustained when every call succeeded and the run did not fall behind (it ended
   within 3 s of rate x time + hold). Stepping stops at the first rate not sustained.
c. **Memory.** The appliance main process's VmRSS right after start-up (no Client, no load),
   again right after the load, and ``--settle`` seconds later, once the transactions and
   calls that linger 64·T1 after they end are gone; for Kamailio, the sum of RSS and of PSS
   over its processes.

The appliance is started as ``python -m appliance serve --config <tmp>/config.toml`` with a
temporary data dir and free loopback ports; N Clients are created through the REST API first.
``[sip] max_auth_failures`` and ``unauthenticated_per_minute`` are raised (the output says so):
the load generator is one source address, which the Guard would otherwise throttle (503) and
ban. ``ping_interval = 0``: no keep-alive OPTIONS to the registered users, which Kamailio's
config does not send either (and sipp's UAS would abort on). Kamailio runs
``bench/kamailio/kamailio.cfg`` in the foreground (``-DD -E``) with two UDP workers
(``-n 2``) and 256 MB of shared memory; its credential table (login -> HA1) is written into a
temporary db_text directory and loaded into an htable at start.

``--profile FILE`` runs the appliance under ``python -m cProfile -o FILE`` (its figures are
then slower and only good for finding hot spots). Every sipp run and every wait is bounded;
all processes started here are stopped at the end, also on errors or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "bench" / "sip"
KAMAILIO_CFG = ROOT / "bench" / "kamailio" / "kamailio.cfg"
HOST = "127.0.0.1"
ADMIN_SID = "ACae6e420f425248d6a26948c17a9e2acf"
API_PREFIX = "/restcomm/2012-04-24"
KAMAILIO_REALM = "bench.kamailio"  # REALM in bench/kamailio/kamailio.cfg
APPLIANCE_DOMAIN = "pbx.bench.example"
KAMAILIO_WORKERS = 2
KAMAILIO_SHM_MB = 256
# Guard limits for the run: the load generator is one source IP (see the module docstring).
MAX_AUTH_FAILURES = 1000
UNAUTHENTICATED_PER_MINUTE = 100_000
TARGET_REGISTER_RATIO = 0.5
TARGET_CALLS_PER_SECOND = 300
TARGET_IDLE_RSS_MB = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_CPU_SHARE = 0.03  # a server is idle once it uses less than this share of a core
DRAIN_LIMIT = 30.0  # seconds to wait for a server to go idle after a run
LATE_SLACK = 3.0  # seconds a call run may overrun rate x time + hold and still count


def password_of(i: int) -> str:
    return f"Pw-{i:04d}-Bench!x"  # strong by the API's rule; no ';', ' ' or ']' (sipp CSV)


def login_of(i: int) -> str:
    return f"bench{i:04d}"


CALLER = ("caller", "Caller-pw-7x!")
CALLEE = ("callee", "Callee-pw-7x!")


# -- processes and /proc ---------------------------------------------------------------------


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def free_sip_port() -> int:
    """A port free for both UDP and TCP (the appliance listens on both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        try:
            with socket.socket() as s:
                s.bind((HOST, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # from field 3 (state) on


def process_tree(pid: int) -> list[int]:
    """PID and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of PIDS (all threads of each), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of PID's main thread and of all its other threads together."""
    main = other = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                text = (task / "stat").read_text()
                fields = text[text.rindex(")") + 2:].split()
                ticks = int(fields[11]) + int(fields[12])
                if int(task.name) == pid:
                    main += ticks
                else:
                    other += ticks
    return main / CLK_TCK, other / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def wait_idle(pids: Sequence[int], limit: float = DRAIN_LIMIT) -> float:
    """Wait until PIDS together use under IDLE_CPU_SHARE of a core; returns seconds waited."""
    start = time.monotonic()
    window = 0.5
    last = cpu_seconds(pids)
    while time.monotonic() - start < limit:
        time.sleep(window)
        now = cpu_seconds(pids)
        if now - last < IDLE_CPU_SHARE * window:
            return time.monotonic() - start - window
        last = now
    return time.monotonic() - start


def stop_process(proc: subprocess.Popen[bytes], *, group: bool = False, grace: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait(5)


def sip_ping(port: int, limit: float = 15.0) -> bool:
    """Whether something answers an OPTIONS on 127.0.0.1:PORT (UDP) within LIMIT seconds."""
    deadline = time.monotonic() + limit
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(0.3)
        local = s.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
            n += 1
            msg = (f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK-bench-{n};rport\r\n"
                   "Max-Forwards: 70\r\n"
                   f"From: <sip:probe@{HOST}>;tag=probe{n}\r\n"
                   f"To: <sip:{HOST}:{port}>\r\n"
                   f"Call-ID: bench-probe-{n}-{local}@{HOST}\r\n"
                   "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
            s.sendto(msg.encode(), (HOST, port))
            try:
                data = s.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.2)
                continue
            if data.startswith(b"SIP/2.0 "):
                return True
    return False


# -- sipp ------------------------------------------------------------------------------------


@dataclasses.dataclass
class SippResult:
    ok: int
    failed: int
    created: int
    wall: float
    returncode: int
    errors: str  # the kinds of failure in sipp's -trace_err log, with counts

    @property
    def summary(self) -> str:
        return f"{self.ok} ok, {self.failed} failed, {self.created} created, rc {self.returncode}"


def sipp_base(port: int, scenario: str, local_port: int, workdir: Path, name: str) -> list[str]:
    sipp = shutil.which("sipp") or "sipp"
    return [sipp, f"{HOST}:{port}", "-sf", str(SCENARIOS / scenario), "-i", HOST,
            "-p", str(local_port), "-t", "u1", "-nostdin", "-trace_err",
            "-error_file", str(workdir / f"{name}-errors.log"),
            "-trace_stat", "-fd", "1", "-stf", str(workdir / f"{name}-stat.csv")]


# --pin: the server under test on CPU 0, the sipp load generators on CPU 1, so the two do not
# compete for the same core (on the appliance's own box no load generator runs).
PIN: dict[str, set[int]] = {}


def _pinned(role: str) -> Callable[[], None] | None:
    cpus = PIN.get(role)
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_sipp(args: list[str], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    for suffix in ("-errors.log", "-stat.csv"):
        (workdir / f"{name}{suffix}").unlink(missing_ok=True)
    out = (workdir / f"{name}.out").open("wb")
    try:
        return subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_pinned("load"))
    finally:
        out.close()


def finish_sipp(proc: subprocess.Popen[bytes], workdir: Path, name: str, started: float,
                limit: float) -> SippResult:
    try:
        proc.wait(max(0.0, limit - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        stop_process(proc, grace=3)  # sipp writes its statistics on SIGTERM too
    wall = time.monotonic() - started
    ok = failed = created = 0
    stat = workdir / f"{name}-stat.csv"
    if stat.exists():
        rows = list(csv.reader(stat.read_text(errors="replace").splitlines(), delimiter=";"))
        if len(rows) >= 2:
            row = dict(zip(rows[0], rows[-1], strict=False))
            ok = int(row.get("SuccessfulCall(C)", 0) or 0)
            failed = int(row.get("FailedCall(C)", 0) or 0)
            created = int(row.get("TotalCallCreated", 0) or 0)
    log = workdir / f"{name}-errors.log"
    errors = summarize_errors(log.read_text(errors="replace")) if log.exists() else ""
    return SippResult(ok, failed, created, wall, proc.returncode or 0, errors)


def summarize_errors(text: str, top: int = 6) -> str:
    """The kinds of failure in a sipp -trace_err log, most frequent first, with counts.

    "Dead call ... (successful)" lines (a retransmission arriving after a call ended well)
    are left out: they are not failures.
    """
    kinds: dict[str, int] = {}
    for event in re.split(r"\n?\d{4}-\d\d-\d\d\t[\d:.]+\t[\d.]+: ", text):
        if not event.strip() or "(successful)" in event or event.startswith("The following"):
            continue
        first = event.splitlines()[0]
        first = re.sub(r"Call-Id '[^']*'", "Call-Id ...", first)
        first = re.sub(r"Dead call \S+", "Dead call ...", first)
        first = re.sub(r"Call-Id: \S+,", "Call-Id ...,", first)
        first = re.sub(r"for call: \S+", "for call ...", first)
        first = re.sub(r"\(index \d+\)", "", first)
        kinds[first[:160]] = kinds.get(first[:160], 0) + 1
    ranked = sorted(kinds.items(), key=lambda item: -item[1])[:top]
    return "\n".join(f"{count:>6} x {kind}" for kind, count in ranked)


def run_sipp(args: list[str], workdir: Path, name: str, limit: float) -> SippResult:
    started = time.monotonic()
    return finish_sipp(start_sipp(args, workdir, name), workdir, name, started, limit)


def write_users_csv(path: Path, users: Sequence[tuple[str, str]]) -> None:
    """sipp injection file: login;password;[authentication ...] (see register-users.xml)."""
    lines = ["SEQUENTIAL"] + [f"{u};{p};[authentication username={u} password={p}]"
                              for u, p in users]
    path.write_text("\n".join(lines) + "\n")


# -- the servers -----------------------------------------------------------------------------


class Server:
    name = ""
    port = 0

    def pids(self) -> list[int]:
        raise NotImplementedError

    def threads(self) -> tuple[float, float] | None:
        """(main thread, other threads) CPU seconds, for a one-process server."""
        return None

    def stop(self) -> None:
        raise NotImplementedError


class ApplianceServer(Server):
    name = "appliance"

    def __init__(self, workdir: Path, *, profile: Path | None, log_level: str,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.api_port = free_port()
        self.port = free_sip_port()
        self.profile = profile
        self.log_level = log_level
        self.config = workdir / "config.toml"
        self.config.write_text("\n".join([
            f'data_dir = "{self.data_dir}"',
            "[api]",
            f'listen = "{HOST}:{self.api_port}"',
            "[sip]",
            f'listen = "{HOST}:{self.port}"',
            f'domain = "{APPLIANCE_DOMAIN}"',
            f"max_auth_failures = {MAX_AUTH_FAILURES}",
            f"unauthenticated_per_minute = {UNAUTHENTICATED_PER_MINUTE}",
            'digest_algorithms = ["MD5"]',
            "ping_interval = 0",  # Kamailio's config pings no phone either: like for like
            "",
        ]))
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = ""
        self.env = {**os.environ, **(env or {})}

    def start(self) -> None:
        python = [sys.executable]
        if self.profile is not None:
            python += ["-m", "cProfile", "-o", str(self.profile)]
        log = (self.workdir / "appliance.log").open("wb")
        try:
            self.proc = subprocess.Popen(
                [*python, "-m", "appliance", "serve", "--config", str(self.config),
                 "--log-level", self.log_level],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, preexec_fn=_pinned("server"))
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the appliance exited at start:\n" + self.log_tail())
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.api_port}/health", timeout=2):
                    pass
                break
            except urllib.error.HTTPError:
                break  # 503 while degraded (no modem...) still means it is up
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the appliance API did not come up:\n" + self.log_tail())
        self.password = (self.data_dir / "admin-password").read_text().strip()
        if not sip_ping(self.port):
            raise RuntimeError("the appliance does not answer SIP OPTIONS:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "appliance.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def pids(self) -> list[int]:
        assert self.proc is not None  # noqa: S101
        return [self.proc.pid]

    def threads(self) -> tuple[float, float] | None:
        assert self.proc is not None  # noqa: S101
        return thread_cpu(self.proc.pid)

    def rss_mb(self) -> float:
        assert self.proc is not None  # noqa: S101
        return status_kb(self.proc.pid, "VmRSS") / 1024

    def _request(self, method: str, path: str, data: dict[str, str] | None = None
                 ) -> tuple[int, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        token = base64.b64encode(f"{ADMIN_SID}:{self.password}".encode()).decode()
        req = urllib.request.Request(
            f"http://{HOST}:{self.api_port}{API_PREFIX}/Accounts/{ADMIN_SID}/{path}",
            data=body, method=method, headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def create_clients(self, users: Sequence[tuple[str, str]]) -> float:
        """Create USERS through the REST API; returns the seconds it took."""
        started = time.monotonic()

        def create(user: tuple[str, str]) -> None:
            status, body = self._request("POST", "Clients.json",
                                         {"Login": user[0], "Password": user[1]})
            if status != 200:
                raise RuntimeError(f"creating Client {user[0]}: {status} {body[:200]}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, users))
        return time.monotonic() - started

    def completed_cdrs(self) -> int | None:
        status, body = self._request("GET", "Calls.json?Status=completed&PageSize=1")
        if status != 200:
            return None
        return int(json.loads(body).get("total", 0))

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=30 if self.profile else 10)


class FloorServer(Server):
    """``bench/sip_floor_server.py``: a UDP answerer on the appliance's event loop and socket
    calls that does no registrar work (``--floor``)."""

    name = "floor"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_sip_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "sip_floor_server.py"), str(self.port)],
            cwd=self.workdir, stdin=subprocess.DEVNULL, preexec_fn=_pinned("server"))
        if not sip_ping(self.port) or self.proc.poll() is not None:
            raise RuntimeError("the floor server did not start")

    def pids(self) -> list[int]:
        assert self.proc is not None  # noqa: S101
        return [self.proc.pid]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class KamailioServer(Server):
    name = "kamailio"

    def __init__(self, workdir: Path, binary: str, users: Sequence[tuple[str, str]]) -> None:
        self.workdir = workdir
        self.binary = binary
        self.port = free_port(socket.SOCK_DGRAM)
        self.db = workdir / "db"
        self.run_dir = workdir / "run"
        self.db.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rows = ["id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string)"
                " expires(int)"]
        for n, (login, password) in enumerate(users, 1):
            ha1 = hashlib.md5(f"{login}:{KAMAILIO_REALM}:{password}".encode()).hexdigest()  # noqa: S324
            rows.append(f"{n}:{login}:0:0:{ha1}:0")
        (self.db / "htable").write_text("\n".join(rows) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [self.binary, "-f", str(KAMAILIO_CFG), "-DD", "-E",
                "-n", str(KAMAILIO_WORKERS), "-m", str(KAMAILIO_SHM_MB), "-M", "8",
                "-l", f"udp:{HOST}:{self.port}", "-Y", str(self.run_dir), "-w", str(self.run_dir),
                "-A", f'DBURL="text://{self.db}"']

    def start(self) -> None:
        log = (self.workdir / "kamailio.log").open("wb")
        try:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_pinned("server"))
        finally:
            log.close()
        if not sip_ping(self.port) or self.proc.poll() is not None:
            raise RuntimeError("kamailio did not start:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "kamailio.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def pids(self) -> list[int]:
        assert self.proc is not None  # noqa: S101
        return process_tree(self.proc.pid)

    def memory_mb(self) -> tuple[int, float, float]:
        pids = self.pids()
        rss = sum(status_kb(p, "VmRSS") for p in pids) / 1024
        return len(pids), rss, sum(pss_kb(p) for p in pids) / 1024

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, group=True)


# -- the measurements ------------------------------------------------------------------------


@dataclasses.dataclass
class RegisterFigures:
    ok: int
    failed: int
    seconds: float
    cpu: float
    drain: float
    split: tuple[float, float] | None = None  # appliance: main thread, other threads

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def per_cpu(self) -> float:
        return self.ok / self.cpu if self.cpu else 0.0


@dataclasses.dataclass
class CallStep:
    rate: int
    planned: int
    result: SippResult
    uas: SippResult
    cpu: float
    sustained: bool
    split: tuple[float, float] | None = None

    @property
    def per_cpu(self) -> float:
        return self.result.ok / self.cpu if self.cpu else 0.0


def measure_register(server: Server, workdir: Path, users_csv: Path, *, duration: float,
                     in_flight: int) -> RegisterFigures:
    name = f"{server.name}-register"
    args = sipp_base(server.port, "register-users.xml", 0, workdir, name) + [
        "-inf", str(users_csv), "-r", "50000", "-l", str(in_flight),
        "-timeout", f"{duration:g}s", "-recv_timeout", "10s"]
    pids = server.pids()
    wait_idle(pids, limit=10)
    before, threads_before = cpu_seconds(pids), server.threads()
    result = run_sipp(args, workdir, name, duration + 20)
    drain = wait_idle(pids)
    cpu = cpu_seconds(pids) - before
    split = _split(threads_before, server.threads())
    if result.errors:
        print(f"  [{server.name}] sipp failures by kind:\n    "
              + result.errors.replace("\n", "\n    ")[:1500], flush=True)
    return RegisterFigures(result.ok, result.failed, min(result.wall, duration), cpu, drain,
                           split)


def _split(before: tuple[float, float] | None, after: tuple[float, float] | None
           ) -> tuple[float, float] | None:
    if before is None or after is None:
        return None
    return after[0] - before[0], after[1] - before[1]


def register_one(server: Server, workdir: Path, user: tuple[str, str], local_port: int) -> None:
    path = workdir / f"{server.name}-{user[0]}.csv"
    write_users_csv(path, [user])
    name = f"{server.name}-register-{user[0]}"
    args = sipp_base(server.port, "register-users.xml", local_port, workdir, name) + [
        "-inf", str(path), "-m", "1", "-timeout", "10s", "-timeout_error"]
    result = run_sipp(args, workdir, name, 20)
    if result.ok != 1:
        raise RuntimeError(f"{server.name}: registering {user[0]} failed: {result.summary}\n"
                           f"{result.errors}")


def measure_calls(server: Server, workdir: Path, rates: Sequence[int], *, duration: float,
                  hold_ms: int) -> list[CallStep]:
    caller_port, callee_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    register_one(server, workdir, CALLER, caller_port)
    register_one(server, workdir, CALLEE, callee_port)
    pids = server.pids()
    steps: list[CallStep] = []
    for rate in rates:
        total = int(rate * duration)
        limit = duration + hold_ms / 1000 + 25
        uas_name, uac_name = f"{server.name}-uas-{rate}", f"{server.name}-uac-{rate}"
        uas_args = sipp_base(server.port, "call-uas.xml", callee_port, workdir, uas_name) + [
            "-m", str(total), "-timeout", f"{limit:g}s"]
        uac_args = sipp_base(server.port, "call-uac.xml", caller_port, workdir, uac_name) + [
            "-s", CALLEE[0], "-key", "caller", CALLER[0], "-au", CALLER[0], "-ap", CALLER[1],
            # The digest uri as the Request-URI: sipp's default leaves the user out, which
            # the appliance answers 400 (RFC 7616 §3.4.6); Kamailio does not check it.
            "-auth_uri", f"{CALLEE[0]}@{HOST}:{server.port}",
            "-r", str(rate), "-m", str(total), "-d", str(hold_ms), "-recv_timeout", "10s",
            "-timeout", f"{limit:g}s"]
        wait_idle(pids, limit=15)
        before, threads_before = cpu_seconds(pids), server.threads()
        uas_started = time.monotonic()
        uas = start_sipp(uas_args, workdir, uas_name)
        time.sleep(0.3)
        uac = run_sipp(uac_args, workdir, uac_name, limit + 5)
        uas_result = finish_sipp(uas, workdir, uas_name, uas_started,
                                 time.monotonic() - uas_started + 3)
        wait_idle(pids)
        cpu = cpu_seconds(pids) - before
        split = _split(threads_before, server.threads())
        on_time = uac.wall <= duration + hold_ms / 1000 + LATE_SLACK
        sustained = uac.ok == total and uac.failed == 0 and on_time
        steps.append(CallStep(rate, total, uac, uas_result, cpu, sustained, split))
        print(f"  [{server.name}] {rate:>5} calls/s: {uac.summary}, {uac.wall:.1f} s, "
              f"CPU {cpu:.2f} s -> {'sustained' if sustained else 'NOT sustained'}", flush=True)
        if not sustained:
            if uac.errors:
                print("    sipp UAC failures by kind:\n      "
                      + uac.errors.replace("\n", "\n      ")[:1500], flush=True)
            break
    return steps


def best_rate(steps: Sequence[CallStep]) -> int:
    return max((s.rate for s in steps if s.sustained), default=0)


# -- report ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISS"


def print_report(args: argparse.Namespace, reg: dict[str, RegisterFigures],
                 calls: dict[str, list[CallStep]], idle_rss: float | None,
                 loaded_rss: float | None, kam_mem: tuple[int, float, float] | None,
                 cdrs: int | None, provision_s: float | None,
                 settled_rss: float | None = None) -> None:
    print()
    where = ("the server under test pinned to CPU 0, sipp to CPU 1 (--pin)" if PIN else
             f"{os.cpu_count()} CPUs shared with sipp and anything else running")
    print(f"SIP front door benchmark, loopback, {where}; {args.duration:g} s per measurement")
    print(f"appliance: python -m appliance serve (log level {args.log_level}); [sip] "
          f"max_auth_failures = {MAX_AUTH_FAILURES}, unauthenticated_per_minute = "
          f"{UNAUTHENTICATED_PER_MINUTE} (raised so the single-source load generator is "
          "neither banned nor throttled), ping_interval = 0 (no keep-alive OPTIONS: "
          "Kamailio's config sends none)")
    if "kamailio" in reg or "kamailio" in calls:
        print(f"kamailio: {KAMAILIO_CFG.relative_to(ROOT)}, {KAMAILIO_WORKERS} UDP workers "
              f"(-n {KAMAILIO_WORKERS}), {KAMAILIO_SHM_MB} MB shm; CPU summed over all its "
              "processes")
    if args.profile:
        print(f"appliance run under cProfile ({args.profile}): its figures are not comparable")
    if provision_s is not None:
        print(f"{args.users} Clients created through the REST API in {provision_s:.1f} s")
    print()
    print(f"a. REGISTER with digest: {args.users} users in turn, {args.in_flight} in flight, "
          f"{args.duration:g} s (CPU counted until the server is idle again)")
    print(f"{'server':<10} {'REG ok':>8} {'failed':>7} {'REG/s':>8} {'CPU s':>7} "
          f"{'REG/CPU-s':>10} {'drain s':>8}")
    for name, f in reg.items():
        print(f"{name:<10} {f.ok:>8} {f.failed:>7} {f.rate:>8.0f} {f.cpu:>7.2f} "
              f"{f.per_cpu:>10.0f} {f.drain:>8.1f}")
        if f.split is not None and f.ok:
            print(f"{'':<10} CPU: main thread {f.split[0]:.2f} s "
                  f"({1e3 * f.split[0] / f.ok:.2f} ms per REGISTER), other threads (SQLite) "
                  f"{f.split[1]:.2f} s")
    print()
    print(f"b. Calls through the proxy: INVITE/407/INVITE/180/200/ACK, hold {args.hold_ms} ms, "
          f"BYE/200; {args.duration:g} s per rate")
    print(f"{'server':<10} {'rate/s':>7} {'planned':>8} {'ok':>7} {'failed':>7} {'wall s':>7} "
          f"{'CPU s':>7} {'calls/CPU-s':>12}  result")
    for name, steps in calls.items():
        for s in steps:
            print(f"{name:<10} {s.rate:>7} {s.planned:>8} {s.result.ok:>7} {s.result.failed:>7} "
                  f"{s.result.wall:>7.1f} {s.cpu:>7.2f} {s.per_cpu:>12.0f}  "
                  f"{'sustained' if s.sustained else 'not sustained'}"
                  + (f"  (main thread {s.split[0]:.2f} s, other threads {s.split[1]:.2f} s)"
                     if s.split is not None else ""))
    if cdrs is not None:
        ok_calls = sum(s.result.ok for s in calls.get("appliance", []))
        print(f"appliance CDRs with status completed: {cdrs} (successful calls: {ok_calls})")
    print()
    print("c. Memory")
    if idle_rss is not None:
        print(f"appliance main process VmRSS: {idle_rss:.1f} MB idle after start-up, "
              f"{loaded_rss or 0:.1f} MB after the load"
              + (f", {settled_rss:.1f} MB {args.settle:g} s later (lingering state gone)"
                 if settled_rss is not None else ""))
    if kam_mem is not None:
        print(f"kamailio: {kam_mem[0]} processes, sum RSS {kam_mem[1]:.1f} MB, sum PSS "
              f"{kam_mem[2]:.1f} MB after the load")
    print()
    print(f"{'target':<48} {'measured':>12} {'target':>10}  verdict")
    if "appliance" in reg and "kamailio" in reg and reg["kamailio"].per_cpu:
        ratio = reg["appliance"].per_cpu / reg["kamailio"].per_cpu
        print(f"{'REGISTER per CPU-second, appliance / kamailio':<48} {ratio:>12.2f} "
              f"{'>= ' + str(TARGET_REGISTER_RATIO):>10}  "
              f"{verdict(ratio >= TARGET_REGISTER_RATIO)}")
        raw = reg["appliance"].rate / reg["kamailio"].rate if reg["kamailio"].rate else 0
        print(f"{'(raw REGISTER rate, appliance / kamailio)':<48} {raw:>12.2f}")
    if "floor" in reg and "kamailio" in reg and reg["kamailio"].per_cpu:
        ratio = reg["floor"].per_cpu / reg["kamailio"].per_cpu
        print(f"{'(REGISTER per CPU-second, floor / kamailio)':<48} {ratio:>12.2f}")
    if "appliance" in calls:
        best = best_rate(calls["appliance"])
        tested = max((s.rate for s in calls["appliance"]), default=0)
        note = "" if best < tested or best >= TARGET_CALLS_PER_SECOND else " (highest tested)"
        print(f"{'calls/s through our proxy, no failed call':<48} {best:>12} "
              f"{'>= ' + str(TARGET_CALLS_PER_SECOND):>10}  "
              f"{verdict(best >= TARGET_CALLS_PER_SECOND)}{note}")
    if "kamailio" in calls:
        best_k = best_rate(calls["kamailio"])
        tested_k = max((s.rate for s in calls["kamailio"]), default=0)
        suffix = " (highest tested)" if best_k == tested_k else ""
        print(f"{'(kamailio calls/s, no failed call)':<48} {best_k:>12}{suffix}")
        if "appliance" in calls:
            a = {s.rate: s for s in calls["appliance"]}
            k = {s.rate: s for s in calls["kamailio"]}
            common = [r for r in a if r in k and a[r].sustained and k[r].sustained]
            if common:
                r = max(common)
                ratio = a[r].per_cpu / k[r].per_cpu if k[r].per_cpu else 0
                print(f"{f'(calls per CPU-s at {r}/s, appliance / kamailio)':<48} {ratio:>12.2f}")
    if idle_rss is not None:
        print(f"{'appliance idle RSS after start-up, MB':<48} {idle_rss:>12.1f} "
              f"{'<= ' + str(TARGET_IDLE_RSS_MB):>10}  {verdict(idle_rss <= TARGET_IDLE_RSS_MB)}")
        print(f"{'(appliance RSS after the load, MB)':<48} {loaded_rss or 0:>12.1f}")
        if settled_rss is not None:
            print(f"{f'(appliance RSS {args.settle:g} s after the load, MB)':<48} "
                  f"{settled_rss:>12.1f}")


# -- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(server: Server) -> Iterator[None]:
    try:
        yield
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per measurement (REGISTER run, each call rate)")
    parser.add_argument("--users", type=int, default=1000, help="distinct REGISTER users")
    parser.add_argument("--in-flight", type=int, default=64,
                        help="REGISTERs outstanding at once (sipp -l)")
    parser.add_argument("--rates", default="25,50,100,200,300,400,600,800,1000",
                        help="call rates to try in turn, calls/s")
    parser.add_argument("--hold-ms", type=int, default=500, help="call hold time")
    parser.add_argument("--only", choices=("appliance", "kamailio"))
    parser.add_argument("--profile", type=Path, help="run the appliance under cProfile")
    parser.add_argument("--log-level", default="info", help="the appliance's --log-level")
    parser.add_argument("--settle", type=float, default=45.0,
                        help="seconds to wait after the load before measuring the settled RSS "
                             "(finished transactions and calls linger 64*T1 = 32 s); 0: skip")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the appliance process only "
                             "(e.g. an allocator to compare); may be repeated")
    parser.add_argument("--floor", action="store_true",
                        help="also measure REGISTER against bench/sip_floor_server.py, a UDP "
                             "answerer doing no registrar work: the pure-Python ceiling")
    parser.add_argument("--pin", action="store_true",
                        help="server under test on CPU 0, sipp on CPU 1 (needs 2 CPUs)")
    args = parser.parse_args(argv)
    if args.pin:
        if len(os.sched_getaffinity(0)) < 2:
            parser.error("--pin needs at least 2 CPUs")
        PIN.update(server={0}, load={1})
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    server_env = dict(item.partition("=")[::2] for item in args.server_env)
    if args.duration <= 0 or args.duration > 60 or not rates or args.users < 1:
        parser.error("--duration must be in (0, 60], --rates and --users non-empty")

    if shutil.which("sipp") is None:
        print("sipp is not installed: apt-get install -y sip-tester", file=sys.stderr)
        return 2
    kamailio = shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/sbin/kamailio") if Path(p).exists()), None)
    if kamailio is None and args.only != "appliance":
        print("kamailio is not installed. Install it with:\n    apt-get install -y kamailio\n"
              "(Debian's package has every module bench/kamailio/kamailio.cfg loads), or run "
              "with --only appliance.", file=sys.stderr)
        return 2

    users = [(login_of(i), password_of(i)) for i in range(args.users)]
    reg: dict[str, RegisterFigures] = {}
    calls: dict[str, list[CallStep]] = {}
    idle_rss = loaded_rss = settled_rss = None
    kam_mem = None
    cdrs = provision_s = None
    workdir = Path(tempfile.mkdtemp(prefix="bench-sip-"))
    users_csv = workdir / "users.csv"
    write_users_csv(users_csv, users)
    try:
        if args.only != "kamailio":
            (workdir / "appliance").mkdir()
            appliance = ApplianceServer(workdir / "appliance", profile=args.profile,
                                        log_level=args.log_level, env=server_env)
            with running(appliance):
                print(f"appliance: starting on SIP {HOST}:{appliance.port}, API "
                      f"{HOST}:{appliance.api_port}", flush=True)
                appliance.start()
                time.sleep(2)
                wait_idle(appliance.pids(), limit=10)
                idle_rss = appliance.rss_mb()
                print(f"  idle RSS {idle_rss:.1f} MB; creating {args.users + 2} Clients",
                      flush=True)
                provision_s = appliance.create_clients(users + [CALLER, CALLEE])
                print(f"  Clients created in {provision_s:.1f} s; REGISTER run", flush=True)
                reg["appliance"] = measure_register(appliance, workdir, users_csv,
                                                    duration=args.duration,
                                                    in_flight=args.in_flight)
                print(f"  REGISTER: {reg['appliance'].ok} ok, {reg['appliance'].failed} failed; "
                      "calls", flush=True)
                calls["appliance"] = measure_calls(appliance, workdir, rates,
                                                   duration=args.duration, hold_ms=args.hold_ms)
                time.sleep(2)
                wait_idle(appliance.pids(), limit=10)
                loaded_rss = appliance.rss_mb()
                cdrs = appliance.completed_cdrs()
                if args.settle > 0:
                    print(f"  RSS {loaded_rss:.1f} MB after the load; waiting {args.settle:g} s "
                          "for lingering transactions and calls to end", flush=True)
                    time.sleep(args.settle)
                    wait_idle(appliance.pids(), limit=10)
                    settled_rss = appliance.rss_mb()
        if args.floor:
            (workdir / "floor").mkdir()
            floor = FloorServer(workdir / "floor")
            with running(floor):
                print(f"floor: starting on SIP {HOST}:{floor.port}", flush=True)
                floor.start()
                reg["floor"] = measure_register(floor, workdir, users_csv,
                                                duration=args.duration,
                                                in_flight=args.in_flight)
        if args.only != "appliance":
            assert kamailio is not None  # noqa: S101
            (workdir / "kamailio").mkdir()
            kam = KamailioServer(workdir / "kamailio", kamailio, users + [CALLER, CALLEE])
            with running(kam):
                print(f"kamailio: starting on SIP {HOST}:{kam.port}", flush=True)
                kam.start()
                reg["kamailio"] = measure_register(kam, workdir, users_csv,
                                                   duration=args.duration,
                                                   in_flight=args.in_flight)
                print(f"  REGISTER: {reg['kamailio'].ok} ok, {reg['kamailio'].failed} failed; "
                      "calls", flush=True)
                calls["kamailio"] = measure_calls(kam, workdir, rates, duration=args.duration,
                                                  hold_ms=args.hold_ms)
                kam_mem = kam.memory_mb()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(args, reg, calls, idle_rss, loaded_rss, kam_mem, cdrs, provision_s,
                 settled_rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
