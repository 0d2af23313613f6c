"""The caller-ID rules (services.caller_id): for legs out through a gateway (docs/gateways.md
"Caller ID") and for legs to a Client's phones (docs/voice.md "Caller ID")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from appliance.models import Gateway, GatewaySid
from appliance.services.caller_id import (
    MAX_SHOWN,
    caller_id_uri,
    client_caller,
    client_caller_uri,
    dialable,
)
from appliance.sip.uri import SipUri, parse_uri


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


@pytest.mark.parametrize("candidates, user", [
    (("+1 (555) 123-0000",), "+15551230000"),  # POST Calls From, a number
    (("client:alice",), "alice"), (("Client: alice ",), "alice"), (("alice",), "alice"),
    ((None, "+15551230000"), "+15551230000"),  # <Dial> without callerId: the parent's caller
    (("+15559998888", "alice"), "+15559998888"),  # callerId wins
    (("Vodafone UK",), "Vodafone UK"),  # a network's alphanumeric ID, escaped by SipUri
    (("unknown",), "anonymous"), (("",), "anonymous"), ((None,), "anonymous"), ((), "anonymous"),
    (("client:", "bob"), "bob"),
    (("x" * (MAX_SHOWN + 1), "bob"), "bob"),  # too long for a From: the next one
    (("evil\r\nX-Injected: 1", "bob"), "bob"),  # control characters: never a caller ID
])
def test_client_caller(candidates: tuple[str | None, ...], user: str) -> None:
    assert client_caller(*candidates) == user


@pytest.mark.parametrize("caller", ['"Boss" <sip:boss@evil>', "a b;lr?x=y@z", "x" * MAX_SHOWN,
                                     "\u00e9t\u00e9 caf\u00e9"])
def test_a_shown_caller_is_escaped_into_one_valid_uri(caller: str) -> None:
    """Whatever printable name a callerId carries, the From the worker is given is one
    valid SIP URI with that user (no header, parameter or second address smuggled in: the
    worker puts it in <>, test_worker.py), short enough for the worker protocol (256
    characters)."""
    uri = client_caller_uri(client_caller(caller), "127.0.0.1")
    assert not any(c in uri for c in '\r\n<>" ') and len(uri) <= 256, uri
    parsed = parse_uri(uri)
    assert isinstance(parsed, SipUri) and parsed.host == "127.0.0.1", uri
    assert (parsed.user, parsed.params, parsed.headers) == (caller, [], []), uri


def test_a_number_and_a_login_are_written_plain() -> None:
    assert client_caller_uri("+15551230000", "10.0.0.2") == "sip:+15551230000@10.0.0.2"
    assert client_caller_uri("john.smith", "10.0.0.2") == "sip:john.smith@10.0.0.2"
    assert client_caller_uri("Vodafone UK", "10.0.0.2") == "sip:Vodafone%20UK@10.0.0.2"
