"""Per-source budgets: failure bans and the unauthenticated request rate."""

from __future__ import annotations

from appliance.sip.guard import Guard, LogThrottle

IP = "198.51.100.66"


def test_ban_after_n_failures_within_the_window() -> None:
    guard = Guard(max_failures=3, failure_window=60, ban_time=600)
    assert not guard.record_failure(IP, 0)
    assert not guard.record_failure(IP, 10)
    assert guard.record_failure(IP, 20)  # the third failure starts the ban
    assert guard.is_banned(IP, 20) and guard.is_banned(IP, 619.9)
    assert not guard.is_banned(IP, 620)
    assert not guard.is_banned("192.0.2.1", 20)


def test_failures_outside_the_window_do_not_add_up() -> None:
    guard = Guard(max_failures=3, failure_window=60)
    for t in (0, 50, 100, 150, 200):
        assert not guard.record_failure(IP, t)
    assert not guard.is_banned(IP, 200)


def test_success_clears_failures() -> None:
    guard = Guard(max_failures=3)
    guard.record_failure(IP, 0)
    guard.record_failure(IP, 1)
    guard.record_success(IP)
    assert not guard.record_failure(IP, 2)
    guard.record_success("never-seen")


def test_success_clears_only_the_failures_of_its_own_login() -> None:
    guard = Guard(max_failures=3)
    guard.record_failure(IP, 0, "boss")
    guard.record_failure(IP, 1, "boss")
    guard.record_success(IP, "mallory")  # a password the cracker holds
    assert guard.record_failure(IP, 2, "boss")
    other = Guard(max_failures=3)
    other.record_failure(IP, 0, "alice")
    other.record_failure(IP, 1, "alice")
    other.record_success(IP, "alice")
    assert not other.record_failure(IP, 2, "alice")


def test_unauthenticated_rate() -> None:
    guard = Guard(unauthenticated_per_minute=60)
    assert all(guard.allow_unauthenticated(IP, 0) for _ in range(60))
    assert not guard.allow_unauthenticated(IP, 0)
    assert not guard.allow_unauthenticated(IP, 0.5)
    assert guard.allow_unauthenticated(IP, 1.5)  # one token per second comes back
    assert guard.allow_unauthenticated("192.0.2.1", 0)  # per source


def test_memory_is_bounded() -> None:
    guard = Guard(max_sources=100, max_failures=1)
    guard.record_failure(IP, 0)  # banned
    for i in range(150):
        guard.allow_unauthenticated(f"10.0.{i // 256}.{i % 256}", 0)
        guard.is_banned(IP, 0)  # the attacker keeps knocking: its record stays fresh
    assert len(guard) == 100
    assert guard.is_banned(IP, 1)


def test_sweep_forgets_idle_sources() -> None:
    guard = Guard(max_failures=2, failure_window=60, ban_time=100)
    guard.allow_unauthenticated("a", 0)
    guard.record_failure("b", 0)
    guard.record_failure("c", 0)
    guard.record_failure("c", 1)  # banned until 101
    assert guard.sweep(30) == 1  # "a": bucket full again; "b" failed recently; "c" banned
    assert len(guard) == 2
    assert guard.sweep(200) == 2
    assert len(guard) == 0


def test_a_quiet_cracker_cannot_sweep_its_ban_or_failures_away() -> None:
    # svcrack falls quiet and sweeps OPTIONS from spoofed addresses (one packet each) to
    # push its record out of the bounded table: its ban and its failure count stay.
    guard = Guard(max_sources=100, max_failures=3, ban_time=600)
    guard.record_failure("203.0.113.1", 0)
    guard.record_failure("203.0.113.1", 0)
    guard.record_failure("203.0.113.1", 0)  # banned
    guard.record_failure("203.0.113.2", 0)
    guard.record_failure("203.0.113.2", 0)  # one guess short of a ban
    for i in range(10_000):
        guard.allow_unauthenticated(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1)
    assert len(guard) <= 100
    assert guard.is_banned("203.0.113.1", 2)
    assert guard.record_failure("203.0.113.2", 2)  # its third failure: banned


def test_exempt_sources_are_counted_and_banned_like_any_other() -> None:
    """A provider's address is spared the unauthenticated budget only: its failures count
    and its ban holds (a blind spoofer cannot cause them: nonces are bound to the address)."""
    asked: list[str] = []
    guard = Guard(max_failures=2)
    guard.exempt = lambda ip: asked.append(ip) is None and ip == "198.51.100.7"
    assert not guard.record_failure("198.51.100.7", 0)
    assert guard.record_failure("198.51.100.7", 1)
    assert guard.is_banned("198.51.100.7", 2)
    assert not guard.is_banned("198.51.100.7", 1 + guard.ban_time)  # the ban ends on time
    assert asked == []  # neither asks exempt


def test_exempt_sources_go_on_past_their_budget_and_are_held_to_an_earlier_ban() -> None:
    guard = Guard(max_failures=1, unauthenticated_per_minute=3)
    provider = "198.51.100.7"
    assert guard.record_failure(provider, 0)  # banned before it became a provider's address
    asked: list[str] = []
    guard.exempt = lambda ip: asked.append(ip) is None and ip == provider
    assert guard.is_banned(provider, 1)  # still banned
    # exempt is asked only once the bucket is empty (it costs more than the bucket)...
    assert [guard.allow_unauthenticated(provider, 1) for _ in range(3)] == [True] * 3
    assert asked == []
    assert all(guard.allow_unauthenticated(provider, 1) for _ in range(100))
    # ...and what the caller says is not exemptible (a REGISTER) is held to the budget.
    assert not guard.allow_unauthenticated(provider, 1, exemptible=False)
    assert [guard.allow_unauthenticated(IP, 1) for _ in range(4)] == [True] * 3 + [False]
    guard.exempt = None  # no longer a provider's: its budget applies again
    assert not guard.allow_unauthenticated(provider, 1)


def test_log_throttle_is_per_source_and_bounded() -> None:
    throttle = LogThrottle(60, max_sources=2)
    assert throttle.due("a", 0) and not throttle.due("a", 59) and throttle.due("a", 60)
    assert throttle.due("b", 1) and throttle.due("c", 2)
    assert throttle.due("a", 61)  # forgotten: at most two sources remembered


def test_a_spared_address_and_port_is_never_counted_nor_banned() -> None:
    # Our media workers' SIP sockets (127.0.0.1:<port>): a bad digest from one is our bug.
    guard = Guard(max_failures=2)
    guard.spared = lambda ip, port: (ip, port) == ("127.0.0.1", 5071)
    for t in range(5):
        assert not guard.record_failure("127.0.0.1", t, "office", 5071)
    assert not guard.is_banned("127.0.0.1", 5, 5071) and not guard.is_banned("127.0.0.1", 5)
    # Another process on the same address is counted, and its ban is the address's...
    guard.record_failure("127.0.0.1", 6, "alice", 40000)
    assert guard.record_failure("127.0.0.1", 7, "alice", 40000)
    assert guard.is_banned("127.0.0.1", 8, 40000) and guard.is_banned("127.0.0.1", 8)
    # ...but never the worker's.
    assert not guard.is_banned("127.0.0.1", 8, 5071)
