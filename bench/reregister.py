"""Time for a gateway to re-register after its provider comes back (issue "Outside lines").

The appliance runs as its own process with one gateway (TTL 60 s) pointing at sipp playing
the provider's registrar on loopback. The provider is stopped long enough for a refresh to
fail, then started again; measured: from the provider's return to `registered` in the API.

    .venv/bin/python bench/reregister.py [--down 40] [--rounds 2]

It takes about a minute and a half per round: refreshes happen at half the 60 s expiry.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402

ADMIN = "ACae6e420f425248d6a26948c17a9e2acf"
SCENARIO = ROOT / "tests" / "data" / "sip" / "sipp" / "provider-registrar.xml"


def provider(port: int, scenario: Path) -> subprocess.Popen[bytes]:
    # No -m: serve registrations until stopped (each REGISTER pair is one sipp "call").
    return subprocess.Popen(["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port),
                             "-nostdin", "-bind_local"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def call(port: int, password: str, method: str, path: str,
         data: dict[str, str] | None = None) -> dict[str, object]:
    body = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in (data or {}).items())
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN}/{path}",
        data=body.encode() if data is not None else None, method=method,
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{ADMIN}:{password}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--down", type=float, default=75.0, help="seconds the provider is away")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        api_port, sip_port, prov_port = free_port(), free_port(), free_port()
        config = Path(tmp) / "config.toml"
        config.write_text(f'data_dir = "{tmp}/var"\n[api]\nlisten = "127.0.0.1:{api_port}"\n'
                          f'[sip]\nlisten = "127.0.0.1:{sip_port}"\n[media]\nworkers = 0\n')
        app = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config",
                                str(config), "--log-level", "warning"], cwd=ROOT)
        # The provider grants 60 s, so a refresh (at 30 s) meets the provider's absence.
        scenario = Path(tmp) / "provider.xml"
        scenario.write_text(SCENARIO.read_text().replace("expires=300", "expires=60"))
        sipp = provider(prov_port, scenario)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health",
                                                timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("appliance not up") from None
                    time.sleep(0.2)
            password = (Path(tmp) / "var" / "admin-password").read_text().strip()
            gw = call(api_port, password, "POST", "Management/Gateways.json", {
                "FriendlyName": "provider", "UserName": "office", "Password": "Trunk-pass-1",
                "Proxy": f"127.0.0.1:{prov_port}", "Register": "true", "TTL": "60"})
            sid = gw["sid"]

            def state() -> str:
                got = call(api_port, password, "GET", f"Management/Gateways/{sid}.json")
                return str(got["registration_state"])

            def wait(wanted: str, within: float) -> float:
                start = time.monotonic()
                while state() != wanted:
                    if time.monotonic() - start > within:
                        raise SystemExit(f"gateway never {wanted}")
                    time.sleep(0.05)
                return time.monotonic() - start

            wait("registered", 15)
            results = []
            for _ in range(args.rounds):
                sipp.send_signal(signal.SIGTERM)
                sipp.wait(10)
                time.sleep(args.down)
                down_state = state()
                sipp = provider(prov_port, scenario)
                took = wait("registered", 400)
                results.append((down_state, took))
                print(f"provider back after {args.down:.0f} s away (gateway was {down_state}): "
                      f"registered again in {took:.1f} s", flush=True)
            print("re-registration after the provider returns: "
                  + ", ".join(f"{t:.1f} s" for _, t in results)
                  + " (bounded by the back-off step in force: 5, 10, 20 … 300 s × 0.8–1.2)")
        finally:
            sipp.kill()
            sipp.wait()
            app.send_signal(signal.SIGTERM)
            app.wait(20)


if __name__ == "__main__":
    main()
