"""CDRs and SMS rows written by the proxy, then calls between real SIP peers (SIPp) through
the running appliance, checked through the REST API."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.app import Appliance
from appliance.config import ApiConfig, Config, Endpoint, SipConfig
from appliance.models import CallRecord, CallStatus
from appliance.sip.bindings import Origin
from appliance.sip.forwarding import TIMER_C
from appliance.sip.headers import NameAddr
from appliance.sip.message import Request
from tests.conftest import ADMIN_SID, Api, claim_port, free_port
from tests.sip.proxy_harness import REALM, SDP, Harness, Phone, make_user

ALICE_SRC = ("203.0.113.10", 40000)
BOB_SRC = ("203.0.113.20", 41000)
SIPP_DIR = Path(__file__).resolve().parents[1] / "data" / "sip" / "sipp"


def setup() -> tuple[Harness, Phone, Phone]:
    h = Harness()
    return h, h.phone("alice", "192.168.1.10", ALICE_SRC), h.phone("bob", "192.168.1.20", BOB_SRC)


def only_cdr(h: Harness) -> CallRecord:
    [record] = h.store.calls.values()
    return record


async def invite(h: Harness, alice: Phone) -> tuple[Request, Request]:
    sent = await h.authenticated(alice, "INVITE", "bob", body=SDP)
    [(to_bob, _)] = h.sender.requests("INVITE")
    h.sender.take()
    return sent, to_bob


def bye_from(phone: Phone, request_uri: str, *, call_id: str, from_tag: str, to_tag: str,
             to_user: str) -> Request:
    return phone.request("BYE", request_uri, to=f"<sip:{to_user}@{REALM}>;tag={to_tag}",
                         call_id=call_id, from_tag=from_tag,
                         headers=[("Route", "<sip:10.0.0.1:5060;lr;transport=udp>")])


# --- CDRs -----------------------------------------------------------------------------------


async def test_cdr_queued_ringing_in_progress_completed_with_duration() -> None:
    h, alice, bob = setup()
    sent, to_bob = await invite(h, alice)
    cdr = only_cdr(h)
    assert (cdr.status, cdr.direction, cdr.from_, cdr.to) == ("queued", "inbound", "alice", "bob")
    assert cdr.account_sid == h.directory.users["alice"].account_sid
    h.clock.now += 3
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    assert only_cdr(h).status == "ringing"
    h.clock.now += 4
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b"))
    cdr = only_cdr(h)
    assert cdr.status == "in-progress" and cdr.ring_duration == 4
    h.clock.now += 61
    await h.send(bob, bye_from(bob, alice.contact, call_id=sent.call_id or "",
                               from_tag="b", to_tag="caller-tag", to_user="alice"))
    cdr = only_cdr(h)
    assert (cdr.status, cdr.duration) == ("completed", 61)
    assert cdr.end_time is not None
    # A crossing BYE from the caller does not close it twice.
    h.clock.now += 5
    await h.send(alice, bye_from(alice, bob.contact, call_id=sent.call_id or "",
                                 from_tag="caller-tag", to_tag="b", to_user="bob"))
    assert only_cdr(h).duration == 61
    assert len(h.sender.requests("BYE")) == 2  # both BYEs are still forwarded


async def test_caller_bye_completes_the_call() -> None:
    h, alice, bob = setup()
    sent, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b"))
    h.clock.now += 10
    await h.send(alice, bye_from(alice, bob.contact, call_id=sent.call_id or "",
                                 from_tag="caller-tag", to_tag="b", to_user="bob"))
    assert (only_cdr(h).status, only_cdr(h).duration) == ("completed", 10)


@pytest.mark.parametrize(("status", "cdr_status"), [
    (486, "busy"), (600, "busy"), (603, "busy"), (480, "no-answer"), (408, "no-answer"),
    (404, "failed"), (500, "failed"),
])
async def test_cdr_of_an_unanswered_call(status: int, cdr_status: str) -> None:
    h, alice, bob = setup()
    _, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, status, to_tag="b"))
    assert only_cdr(h).status == cdr_status
    assert only_cdr(h).duration == 0


async def test_cdr_canceled_by_the_caller() -> None:
    h, alice, bob = setup()
    sent, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    cancel = alice.cancel(sent)
    await h.send(alice, cancel)
    [(downstream, _)] = h.sender.requests("CANCEL")
    await h.send(bob, bob.answer(downstream, 200))
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b"))
    assert only_cdr(h).status == "canceled"


async def test_cdr_no_answer_after_timer_c() -> None:
    h, alice, bob = setup()
    _, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, 180, to_tag="b"))
    await h.tick(TIMER_C + 1)
    [(cancel, _)] = h.sender.requests("CANCEL")
    await h.send(bob, bob.answer(to_bob, 487, to_tag="b"))
    assert only_cdr(h).status == "no-answer"


async def test_refused_calls_leave_a_cdr_challenges_do_not() -> None:
    h, alice, _ = setup()
    h.directory.users["carol"] = make_user("carol")  # known, never registered
    await h.authenticated(alice, "INVITE", "nobody", body=SDP)
    await h.authenticated(alice, "INVITE", "carol", body=SDP)
    rows = sorted((r.to, r.status) for r in h.store.calls.values())
    assert rows == [("carol", "no-answer"), ("nobody", "failed")]


async def test_dialog_without_bye_is_closed_after_its_idle_limit() -> None:
    h, alice, bob = setup()
    _, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b"))
    assert h.proxy.calls == 1
    await h.tick(11 * 3600)
    assert only_cdr(h).status == "in-progress"
    await h.tick(3600 + 1)
    cdr = only_cdr(h)
    assert cdr.status == "completed" and cdr.duration >= 12 * 3600
    assert h.proxy.calls == 0


async def test_session_timer_shortens_the_idle_limit() -> None:
    h, alice, bob = setup()
    _, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b",
                                 headers=[("Session-Expires", "1800;refresher=uac")]))
    await h.tick(1800 + 40)
    assert only_cdr(h).status == "completed"


async def test_finished_calls_and_transactions_are_forgotten() -> None:
    h, alice, bob = setup()
    sent, to_bob = await invite(h, alice)
    await h.send(bob, bob.answer(to_bob, 200, to_tag="b"))
    await h.send(bob, bye_from(bob, alice.contact, call_id=sent.call_id or "",
                               from_tag="b", to_tag="caller-tag", to_user="alice"))
    [(bye, _)] = h.sender.requests("BYE")
    await h.send(alice, alice.answer(bye, 200))
    for _ in range(10):
        await h.tick(10)
    assert (h.proxy.calls, h.proxy.transactions, h.proxy.in_flight) == (0, 0, 0)


# --- MESSAGE ------------------------------------------------------------------------------


async def test_message_is_relayed_to_every_contact_and_recorded_sent() -> None:
    h, alice, bob = setup()
    bob2 = Phone("bob", "192.168.1.21", ("203.0.113.21", 42000))
    h.location.register("bob", [NameAddr.parse(f"<{bob2.contact}>")], expires_header=3600,
                        call_id="reg-bob-2", cseq=1, now=h.clock.now,
                        origin=Origin("udp", bob2.source))
    await h.authenticated(alice, "MESSAGE", "bob", body="Lunch at 1? ☕".encode())
    relayed = h.sender.requests("MESSAGE")
    assert sorted((t.host, t.port) for _, t in relayed) == sorted([BOB_SRC, bob2.source])
    assert all(m.get("record-route") is None and m.body == "Lunch at 1? ☕".encode()
               for m, _ in relayed)
    [(first, _), (second, _)] = relayed
    h.sender.take()
    await h.send(bob, bob.answer(first, 200, to_tag="m1"))
    await h.send(bob2, bob2.answer(second, 200, to_tag="m2"))
    assert [r.status for r, _ in h.sender.responses()] == [200]
    [row] = h.store.sms
    assert (row.from_, row.to, row.body, row.status, row.direction) == (
        "alice", "bob", "Lunch at 1? ☕", "sent", "outbound-call")
    assert row.account_sid == h.directory.users["alice"].account_sid


async def test_a_second_final_to_a_forked_message_stays_with_the_proxy() -> None:
    # Over TCP the server transaction ends with its final response (Timer J is 0): a 200
    # from the other phone afterwards must not reach the caller (RFC 3261 §16.7 step 5 has
    # only the first final to a non-INVITE forwarded; only an INVITE's 2xx goes end to end).
    h = Harness()
    alice = h.phone("alice", "192.168.1.10", ALICE_SRC, transport="tcp", connection_id="c-a")
    bob = h.phone("bob", "192.168.1.20", BOB_SRC)
    bob2 = h.phone("bob", "192.168.1.21", ("203.0.113.21", 42000))
    await h.authenticated(alice, "MESSAGE", "bob", body=b"hi")
    [(first, _), (second, _)] = h.sender.requests("MESSAGE")
    h.sender.take()
    await h.send(bob, bob.answer(first, 200, to_tag="m1"))
    await h.tick(0.5)
    await h.send(bob2, bob2.answer(second, 200, to_tag="m2"))
    assert [r.get("to") for r, _ in h.sender.responses()] == [
        f"<sip:bob@{REALM}>;tag=m1"]
    assert [row.status for row in h.store.sms] == ["sent"]


async def test_message_failure_is_recorded_with_its_status() -> None:
    h, alice, bob = setup()
    await h.authenticated(alice, "MESSAGE", "bob", body=b"hi")
    [(relayed, _)] = h.sender.requests("MESSAGE")
    h.sender.take()
    await h.send(bob, bob.answer(relayed, 415, to_tag="m"))
    assert [r.status for r, _ in h.sender.responses()] == [415]
    [row] = h.store.sms
    assert (row.status, row.error_code) == ("failed", 415)


async def test_a_message_nobody_answers_gets_no_408_rfc4320() -> None:
    # RFC 4320 §4.2: a transaction-stateful element never sends 408 to a non-INVITE; the
    # caller's own Timer F has fired by then. Its retransmissions still in flight are
    # absorbed (not forked again), and the server transaction ends after Timer J.
    h, alice, bob = setup()
    message = await h.authenticated(alice, "MESSAGE", "bob", body=b"hi")
    h.sender.take()
    for _ in range(66):  # Timer E retransmits to bob, Timer F (32 s) gives up
        await h.tick(0.5)
    assert h.sender.responses() == []
    assert h.proxy.in_flight == 0
    h.sender.take()  # the MESSAGE's retransmissions to bob
    await h.send(alice, message)  # a late retransmission: neither answered nor forwarded
    assert h.sender.take() == []
    [row] = h.store.sms
    assert (row.status, row.error_code) == ("failed", 408)
    await h.tick(64 * 0.5)
    assert h.proxy.transactions == 0


async def test_a_forked_message_answered_by_one_phone_only_gets_that_answer() -> None:
    h, alice, _ = setup()
    bob2 = h.phone("bob", "192.168.1.21", ("203.0.113.21", 42000))
    await h.authenticated(alice, "MESSAGE", "bob", body=b"hi")
    [_first, (second, _)] = h.sender.requests("MESSAGE")
    h.sender.take()
    await h.send(bob2, bob2.answer(second, 488, to_tag="m2"))  # the first branch stays silent
    for _ in range(66):
        await h.tick(0.5)
    assert [r.status for r, _ in h.sender.responses()] == [488]  # not the other's 408


async def test_a_provisional_other_than_100_to_a_message_is_not_forwarded_rfc4320() -> None:
    h, alice, bob = setup()
    await h.authenticated(alice, "MESSAGE", "bob", body=b"hi")
    [(relayed, _)] = h.sender.requests("MESSAGE")
    h.sender.take()
    await h.send(bob, bob.answer(relayed, 180, to_tag="m"))
    assert h.sender.take() == []
    await h.send(bob, bob.answer(relayed, 200, to_tag="m"))
    assert [r.status for r, _ in h.sender.responses()] == [200]


async def test_message_to_unknown_or_unregistered_users() -> None:
    h, alice, _ = setup()
    h.directory.users["carol"] = make_user("carol")  # known, never registered
    await h.authenticated(alice, "MESSAGE", "nobody", body=b"hi")
    assert [r.status for r, _ in h.sender.responses()] == [404]
    await h.authenticated(alice, "MESSAGE", "carol", body=b"hi")
    assert [r.status for r, _ in h.sender.responses()] == [480]
    assert sorted((r.to, r.status, r.error_code) for r in h.store.sms) == [
        ("carol", "failed", 480), ("nobody", "failed", 404)]


async def test_unauthenticated_message_is_challenged_and_not_recorded() -> None:
    h, alice, _ = setup()
    message = alice.request("MESSAGE", f"sip:bob@{REALM}", to=f"<sip:bob@{REALM}>",
                            call_id="m", from_tag="t", body=b"hi")
    await h.send(alice, message)
    assert [r.status for r, _ in h.sender.responses()] == [407]
    assert h.store.sms == [] and h.sender.requests() == []


# --- real peers through the running appliance -----------------------------------------------

PASSWORD = "Pbx-edge-7-proxy!"


def udp_port() -> int:
    return free_port()


def attach_proxy(appliance: Any) -> tuple[Any, asyncio.Task[None] | None]:
    """The appliance's proxy, built here from its parts while app.py does not build one."""
    frontdoor = getattr(appliance, "frontdoor", None)
    if frontdoor is None:
        pytest.skip("no SIP front door in this build (appliance.frontdoor is missing)")
    if getattr(frontdoor, "proxy", None) is not None:
        return frontdoor.proxy, None

    from appliance.services.message_log import MessageLog
    from appliance.services.routing import ClientRouter
    from appliance.services.telephony import CallLog
    from appliance.sip.digest import Algorithm
    from appliance.sip.proxy import Proxy

    missing = [name for name in ("sip_directory", "location", "transport", "guard", "registrar",
                                 "wall_clock", "store") if not hasattr(appliance, name)]
    if missing:
        pytest.skip(f"the appliance lacks {missing} to build a proxy from")
    router = ClientRouter(appliance.sip_directory, appliance.location,
                          local_hosts=appliance.transport.local_hosts)
    proxy = Proxy(appliance.transport, appliance.sip_directory, router,
                  CallLog(appliance.store, appliance.clock),
                  MessageLog(appliance.store, appliance.clock),
                  clock=appliance.wall_clock, realm=lambda: appliance.realm,
                  local_hosts=appliance.transport.local_hosts, nonces=appliance.registrar.nonces,
                  guard=appliance.guard,
                  algorithms=[Algorithm(a) for a in appliance.config.sip.digest_algorithms])
    frontdoor.proxy = proxy
    return proxy, asyncio.get_running_loop().create_task(proxy.run())


async def sipp(*args: str, limit: float = 30) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "sipp", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(limit):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")


def sipp_args(scenario: str, server: tuple[str, int], port: int, login: str,
              service: str | None = None, *extra: str) -> list[str]:
    """LOGIN authenticates; SERVICE ([service], default LOGIN) is the user addressed. The
    digest ``uri`` is the Request-URI (sipp's own default leaves the user out, which the
    proxy answers 400, as RFC 7616 §3.4.6 asks); a REGISTER's Request-URI has no user."""
    auth_uri = ([] if scenario.startswith("register") else
                ["-auth_uri", f"{service or login}@{server[0]}:{server[1]}"])
    return [f"{server[0]}:{server[1]}", "-sf", str(SIPP_DIR / scenario), "-i", "127.0.0.1",
            "-p", str(port), "-s", service or login, "-au", login, "-ap", PASSWORD,
            "-key", "caller", login, "-m", "1", "-timeout", "20", "-timeout_error",
            "-max_recv_loops", "20", "-nostdin", *auth_uri, *extra]


async def create_client(api: Api, login: str) -> None:
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": login, "Password": PASSWORD})
    assert status == 200, body


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) is not installed")
async def test_sipp_call_through_the_proxy_leaves_a_completed_cdr(
        appliance: Any, api: Api, tmp_path: Path) -> None:
    proxy, task = attach_proxy(appliance)
    try:
        server = appliance.transport.address
        for login in ("alice", "bob"):
            await create_client(api, login)
        alice_port, bob_port = udp_port(), udp_port()
        # Both register first (alice must be registered to call), each from its own port.
        for login, port in (("alice", alice_port), ("bob", bob_port)):
            code, out = await sipp(*sipp_args("register.xml", server, port, login))
            assert code == 0, out
        # bob answers on the port he registered from; alice calls him through the proxy.
        uas = asyncio.create_task(sipp(*sipp_args("proxy-uas.xml", server, bob_port, "bob"),
                                       limit=40))
        await asyncio.sleep(0.5)
        code, out = await sipp(*sipp_args("proxy-uac.xml", server, alice_port, "alice", "bob"),
                               limit=40)
        uas_code, uas_out = await uas
        assert code == 0, out
        assert uas_code == 0, uas_out
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
        assert status == 200, body
        calls = json.loads(body)["calls"]
        assert [(c["from"], c["to"], c["status"], c["direction"]) for c in calls] == [
            ("alice", "bob", "completed", "inbound")]
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# --- baresip: two soft phones with audio ------------------------------------------------------


def sip_port_pair() -> int:
    """A port P with P (UDP and TCP) and P + 1 (TCP: baresip's SIP/TLS) free."""
    for _ in range(50):
        port = udp_port()
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        if claim_port(port + 1):
            return port
    raise RuntimeError("no free port pair")


class Baresip:
    """One baresip process driven over its ctrl_tcp socket (netstring-framed JSON)."""

    def __init__(self, home: Path, login: str, server: tuple[str, int], *,
                 auto_answer: bool = False) -> None:
        self.home = home
        self.login = login
        self.sip_port = sip_port_pair()
        self.ctrl_port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        answer = ";answermode=auto" if auto_answer else ""
        (home / "accounts").write_text(
            f"<sip:{login}@{server[0]}:{server[1]};transport=udp>;auth_pass={PASSWORD}"
            f";regint=600{answer}\n")
        (home / "config").write_text("\n".join([
            "poll_method epoll",
            f"sip_listen 127.0.0.1:{self.sip_port}",
            "audio_player aubridge,nowhere",
            "audio_source ausine,440",
            "ausrc_srate 48000",  # ausine makes 48 kHz stereo only; baresip resamples
            "ausrc_channels 2",
            "audio_alert aubridge,nowhere",
            "module_path /usr/lib/baresip/modules",
            "module g711.so",
            "module ausine.so",
            "module aubridge.so",
            "module_app account.so",
            "module_app menu.so",  # the dial and hangup commands
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            "rtp_ports 20000-20999",
            "",
        ]))
        (home / "contacts").write_text("")
        self.events: list[dict[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        log = (self.home / "baresip.log").open("wb")
        self.process = await asyncio.create_subprocess_exec(
            "baresip", "-f", str(self.home), "-v", stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=asyncio.subprocess.STDOUT)
        log.close()
        async with asyncio.timeout(10):
            while True:
                try:
                    self._reader, self._writer = await asyncio.open_connection(
                        "127.0.0.1", self.ctrl_port)
                    return
                except OSError:
                    await asyncio.sleep(0.1)

    async def command(self, command: str, params: str = "") -> None:
        assert self._writer is not None
        data = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._writer.write(b"%d:%s," % (len(data), data))
        await self._writer.drain()

    async def wait_event(self, kind: str, limit: float = 15) -> dict[str, Any]:
        assert self._reader is not None
        async with asyncio.timeout(limit):
            while True:
                length = await self._reader.readuntil(b":")
                body = await self._reader.readexactly(int(length[:-1]) + 1)
                message = json.loads(body[:-1])
                if message.get("event"):
                    self.events.append(message)
                    if message.get("type") == kind:
                        return message

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@pytest.fixture
async def md5_appliance(tmp_path: Path) -> AsyncIterator[Appliance]:
    """The appliance of tests/conftest.py, challenging with MD5 only.

    baresip 1.0 (Debian's, on libre 1.x) fails the whole authentication with ENOSYS
    ("Register: Function not implemented") as soon as *any* offered challenge uses an
    algorithm it does not know, SHA-256 included; ``[sip] digest_algorithms = ["MD5"]`` is
    the setting for such phones.
    """
    config = Config(data_dir=tmp_path / "var",
                    api=ApiConfig(listen=Endpoint("127.0.0.1", free_port())),
                    sip=SipConfig(listen=Endpoint("127.0.0.1", free_port()),
                                  domain="pbx.example.com", digest_algorithms=("MD5",)))
    app = Appliance(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed")
async def test_baresip_phones_call_each_other_through_the_proxy(
        md5_appliance: Any, tmp_path: Path) -> None:
    appliance = md5_appliance
    proxy, task = attach_proxy(appliance)
    password = (appliance.config.data_dir / "admin-password").read_text().strip()
    listen = appliance.config.api.listen
    session = aiohttp.ClientSession()
    api = Api(session, f"http://{listen.host}:{listen.port}", ADMIN_SID, password,
              appliance.config.data_dir)
    server = appliance.transport.address
    for login in ("alice", "bob"):
        await create_client(api, login)
    alice = Baresip(tmp_path / "alice", "alice", server)
    bob = Baresip(tmp_path / "bob", "bob", server, auto_answer=True)
    try:
        for phone in (alice, bob):
            await phone.start()
        async with asyncio.timeout(10):  # the REGISTER may beat our ctrl_tcp connection
            while not all(appliance.location.lookup(login, appliance.wall_clock())
                          for login in ("alice", "bob")):
                await asyncio.sleep(0.1)
        await alice.command("dial", f"sip:bob@{server[0]}:{server[1]}")
        await alice.wait_event("CALL_ESTABLISHED")
        await bob.wait_event("CALL_ESTABLISHED")
        await asyncio.sleep(2)  # audio flows phone to phone; the proxy only sees signalling
        await alice.command("hangup")
        await bob.wait_event("CALL_CLOSED")
        status, body, _ = await api.get(f"Accounts/{ADMIN_SID}/Calls.json")
        calls = json.loads(body)["calls"]
        assert [(c["from"], c["to"], c["status"]) for c in calls] == [
            ("alice", "bob", "completed")]
        assert calls[0]["duration"] >= 1
        for phone in (alice, bob):  # media went phone to phone, around the proxy
            await phone.stop()
            log = (phone.home / "baresip.log").read_text(errors="replace")
            assert "incoming rtp for 'audio' established" in log, phone.login
    finally:
        await session.close()
        for phone in (alice, bob):
            await phone.stop()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# --- CDR group commit ----------------------------------------------------------------------------


class BatchingStore:
    """A store with ``write_calls``: records every batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], list[str]]] = []
        self.rows: dict[str, CallRecord] = {}

    async def write_calls(self, inserts: list[CallRecord], updates: list[CallRecord]) -> None:
        await asyncio.sleep(0.01)  # a commit takes time: changes queue behind it
        self.batches.append(([r.status for r in inserts], [r.status for r in updates]))
        for record in inserts:
            assert record.sid not in self.rows
            self.rows[record.sid] = record
        for record in updates:
            assert record.sid in self.rows
            self.rows[record.sid] = record


async def test_cdr_changes_of_concurrent_calls_share_commits() -> None:
    from datetime import UTC, datetime

    from appliance.services.telephony import CallLog

    store = BatchingStore()
    log = CallLog(store, lambda: datetime(2025, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]

    async def call(n: int) -> None:
        record = await log.opened(account_sid="AC" + "1" * 32, from_=f"a{n}", to="bob",
                                  direction="inbound")
        assert record.sid in store.rows  # committed when opened() returns
        await asyncio.gather(log.ringing(record.sid), log.answered(record.sid))
        final = await log.ended(record.sid, CallStatus.COMPLETED)
        assert final is not None and store.rows[record.sid] == final

    await asyncio.gather(*(call(n) for n in range(20)))
    assert [r.status for r in store.rows.values()] == ["completed"] * 20
    # 20 calls x 4 changes in far fewer commits; ringing + in-progress of a row coalesce.
    assert len(store.batches) <= 6
    assert sum(len(i) + len(u) for i, u in store.batches) <= 60


async def test_a_failed_cdr_commit_reaches_every_waiter() -> None:
    from datetime import UTC, datetime

    from appliance.services.telephony import CallLog

    class Broken(BatchingStore):
        async def write_calls(self, inserts: list[CallRecord],
                              updates: list[CallRecord]) -> None:
            raise OSError("disk I/O error")

    log = CallLog(Broken(), lambda: datetime(2025, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(log.opened(account_sid="AC" + "1" * 32, from_="a", to="b", direction="inbound")
          for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
