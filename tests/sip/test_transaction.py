"""Client and server transaction engines wired together through a fake lossy link and a
fake clock (h11's ConnectionPair idea): retransmission counts and timeouts per RFC 3261 §17."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from appliance.sip.errors import SipStateError
from appliance.sip.hop import make_cancel
from appliance.sip.message import Request, Response, make_response, parse_message
from appliance.sip.transaction import (
    T4,
    TRYING_DELAY,
    Action,
    ClientTransaction,
    Deliver,
    Input,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    SentResponse,
    ServerTransaction,
    State,
    Terminated,
    TimedOut,
    Transaction,
    Transmit,
    client_transaction,
    server_transaction,
)
from appliance.sip.transaction_keys import client_key, server_key
from appliance.sip.transaction_table import TransactionTable

ServerTu = Callable[["Link", ServerTransaction, Request], None]


def state(txn: Transaction) -> State:
    """Read through a call, so mypy does not narrow ``txn.state`` across state changes."""
    return txn.state


def request(method: str, branch: str = "z9hG4bKtest1", cseq: int = 1) -> Request:
    req = Request(method=method, uri="sip:1002@pbx.example.com")
    req.add("Via", f"SIP/2.0/UDP 192.0.2.10:5060;branch={branch}")
    req.add("Max-Forwards", "70")
    req.add("Route", "<sip:p1.example.com;lr>")
    req.add("From", "<sip:1001@pbx.example.com>;tag=f1")
    req.add("To", "<sip:1002@pbx.example.com>")
    req.add("Call-ID", "txn-test@192.0.2.10")
    req.add("CSeq", f"{cseq} {method}")
    return req


@dataclass
class Link:
    """A client table and a server table joined by a zero-latency link that drops the
    datagrams ``drop`` picks, driven by a fake clock."""

    reliable: bool = False
    drop: Callable[[str, Request | Response], bool] = lambda direction, msg: False
    server_tu: ServerTu | None = None
    now: float = 0.0
    client: TransactionTable = field(default_factory=TransactionTable)
    server: TransactionTable = field(default_factory=TransactionTable)
    wire: list[tuple[float, str, Request | Response]] = field(default_factory=list)
    client_events: list[tuple[float, Action]] = field(default_factory=list)
    server_events: list[tuple[float, Action]] = field(default_factory=list)
    scheduled: list[tuple[float, Callable[[], None]]] = field(default_factory=list)

    def start(self, req: Request) -> ClientTransaction:
        txn = client_transaction(req, reliable=self.reliable, now=self.now)
        self.client.add(txn)
        self.client_actions(txn, txn.pop_actions())
        return txn

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        self.scheduled.append((self.now + delay, fn))

    def sends(self, direction: str, method_or_status: str | int | None = None) -> int:
        def matches(m: Request | Response) -> bool:
            if method_or_status is None:
                return True
            if isinstance(m, Request):
                return m.method == method_or_status
            return m.status == method_or_status

        return sum(1 for _, d, m in self.wire if d == direction and matches(m))

    def client_actions(self, txn: ClientTransaction, actions: list[Action]) -> None:
        for action in actions:
            self.client_events.append((self.now, action))
            if isinstance(action, Transmit):
                self.transmit("c2s", action)
            elif isinstance(action, Terminated):
                self.client.remove(txn)

    def server_actions(self, txn: ServerTransaction, actions: list[Action]) -> None:
        for action in actions:
            self.server_events.append((self.now, action))
            if isinstance(action, Transmit):
                self.transmit("s2c", action)
            elif isinstance(action, Deliver) and isinstance(action.message, Request):
                if self.server_tu is not None and action.message.method != "ACK":
                    self.server_tu(self, txn, action.message)
                    self.server_actions(txn, txn.pop_actions())
            elif isinstance(action, Terminated):
                self.server.remove(txn)

    def transmit(self, direction: str, action: Transmit) -> None:
        msg = parse_message(action.data)  # through the real codec, as on the wire
        self.wire.append((self.now, direction, msg))
        if self.drop(direction, msg):
            return
        if isinstance(msg, Request):
            found = self.server.match_request(msg)
            if found is not None:
                found.receive(msg, self.now)
                self.server_actions(found, found.pop_actions())
            elif msg.method != "ACK":
                new = server_transaction(msg, reliable=self.reliable, now=self.now)
                self.server.add(new)
                self.server_actions(new, new.pop_actions())
        else:
            txn = self.client.match_response(msg)
            if txn is not None:
                txn.receive(msg, self.now)
                self.client_actions(txn, txn.pop_actions())

    def run(self, until: float) -> None:
        while True:
            times = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            times += [t for t, _ in self.scheduled]
            if not times or min(times) > until:
                self.now = until
                return
            self.now = min(times)
            for when, fn in list(self.scheduled):
                if when <= self.now:
                    self.scheduled.remove((when, fn))
                    fn()
            for ctxn, actions in self.client.handle_timer(self.now):
                assert isinstance(ctxn, ClientTransaction)
                self.client_actions(ctxn, actions)
            for stxn, actions in self.server.handle_timer(self.now):
                assert isinstance(stxn, ServerTransaction)
                self.server_actions(stxn, actions)

    def events(self, side: str, kind: type) -> list[tuple[float, Action]]:
        source = self.client_events if side == "client" else self.server_events
        return [(t, a) for t, a in source if isinstance(a, kind)]


def reply(status: int, delay: float = 0.0) -> ServerTu:
    def tu(link: Link, txn: ServerTransaction, req: Request) -> None:
        def send() -> None:
            txn.send(make_response(req, status, to_tag="srv"), link.now)
            link.server_actions(txn, txn.pop_actions())

        if delay:
            link.later(delay, send)
        else:
            send()

    return tu


def drop_all(direction: str, msg: Request | Response) -> bool:
    return True


# --- client timeouts --------------------------------------------------------------------


def test_invite_timer_b_fires_at_32s_after_6_retransmissions_on_udp() -> None:
    link = Link(drop=drop_all)
    txn = link.start(request("INVITE"))
    link.run(until=100)
    sends = [t for t, d, _ in link.wire if d == "c2s"]
    # Timer A doubles from T1 with no cap: 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 → 7 sends.
    assert sends == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert link.events("client", TimedOut) == [(32.0, TimedOut(Input.TIMER_B))]
    assert state(txn) is State.TERMINATED and len(link.client) == 0


def test_non_invite_timer_f_with_e_capped_at_t2() -> None:
    link = Link(drop=drop_all)
    link.start(request("OPTIONS"))
    link.run(until=100)
    sends = [t for t, d, _ in link.wire if d == "c2s"]
    assert sends == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [t for t, _ in link.events("client", TimedOut)] == [32.0]


def test_reliable_transports_do_not_retransmit() -> None:
    link = Link(reliable=True, drop=drop_all)
    link.start(request("INVITE"))
    link.start(request("OPTIONS", branch="z9hG4bKtest2"))
    link.run(until=100)
    assert link.sends("c2s") == 2
    assert [t for t, _ in link.events("client", TimedOut)] == [32.0, 32.0]


def test_proceeding_stops_timer_a_and_b() -> None:
    link = Link(server_tu=reply(180))
    txn = link.start(request("INVITE"))
    link.run(until=200)
    assert link.sends("c2s") == 1 and state(txn) is State.PROCEEDING
    assert not link.events("client", TimedOut)  # Timer C is the proxy core's business


# --- non-INVITE end to end ----------------------------------------------------------------


def test_options_round_trip_with_timers_j_and_k() -> None:
    link = Link(server_tu=reply(200))
    client = link.start(request("OPTIONS"))
    assert state(client) is State.COMPLETED
    delivered = link.events("client", Deliver)
    assert len(delivered) == 1 and delivered[0][1].message.status == 200  # type: ignore[union-attr]
    link.run(until=4.9)
    assert state(client) is State.COMPLETED
    link.run(until=5.0)  # Timer K = T4
    assert state(client) is State.TERMINATED and len(link.client) == 0
    assert len(link.server) == 1
    link.run(until=32.0)  # Timer J = 64*T1
    assert len(link.server) == 0


def test_non_invite_server_absorbs_retransmissions_with_last_response() -> None:
    # The first 200 is lost: the client's E retransmission makes the server resend it.
    lost: list[int] = []

    def drop(direction: str, msg: Request | Response) -> bool:
        if direction == "s2c" and not lost:
            lost.append(1)
            return True
        return False

    link = Link(drop=drop, server_tu=reply(200))
    link.start(request("REGISTER"))
    link.run(until=60)
    assert link.sends("c2s") == 2 and link.sends("s2c", 200) == 2
    assert len(link.events("server", Deliver)) == 1  # the TU saw the request once
    assert len(link.events("client", Deliver)) == 1


def test_a_finished_non_invite_server_keeps_only_bytes_and_resends_them() -> None:
    req = request("BYE")
    server = server_transaction(req, reliable=False, now=0.0)
    server.pop_actions()
    final = make_response(req, 200, to_tag="srv")
    final.body = b"x" * 100
    final.add("Content-Type", "text/plain")
    server.send(final, 0.0)
    [first] = server.pop_actions()
    assert isinstance(first, Transmit) and first.message is final  # sent as built
    # Lingering: the request is a stub without headers, the response only its bytes.
    assert server.request.headers == [] and server.request.method == "BYE"
    assert server.last_response is not None
    assert isinstance(server.last_response.message, SentResponse)
    assert server.last_response.message.headers == []
    server.receive(request("BYE"), 1.0)  # a retransmission: the same bytes again
    [again] = server.pop_actions()
    assert isinstance(again, Transmit) and again.data == bytes(final) == bytes(again.message)
    assert again.message.start_line() == "SIP/2.0 200 OK"


def test_ack_for_a_4xx_is_absorbed_by_the_finished_invite_server() -> None:
    req = request("INVITE")
    server = server_transaction(req, reliable=False, now=0.0)
    server.pop_actions()
    server.send(make_response(req, 486, to_tag="srv"), 0.0)
    server.pop_actions()
    assert server.last_response is not None
    assert isinstance(server.last_response.message, SentResponse)
    server.receive(request("INVITE"), 0.2)  # retransmitted INVITE: the 486 again
    [again] = server.pop_actions()
    assert isinstance(again, Transmit) and parse_message(again.data).start_line() == (
        "SIP/2.0 486 Busy Here")
    table = TransactionTable()
    table.add(server)
    ack = request("ACK")
    assert table.match_request(ack) is server
    server.receive(ack, 0.3)
    assert server.pop_actions() == []  # absorbed: not delivered, nothing sent
    assert state(server) is State.CONFIRMED
    table.compact()  # recreated after a burst: still found
    assert table.match_request(request("INVITE")) is server


def test_non_invite_server_provisional_then_final() -> None:
    link = Link(drop=lambda d, m: d == "s2c" and isinstance(m, Response) and m.status == 100)
    client = link.start(request("MESSAGE"))
    stxn = next(iter(link.server.servers.values()))
    stxn.send(make_response(stxn.request, 100), link.now)
    link.server_actions(stxn, stxn.pop_actions())
    link.run(until=0.5)  # E fires; server resends its 100 (dropped again)
    assert link.sends("s2c", 100) == 2 and state(stxn) is State.PROCEEDING
    stxn.send(make_response(stxn.request, 202, to_tag="t"), link.now)
    link.server_actions(stxn, stxn.pop_actions())
    assert state(client) is State.COMPLETED


# --- INVITE end to end ------------------------------------------------------------------


def test_invite_failure_retransmitted_on_g_until_ack() -> None:
    # The first two 486s are lost; the third gets through and is ACKed.
    dropped: list[float] = []

    def drop(direction: str, msg: Request | Response) -> bool:
        if direction == "s2c" and isinstance(msg, Response) and msg.status == 486:
            if len(dropped) < 2:
                dropped.append(0)
                return True
        return False

    link = Link(drop=drop, server_tu=reply(486, delay=0.1))
    client = link.start(request("INVITE"))
    link.run(until=0.1)
    server = next(iter(link.server.servers.values()))
    assert isinstance(server, InviteServerTransaction) and state(server) is State.COMPLETED
    link.run(until=2.0)
    # 486 at 0.1 (lost); the client's Timer A retransmission at 0.5 makes the server resend
    # it (lost); Timer G at 0.1 + T1 sends it a third time and it gets through.
    assert [round(t, 2) for t, d, m in link.wire if d == "s2c"] == [0.1, 0.5, 0.6]
    assert link.sends("c2s", "ACK") == 1
    assert state(server) is State.CONFIRMED and state(client) is State.COMPLETED
    delivered = [a for _, a in link.events("server", Deliver)]
    assert not [
        a for a in delivered if isinstance(a, Deliver) and a.message.start_line()[:3] == "ACK"
    ]
    ack = next(m for _, d, m in link.wire if isinstance(m, Request) and m.method == "ACK")
    assert ack.to.tag == "srv" and ack.cseq.method == "ACK" and ack.cseq.number == 1
    assert ack.values("via") == [request("INVITE").values("via")[0]]
    assert ack.get_all("route") == ["<sip:p1.example.com;lr>"]
    link.run(until=5.59)
    assert state(server) is State.CONFIRMED
    link.run(until=5.6)  # Timer I = T4 after the ACK at 0.6
    assert state(server) is State.TERMINATED
    link.run(until=32.59)
    assert state(client) is State.COMPLETED
    link.run(until=32.6)  # Timer D = 32 s after the 486 at 0.6
    assert state(client) is State.TERMINATED
    assert len(link.events("client", Deliver)) == 1


def test_invite_server_timer_h_without_ack() -> None:
    link = Link(
        drop=lambda d, m: d == "c2s" and isinstance(m, Request) and m.method == "ACK",
        server_tu=reply(404),
    )
    link.start(request("INVITE"))
    server = next(iter(link.server.servers.values()))
    link.run(until=40)
    # G: 0.5, 1.5, 3.5, 7.5, 11.5, ..., 31.5 (capped at T2) → 10 retransmissions; H at 32.
    assert link.sends("s2c", 404) == 11
    assert [(t, a) for t, a in link.events("server", TimedOut)] == [(32.0, TimedOut(Input.TIMER_H))]
    assert state(server) is State.TERMINATED


def test_invite_retransmission_gets_the_last_provisional() -> None:
    link = Link(server_tu=reply(180))
    link.start(request("INVITE"))
    link.run(until=0.1)
    server = next(iter(link.server.servers.values()))
    server.receive(request("INVITE"), link.now)  # a retransmission reaching us late
    link.server_actions(server, server.pop_actions())
    assert link.sends("s2c", 180) == 2
    assert len(link.events("server", Deliver)) == 1


def test_automatic_100_trying_after_200ms() -> None:
    link = Link(server_tu=reply(180, delay=1.0))
    link.start(request("INVITE"))
    link.run(until=0.19)
    assert link.sends("s2c") == 0
    link.run(until=0.2)
    assert link.sends("s2c", 100) == 1
    link.run(until=1.0)
    assert link.sends("s2c", 180) == 1 and link.sends("s2c", 100) == 1
    resp100 = next(m for _, d, m in link.wire if d == "s2c")
    assert resp100.to.tag is None


def test_no_100_when_the_tu_answers_quickly() -> None:
    link = Link(server_tu=reply(180, delay=0.1))
    link.start(request("INVITE"))
    link.run(until=5)
    assert link.sends("s2c", 100) == 0


def test_invite_2xx_accepted_state_rfc6026() -> None:
    link = Link(server_tu=reply(200))
    client = link.start(request("INVITE"))
    server = next(iter(link.server.servers.values()))
    assert state(client) is State.ACCEPTED and state(server) is State.ACCEPTED
    # A late INVITE retransmission is absorbed; a TU 2xx retransmission still goes out and
    # still reaches the client TU.
    server.receive(request("INVITE"), link.now)
    assert server.pop_actions() == []
    server.send(make_response(server.request, 200, to_tag="srv"), link.now)
    link.server_actions(server, server.pop_actions())
    assert len(link.events("client", Deliver)) == 2
    assert link.sends("c2s", "ACK") == 0  # the ACK for a 2xx is the TU's job
    link.run(until=32)
    assert state(client) is State.TERMINATED and state(server) is State.TERMINATED


def test_reliable_failure_terminates_at_once() -> None:
    link = Link(reliable=True, server_tu=reply(603))
    client = link.start(request("INVITE"))
    assert state(client) is State.TERMINATED  # Timer D = 0
    assert len(link.server) == 0  # ACK arrived, Timer I = 0
    assert isinstance(link.server_events[-1][1], Terminated)
    kinds = [type(a).__name__ for _, a in link.client_events]
    assert kinds == ["Transmit", "Deliver", "Transmit", "Terminated"]


# --- TU errors and matching -------------------------------------------------------------


def test_tu_cannot_send_twice_a_final() -> None:
    txn = NonInviteServerTransaction(request("OPTIONS"), reliable=False, now=0)
    txn.send(make_response(txn.request, 200), 0)
    with pytest.raises(SipStateError):
        txn.send(make_response(txn.request, 500), 0)
    itxn = InviteServerTransaction(request("INVITE"), reliable=False, now=0)
    itxn.send(make_response(itxn.request, 486), 0)
    with pytest.raises(SipStateError):
        itxn.send(make_response(itxn.request, 180), 0)


def test_late_responses_are_ignored() -> None:
    txn = NonInviteClientTransaction(request("OPTIONS"), reliable=False, now=0)
    ok = make_response(request("OPTIONS"), 200)
    txn.receive(ok, 0)
    txn.receive(make_response(request("OPTIONS"), 180), 0)  # late 1xx after final
    txn.receive(ok, 0)  # retransmitted final, absorbed
    assert [type(a) for a in txn.pop_actions()] == [Transmit, Deliver]


def test_server_keys() -> None:
    invite = request("INVITE")
    ack = request("ACK")
    cancel = request("CANCEL")
    assert server_key(invite) == server_key(ack)
    assert server_key(invite) != server_key(cancel)
    assert server_key(invite)[:3] == ("3261", "z9hG4bKtest1", "192.0.2.10:5060")
    old = request("INVITE", branch="1234")  # RFC 2543 peer: no magic cookie
    old_ack = request("ACK", branch="1234")
    assert server_key(old)[0] == "2543" and server_key(old) == server_key(old_ack)
    other_host = request("INVITE")
    other_host.set("Via", "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKtest1")
    assert server_key(other_host) != server_key(invite)


def test_table_matches_cancel_and_reports_earliest_timer() -> None:
    table = TransactionTable()
    invite = InviteServerTransaction(request("INVITE"), reliable=False, now=0)
    options = server_transaction(request("OPTIONS", branch="z9hG4bKo"), reliable=False, now=0)
    table.add(invite)
    table.add(options)
    assert table.match_request(request("ACK")) is invite
    assert table.match_request(request("CANCEL")) is None
    assert table.match_cancel(make_cancel(request("INVITE"))) is invite
    assert table.get_timer() == pytest.approx(0.2)  # the 100 Trying timer
    options.send(make_response(options.request, 200), 1.0)
    woken = table.handle_timer(0.2)
    assert [t for t, _ in woken] == [invite]
    assert table.get_timer() == pytest.approx(33.0)  # Timer J of the OPTIONS
    table.handle_timer(33.0)
    assert len(table) == 1 and table.match_request(request("OPTIONS", branch="z9hG4bKo")) is None


def test_make_cancel() -> None:
    cancel = make_cancel(request("INVITE", cseq=7))
    assert cancel.method == "CANCEL" and cancel.uri == "sip:1002@pbx.example.com"
    assert str(cancel.cseq) == "7 CANCEL" and cancel.to.tag is None
    assert cancel.values("via") == ["SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKtest1"]


@pytest.mark.parametrize(
    "cls",
    [
        InviteClientTransaction,
        NonInviteClientTransaction,
        InviteServerTransaction,
        NonInviteServerTransaction,
    ],
)
def test_transition_tables_render(cls: type[Transaction]) -> None:
    rows = [f"{s.value} --{i.value}--> {n.value}" for (s, i), n in cls.TRANSITIONS.items()]
    assert rows and all(" --" in r for r in rows)
    assert not any(s is State.TERMINATED for s, _ in cls.TRANSITIONS)


def test_finished_transactions_keep_only_what_identifies_them() -> None:
    link = Link(server_tu=reply(200))
    invite = request("INVITE")
    invite.body = b"v=0\r\n" * 100
    invite.add("User-Agent", "Phone 1.0")
    client = link.start(invite)
    server = next(iter(link.server.servers.values()))
    assert state(client) is State.ACCEPTED and state(server) is State.ACCEPTED
    assert server.request.body == b"" and server.request.get("user-agent") is None
    assert server.request.method == "INVITE" and server.request.call_id == invite.call_id
    assert server.last_response is None  # Accepted resends nothing itself (RFC 6026)
    assert client.request.body == b"" and client.request.method == "INVITE"
    assert client.key == client_key(invite)


def test_timer_heap_stays_bounded_and_fires_in_order() -> None:
    table = TransactionTable()
    txns = []
    for n in range(3000):
        txn = server_transaction(request("OPTIONS", branch=f"z9hG4bK{n}"), reliable=False,
                                 now=float(n))
        table.add(txn)
        txn.send(make_response(txn.request, 200), float(n))  # Timer J: n + 32
        txns.append(txn)
    assert table.get_timer() == pytest.approx(32.0)
    woken = table.handle_timer(1032.0)
    assert [t for t, _ in woken] == txns[:1001]  # in deadline order
    assert len(table) == 1999
    for txn in txns[1001:2500]:
        table.remove(txn)
    table.handle_timer(1033.0)
    assert len(table._heap) <= 2 * len(table) + 1024
    assert table.get_timer() == pytest.approx(2500 + 32.0)


# --- lingering transactions keep only what can still happen to them ------------------------


def test_a_confirmed_invite_server_keeps_bytes_resends_them_and_absorbs_acks() -> None:
    req = request("INVITE")
    req.body = b"v=0\r\n" * 50
    server = InviteServerTransaction(req, reliable=False, now=0.0)
    table = TransactionTable()
    table.add(server)
    server.pop_actions()
    busy = make_response(req, 486, to_tag="srv")
    server.send(busy, 0.0)
    [first] = server.pop_actions()
    assert isinstance(first, Transmit) and first.message is busy
    wire = bytes(busy)
    server.receive(request("ACK"), 0.1)
    assert server.pop_actions() == [] and state(server) is State.CONFIRMED
    # Nothing of the INVITE is kept (its method is in the key), only the 486's bytes.
    assert server.request.headers == [] and server.request.body == b""
    assert server.request.method == "INVITE" and server.key == server_key(req)
    assert server._last == wire
    server.receive(request("INVITE"), 0.2)  # a late retransmission: the same bytes
    [again] = server.pop_actions()
    assert isinstance(again, Transmit) and again.data == wire and bytes(again.message) == wire
    assert isinstance(again.message, SentResponse)
    assert (again.message.status, again.message.reason) == (486, "Busy Here")
    server.receive(request("ACK"), 0.3)  # and more ACKs are absorbed
    assert server.pop_actions() == []
    assert table.match_request(request("ACK")) is server
    assert [t for t, _ in table.handle_timer(0.1 + T4)] == [server]  # Timer I
    assert len(table) == 0


def test_a_failed_invite_client_acks_a_retransmitted_final_from_its_stub() -> None:
    link = Link(server_tu=reply(486))
    client = link.start(request("INVITE"))
    assert state(client) is State.COMPLETED
    first = next(m for _, d, m in link.wire if isinstance(m, Request) and m.method == "ACK")
    # The stub keeps what an ACK copies, nothing else (no body, no Contact).
    assert {h.name for h in client.request.headers} <= {
        "via", "max-forwards", "route", "from", "to", "call-id", "cseq"}
    client.receive(make_response(request("INVITE"), 486, to_tag="srv"), link.now)
    actions = client.pop_actions()
    [again] = [a for a in actions if isinstance(a, Transmit)]
    assert not [a for a in actions if isinstance(a, Deliver)]  # not delivered twice
    assert again.data == bytes(first)


def test_finished_non_invite_and_accepted_invite_clients_keep_no_request() -> None:
    options = NonInviteClientTransaction(request("OPTIONS"), reliable=False, now=0.0)
    options.receive(make_response(request("OPTIONS"), 200, to_tag="t"), 0.0)
    invite = InviteClientTransaction(request("INVITE"), reliable=False, now=0.0)
    invite.receive(make_response(request("INVITE"), 200, to_tag="t"), 0.0)
    for txn, method in ((options, "OPTIONS"), (invite, "INVITE")):
        assert txn._request is None and txn._request_tx is None
        assert txn.request.method == method and txn.request.headers == []
    invite.pop_actions()
    invite.receive(make_response(request("INVITE"), 200, to_tag="t"), 1.0)
    assert [type(a) for a in invite.pop_actions()] == [Deliver]  # 2xx retransmission: to TU


def test_an_accepted_invite_server_keeps_its_stub_unless_the_tu_never_builds_a_2xx() -> None:
    for keep in (True, False):
        server = InviteServerTransaction(request("INVITE"), reliable=False, now=0.0,
                                         keep_request=keep)
        server.send(make_response(server.request, 200, to_tag="srv"), 0.0)
        assert state(server) is State.ACCEPTED and server.last_response is None
        assert (server.request.call_id is not None) is keep
        server.pop_actions()
        server.receive(request("INVITE"), 0.1)  # absorbed either way
        assert server.pop_actions() == []
        server.send(make_response(request("INVITE"), 200, to_tag="srv"), 0.2)  # TU's resend
        assert [type(a) for a in server.pop_actions()] == [Transmit]


def test_superseded_timer_entries_never_fire_and_are_pruned() -> None:
    table = TransactionTable()
    server = InviteServerTransaction(request("INVITE"), reliable=False, now=0.0)
    table.add(server)
    assert table.get_timer() == pytest.approx(TRYING_DELAY)
    server.send(make_response(server.request, 404, to_tag="srv"), 0.1)  # G at 0.6, H at 32.1
    server.receive(request("ACK"), 0.2)  # I at 5.2
    assert table.get_timer() == pytest.approx(0.2 + T4)  # 100 Trying and G: superseded
    assert table.handle_timer(5.1) == [] and len(table) == 1
    assert [t for t, _ in table.handle_timer(5.2)] == [server] and len(table) == 0
    many = []
    for n in range(3000):  # each leaves two superseded entries behind
        txn = InviteServerTransaction(request("INVITE", branch=f"z9hG4bK{n}"), reliable=False,
                                      now=0.0)
        table.add(txn)
        txn.send(make_response(txn.request, 404, to_tag="srv"), 0.1)
        txn.receive(request("ACK", branch=f"z9hG4bK{n}"), 0.2)
        many.append(txn)
    assert len(table._heap) < 3000 + 3000 // 2 + 1024
    assert [t for t, _ in table.handle_timer(5.2)] == many  # in the order they were started


def test_entries_of_removed_transactions_are_pruned() -> None:
    table = TransactionTable()
    txns = [server_transaction(request("OPTIONS", branch=f"z9hG4bK{n}"), reliable=False, now=0)
            for n in range(5000)]
    for txn in txns:
        table.add(txn)
        txn.send(make_response(txn.request, 200), 0.0)
    assert len(table._heap) == 5000
    for txn in txns:
        table.remove(txn)
    assert len(table._heap) < 1500  # stale entries do not hold 32 s of finished transactions
    assert table.get_timer() is None and table._heap == []
