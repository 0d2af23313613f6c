"""A proxy wired to fakes: a recording Sender, a dict Directory, a real Location and Router,
the real CallLog over a recording store, and a clock that only moves when a test says so.

The clock has two readings, as the appliance has: the wall clock (``clock.now``: nonces,
bindings, CDR times) and the monotonic timer clock (``clock.monotonic()``: the proxy's
transactions and deadlines, CDR durations). Moving ``clock.now`` is time passing and moves
both; ``step`` is NTP stepping the wall clock alone.

`Phone` plays a desk phone behind NAT: its Contact names a private address, its packets come
from a public `source`. Messages are built as text and parsed, so every request the proxy sees
has been through `parse_message` as on the wire.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from appliance.models import CallRecord, SmsRecord
from appliance.services.message_log import MessageLog
from appliance.services.provisioning import digest_secrets
from appliance.services.routing import ClientRouter
from appliance.services.telephony import CallLog, SipUser
from appliance.sip.bindings import Location, Origin
from appliance.sip.digest import compute_response, parse_algorithm
from appliance.sip.headers import DigestCredentials, NameAddr
from appliance.sip.message import Request, Response, make_response, parse_message
from appliance.sip.proxy import Proxy
from appliance.sip.wire import Incoming, Target

REALM = "pbx.example.com"
LOCAL = ("10.0.0.1", 5060)  # the proxy's address
NOW = 1_700_000_000.0
PASSWORD = "Secret-Pass-1"
SDP = (b"v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 0\r\n")
_ids = itertools.count(1)


# Where the timer clock starts: far from NOW, so that a wall time fed to a timer (or the
# reverse) is way off and shows.
MONOTONIC_START = 1_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now
        self._start = now
        self._stepped = 0.0  # what NTP steps added to the wall clock

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        """The timer clock: the time that passed, not the wall clock's steps."""
        return MONOTONIC_START + (self.now - self._start) - self._stepped

    def step(self, seconds: float) -> None:
        """An NTP step of the wall clock by SECONDS (either way): no time passes."""
        self.now += seconds
        self._stepped += seconds

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[Request | Response, Target]] = []
        # (host, port) the transport fails to send to (recorded as sent, reported False).
        self.failing: set[tuple[str, int]] = set()
        # (host, port) the transport learns only later it could not send to (a TCP connect
        # under way): sends there return True and keep their on_error in `unsent`, which
        # `fail_later` calls, as the transport would once the connect failed.
        self.failing_later: set[tuple[str, int]] = set()
        self.unsent: list[Callable[[], None]] = []

    def send(self, message: Request | Response, target: Target, data: bytes | None = None, *,
             on_error: Callable[[], None] | None = None) -> bool:
        assert data is None or data == bytes(message)  # must serialise, the same either way
        self.sent.append((message, target))
        if (target.host, target.port) in self.failing_later:
            if on_error is not None:
                self.unsent.append(on_error)
            return True
        return (target.host, target.port) not in self.failing

    def fail_later(self) -> int:
        """Report the sends to ``failing_later`` addresses as failed; how many there were."""
        unsent, self.unsent = self.unsent, []
        for on_error in unsent:
            on_error()
        return len(unsent)

    def take(self) -> list[tuple[Request | Response, Target]]:
        sent, self.sent = self.sent, []
        return sent

    def requests(self, method: str | None = None) -> list[tuple[Request, Target]]:
        return [(m, t) for m, t in self.sent
                if isinstance(m, Request) and (method is None or m.method == method)]

    def responses(self, status: int | None = None) -> list[tuple[Response, Target]]:
        return [(m, t) for m, t in self.sent
                if isinstance(m, Response) and (status is None or m.status == status)]


class RecordingStore:
    """The store methods CallLog and MessageLog use (SMS rows in the order first written)."""

    def __init__(self) -> None:
        self.calls: dict[str, CallRecord] = {}
        self.sms: list[SmsRecord] = []

    async def insert_call(self, record: CallRecord) -> None:
        self.calls[record.sid] = record

    async def update_call(self, record: CallRecord) -> None:
        self.calls[record.sid] = record

    async def write_sms(self, records: list[SmsRecord]) -> None:
        for record in records:
            at = next((i for i, r in enumerate(self.sms) if r.sid == record.sid), None)
            if at is None:
                self.sms.append(record)
            else:
                self.sms[at] = record


class Directory:
    def __init__(self) -> None:
        self.users: dict[str, SipUser] = {}

    async def user(self, login: str) -> SipUser | None:
        return self.users.get(login)


def make_user(login: str, *, password: str = PASSWORD, realm: str = REALM, enabled: bool = True,
              account_sid: str = "AC" + "1" * 32, voice_url: str | None = None) -> SipUser:
    md5, sha256 = digest_secrets(login, realm, password)
    return SipUser(login=login, client_sid="CL" + login, account_sid=account_sid, realm=realm,
                   ha1_md5=md5, ha1_sha256=sha256, enabled=enabled, voice_url=voice_url,
                   voice_application_sid=None)


@dataclass
class Phone:
    login: str
    host: str  # the private address in its Contact
    source: tuple[str, int]  # the public address its packets come from (NAT)
    transport: str = "udp"
    password: str = PASSWORD
    port: int = 5060
    connection_id: str | None = None
    cseq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def contact(self) -> str:
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{self.login}@{self.host}:{self.port}{suffix}"

    @property
    def target(self) -> Target:
        return Target(self.transport, self.source[0], self.source[1], self.connection_id)

    def incoming(self, message: Request | Response) -> Incoming:
        return Incoming(message, self.transport, self.source, LOCAL, self.connection_id)

    def request(self, method: str, uri: str, *, to: str, call_id: str, from_tag: str,
                cseq: int | None = None, branch: str | None = None, max_forwards: int = 70,
                headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                from_user: str | None = None) -> Request:
        branch = branch or f"z9hG4bK{self.login}{next(_ids)}"
        number = cseq if cseq is not None else next(self.cseq)
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {self.host}:{self.port};branch={branch};rport",
            f"Max-Forwards: {max_forwards}",
            f"From: <sip:{from_user or self.login}@{REALM}>;tag={from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {number} {method}",
            f"Contact: <{self.contact}>",
        ]
        lines += [f"{name}: {value}" for name, value in headers or []]
        if body:
            lines.append("Content-Type: application/sdp" if method == "INVITE"
                         else "Content-Type: text/plain")
        lines.append(f"Content-Length: {len(body)}")
        message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        assert isinstance(message, Request)
        return message

    def cancel(self, invite: Request) -> Request:
        """This phone's CANCEL of INVITE, which it sent (RFC 3261 §9.1: same branch)."""
        assert invite.top_via is not None
        return self.request("CANCEL", invite.uri, to=invite.get("to") or "",
                            call_id=invite.call_id or "", from_tag=invite.from_.tag or "",
                            cseq=invite.cseq.number, branch=invite.top_via.branch)

    def answer(self, request: Request, status: int, *, to_tag: str | None = None,
               headers: list[tuple[str, str]] | None = None) -> Response:
        """This phone's response to REQUEST (as the proxy forwarded it)."""
        response = make_response(request, status, to_tag=to_tag)
        if 100 < status < 300 and request.method == "INVITE":
            response.add("Contact", f"<{self.contact}>")
            for rr in request.get_all("record-route"):
                response.add("Record-Route", rr)
        for name, value in headers or []:
            response.add(name, value)
        if 200 <= status < 300 and request.method == "INVITE":
            response.add("Content-Type", "application/sdp")
            response.body = SDP
        parsed = parse_message(bytes(response))
        assert isinstance(parsed, Response)
        return parsed


def authorization(request: Request, challenge: Response, phone: Phone, *,
                  algorithm: str = "SHA-256", password: str | None = None,
                  username: str | None = None, nc: int = 1) -> str:
    """The Proxy-Authorization a phone sends after CHALLENGE, for REQUEST."""
    offers = [DigestCredentials.parse(v) for v in challenge.get_all("proxy-authenticate")]
    offer = next(o for o in offers if o.algorithm == algorithm)
    realm, nonce = offer.realm or "", offer.nonce or ""
    alg = parse_algorithm(algorithm)
    assert alg is not None
    user = username or phone.login
    md5, sha256 = digest_secrets(user, realm, password or phone.password)
    ha1 = sha256 if algorithm.startswith("SHA-256") else md5
    uri = request.uri
    nc_text, cnonce = f"{nc:08x}", "0a4f113b"
    response = compute_response(ha1=ha1, algorithm=alg, method=request.method, uri=uri,
                                nonce=nonce, qop="auth", nc=nc_text, cnonce=cnonce)
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc_text}, '
            f'cnonce="{cnonce}"')


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.sender = FakeSender()
        self.store = RecordingStore()
        self.directory = Directory()
        self.location = Location()
        self.router = ClientRouter(self.directory, self.location, local_hosts={REALM, LOCAL[0]})
        self.call_log = CallLog(self.store, self.clock.datetime,  # type: ignore[arg-type]
                                self.clock.monotonic)
        messages = MessageLog(self.store, self.clock.datetime)  # type: ignore[arg-type]
        self.proxy = Proxy(self.sender, self.directory, self.router, self.call_log, messages,
                           clock=self.clock, timer_clock=self.clock.monotonic,
                           realm=lambda: REALM, local_hosts={REALM})

    def phone(self, login: str, host: str, source: tuple[str, int], *, transport: str = "udp",
              register: bool = True, user: SipUser | None = None,
              connection_id: str | None = None) -> Phone:
        self.directory.users.setdefault(login, user or make_user(login))
        phone = Phone(login, host, source, transport=transport, connection_id=connection_id)
        if register:
            self.location.register(
                login, [NameAddr.parse(f"<{phone.contact}>")], expires_header=3600,
                call_id=f"reg-{login}-{host}", cseq=1, now=self.clock.now,
                origin=Origin(transport, source, connection_id))
        return phone

    async def send(self, phone: Phone, message: Request | Response) -> None:
        await self.proxy.handle(phone.incoming(message))

    async def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        await self.proxy.handle_timer(self.clock.monotonic())

    async def authenticated(self, phone: Phone, method: str, callee: str, *,
                            call_id: str | None = None, from_tag: str = "caller-tag",
                            body: bytes = b"", max_forwards: int = 70,
                            algorithm: str = "SHA-256") -> Request:
        """Send METHOD to CALLEE, answer the 407 (ACKing it for an INVITE) and send it again
        with credentials. Returns the authenticated request as sent; the sender is emptied
        of the challenge exchange."""
        call_id = call_id or f"call-{next(_ids)}@{phone.host}"
        uri = f"sip:{callee}@{REALM}"
        to = f"<{uri}>"
        first = phone.request(method, uri, to=to, call_id=call_id, from_tag=from_tag,
                              body=body, max_forwards=max_forwards)
        await self.send(phone, first)
        challenges = self.sender.responses(407)
        assert challenges, f"expected a 407, got {[m.start_line() for m, _ in self.sender.sent]}"
        challenge = challenges[-1][0]
        if method == "INVITE":
            ack = phone.request("ACK", uri, to=challenge.get("to") or to, call_id=call_id,
                                from_tag=from_tag, cseq=first.cseq.number,
                                branch=first.top_via.branch if first.top_via else None)
            await self.send(phone, ack)
        self.sender.take()
        second = phone.request(method, uri, to=to, call_id=call_id, from_tag=from_tag,
                               body=body, max_forwards=max_forwards, headers=[
                                   ("Proxy-Authorization",
                                    authorization(first, challenge, phone, algorithm=algorithm)),
                               ])
        await self.send(phone, second)
        return second
