"""Time from a phone's INVITE to the first RCML request (issue "Voice applications").

The appliance runs as its own process with one media worker; a registered test phone (a small
SIP UA in this script) calls a number whose VoiceUrl points at a local aiohttp server that
notes when the request arrives and answers `<Response><Hangup/></Response>`. Measured: from
sending the authenticated INVITE to the RCML request's arrival, over N sequential calls.

    .venv/bin/python bench/rcml_latency.py [--calls 50]

Target: p50 under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.sip.headers import DigestCredentials  # noqa: E402
from appliance.sip.message import Response, parse_message  # noqa: E402
from tests.conftest import free_port  # noqa: E402

ADMIN = "ACae6e420f425248d6a26948c17a9e2acf"
NUMBER = "+15550001"
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Phone(asyncio.DatagramProtocol):
    def __init__(self, login: str, password: str, server: tuple[str, int]) -> None:
        self.login, self.password, self.server = login, password, server
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.last_status = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self,
                                                                local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = parse_message(data)
        except Exception:  # noqa: BLE001
            return
        if isinstance(msg, Response):
            self.responses.put_nowait(msg)
            return
        if msg.method in ("BYE", "CANCEL", "OPTIONS"):  # the app hung up: say OK
            lines = ["SIP/2.0 200 OK", *(f"Via: {v}" for v in msg.get_all("via")),
                     f"From: {msg.get('from')}", f"To: {msg.get('to')}",
                     f"Call-ID: {msg.call_id}", f"CSeq: {msg.get('cseq')}"]
            assert self.transport is not None
            self.transport.sendto(("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n")
                                  .encode(), addr)

    def send(self, lines: list[str], body: str = "") -> None:
        assert self.transport is not None
        text = "\r\n".join([*lines, f"Content-Length: {len(body)}"]) + "\r\n\r\n" + body
        self.transport.sendto(text.encode(), self.server)

    async def final(self, call_id: str | None = None, cseq: int | None = None) -> Response:
        while True:
            response = await asyncio.wait_for(self.responses.get(), 10)
            if call_id is not None and (response.call_id != call_id
                                        or response.cseq.number != cseq):
                continue  # a retransmission of an earlier answer
            if response.status >= 200:
                return response

    def auth(self, response: Response, method: str, uri: str) -> str:
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        ch = DigestCredentials.parse(response.get_all(name)[0]).params
        ha1 = md5(f"{self.login}:{ch['realm']}:{self.password}")
        cnonce, nc = secrets.token_hex(4), "00000001"
        answer = md5(f"{ha1}:{ch['nonce']}:{nc}:{cnonce}:auth:{md5(f'{method}:{uri}')}")
        header = "Authorization" if response.status == 401 else "Proxy-Authorization"
        return (f'{header}: Digest username="{self.login}", realm="{ch["realm"]}", '
                f'nonce="{ch["nonce"]}", uri="{uri}", response="{answer}", qop=auth, '
                f'nc={nc}, cnonce="{cnonce}", algorithm=MD5')

    def _base(self, method: str, uri: str, to: str, call_id: str, cseq: int,
              branch: str) -> list[str]:
        return [f"{method} {uri} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{branch};rport",
                "Max-Forwards: 70", f"From: <sip:{self.login}@{self.server[0]}>;tag=ft",
                f"To: <{to}>", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}"]

    async def register(self) -> int:
        uri = f"sip:{self.server[0]}:{self.server[1]}"
        to = f"sip:{self.login}@{self.server[0]}"
        contact = f"Contact: <sip:{self.login}@127.0.0.1:{self.port}>"
        self.send(self._base("REGISTER", uri, to, "reg-1", 1, secrets.token_hex(6))
                  + [contact, "Expires: 600"])
        first = await self.final("reg-1", 1)
        self.send(self._base("REGISTER", uri, to, "reg-1", 2, secrets.token_hex(6))
                  + [contact, "Expires: 600", self.auth(first, "REGISTER", uri)])
        return (await self.final("reg-1", 2)).status

    def ack(self, response: Response, uri: str, branch: str) -> None:
        lines = [f"ACK {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{branch};rport",
                 "Max-Forwards: 70", f"From: {response.get('from')}", f"To: {response.get('to')}",
                 f"Call-ID: {response.call_id}", f"CSeq: {response.cseq.number} ACK"]
        self.send(lines)

    async def invite_timed(self) -> float:
        """Send INVITE, answer the 407; returns the time the authenticated INVITE left."""
        uri = f"sip:{NUMBER}@{self.server[0]}:{self.server[1]}"
        call_id = secrets.token_hex(8)
        extra = [f"Contact: <sip:{self.login}@127.0.0.1:{self.port}>",
                 "Content-Type: application/sdp"]
        branch = secrets.token_hex(6)
        self.send(self._base("INVITE", uri, uri, call_id, 1, branch) + extra, SDP)
        challenge = await self.final(call_id, 1)
        self.ack(challenge, uri, branch)
        branch = secrets.token_hex(6)
        sent = time.monotonic()
        self.send(self._base("INVITE", uri, uri, call_id, 2, branch)
                  + [*extra, self.auth(challenge, "INVITE", uri)], SDP)
        final = await self.final(call_id, 2)
        self.last_status = final.status
        if final.status >= 300:
            self.ack(final, uri, branch)
        else:  # 2xx: the ACK goes end to end, along the Record-Route set
            contact = final.get("contact") or uri
            target = contact.split("<", 1)[-1].split(">", 1)[0]
            lines = [f"ACK {target} SIP/2.0",
                     f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK"
                     f"{secrets.token_hex(6)};rport", "Max-Forwards: 70",
                     *(f"Route: {r}" for r in reversed(final.get_all("record-route"))),
                     f"From: {final.get('from')}", f"To: {final.get('to')}",
                     f"Call-ID: {call_id}", "CSeq: 2 ACK"]
            self.send(lines)
        return sent


def api(port: int, password: str, path: str, data: dict[str, str]) -> dict[str, object]:
    body = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in data.items()).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/restcomm/2012-04-24/Accounts/{ADMIN}/{path}", data=body,
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{ADMIN}:{password}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


async def run(calls: int) -> list[float]:
    arrivals: list[float] = []

    async def app_xml(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        return web.Response(text="<Response><Hangup/></Response>", content_type="text/xml")

    hook = web.Application()
    hook.router.add_route("*", "/app.xml", app_xml)
    runner = web.AppRunner(hook)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()

    with tempfile.TemporaryDirectory() as tmp:
        api_port, sip_port = free_port(), free_port()
        config = Path(tmp) / "config.toml"
        config.write_text(f'data_dir = "{tmp}/var"\n[api]\nlisten = "127.0.0.1:{api_port}"\n'
                          f'[sip]\nlisten = "127.0.0.1:{sip_port}"\n[media]\nworkers = 1\n')
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config",
                                 str(config), "--log-level", "warning"], cwd=ROOT)
        try:
            deadline = time.monotonic() + 40
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health",
                                                timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("appliance not healthy")
                await asyncio.sleep(0.2)
            password = (Path(tmp) / "var" / "admin-password").read_text().strip()
            api(api_port, password, "Clients.json", {"Login": "alice", "Password": "Pbx-edge-7"})
            api(api_port, password, "IncomingPhoneNumbers.json",
                {"PhoneNumber": NUMBER, "VoiceUrl": f"http://127.0.0.1:{hook_port}/app.xml"})
            phone = Phone("alice", "Pbx-edge-7", ("127.0.0.1", sip_port))
            await phone.start()
            assert await phone.register() == 200
            latencies = []
            for _ in range(calls):
                before = len(arrivals)
                sent = await phone.invite_timed()
                try:
                    async with asyncio.timeout(10):
                        while len(arrivals) == before:
                            await asyncio.sleep(0.001)
                except TimeoutError:
                    raise SystemExit(f"no RCML request; the call ended "
                                     f"{phone.last_status}") from None
                latencies.append((arrivals[before] - sent) * 1000)
                await asyncio.sleep(0.05)
            return latencies
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    lat = asyncio.run(run(args.calls))
    ordered = sorted(lat)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"INVITE -> first RCML request, {len(lat)} calls: p50 {statistics.median(lat):.1f} ms, "
          f"p99 {p99:.1f} ms, max {max(lat):.1f} ms (target p50 < 50 ms)")


if __name__ == "__main__":
    main()
