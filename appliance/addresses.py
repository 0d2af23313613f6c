"""IPv4 peers as IPv4: a socket listening on the IPv6 wildcard (``appliance.dualstack``)
reports an IPv4 peer as ``::ffff:a.b.c.d``, while bans, Via received, bindings, provider
addresses and ``[inbound.sources]`` all hold IPv4 addresses. Pure functions, used by the
config parser, the SIP transport and the trunk alike."""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def unmapped(host: str) -> str:
    """HOST in its IPv4 form when it is IPv4-mapped (``::ffff:127.0.0.1``), as a dual-stack
    socket reports an IPv4 peer: bans, Via received, bindings and the API then see the
    address the peer has."""
    if host[:7].lower() != "::ffff:":
        return host
    rest = host[7:]
    return rest if ":" not in rest and "." in rest else host


def unmapped_network(network: Network) -> Network:
    """An IPv4-mapped network (``::ffff:1.2.3.4``, ``::ffff:a.b.c.0/120``) as the IPv4 one it
    maps: peers are matched in their IPv4 form (``unmapped``), and an IPv4 address is in no
    IPv6 network."""
    if not isinstance(network, ipaddress.IPv6Network) or not network.subnet_of(_MAPPED):
        return network
    first = network.network_address.ipv4_mapped
    assert first is not None  # noqa: S101 - inside ::ffff:0:0/96
    return ipaddress.IPv4Network(f"{first}/{network.prefixlen - 96}")
