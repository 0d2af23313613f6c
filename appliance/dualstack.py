"""Listening on the IPv6 wildcard ``::`` for IPv4 and IPv6 alike.

asyncio's ``create_server`` and aiohttp's ``TCPSite`` set IPV6_V6ONLY on every IPv6 socket
they make, so a server configured on ``::`` alone would refuse every IPv4 client: the desk
phones over TCP and the admin's curl. Where the configured host is ``::`` the SIP transport
and the API take their TCP socket from here instead, with IPV6_V6ONLY off (the peers such a
socket reports v4-mapped are unmapped by ``appliance.addresses``).
"""

from __future__ import annotations

import ipaddress
import socket


def dual_stack(host: str) -> bool:
    """Whether HOST is the IPv6 wildcard (``::``): listening there serves IPv4 too."""
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def dual_stack_listener(port: int) -> socket.socket:
    """A TCP socket bound to [::]:PORT, not yet listening, that takes IPv4 connections too."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError:
        sock.close()
        raise
    return sock
