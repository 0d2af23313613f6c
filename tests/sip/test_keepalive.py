"""When a NAT keep-alive is due (sip.keepalive, pure): the clock is a number passed in."""

from __future__ import annotations

from appliance.sip.keepalive import KeepAlives

PROVIDER = ("203.0.113.7", 5060)
BACKUP = ("198.51.100.9", 5060)


def due_over(keepalives: KeepAlives[tuple[str, int]], start: float, end: float, step: float
             ) -> list[tuple[float, tuple[str, int]]]:
    """Drive the timer every STEP seconds from START to END: (time, address) per keep-alive."""
    fired: list[tuple[float, tuple[str, int]]] = []
    now = start
    while now <= end:
        fired += [(now, address) for address in keepalives.handle_timer(now)]
        now += step
    return fired


def test_a_watched_address_is_due_every_interval_of_silence() -> None:
    keepalives: KeepAlives[tuple[str, int]] = KeepAlives(20)
    assert keepalives.get_timer() is None
    keepalives.watch([PROVIDER], 100.0)
    assert keepalives.get_timer() == 120.0
    assert keepalives.handle_timer(119.9) == []
    assert keepalives.handle_timer(120.0) == [PROVIDER]
    assert keepalives.get_timer() == 140.0
    assert due_over(keepalives, 121, 200, 1) == [(140, PROVIDER), (160, PROVIDER),
                                                  (180, PROVIDER), (200, PROVIDER)]


def test_anything_sent_there_puts_the_next_keep_alive_off() -> None:
    keepalives: KeepAlives[tuple[str, int]] = KeepAlives(20)
    keepalives.watch([PROVIDER], 0.0)
    keepalives.sent(PROVIDER, 15.0)  # a REGISTER refresh
    assert keepalives.get_timer() == 35.0
    assert due_over(keepalives, 0, 60, 1) == [(35, PROVIDER), (55, PROVIDER)]
    keepalives.sent(BACKUP, 60.0)  # not watched: ignored
    assert keepalives.get_timer() == 75.0


def test_an_address_no_longer_watched_gets_nothing_and_a_new_one_starts_from_now() -> None:
    keepalives: KeepAlives[tuple[str, int]] = KeepAlives(20)
    keepalives.watch([PROVIDER], 0.0)
    keepalives.watch([PROVIDER, BACKUP], 10.0)  # a second gateway: its own interval
    assert keepalives.handle_timer(20.0) == [PROVIDER]
    assert keepalives.handle_timer(30.0) == [BACKUP]
    keepalives.watch([BACKUP], 31.0)  # the first gateway deleted or unregistered
    keepalives.watch([BACKUP], 32.0)  # watching it again does not move its time
    assert keepalives.get_timer() == 50.0
    assert due_over(keepalives, 32, 90, 1) == [(50, BACKUP), (70, BACKUP), (90, BACKUP)]
    keepalives.watch([], 91.0)  # the appliance stops
    assert keepalives.get_timer() is None
    assert keepalives.handle_timer(1000.0) == []


def test_a_late_timer_sends_one_keep_alive_not_one_per_interval_missed() -> None:
    keepalives: KeepAlives[tuple[str, int]] = KeepAlives(20)
    keepalives.watch([PROVIDER], 0.0)
    assert keepalives.handle_timer(95.0) == [PROVIDER]  # the loop was stalled
    assert keepalives.get_timer() == 115.0


def test_interval_zero_is_off() -> None:
    keepalives: KeepAlives[tuple[str, int]] = KeepAlives(0)
    keepalives.watch([PROVIDER], 0.0)
    keepalives.sent(PROVIDER, 1.0)
    assert keepalives.get_timer() is None
    assert due_over(keepalives, 0, 3600, 1) == []
