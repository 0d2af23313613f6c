"""The caller-ID rule for legs out through a gateway (docs/gateways.md "Caller ID")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from appliance.models import Gateway, GatewaySid
from appliance.services.outbound_calls import caller_id_uri, dialable


def gw(proxy: str = "sip.provider.example:5060", user: str = "office") -> Gateway:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Gateway(sid=GatewaySid("GW" + "0" * 32), friendly_name="provider",
                   user_name=user, password="pw", proxy=proxy, register=False, ttl=3600,
                   date_created=now, date_updated=now)


@pytest.mark.parametrize("value, number", [
    ("+15551234567", "+15551234567"), ("+1 (555) 123-4567", "+15551234567"),
    ("555.1234", "5551234"), ("client:alice", None), ("alice", None), ("", None),
    (None, None), ("12", None), ("+" + "1" * 21, None), ("+1555;x=y", None),
])
def test_dialable(value: str | None, number: str | None) -> None:
    assert dialable(value) == number


@pytest.mark.parametrize("proxy, caller_id, uri", [
    ("sip.provider.example:5060", None, "sip:office@sip.provider.example"),
    ("sip.provider.example", "+1 555 765 4321", "sip:+15557654321@sip.provider.example"),
    ("127.0.0.1:5080", "client:alice", "sip:office@127.0.0.1"),
    ("[2001:db8::1]:5060", "alice", "sip:office@[2001:db8::1]"),
    ("[2001:db8::1]", "+4930123", "sip:+4930123@[2001:db8::1]"),
])
def test_caller_id_uri(proxy: str, caller_id: str | None, uri: str) -> None:
    assert caller_id_uri(gw(proxy), caller_id) == uri


def test_an_odd_username_is_escaped() -> None:
    assert caller_id_uri(gw(user="a b@c"), None) == "sip:a%20b%40c@sip.provider.example"
