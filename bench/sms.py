"""SMS benchmark: messages accepted per second by the API, and time to AT+CMGS.

Runs the appliance as its own process on a fake modem (a pty served by a thread here) that
answers at once, so the figures are the appliance's: the HTTP request, validation, the durable
commit (WAL, synchronous=FULL), the queue and the AT exchange.

    .venv/bin/python bench/sms.py [--messages 2000] [--concurrency 20] [--latency-samples 200]

Targets (issue "GSM modem driver and SMS end to end"): >= 200 accepted/s, durably committed;
p99 under 50 ms from the API request to its AT+CMGS when the modem is idle.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.fakes.modem import FakeModem  # noqa: E402

ADMIN = "ACae6e420f425248d6a26948c17a9e2acf"


def start_appliance(tmp: Path, fake: FakeModem) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    config = tmp / "config.toml"
    config.write_text(f'data_dir = "{tmp / "var"}"\n[api]\nlisten = "127.0.0.1:{port}"\n'
                      f'[sip]\nlisten = "127.0.0.1:{free_port()}"\n'
                      f'[modem]\ndevice = "{fake.link}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config", str(config),
                             "--log-level", "warning"], cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit("appliance did not become healthy")
    password = (tmp / "var" / "admin-password").read_text().strip()
    return proc, port, password


async def accept_rate(port: int, password: str, total: int, concurrency: int) -> float:
    url = f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN}/SMS/Messages.json"
    auth = "Basic " + base64.b64encode(f"{ADMIN}:{password}".encode()).decode()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    failures = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            data = {"From": "bench", "To": f"+1555{i:07d}", "Body": f"benchmark message {i}"}
            async with session.post(url, data=data, headers={"Authorization": auth}) as resp:
                await resp.read()
                if resp.status != 200:
                    failures += 1

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{failures} requests failed")
    return total / elapsed


async def latency(port: int, password: str, fake: FakeModem, samples: int
                  ) -> tuple[list[float], list[float]]:
    url = f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN}/SMS/Messages.json"
    auth = "Basic " + base64.b64encode(f"{ADMIN}:{password}".encode()).decode()
    result = []
    answered = []
    async with aiohttp.ClientSession() as session:
        for i in range(samples):
            seen = len(fake.commands)
            sent_at = time.monotonic()
            async with session.post(url, data={"From": "bench", "To": f"+1666{i:07d}",
                                               "Body": "latency probe"},
                                    headers={"Authorization": auth}) as resp:
                await resp.read()
            answered.append((time.monotonic() - sent_at) * 1000)
            deadline = time.monotonic() + 5
            while True:
                cmgs = [t for c, t in zip(fake.commands[seen:], fake.command_times[seen:],
                                          strict=False) if c.startswith("AT+CMGS=")]
                if cmgs:
                    result.append((cmgs[0] - sent_at) * 1000)
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("message never reached AT+CMGS")
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.02)  # let the modem go idle again
    return result, answered


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fake = FakeModem(link=tmp / "usb-Quectel_EC25-if02-port0").start()
        proc, port, password = start_appliance(tmp, fake)
        try:
            lat, answered = asyncio.run(latency(port, password, fake, args.latency_samples))
            rate = asyncio.run(accept_rate(port, password, args.messages, args.concurrency))
            drained = time.monotonic() + 120
            while len(fake.sent) < args.messages + args.latency_samples:
                if time.monotonic() > drained:
                    break
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            fake.close()
        print(f"machine: {os.cpu_count()} cores; fake modem answering at once")
        print(f"accepted by POST SMS/Messages: {rate:8.1f} messages/s "
              f"({args.messages} messages, {args.concurrency} concurrent; target >= 200)")
        print(f"request -> AT+CMGS, modem idle: p50 {statistics.median(lat):6.2f} ms, "
              f"p99 {percentile(lat, 0.99):6.2f} ms, max {max(lat):6.2f} ms "
              f"({len(lat)} messages; target p99 < 50 ms)")
        print(f"  of which the API answer (durable commit): p50 {statistics.median(answered):6.2f}"
              f" ms, p99 {percentile(answered, 0.99):6.2f} ms")
        print(f"  slowest five: {', '.join(f'{v:.1f}' for v in sorted(lat)[-5:])} ms")
        print(f"sent through the modem afterwards: {len(fake.sent)} PDUs")


if __name__ == "__main__":
    main()
