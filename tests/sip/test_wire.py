"""wire.Targets: one Target object per peer, bounded."""

from __future__ import annotations

from appliance.sip.wire import Target, Targets


def test_equal_targets_are_shared_and_the_table_is_bounded() -> None:
    targets = Targets(limit=2)
    first = targets.get("udp", "192.0.2.1", 5060)
    assert first == Target("udp", "192.0.2.1", 5060)
    assert targets.get("udp", "192.0.2.1", 5060) is first
    assert targets.share(Target("udp", "192.0.2.1", 5060)) is first
    other = Target("tcp", "192.0.2.1", 5060, "c1")
    assert targets.share(other) is other and targets.get("tcp", "192.0.2.1", 5060, "c1") is other
    third = targets.get("udp", "192.0.2.3", 5060)  # full: emptied, then this one kept
    assert targets.get("udp", "192.0.2.1", 5060) is not first
    assert targets.get("udp", "192.0.2.3", 5060) is third
