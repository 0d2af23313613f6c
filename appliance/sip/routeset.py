"""The route set of a request that comes back through us (RFC 3261 §16.4, §16.12).

Every INVITE we fork carries our Record-Route, so the in-dialog requests of its dialog arrive
with our own entries at the top of their Route set. ``pop_own_routes`` drops them (loose
routing); a strict-routing phone puts our Record-Route in the Request-URI instead, which is
replaced by the last Route. What is left decides the request: an out-of-dialog request with a
foreign Route is refused (``remaining_foreign_route``, the proxy is no open relay); an
in-dialog one names its next hop (``remaining_route_target``), which ``sip.in_dialog`` follows
only when it is the call's own (the far party, or the hop its provider record-routed:
``callee_side_hop``), in the form a strict router expects when that Route has no ``lr``
(``route_to_strict_next_hop``).

"Us" is every address requests arrived on plus the host names the transport calls local:
the proxy keeps those (a live collection) and passes them in. Behind NAT, the public
addresses the proxy wrote in a Record-Route toward a gateway's provider (RFC 5658, docs/
gateways.md) are ours too, but only as exact address and port and only when popping an
in-dialog request's Route (``public``): nothing else listens there. Pure functions, apart from the
proxy so they can be read and tested alone: no I/O, no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Collection

from appliance.sip.errors import SipParseError
from appliance.sip.headers import NameAddr, parse_name_addrs
from appliance.sip.message import Request, Response
from appliance.sip.uri import SipUri, parse_uri
from appliance.sip.wire import Target


def is_us(host: str, port: int | None, addresses: Collection[tuple[str, int]],
          hosts: Collection[str], public: Collection[tuple[str, int]] = ()) -> bool:
    host, port = host.strip("[]").lower(), port or 5060
    if (host, port) in addresses or (host, port) in public:
        return True
    return host in hosts and any(p == port for _, p in addresses)


def uri_is_us(text: str, addresses: Collection[tuple[str, int]], hosts: Collection[str],
              *, userless: bool = False, public: Collection[tuple[str, int]] = ()) -> bool:
    try:
        uri = parse_uri(text)
    except SipParseError:
        return False
    if not isinstance(uri, SipUri) or (userless and uri.user is not None):
        return False
    return is_us(uri.host, uri.port, addresses, hosts, public)


def pop_own_routes(request: Request, addresses: Collection[tuple[str, int]],
                   hosts: Collection[str], public: Collection[tuple[str, int]] = ()) -> None:
    """Loose routing (§16.4): drop our own Route entries from the top (those at a PUBLIC
    address too: the double Record-Route toward a provider puts two of ours there). A strict
    router put our Record-Route in the Request-URI: restore the URI from the last Route."""
    if uri_is_us(request.uri, addresses, hosts, userless=True, public=public) \
            and request.get("route") is not None:
        routes = parse_name_addrs(request.get_all("route"))
        if routes:
            request.uri = routes[-1].uri
            remaining = [str(r) for r in routes[:-1]]
            request.remove("route")
            for value in remaining:
                request.add("Route", value)
    while True:
        values = request.values("route")
        if not values:
            return
        try:
            top = NameAddr.parse(values[0])
        except SipParseError:
            return
        if not uri_is_us(top.uri, addresses, hosts, public=public):
            return
        request.pop_first_value("route")


def remaining_foreign_route(request: Request, addresses: Collection[tuple[str, int]],
                            hosts: Collection[str]) -> bool:
    pop_own_routes(request, addresses, hosts)
    return bool(request.values("route"))


def remaining_route_target(request: Request) -> Target | None:
    values = request.values("route")
    if not values:
        return None
    try:
        uri = parse_uri(NameAddr.parse(values[0]).uri)
    except SipParseError:
        return None
    if not isinstance(uri, SipUri):
        return None
    return Target(uri.transport or "udp", uri.host.strip("[]"), uri.port or 5060)


def callee_side_hop(response: Response, forwarded: Request) -> tuple[str, int] | None:
    """The Record-Route entry nearest to us that the callee's side added to RESPONSE, the
    answer to FORWARDED (our branch, whose Record-Route the callee copies below its own
    proxies' entries, RFC 3261 §16.6 step 4 and §12.1.1): the host (lower case, no
    brackets) and port (5060 when none) of the next hop toward the callee, or None when
    nothing was added or it is no SIP URI. None too when FORWARDED carries no Record-Route
    (then ours cannot be told from theirs: a finished request's branch keeps only a stub)."""
    ours = len(forwarded.values("record-route"))
    theirs = len(response.values("record-route")) - ours
    if ours == 0 or theirs <= 0:
        return None
    try:
        uri = parse_uri(NameAddr.parse(response.values("record-route")[theirs - 1]).uri)
    except SipParseError:
        return None
    if not isinstance(uri, SipUri):
        return None
    return uri.host.strip("[]").lower(), uri.port or 5060


def route_to_strict_next_hop(request: Request) -> None:
    """§16.6 step 6: when the next Route has no ``lr`` it names an RFC 2543 strict router,
    which routes on the Request-URI: move that Route into the Request-URI and the
    Request-URI to the end of the Route set. Loose next hops leave REQUEST as it is."""
    values = request.values("route")
    if not values:
        return
    try:
        routes = parse_name_addrs(request.get_all("route"))
        uri = parse_uri(routes[0].uri)
    except (SipParseError, IndexError):
        return
    if not isinstance(uri, SipUri) or uri.has_param("lr"):
        return
    remaining = [str(r) for r in routes[1:]] + [f"<{request.uri}>"]
    request.uri = routes[0].uri
    request.remove("route")
    for value in remaining:
        request.add("Route", value)
