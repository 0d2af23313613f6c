"""SIP/SIPS/tel URIs: parse, format, round trip."""

from __future__ import annotations

import pytest

from appliance.sip.errors import SipParseError
from appliance.sip.uri import SipUri, TelUri, parse_sip_uri, parse_uri, same_uri

ROUND_TRIP = [
    "sip:pbx.example.com",
    "sip:1001@pbx.example.com",
    "sips:1001@pbx.example.com:5061",
    "sip:1001:secret@192.0.2.10:5060;transport=tcp",
    "sip:[2001:db8::10]",
    "sip:user@[2001:db8::9:1]:5070;transport=udp;lr",
    "sip:+1-212-555-1212:1234@gateway.com;user=phone",
    "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
    "sip:services.example.com;lr;unknownwith=value;unknown-no-value",
    "tel:+15555550123;phone-context=example.com",
    "tel:7042;phone-context=example.com",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_fields() -> None:
    uri = parse_sip_uri("SIP:Alice:pw@Example.COM:5070;Transport=TCP;lr?h=1")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sip", "Alice", "pw", "Example.COM", 5070,
    )
    assert uri.transport == "tcp" and uri.has_param("LR") and uri.param("lr") is None
    assert uri.headers == [("h", "1")]
    assert uri.hostport == "Example.COM:5070"


def test_ipv6() -> None:
    uri = parse_sip_uri("sip:[2001:db8::1]:5060")
    assert uri.host == "[2001:db8::1]" and uri.port == 5060
    assert parse_sip_uri("sip:[::1]").port is None


def test_escapes_are_decoded_and_reencoded() -> None:
    uri = parse_sip_uri("sip:sip%3Auser%40example.com@company.com;other-param=summit")
    assert uri.user == "sip:user@example.com"
    assert str(uri) == "sip:sip%3Auser%40example.com@company.com;other-param=summit"
    assert parse_sip_uri("sip:%61lice@h").user == "alice"
    assert str(parse_sip_uri("sip:%61lice@h")) == "sip:alice@h"  # semantic round trip
    assert str(SipUri(host="h", user="a b")) == "sip:a%20b@h"


def test_tel() -> None:
    uri = parse_uri("tel:+1-201-555-0123")
    assert isinstance(uri, TelUri) and uri.number == "+1-201-555-0123"


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("http://example.com/", 416),
        ("mailto:a@b", 416),
        ("nocolon", 400),
        ("sip:", 400),
        ("sip:@host", 400),
        ("sip:user@", 400),
        ("sip:host:99999", 400),
        ("sip:host:port", 400),
        ("sip:[2001:db8::1", 400),
        ("sip:[::1]x", 400),
        ("sip:ho st", 400),
        ("sip:h;=v", 400),
        ("tel:", 400),
        ("sip:h?=v", 400),
    ],
)
def test_bad(text: str, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    assert info.value.status == status


def test_parse_sip_uri_refuses_tel() -> None:
    with pytest.raises(SipParseError) as info:
        parse_sip_uri("tel:+1")
    assert info.value.status == 416


@pytest.mark.parametrize(("first", "second", "same"), [
    ("sip:pbx.example.com", "sip:pbx.example.com", True),
    ("sip:PBX.Example.com", "sip:pbx.example.com", True),
    ("SIP:alice@pbx.example.com", "sip:alice@pbx.example.com", True),
    ("sip:%61lice@pbx.example.com", "sip:alice@pbx.example.com", True),
    ("sip:pbx.example.com;transport=UDP", "sip:pbx.example.com;transport=udp", True),
    ("sip:pbx.example.com;transport=udp", "sip:pbx.example.com", True),  # only in one
    ("sip:Alice@pbx.example.com", "sip:alice@pbx.example.com", False),  # user exact
    ("sip:pbx.example.com:5060", "sip:pbx.example.com", False),  # explicit default port
    ("sip:pbx.example.com;transport=tcp", "sip:pbx.example.com;transport=udp", False),
    ("sip:pbx.example.com;maddr=10.0.0.1", "sip:pbx.example.com", False),
    ("sips:pbx.example.com", "sip:pbx.example.com", False),
    ("sip:other.example.com", "sip:pbx.example.com", False),
    ("garbage", "sip:pbx.example.com", False),
    ("garbage", "garbage", True),
])
def test_same_uri_follows_rfc_3261_comparison(first: str, second: str, same: bool) -> None:
    assert same_uri(first, second) is same
    assert same_uri(second, first) is same


def test_same_uri_with_default_ports() -> None:
    assert same_uri("sip:pbx.example.com", "sip:pbx.example.com:5060", default_port=True)
    assert same_uri("sips:pbx.example.com:5061", "sips:pbx.example.com", default_port=True)
    assert not same_uri("sip:pbx.example.com:5061", "sip:pbx.example.com", default_port=True)
    assert not same_uri("sips:pbx.example.com:5060", "sips:pbx.example.com",
                        default_port=True)
