"""The double Record-Route toward a provider behind NAT, and the Route entries it makes ours
(docs/gateways.md "Behind the office's NAT: the route set of a call"); end to end in
tests/outside/test_nat_route.py. Here the pure rules: what a forwarded INVITE carries, and
that a public address is ours only at its exact port and only where it is passed."""

from __future__ import annotations

from appliance.sip.forwarding import branch_request
from appliance.sip.message import Request, parse_message
from appliance.sip.routeset import pop_own_routes, remaining_foreign_route

LAN = ("192.168.1.10", 5060)
PUBLIC = ("203.0.113.50", 61000)
INVITE = (b"INVITE sip:+15551234567@provider.example SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 192.168.1.10:7000;branch=z9hG4bKworker;rport\r\n"
          b"Max-Forwards: 70\r\nFrom: <sip:office@provider.example>;tag=w\r\n"
          b"To: <sip:+15551234567@provider.example>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
          b"Content-Length: 0\r\n\r\n")


def invite() -> Request:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    return request


def bye(*routes: str) -> Request:
    request = parse_message(
        b"BYE sip:worker@192.168.1.10:7000 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKp\r\nMax-Forwards: 70\r\n"
        b"From: <sip:+15551234567@provider.example>;tag=p\r\n"
        b"To: <sip:office@provider.example>;tag=w\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\n"
        + b"".join(f"Route: {r}\r\n".encode() for r in routes) + b"Content-Length: 0\r\n\r\n")
    assert isinstance(request, Request)
    return request


def test_toward_the_provider_two_record_routes_and_rport() -> None:
    out = branch_request(invite(), "sip:+15551234567@provider.example", "udp", "udp", LAN,
                         record_route=True, public_out=PUBLIC)
    assert out.values("record-route") == ["<sip:203.0.113.50:61000;lr;transport=udp>",
                                          "<sip:192.168.1.10:5060;lr;transport=udp>"]
    assert out.values("via")[0].endswith(";rport")


def test_from_the_provider_its_side_is_the_bottom_entry() -> None:
    out = branch_request(invite(), "sip:worker@192.168.1.10:7000", "udp", "tcp", LAN,
                         record_route=True, public_in=PUBLIC)
    assert out.values("record-route") == ["<sip:192.168.1.10:5060;lr;transport=tcp>",
                                          "<sip:203.0.113.50:61000;lr;transport=udp>"]
    assert not out.values("via")[0].endswith(";rport")


def test_without_a_public_address_the_record_route_is_as_before() -> None:
    out = branch_request(invite(), "sip:+15551234567@provider.example", "udp", "udp", LAN,
                         record_route=True)
    assert out.values("record-route") == ["<sip:192.168.1.10:5060;lr;transport=udp>"]
    assert not out.values("via")[0].endswith(";rport")


def test_a_public_address_is_ours_at_its_port_only_where_passed() -> None:
    addresses, hosts, public = {LAN}, {"pbx.example.com"}, {PUBLIC}
    request = bye("<sip:203.0.113.50:61000;lr>", "<sip:192.168.1.10:5060;lr>")
    pop_own_routes(request, addresses, hosts, public)
    assert request.values("route") == []
    # Another port at the public address is not ours, nor is a local host name at the
    # public port; and without PUBLIC (out-of-dialog requests) the address is foreign.
    for route in ("<sip:203.0.113.50:5060;lr>", "<sip:pbx.example.com:61000;lr>"):
        request = bye(route)
        pop_own_routes(request, addresses, hosts, public)
        assert request.values("route") == [route]
    assert remaining_foreign_route(bye("<sip:203.0.113.50:61000;lr>"), addresses, hosts)
