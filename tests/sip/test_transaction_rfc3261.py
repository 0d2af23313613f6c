"""The RFC 3261 §17 checklist of sip.md §2.3, one machine at a time with a fake clock: what
goes out (``Transmit``) and what the TU sees (``Deliver``, ``TimedOut``, ``Terminated``) at
each instant. RFC 6026 (Accepted, Timers L and M) and RFC 4320 (non-INVITE) included; the
two-engine tests are in test_transaction.py."""

from __future__ import annotations

import pytest

from appliance.sip.errors import SipStateError
from appliance.sip.hop import make_cancel
from appliance.sip.message import Request, Response, make_response
from appliance.sip.transaction import (
    T1,
    T2,
    T4,
    TRYING_DELAY,
    Action,
    Deliver,
    Input,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    State,
    Terminated,
    TimedOut,
    Timers,
    Transaction,
    Transmit,
    TransportFailed,
)
from appliance.sip.transaction_keys import server_key
from appliance.sip.transaction_table import TransactionTable


def request(method: str, branch: str = "z9hG4bKrfc1", cseq: int = 1) -> Request:
    req = Request(method=method, uri="sip:1002@pbx.example.com")
    req.add("Via", f"SIP/2.0/UDP 192.0.2.10:5060;branch={branch}")
    req.add("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKup")
    req.add("Max-Forwards", "70")
    req.add("Route", "<sip:p1.example.com;lr>")
    req.add("Route", "<sip:p2.example.com;lr>")
    req.add("From", "<sip:1001@pbx.example.com>;tag=f1")
    req.add("To", "<sip:1002@pbx.example.com>")
    req.add("Call-ID", "rfc-test@192.0.2.10")
    req.add("CSeq", f"{cseq} {method}")
    req.add("Contact", "<sip:1001@192.0.2.10>")
    req.body = b"v=0\r\n"
    return req


def response(req: Request, status: int, tag: str | None = "callee") -> Response:
    return make_response(req, status, to_tag=tag)


def state(txn: Transaction) -> State:
    return txn.state


def run(txn: Transaction, until: float) -> list[tuple[float, Action]]:
    """Fire TXN's timers up to UNTIL, as its owner would: each (instant, action)."""
    out: list[tuple[float, Action]] = []
    while (when := txn.get_timer()) is not None and when <= until:
        txn.handle_timer(when)
        out += [(when, a) for a in txn.pop_actions()]
    return out


def sent(actions: list[tuple[float, Action]]) -> list[tuple[float, str]]:
    return [(round(t, 3), a.message.start_line()) for t, a in actions if isinstance(a, Transmit)]


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


INVITE_LINE = "INVITE sip:1002@pbx.example.com SIP/2.0"
OPTIONS_LINE = "OPTIONS sip:1002@pbx.example.com SIP/2.0"


# --- client INVITE (§17.1.1) ------------------------------------------------------------


@pytest.mark.parametrize("t1", [T1, 0.25, 2.0])
def test_timer_a_starts_at_t1_and_doubles_without_cap_until_timer_b(t1: float) -> None:
    txn = InviteClientTransaction(request("INVITE"), reliable=False, now=10.0,
                                  timers=Timers(t1=t1))
    assert kinds(txn.pop_actions()) == ["Transmit"]
    actions = run(txn, 10.0 + 100 * t1)
    expected = [10.0 + t1 * (2 ** n - 1) for n in range(1, 7)]  # T1, 3·T1, 7·T1, ... 63·T1
    assert [t for t, _ in sent(actions)] == [round(t, 3) for t in expected]
    assert all(line == INVITE_LINE for _, line in sent(actions))
    # Timer B = 64·T1: the TU learns of the timeout, then the transaction is over.
    assert [(t, a) for t, a in actions if not isinstance(a, Transmit)] == [
        (10.0 + 64 * t1, TimedOut(Input.TIMER_B)), (10.0 + 64 * t1, Terminated())]


def test_timer_a_is_not_used_on_reliable_transports() -> None:
    txn = InviteClientTransaction(request("INVITE"), reliable=True, now=0.0)
    txn.pop_actions()
    assert txn.get_timer() == 64 * T1
    assert kinds([a for _, a in run(txn, 100)]) == ["TimedOut", "Terminated"]


def test_a_provisional_stops_timer_a_and_goes_to_the_tu() -> None:
    invite = request("INVITE")
    txn = InviteClientTransaction(invite, reliable=False, now=0.0)
    txn.pop_actions()
    run(txn, 0.5)  # one retransmission
    ringing = response(invite, 180)
    txn.receive(ringing, 0.7)
    assert txn.pop_actions() == [Deliver(ringing)] and state(txn) is State.PROCEEDING
    assert run(txn, 300) == []  # no more A; B is not the Proceeding state's (Timer C is)
    again = response(invite, 183)
    txn.receive(again, 1.0)
    assert txn.pop_actions() == [Deliver(again)]


@pytest.mark.parametrize("status", [300, 404, 486, 503, 603, 699])
def test_a_failure_is_acked_by_the_transaction_with_its_to_tag_and_the_invite_route(
        status: int) -> None:
    invite = request("INVITE")
    txn = InviteClientTransaction(invite, reliable=False, now=0.0)
    txn.pop_actions()
    txn.receive(response(invite, 180), 0.1)
    txn.pop_actions()
    final = response(invite, status, tag="t-" + str(status))
    txn.receive(final, 0.2)
    deliver, ack_tx = txn.pop_actions()
    assert deliver == Deliver(final) and state(txn) is State.COMPLETED
    assert isinstance(ack_tx, Transmit) and isinstance(ack_tx.message, Request)
    ack = ack_tx.message
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.values("via") == [invite.values("via")[0]]  # one Via: the INVITE's, same branch
    assert ack.get_all("route") == invite.get_all("route")
    assert ack.to.tag == "t-" + str(status) and ack.from_.tag == "f1"
    assert ack.call_id == invite.call_id and str(ack.cseq) == "1 ACK"
    assert ack.body == b"" and ack.get("contact") is None
    # Each retransmitted final gets the ACK again (same bytes), and is not passed up again.
    for at in (0.7, 1.7):
        txn.receive(response(invite, status, tag="t-" + str(status)), at)
        [again] = txn.pop_actions()
        assert isinstance(again, Transmit) and again.data == ack_tx.data


def test_timer_d_is_32s_on_udp_and_0_on_tcp() -> None:
    udp = InviteClientTransaction(request("INVITE"), reliable=False, now=0.0)
    udp.receive(response(request("INVITE"), 486), 1.0)
    udp.pop_actions()
    assert run(udp, 32.99) == [] and state(udp) is State.COMPLETED
    assert run(udp, 33.0) == [(33.0, Terminated())]
    tcp = InviteClientTransaction(request("INVITE"), reliable=True, now=0.0)
    tcp.receive(response(request("INVITE"), 486), 1.0)
    assert kinds(tcp.pop_actions()) == ["Transmit", "Deliver", "Transmit", "Terminated"]
    assert tcp.get_timer() is None


def test_a_2xx_goes_up_and_accepted_passes_2xx_retransmissions_until_timer_m() -> None:
    invite = request("INVITE")
    txn = InviteClientTransaction(invite, reliable=False, now=0.0)
    txn.pop_actions()
    ok = response(invite, 200)
    txn.receive(ok, 2.0)
    assert txn.pop_actions() == [Deliver(ok)] and state(txn) is State.ACCEPTED
    assert txn.get_timer() == 2.0 + 64 * T1  # Timer M; A and B stopped
    again, other = response(invite, 200), response(invite, 200, tag="fork2")
    txn.receive(again, 3.0)
    txn.receive(other, 4.0)  # another fork's 2xx: to the TU as well
    txn.receive(response(invite, 486), 4.5)  # anything else is absorbed
    txn.receive(response(invite, 180), 4.6)
    assert txn.pop_actions() == [Deliver(again), Deliver(other)]  # no ACK of ours for a 2xx
    assert run(txn, 2.0 + 64 * T1) == [(2.0 + 64 * T1, Terminated())]


# --- client non-INVITE (§17.1.2) --------------------------------------------------------


def test_timer_e_doubles_to_t2_then_after_a_provisional_fires_every_t2() -> None:
    options = request("OPTIONS")
    txn = NonInviteClientTransaction(options, reliable=False, now=0.0)
    txn.pop_actions()
    assert [t for t, _ in sent(run(txn, 3.5))] == [0.5, 1.5, 3.5]
    trying = response(options, 100, tag=None)
    txn.receive(trying, 3.6)
    assert txn.pop_actions() == [Deliver(trying)] and state(txn) is State.PROCEEDING
    actions = run(txn, 40)
    # E due at 7.5 (4 s after 3.5) fires, then every T2; F at 64·T1 ends it.
    assert [t for t, _ in sent(actions)] == [7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [(t, a) for t, a in actions if not isinstance(a, Transmit)] == [
        (32.0, TimedOut(Input.TIMER_F)), (32.0, Terminated())]


def test_timer_e_after_an_early_provisional_is_t2() -> None:
    options = request("OPTIONS")
    txn = NonInviteClientTransaction(options, reliable=False, now=0.0)
    txn.pop_actions()
    txn.receive(response(options, 100, tag=None), 0.1)
    txn.pop_actions()
    assert [t for t, _ in sent(run(txn, 9))] == [0.5, 0.5 + T2, 0.5 + 2 * T2]


def test_timer_k_is_t4_on_udp_and_0_on_tcp_and_finals_are_absorbed() -> None:
    options = request("OPTIONS")
    udp = NonInviteClientTransaction(options, reliable=False, now=0.0)
    udp.pop_actions()
    ok = response(options, 200)
    udp.receive(ok, 1.0)
    assert udp.pop_actions() == [Deliver(ok)] and state(udp) is State.COMPLETED
    udp.receive(response(options, 200), 2.0)
    udp.receive(response(options, 500), 2.0)
    assert udp.pop_actions() == []
    assert run(udp, 1.0 + T4) == [(1.0 + T4, Terminated())]
    tcp = NonInviteClientTransaction(options, reliable=True, now=0.0)
    assert tcp.get_timer() == 64 * T1  # F only: no E on a reliable transport
    tcp.receive(ok, 1.0)
    assert tcp.pop_actions()[1:] == [Deliver(ok), Terminated()]


def test_timer_f_without_any_response_on_tcp() -> None:
    txn = NonInviteClientTransaction(request("BYE"), reliable=True, now=0.0)
    txn.pop_actions()
    assert run(txn, 100) == [(32.0, TimedOut(Input.TIMER_F)), (32.0, Terminated())]


# --- server INVITE (§17.2.1) ------------------------------------------------------------


def test_100_trying_when_the_tu_is_silent_for_200ms_then_retransmissions_get_it() -> None:
    invite = request("INVITE")
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    assert txn.pop_actions() == [Deliver(invite)]
    assert run(txn, TRYING_DELAY - 0.01) == []
    [(at, trying)] = run(txn, TRYING_DELAY)
    assert at == TRYING_DELAY and isinstance(trying, Transmit)
    assert isinstance(trying.message, Response) and trying.message.status == 100
    assert trying.message.to.tag is None
    txn.receive(request("INVITE"), 0.5)  # a retransmission: the 100 again, not the TU
    assert txn.pop_actions() == [trying]
    ringing = response(invite, 180)
    txn.send(ringing, 0.6)
    [tx] = txn.pop_actions()
    txn.receive(request("INVITE"), 1.0)  # now the last provisional is the 180
    [again] = txn.pop_actions()
    assert isinstance(tx, Transmit) and again is tx and tx.message is ringing


def test_a_failure_is_retransmitted_on_g_capped_at_t2_until_timer_h() -> None:
    invite = request("INVITE")
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    txn.pop_actions()
    txn.send(response(invite, 486), 0.1)
    txn.pop_actions()
    actions = run(txn, 100)
    assert [t for t, _ in sent(actions)] == [
        0.6, 1.6, 3.6, 7.6, 11.6, 15.6, 19.6, 23.6, 27.6, 31.6]
    assert all(line == "SIP/2.0 486 Busy Here" for _, line in sent(actions))
    # Timer H: the TU learns the ACK never came.
    assert [(t, a) for t, a in actions if not isinstance(a, Transmit)] == [
        (32.1, TimedOut(Input.TIMER_H)), (32.1, Terminated())]


def test_no_timer_g_on_tcp_but_timer_h_still() -> None:
    invite = request("INVITE")
    txn = InviteServerTransaction(invite, reliable=True, now=0.0)
    txn.pop_actions()
    txn.send(response(invite, 404), 0.0)
    txn.pop_actions()
    assert run(txn, 100) == [(32.0, TimedOut(Input.TIMER_H)), (32.0, Terminated())]


def test_the_ack_stops_g_and_h_and_confirmed_lasts_timer_i() -> None:
    invite = request("INVITE")
    for reliable, timer_i in ((False, T4), (True, 0.0)):
        txn = InviteServerTransaction(invite, reliable=reliable, now=0.0)
        txn.pop_actions()
        txn.send(response(invite, 480), 0.0)
        txn.pop_actions()
        txn.receive(request("ACK"), 1.0)
        actions = txn.pop_actions()
        assert Deliver not in {type(a) for a in actions}  # the ACK of a non-2xx is absorbed
        if timer_i:
            assert actions == [] and state(txn) is State.CONFIRMED
            txn.receive(request("ACK"), 2.0)
            assert txn.pop_actions() == []
            assert run(txn, 100) == [(1.0 + T4, Terminated())]
        else:
            assert actions == [Terminated()]


def test_a_2xx_sends_the_server_to_accepted_absorbing_invites_until_timer_l() -> None:
    invite = request("INVITE")
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    txn.pop_actions()
    ok = response(invite, 200)
    txn.send(ok, 1.0)
    assert kinds(txn.pop_actions()) == ["Transmit"] and state(txn) is State.ACCEPTED
    assert txn.get_timer() == 1.0 + 64 * T1
    txn.receive(request("INVITE"), 2.0)
    assert txn.pop_actions() == []  # absorbed: neither resent nor passed up
    ack = request("ACK")
    txn.receive(ack, 3.0)
    assert txn.pop_actions() == [Deliver(ack)]  # RFC 6026 §8.7: the 2xx's ACK goes up
    assert run(txn, 1.0 + 64 * T1) == [(1.0 + 64 * T1, Terminated())]


def test_the_tu_resending_its_2xx_in_accepted_is_sent_not_kept() -> None:
    invite = request("INVITE")
    txn = InviteServerTransaction(invite, reliable=False, now=0.0, keep_request=False)
    txn.pop_actions()
    txn.send(response(invite, 200), 0.0)
    txn.pop_actions()
    again = response(invite, 200)
    again.body = b"v=0\r\n" * 100
    txn.send(again, 0.5)
    [tx] = txn.pop_actions()
    assert isinstance(tx, Transmit) and tx.message is again
    # Accepted resends nothing itself: the 2xx (with its SDP) is not held for 32 s.
    assert txn.last_response is None and txn._last is None
    txn.receive(request("INVITE"), 1.0)
    assert txn.pop_actions() == []


# --- server non-INVITE (§17.2.2) --------------------------------------------------------


def test_non_invite_server_trying_proceeding_completed_and_timer_j() -> None:
    req = request("MESSAGE")
    txn = NonInviteServerTransaction(req, reliable=False, now=0.0)
    assert txn.pop_actions() == [Deliver(req)] and txn.get_timer() is None
    txn.receive(request("MESSAGE"), 0.5)
    assert txn.pop_actions() == []  # Trying: absorbed silently, not passed up again
    trying = response(req, 100, tag=None)
    txn.send(trying, 0.6)
    [first] = txn.pop_actions()
    txn.receive(request("MESSAGE"), 1.5)
    assert txn.pop_actions() == [first] and state(txn) is State.PROCEEDING
    final = response(req, 202)
    txn.send(final, 2.0)
    [sent_final] = txn.pop_actions()
    txn.receive(request("MESSAGE"), 3.0)
    [again] = txn.pop_actions()
    assert isinstance(again, Transmit) and again.data == bytes(final)
    assert isinstance(sent_final, Transmit) and sent_final.message is final
    assert run(txn, 100) == [(2.0 + 64 * T1, Terminated())]


def test_timer_j_is_0_on_tcp() -> None:
    req = request("BYE")
    txn = NonInviteServerTransaction(req, reliable=True, now=0.0)
    txn.pop_actions()
    txn.send(response(req, 200), 0.0)
    assert kinds(txn.pop_actions()) == ["Transmit", "Terminated"]


# --- matching (§17.2.3, §9.2) and the table -----------------------------------------------


def test_matching_by_branch_sent_by_and_method() -> None:
    table = TransactionTable()
    invite = InviteServerTransaction(request("INVITE"), reliable=False, now=0.0)
    table.add(invite)
    assert table.match_request(request("INVITE")) is invite
    assert table.match_request(request("ACK")) is invite  # ACK: the INVITE's transaction
    assert table.match_request(request("CANCEL")) is None  # CANCEL: a transaction of its own
    assert table.match_cancel(request("CANCEL")) is invite
    assert table.match_cancel(request("CANCEL", branch="z9hG4bKother")) is None
    assert table.match_request(request("INVITE", branch="z9hG4bKother")) is None
    moved = request("INVITE")
    moved.set("Via", "SIP/2.0/UDP 192.0.2.11:5060;branch=z9hG4bKrfc1")
    assert table.match_request(moved) is None  # same branch, another sent-by
    bye = request("BYE")  # same branch, another method
    assert table.match_request(bye) is None


def test_rfc2543_fallback_key_without_the_magic_cookie() -> None:
    table = TransactionTable()
    old = request("INVITE", branch="1234")
    invite = InviteServerTransaction(old, reliable=False, now=0.0)
    table.add(invite)
    assert server_key(old)[0] == "2543"
    assert table.match_request(request("INVITE", branch="1234")) is invite
    assert table.match_request(request("ACK", branch="1234")) is invite
    assert table.match_cancel(make_cancel(old)) is invite
    assert table.match_request(request("INVITE", branch="1234", cseq=2)) is None
    other_call = request("INVITE", branch="1234")
    other_call.set("Call-ID", "another@192.0.2.10")
    assert table.match_request(other_call) is None
    no_branch = request("INVITE", branch="x")
    no_branch.set("Via", "SIP/2.0/UDP 192.0.2.10:5060")
    nb = InviteServerTransaction(no_branch, reliable=False, now=0.0)
    table.add(nb)
    plain_ack = request("ACK")
    plain_ack.set("Via", "SIP/2.0/UDP 192.0.2.10:5060")
    assert table.match_request(plain_ack) is nb


def test_finished_transactions_leave_the_table_and_its_timer_heap() -> None:
    table = TransactionTable()
    txns: list[Transaction] = []
    for n in range(50):
        req = request("INVITE", branch=f"z9hG4bKi{n}")
        server = InviteServerTransaction(req, reliable=False, now=0.0)
        table.add(server)
        server.send(response(req, 486 if n % 2 else 200), 0.0)
        client = NonInviteClientTransaction(request("OPTIONS", branch=f"z9hG4bKo{n}"),
                                            reliable=False, now=0.0)
        table.add(client)
        txns += [server, client]
    woken = table.handle_timer(1000.0)
    assert {id(t) for t, _ in woken} == {id(t) for t in txns}
    assert len(table) == 0 and table.get_timer() is None and table._heap == []
    assert all(t.get_timer() is None for t in txns)


# --- RFC 4320: no 408 to a non-INVITE --------------------------------------------------------


@pytest.mark.parametrize("reliable", [False, True])
def test_an_abandoned_non_invite_absorbs_retransmissions_silently_until_timer_j(
        reliable: bool) -> None:
    req = request("MESSAGE")
    txn = NonInviteServerTransaction(req, reliable=reliable, now=0.0)
    txn.pop_actions()
    txn.send(response(req, 100, tag=None), 0.1)
    txn.pop_actions()
    txn.abandon(32.0)  # the TU's branch timed out: it sends nothing, not even a 408
    if reliable:
        assert txn.pop_actions() == [Terminated()]
        return
    assert txn.pop_actions() == [] and txn.last_response is None
    txn.receive(request("MESSAGE"), 32.1)
    assert txn.pop_actions() == []  # neither the 100 again nor the TU
    assert run(txn, 100) == [(32.0 + 64 * T1, Terminated())]


# --- transport errors (§17.1.4, §17.2.4) ----------------------------------------------------


def test_a_transport_error_is_reported_to_the_tu_and_ends_the_transaction() -> None:
    invite, options = request("INVITE"), request("OPTIONS")
    clients: list[Transaction] = [
        InviteClientTransaction(invite, reliable=False, now=0.0),
        NonInviteClientTransaction(options, reliable=False, now=0.0),
    ]
    for txn in clients:
        txn.pop_actions()
        txn.transport_error(0.1)
        assert txn.pop_actions() == [TransportFailed(), Terminated()]
        assert txn.get_timer() is None and run(txn, 100) == []
    # The ACK of a failure could not be sent: reported too.
    failed = InviteClientTransaction(invite, reliable=False, now=0.0)
    failed.receive(response(invite, 486), 0.1)
    failed.pop_actions()
    failed.transport_error(0.1)
    assert failed.pop_actions() == [TransportFailed(), Terminated()]
    servers: list[Transaction] = [
        InviteServerTransaction(invite, reliable=False, now=0.0),
        NonInviteServerTransaction(options, reliable=False, now=0.0),
    ]
    for server in servers:
        assert isinstance(server, InviteServerTransaction | NonInviteServerTransaction)
        server.pop_actions()
        server.send(response(server.request, 404), 0.1)
        server.pop_actions()
        server.transport_error(0.1)
        assert server.pop_actions() == [TransportFailed(), Terminated()]
        assert server.get_timer() is None


def test_a_transport_error_in_accepted_is_reported_and_retransmissions_still_absorbed() -> None:
    invite = request("INVITE")
    server = InviteServerTransaction(invite, reliable=False, now=0.0)
    server.pop_actions()
    server.send(response(invite, 200), 0.1)
    server.pop_actions()
    server.transport_error(0.1)
    assert server.pop_actions() == [TransportFailed()] and state(server) is State.ACCEPTED
    server.receive(request("INVITE"), 0.2)
    assert server.pop_actions() == []
    client = InviteClientTransaction(invite, reliable=False, now=0.0)
    client.receive(response(invite, 200), 0.1)
    client.pop_actions()
    client.transport_error(0.2)  # it sends nothing in Accepted: nothing to report
    assert client.pop_actions() == [] and state(client) is State.ACCEPTED


def test_a_non_invite_gets_no_provisional_but_100_rfc4320() -> None:
    req = request("MESSAGE")
    txn = NonInviteServerTransaction(req, reliable=False, now=0.0)
    txn.pop_actions()
    for status in (180, 183, 199):
        with pytest.raises(SipStateError):
            txn.send(response(req, status), 0.1)
    assert txn.pop_actions() == [] and state(txn) is State.TRYING
    txn.send(response(req, 100, tag=None), 0.2)
    assert kinds(txn.pop_actions()) == ["Transmit"] and state(txn) is State.PROCEEDING


def test_the_100_trying_copies_the_timestamp() -> None:
    invite = request("INVITE")
    invite.add("Timestamp", "54.3 0.1")
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    txn.pop_actions()
    [(_, trying)] = run(txn, TRYING_DELAY)
    assert isinstance(trying, Transmit) and trying.message.get("timestamp") == "54.3 0.1"
