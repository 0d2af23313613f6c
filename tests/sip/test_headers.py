"""Typed header views: Via, name-addr, Contact lists, CSeq, digest parameters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sip.errors import SipParseError
from appliance.sip.headers import (
    CSeq,
    DigestCredentials,
    NameAddr,
    Via,
    format_challenge,
    parse_name_addrs,
    parse_params,
    parse_vias,
    split_list,
    unquote,
)


def test_split_list_respects_quotes_and_angles() -> None:
    value = '"a, b" <sip:x@h;p=1,2>;q=1, <sip:y@h>, , "c \\", d" <sip:z@h>'
    assert split_list(value) == [
        '"a, b" <sip:x@h;p=1,2>;q=1',
        "<sip:y@h>",
        '"c \\", d" <sip:z@h>',
    ]


def test_parse_params_keeps_quoted_semicolons() -> None:
    assert parse_params(' ;a = b ;c; d="x;y"') == [("a", "b"), ("c", None), ("d", '"x;y"')]
    with pytest.raises(SipParseError):
        parse_params(';d="open')


@pytest.mark.parametrize(
    ("value", "host", "port", "transport"),
    [
        ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", "192.0.2.1", 5060, "UDP"),
        ("SIP/2.0/tcp host.example.com;branch=z9hG4bK1", "host.example.com", None, "TCP"),
        ("SIP / 2.0 / TLS [2001:db8::1]:5061 ;branch=z9hG4bK1", "[2001:db8::1]", 5061, "TLS"),
        ("SIP/2.0/UDP 192.0.2.1 (a comment);branch=z9hG4bK1", "192.0.2.1", None, "UDP"),
        ("SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK1", "df7jal23ls0d.invalid", None, "WS"),
    ],
)
def test_via_sent_by(value: str, host: str, port: int | None, transport: str) -> None:
    via = Via.parse(value)
    assert (via.host, via.port, via.transport, via.branch) == (host, port, transport, "z9hG4bK1")


def test_via_rport_received_maddr() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bKx;maddr=224.2.0.1")
    assert via.wants_rport and via.rport is None and via.maddr == "224.2.0.1"
    via.set_param("rport", "40123")
    via.set_param("received", "203.0.113.9")
    assert via.rport == 40123 and via.received == "203.0.113.9"
    assert str(via) == (
        "SIP/2.0/UDP 10.0.0.5:5060;rport=40123;branch=z9hG4bKx;maddr=224.2.0.1;received=203.0.113.9"
    )
    assert not Via.parse("SIP/2.0/UDP h").wants_rport


@pytest.mark.parametrize("value", ["garbage", "SIP/2.0/UDP", "SIP/2.0/UDP h:port", "SIP/2.0 UDP h"])
def test_bad_via(value: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(value)


def test_vias_from_lines_and_commas() -> None:
    vias = parse_vias(["SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b", "SIP/2.0/UDP c:1"])
    assert [v.sent_by for v in vias] == ["a", "b", "c:1"]


def test_name_addr_forms() -> None:
    quoted = NameAddr.parse('"Bob \\"the\\" builder" <sip:bob@h;transport=tcp>;tag=x')
    assert quoted.display == 'Bob "the" builder' and quoted.uri == "sip:bob@h;transport=tcp"
    assert quoted.tag == "x"
    assert str(quoted) == '"Bob \\"the\\" builder" <sip:bob@h;transport=tcp>;tag=x'
    token = NameAddr.parse("Bob Smith <sip:bob@h>")
    assert token.display == "Bob Smith" and token.tag is None
    bare = NameAddr.parse("sip:bob@h;tag=abc;user=phone")
    assert bare.uri == "sip:bob@h" and bare.tag == "abc" and bare.param("user") == "phone"
    assert str(bare) == "<sip:bob@h>;tag=abc;user=phone"
    assert NameAddr.parse(" * ").is_wildcard
    ipv6 = NameAddr.parse("<sip:[2001:db8::1]:5060>")
    assert ipv6.parsed_uri().port == 5060  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    ['"open <sip:a@h>', '"Bob" sip:a@h', "<sip:a@h", "<sip:a@h> junk", "<>", "sip:a b@h"],
)
def test_bad_name_addr(value: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(value)


def test_contact_list() -> None:
    contacts = parse_name_addrs(
        ['<sip:a@h>;expires=60;q=0.7, "X, Y" <sip:b@h>', "sip:c@h;expires=abc"]
    )
    assert [c.uri for c in contacts] == ["sip:a@h", "sip:b@h", "sip:c@h"]
    assert contacts[0].expires == 60 and contacts[0].q == 0.7
    assert contacts[1].display == "X, Y" and contacts[1].expires is None
    assert contacts[2].expires is None and contacts[2].q is None


def test_cseq() -> None:
    assert CSeq.parse(" 42   INVITE ") == CSeq(42, "INVITE")
    assert str(CSeq(2**31 - 1, "BYE")) == "2147483647 BYE"
    for bad in ("", "1", "x INVITE", "2147483648 INVITE", "-1 INVITE", "1 INVITE extra"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


def test_digest_credentials() -> None:
    creds = DigestCredentials.parse(
        'Digest username="bob", realm="r", nonce="n, with comma", uri="sip:r",'
        ' response="abc", qop=auth, nc=00000001, cnonce="c\\"q"'
    )
    assert creds.username == "bob" and creds.nonce == "n, with comma"
    assert creds.get("qop") == "auth" and creds.get("cnonce") == 'c"q'
    assert creds.algorithm == "MD5"
    for bad in ("Basic Ym9iOnB3", 'Digest username="a", username="b"', "Digest novalue"):
        with pytest.raises(SipParseError):
            DigestCredentials.parse(bad)


def _digest_by_split_list(value: str) -> dict[str, str] | None:
    """The general reading of a digest value (split_list, then name=value items): what
    every shortcut in DigestCredentials.parse must agree with. None: a SipParseError."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    for item in split_list(rest):
        name, sep, raw = item.partition("=")
        key = name.strip().lower()
        if not sep or not key or key in params:
            return None
        params[key] = unquote(raw.strip())
    return params


_DIGEST_CHARS = st.sampled_from(list('ab=,"\\ \t<>-_.:@Z9'))
_DIGEST_NAMES = st.sampled_from(["username", "realm", "nonce", "uri", "response", "nc",
                                 "qop", "cnonce", "algorithm", "Realm", "x y", ""])
_DIGEST_VALUES = st.one_of(
    st.text(_DIGEST_CHARS, max_size=8),
    st.text(_DIGEST_CHARS, max_size=8).map(lambda t: f'"{t}"'),
    st.sampled_from(['"sip:127.0.0.1:5060"', "00000001", "auth", "MD5", '"n, with comma"']))
_DIGEST_ITEMS = st.tuples(_DIGEST_NAMES, st.sampled_from(["=", " = ", "=\t", ""]),
                          _DIGEST_VALUES).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_DIGEST_ITEMS, max_size=6),
       st.sampled_from([",", ", ", " ,", ",,", ",\t"]),
       st.sampled_from(["Digest ", "Digest  ", "digest "]))
def test_digest_credentials_read_as_the_general_reading(
        items: list[str], separator: str, scheme: str) -> None:
    value = scheme + separator.join(items)
    expected = _digest_by_split_list(value)
    try:
        got: dict[str, str] | None = DigestCredentials.parse(value).params
    except SipParseError:
        got = None
    assert got == expected


def test_format_challenge() -> None:
    value = format_challenge("pbx", "n1", algorithm="SHA-256", stale=True, opaque="o")
    assert value == (
        'Digest realm="pbx", nonce="n1", opaque="o", stale=true, algorithm=SHA-256, qop="auth"'
    )
    parsed = DigestCredentials.parse(value)
    assert parsed.params["stale"] == "true" and parsed.realm == "pbx"


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("SIP/2.0/UDP 10.0.0.5:5070;rport=40123;received=203.0.113.9", ("203.0.113.9", 40123)),
        ("SIP/2.0/UDP 10.0.0.5;received=203.0.113.9", ("203.0.113.9", 5060)),
        ("SIP/2.0/TLS phone.example.com", ("phone.example.com", 5061)),
        ("SIP/2.0/UDP [2001:db8::1]:5062", ("[2001:db8::1]", 5062)),
        ("SIP/2.0/UDP 255.255.255.255", None),
        ("SIP/2.0/UDP 224.0.1.75", None),
        ("SIP/2.0/UDP 10.0.0.5;received=239.1.1.1", None),
        ("SIP/2.0/UDP [ff02::1]", None),
    ],
)
def test_via_response_target(value: str, target: tuple[str, int] | None) -> None:
    assert Via.parse(value).response_target() == target
