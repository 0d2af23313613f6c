"""A tiny SIP phone for tests: registers with digest, sends MESSAGE, answers MESSAGE 200.

Built on the appliance's own sans-I/O message parser only for reading; requests are written
out as text, as a phone would.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets

from appliance.sip.headers import DigestCredentials
from appliance.sip.message import Request, Response, parse_message


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Phone(asyncio.DatagramProtocol):
    def __init__(self, login: str, password: str, server: tuple[str, int]) -> None:
        self.login, self.password, self.server = login, password, server
        self.transport: asyncio.DatagramTransport | None = None
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self.messages: list[str] = []
        self.requests: list[Request] = []  # each MESSAGE received, as parsed
        self.got_message = asyncio.Event()
        self.cseq = 0
        self.call_id = secrets.token_hex(8)
        self.port = 0

    async def start(self) -> Phone:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = parse_message(data)
        except Exception:  # noqa: BLE001 - a test phone ignores what it cannot read
            return
        if isinstance(msg, Response):
            self.responses.put_nowait(msg)
            return
        if msg.method == "MESSAGE":
            self.requests.append(msg)
            self.messages.append(msg.body.decode())
            self.got_message.set()
        self._answer(msg, addr)

    def _answer(self, request: Request, addr: tuple[str, int]) -> None:
        lines = ["SIP/2.0 200 OK"]
        for name in ("via", "from", "call-id", "cseq"):
            lines += [f"{name.title()}: {v}" for v in request.get_all(name)]
        lines.append(f"To: {request.get('to')};tag=ph{secrets.token_hex(3)}")
        lines.append("Content-Length: 0")
        assert self.transport is not None
        self.transport.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), addr)

    def _send(self, method: str, uri: str, to: str, extra: list[str], body: str = "") -> None:
        self.cseq += 1
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(8)};"
                 "rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{self.login}@{self.server[0]}>;tag=ft{self.login}",
                 f"To: <{to}>", f"Call-ID: {self.call_id}-{method}", f"CSeq: {self.cseq} {method}",
                 *extra, f"Content-Length: {len(body.encode())}"]
        assert self.transport is not None
        self.transport.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), self.server)

    def _auth(self, response: Response, method: str, uri: str) -> str:
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = DigestCredentials.parse(response.get_all(header)[0]).params
        realm, nonce = challenge["realm"], challenge["nonce"]
        ha1 = _md5(f"{self.login}:{realm}:{self.password}")
        ha2 = _md5(f"{method}:{uri}")
        cnonce, nc = secrets.token_hex(4), "00000001"
        answer = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        name = "Authorization" if response.status == 401 else "Proxy-Authorization"
        return (f'{name}: Digest username="{self.login}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{answer}", qop=auth, nc={nc}, cnonce="{cnonce}", '
                "algorithm=MD5")

    async def _final(self) -> Response:
        while True:
            response = await asyncio.wait_for(self.responses.get(), 5)
            # A retransmitted final of an earlier request (a 407 we never ACKed) is not ours.
            if response.status >= 200 and response.cseq.number == self.cseq:
                return response

    async def request(self, method: str, uri: str, to: str, extra: list[str],
                      body: str = "") -> Response:
        self._send(method, uri, to, extra, body)
        response = await self._final()
        if response.status in (401, 407):
            self._send(method, uri, to, [*extra, self._auth(response, method, uri)], body)
            response = await self._final()
        return response

    async def register(self) -> int:
        host = f"{self.server[0]}:{self.server[1]}"
        response = await self.request(
            "REGISTER", f"sip:{host}", f"sip:{self.login}@{self.server[0]}",
            [f"Contact: <sip:{self.login}@127.0.0.1:{self.port}>", "Expires: 600"])
        return response.status

    async def message(self, user: str, text: str) -> int:
        uri = f"sip:{user}@{self.server[0]}:{self.server[1]}"
        response = await self.request("MESSAGE", uri, uri,
                                      ["Content-Type: text/plain;charset=UTF-8"], text)
        return response.status
