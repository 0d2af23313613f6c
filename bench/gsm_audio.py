"""Latency and jitter of call audio through the GSM bridge (issue "Outside lines", bench).

Set-up: the appliance runs as its own process (one media worker) with a fake Quectel modem
on a pty (tests/fakes/modem.py) whose PCM port is a second pty, and an outbound route
``+1777 → modem``. A pjsua2 phone (bench/gsm_phone.py, its own process) registers as
``alice`` and calls +17775550100: the call leaves by the modem, and the audio path is

    phone ⇄ RTP ⇄ worker (B2BUA leg ⇄ bridge ⇄ loopback SIP pair ⇄ PcmPort) ⇄ PCM pty ⇄ modem

Measured, with every time on CLOCK_MONOTONIC (shared by all processes):

* **GSM → phone**: the fake modem writes silence, and every 0.5 s one 20 ms 1 kHz burst
  frame; the time of that write to the pty vs. the time the phone's AudioMediaPort gets the
  burst's first sample.
* **phone → GSM**: the phone sends a burst frame every 0.5 s (shifted by 0.25 s); the time
  its bridge took the frame vs. the time the modem's pty reader sees the burst's first
  sample (it reads the pty as soon as bytes arrive: select() with no tick).
* **Jitter of the uplink frames**: the arrival times of the 320-byte frames the worker
  writes to the modem's pty (its 20 ms pacing, modem.md §2.9): deviation of each gap from
  20 ms, and the RFC 3550 interarrival jitter estimate. Plus the spread (stdev) of each
  direction's latency.

    .venv/bin/python bench/gsm_audio.py [--seconds 20]

Not part of the test suite; about 40 s.
"""

from __future__ import annotations

import argparse
import array
import base64
import contextlib
import json
import math
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.fakes.modem import PCM_FRAME, FakeModem  # noqa: E402

ADMIN = "ACae6e420f425248d6a26948c17a9e2acf"
PHONE = ROOT / "bench" / "gsm_phone.py"
PASSWORD = "Bench-Phone-Pa55word!"
DOMAIN = "pbx.example.com"
THRESHOLD = 2000  # as bench/gsm_phone.py
QUIET_FRAMES = 5


def _burst() -> bytes:
    samples = array.array("h", (int(16384 * math.sin(2 * math.pi * 1000 * i / 8000))
                                for i in range(PCM_FRAME // 2)))
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


class ProbeModem(FakeModem):
    """The fake modem with a stamped PCM port: silence with a burst frame every INTERVAL s
    towards the call, and every frame from the call stamped on arrival."""

    def __init__(self, *args: Any, interval: float = 0.5, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.interval = interval
        self.measuring = False
        self.sent: list[float] = []  # burst frames written to the pty
        self.heard: list[float] = []  # burst onsets read from the pty
        self.arrivals: list[float] = []  # every 320-byte frame from the call, as read
        self._writer: threading.Thread | None = None

    def _serve_pcm(self) -> None:
        """Reader here (no tick: stamp bytes as they come); the writer in its own thread."""
        self._writer = threading.Thread(target=self._write_pcm, name="probe-pcm-out",
                                        daemon=True)
        self._writer.start()
        pending = bytearray()
        quiet = 0
        while not self._stop.is_set() and self.pcm_master >= 0:
            try:
                ready, _, _ = select.select([self.pcm_master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self.pcm_master, 65536)
            except BlockingIOError:
                continue
            except OSError:
                time.sleep(0.005)  # EIO: nobody has the PCM tty open
                continue
            now = time.monotonic()
            if not self.streaming:
                pending.clear()
                continue
            pending += data
            while len(pending) >= PCM_FRAME:
                frame, pending = bytes(pending[:PCM_FRAME]), pending[PCM_FRAME:]
                if not self.measuring:
                    continue
                self.arrivals.append(now)
                samples = array.array("h", frame)
                if sys.byteorder != "little":
                    samples.byteswap()
                onset = next((i for i, s in enumerate(samples) if abs(s) > THRESHOLD), None)
                if onset is None:
                    quiet += 1
                    continue
                if quiet >= QUIET_FRAMES:
                    self.heard.append(now + onset / 8000)
                quiet = 0

    def _write_pcm(self) -> None:
        """One frame per 20 ms tick (absolute ticks, as a modem's codec clock does)."""
        burst, silence = _burst(), bytes(PCM_FRAME)
        tick = time.monotonic()
        next_burst = 0.0
        while not self._stop.is_set() and self.pcm_master >= 0:
            tick += 0.02
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not self.streaming:
                continue
            frame = silence
            if self.measuring and time.monotonic() >= next_burst:
                next_burst = (next_burst or time.monotonic()) + self.interval
                frame = burst
            with contextlib.suppress(OSError):
                os.write(self.pcm_master, frame)
                if frame is burst:
                    self.sent.append(time.monotonic())


def api(port: int, password: str, path: str, data: dict[str, str]) -> dict[str, Any]:
    body = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in data.items())
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN}/{path}",
        data=body.encode(), method="POST",
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{ADMIN}:{password}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def pair(sent: list[float], heard: list[float], interval: float) -> list[float]:
    """Latency (ms) of each heard onset against the last burst sent before it (a burst
    not heard within one interval is lost)."""
    out = []
    for t in heard:
        before = [s for s in sent if s <= t]
        if before and t - before[-1] < interval:
            out.append((t - before[-1]) * 1000)
    return out


def summary(name: str, values: list[float], unit: str = "ms") -> str:
    if not values:
        return f"{name:<34} no samples"
    q = sorted(values)
    p99 = q[min(len(q) - 1, int(len(q) * 0.99))]
    stdev = statistics.pstdev(values)
    return (f"{name:<34} n={len(values):<5} min {q[0]:6.1f}  p50 {statistics.median(q):6.1f}"
            f"  p99 {p99:6.1f}  max {q[-1]:6.1f}  stdev {stdev:5.1f} {unit}")


def rfc3550_jitter(arrivals: list[float], period: float = 0.02) -> float:
    """RFC 3550 §6.4.1 interarrival jitter (ms) of frames meant to be PERIOD apart."""
    jitter = 0.0
    for a, b in zip(arrivals, arrivals[1:], strict=False):
        d = abs((b - a) - period) * 1000
        jitter += (d - jitter) / 16
    return jitter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between bursts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fake = ProbeModem(link=Path(tmp) / "usb-Quectel_EC25-if02-port0", answer_after=0.3,
                          interval=args.interval).start()
        api_port, sip_port = free_port(), free_port()
        rtp = 43000 + (os.getpid() % 40) * 100
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'data_dir = "{tmp}/var"\n[api]\nlisten = "127.0.0.1:{api_port}"\n'
            f'[sip]\nlisten = "127.0.0.1:{sip_port}"\ndomain = "{DOMAIN}"\n'
            f'[media]\nworkers = 1\nrtp_ports = "{rtp}-{rtp + 49}"\n'
            f'[modem]\ndevice = "{fake.link}"\naudio_device = "{fake.pcm_path}"\n'
            f'number = "+15550009000"\n'
            '[[outbound.routes]]\nprefix = "+1777"\nlines = ["modem"]\n')
        app = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config",
                                str(config), "--log-level", "warning"], cwd=ROOT)
        phone: subprocess.Popen[str] | None = None
        try:
            deadline = time.monotonic() + 40
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health",
                                                timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or app.poll() is not None:
                    raise SystemExit("appliance not up")
                time.sleep(0.2)
            password = (Path(tmp) / "var" / "admin-password").read_text().strip()
            api(api_port, password, "Clients.json", {"Login": "alice", "Password": PASSWORD})
            phone = subprocess.Popen(
                [sys.executable, str(PHONE), "--register", f"127.0.0.1:{sip_port}",
                 "--user", "alice", "--password", PASSWORD, "--domain", DOMAIN,
                 "--call", f"sip:+17775550100@127.0.0.1:{sip_port}", "--rtp-port",
                 str(rtp + 60), "--seconds", str(args.seconds), "--interval",
                 str(args.interval), "--offset", str(args.interval / 2)],
                stdout=subprocess.PIPE, text=True)
            assert phone.stdout is not None
            result: dict[str, Any] = {}
            for line in phone.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # pjsua's own start-up lines
                if event["event"] == "state":
                    print(f"phone: call {event['state']} ({event['code']})", flush=True)
                    if event["state"] == "CONFIRMED":
                        time.sleep(2.0)  # as the phone's --settle
                        fake.measuring = True
                if event["event"] == "result":
                    result = event
                    print(f"phone: {event['requested']} frames sent, {event['received']} "
                          "received", flush=True)
                    fake.measuring = False
            phone.wait(10)
        finally:
            if phone is not None and phone.poll() is None:
                phone.kill()
            app.send_signal(signal.SIGTERM)
            app.wait(20)
            fake.close()
            fake.close_pcm()
    if not result:
        raise SystemExit("the phone reported nothing")
    down = pair(fake.sent, result["heard"], args.interval)
    up = pair(result["sent"], fake.heard, args.interval)
    gaps = [(b - a) * 1000 for a, b in zip(fake.arrivals, fake.arrivals[1:], strict=False)]
    print(f"\nGSM audio through the bridge, {args.seconds:.0f} s measured, a burst every "
          f"{args.interval} s each way")
    print(summary("latency GSM -> phone (one way)", down)
          + f"  ({len(down)}/{len(fake.sent)} bursts heard)")
    print(summary("latency phone -> GSM (one way)", up)
          + f"  ({len(up)}/{len(result['sent'])} bursts heard)")
    print(summary("uplink frame gap (20 ms nominal)", gaps))
    print(summary("uplink |gap - 20 ms|", [abs(g - 20) for g in gaps]))
    print(f"{'uplink RFC 3550 jitter':<34} {rfc3550_jitter(fake.arrivals):.2f} ms over "
          f"{len(fake.arrivals)} frames")


if __name__ == "__main__":
    main()
