"""Media worker cost: CPU and RSS per bridged call (run on demand; needs pjsua2).

    .venv/bin/python bench/media.py [--seconds 8] [--pairs 2]

Starts one worker (cap 4 calls = 2 bridged pairs) and a pjsua2 test phone
(tests/media/phone.py) that places 2×pairs calls playing a 440 Hz tone. The worker answers
every leg and bridges them two by two, so each bridged call is two RTP legs with audio both
ways through the worker's conference bridge. CPU is the worker's utime+stime from
/proc/<pid>/stat over a steady window, idle first, then loaded; RSS from /proc/<pid>/status.
Targets (x86-64): ≤ 2 % of a core and ≤ 1 MB per bridged call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.media import protocol as p  # noqa: E402
from appliance.media.client import WorkerClient  # noqa: E402

PHONE = ROOT / "tests" / "media" / "phone.py"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def window(pid: int, seconds: float) -> float:
    """Percent of one core used by ``pid`` over ``seconds``."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--pairs", type=int, default=2, help="bridged calls (2 = the wheel's cap)")
    args = ap.parse_args()
    legs = 2 * args.pairs
    with tempfile.TemporaryDirectory(prefix="mb", dir="/tmp") as tmp:
        control = f"{tmp}/w.sock"
        sip = free_udp_port()
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance.media.worker", "--control", control,
            "--sip-port", str(sip), "--rtp-ports", "41000-41199", "--max-calls", str(legs),
            "--id", "bench", cwd=ROOT)
        incoming: list[str] = []
        got_all = asyncio.Event()

        def on_event(ev: p.Event) -> None:
            if isinstance(ev, p.LegEvent) and ev.state == "incoming":
                incoming.append(ev.leg)
                if len(incoming) == legs:
                    got_all.set()

        for _ in range(200):
            try:
                client = await WorkerClient.connect(control, on_event=on_event)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.05)
        else:
            raise SystemExit("worker did not start")
        ready = await client.wait_ready()
        await asyncio.sleep(1.0)
        idle_cpu = await window(ready.pid, args.seconds)
        idle_rss = rss_kb(ready.pid)

        phone = await asyncio.create_subprocess_exec(
            sys.executable, str(PHONE), "--call", f"sip:bench@127.0.0.1:{sip}",
            "--calls", str(legs), "--tone", "440", "--rtp-port", "42000",
            "--timeout", str(args.seconds + 20), stdout=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(10):
            await got_all.wait()
        for leg in incoming:
            await client.request(p.Answer(leg=leg))
        for a, b in zip(incoming[::2], incoming[1::2], strict=True):
            await client.request(p.Bridge(leg=a, other=b))
        await asyncio.sleep(2.0)  # jitter buffers settle
        busy_cpu = await window(ready.pid, args.seconds)
        busy_rss = rss_kb(ready.pid)

        for leg in incoming:
            await client.request(p.Hangup(leg=leg))
        await phone.wait()
        await client.request(p.Shutdown(), seconds=10)
        await worker.wait()
        await client.close()

    per_call_cpu = max(busy_cpu - idle_cpu, 0.0) / args.pairs
    per_call_rss = (busy_rss - idle_rss) / 1024 / args.pairs
    print(f"worker idle:    {idle_cpu:5.2f} % of a core, RSS {idle_rss / 1024:.1f} MB")
    print(f"{args.pairs} bridged calls ({legs} legs, tone both ways): {busy_cpu:5.2f} % "
          f"of a core, RSS {busy_rss / 1024:.1f} MB")
    print(f"per bridged call: {per_call_cpu:.2f} % of a core (target <= 2 %), "
          f"{per_call_rss:.2f} MB RSS (target <= 1 MB)")
    total_per_call = busy_cpu / args.pairs
    print(f"bridged calls per core: {100 / per_call_cpu:.0f} on the margin, "
          f"{100 / total_per_call:.0f} counting the idle loop" if per_call_cpu > 0 else
          "bridged calls per core: unmeasurably cheap")
    print(f"worker exit code: {worker.returncode}")


if __name__ == "__main__":
    asyncio.run(main())
