"""The keep-alive schedule (sip.ping_schedule) on a fake clock: when pings go, when a contact is
dead, and the bounds on the pings in flight."""

from __future__ import annotations

from collections.abc import Callable

from appliance.sip.ping_schedule import Ping, PingSchedule


def at(value: float) -> Callable[[], float]:
    """A spread that always picks VALUE."""
    return lambda: value


def test_the_first_ping_is_one_to_two_intervals_after_the_binding_appears() -> None:
    k = PingSchedule(60)
    k.track("alice", ["sip:alice@a"], 1000.0, at(0.0))
    k.track("bob", ["sip:bob@b"], 1000.0, at(0.5))
    assert k.handle_timer(1059.9).ping == []
    assert k.get_timer() == 1060.0
    [ping] = k.handle_timer(1060.0).ping
    assert ping.key == ("alice", "sip:alice@a")
    assert k.handle_timer(1089.9).ping == []
    assert [p.key for p in k.handle_timer(1090.0).ping] == [("bob", "sip:bob@b")]


def test_an_answered_contact_is_pinged_every_interval_and_never_dropped() -> None:
    k = PingSchedule(60)
    k.track("alice", ["sip:alice@a"], 0.0, at(0.0))
    now = 60.0
    for _ in range(10):
        [ping] = k.handle_timer(now).ping
        assert k.answered(ping)
        assert k.handle_timer(now + 59).ping == []
        now += 60
    assert len(k) == 1 and k.in_flight == 0


def test_three_unanswered_pings_in_a_row_make_the_contact_dead_once() -> None:
    k = PingSchedule(60)
    k.track("alice", ["sip:alice@a", "sip:alice@b"], 0.0, at(0.0))
    dead = []
    now = 60.0
    for _ in range(3):
        tick = k.handle_timer(now)
        for ping in tick.ping:
            if ping.key[1] == "sip:alice@b":
                assert k.answered(ping)
        dead += tick.dead
        now += 32  # Timer F: the unanswered one is missed
        tick = k.handle_timer(now)
        dead += tick.dead
        now += 28
    assert dead == [("alice", "sip:alice@a")]
    assert len(k) == 1 and k.in_flight == 0


def test_a_failure_counts_and_an_answer_resets_the_count() -> None:
    k = PingSchedule(10)
    k.track("alice", ["sip:alice@a"], 0.0, at(0.0))
    key = ("alice", "sip:alice@a")
    now = 10.0
    for outcome in ("fail", "fail", "answer", "fail", "fail"):
        [ping] = k.handle_timer(now).ping
        if outcome == "fail":
            assert not k.failed(ping)
        else:
            assert k.answered(ping)
        now += 10
    assert k.misses(key) == 2
    [ping] = k.handle_timer(now).ping
    assert k.failed(ping)  # the third in a row
    assert len(k) == 0 and k.in_flight == 0


def test_a_registration_refresh_resets_the_count() -> None:
    k = PingSchedule(10)
    key = ("alice", "sip:alice@a")
    k.track("alice", [key[1]], 0.0, at(0.0))
    for now in (10.0, 20.0):
        [ping] = k.handle_timer(now).ping
        k.failed(ping)
    k.heard(key)
    [ping] = k.handle_timer(30.0).ping
    assert not k.failed(ping)
    assert k.misses(key) == 1


def test_a_short_interval_misses_a_ping_when_the_next_one_is_due() -> None:
    k = PingSchedule(1)
    k.track("alice", ["sip:alice@a"], 0.0, at(0.0))
    [first] = k.handle_timer(1.0).ping
    tick = k.handle_timer(2.0)
    assert tick.missed == [first] and len(tick.ping) == 1 and tick.dead == []
    assert not k.answered(first)  # too late: counts for nothing
    tick = k.handle_timer(3.0)
    assert tick.dead == []
    tick = k.handle_timer(4.0)
    assert tick.dead == [("alice", "sip:alice@a")] and tick.ping == []
    assert k.get_timer() is None and k.in_flight == 0


def test_a_late_answer_to_a_missed_ping_does_not_reset_the_count() -> None:
    k = PingSchedule(1)
    key = ("alice", "sip:alice@a")
    k.track("alice", [key[1]], 0.0, at(0.0))
    [first] = k.handle_timer(1.0).ping
    [second] = k.handle_timer(2.0).ping
    assert not k.answered(first)
    assert k.misses(key) == 1
    assert k.answered(second)
    assert k.misses(key) == 0


def test_a_thousand_bindings_are_spread_over_an_interval() -> None:
    k = PingSchedule(60)
    for i in range(1000):
        k.track(f"u{i}", [f"sip:u{i}@h"], 0.0, at(i / 1000))
    per_second = []
    for s in range(1, 61):  # the second ending at 60 + s
        pings = k.handle_timer(60.0 + s - 0.001).ping
        per_second.append(len(pings))
        for ping in pings:
            k.answered(ping)
    assert sum(per_second) == 1000
    assert max(per_second) <= 20


def test_pings_in_flight_are_capped_and_wait_their_turn() -> None:
    k = PingSchedule(60, max_in_flight=2)
    for name in "abcd":
        k.track(name, [f"sip:{name}@h"], 0.0, at(0.0))
    first = k.handle_timer(60.0).ping
    assert len(first) == 2 and k.in_flight == 2
    assert k.handle_timer(61.0).ping == []
    assert k.answered(first[0])
    assert k.get_timer() == 0.0  # one waits, and there is room
    [third] = k.handle_timer(61.5).ping
    assert third.key[0] == "c"
    k.failed(first[1])
    [fourth] = k.handle_timer(62.0).ping
    assert fourth.key[0] == "d"
    assert k.in_flight == 2


def test_one_ping_per_contact_in_flight() -> None:
    k = PingSchedule(60)
    k.track("alice", ["sip:alice@a"], 0.0, at(0.0))
    [ping] = k.handle_timer(60.0).ping
    assert k.handle_timer(91.0).ping == []  # still in flight (Timer F is 32 s)
    assert k.answered(ping)
    assert k.handle_timer(119.0).ping == []
    assert len(k.handle_timer(120.0).ping) == 1


def test_a_binding_gone_is_forgotten_with_its_ping_in_flight() -> None:
    k = PingSchedule(60)
    k.track("alice", ["sip:alice@a", "sip:alice@b"], 0.0, at(0.0))
    pings = k.handle_timer(60.0).ping
    assert k.in_flight == 2
    k.track("alice", ["sip:alice@b"], 61.0, at(0.0))
    assert k.in_flight == 1 and len(k) == 1
    gone = next(p for p in pings if p.key[1] == "sip:alice@a")
    assert not k.answered(gone) and not k.failed(gone)
    k.track("alice", [], 62.0, at(0.0))
    assert len(k) == 0 and k.in_flight == 0
    assert k.handle_timer(1000.0).ping == []


def test_a_binding_registered_again_keeps_its_rhythm() -> None:
    k = PingSchedule(60)
    k.track("alice", ["sip:alice@a"], 0.0, at(0.0))
    k.track("alice", ["sip:alice@a"], 30.0, at(0.9))
    assert len(k.handle_timer(60.0).ping) == 1
    assert Ping(("alice", "sip:alice@a"), 1) == Ping(("alice", "sip:alice@a"), 1)
