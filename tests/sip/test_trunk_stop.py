"""Stopping the appliance unregisters its gateways (docs/gateways.md "How registration
works"), the provider's challenge to the unregistration answered: a real appliance registers
to a provider played by a UDP socket on loopback that challenges every REGISTER without
credentials, as providers do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from appliance.sip.message import Header, Request, make_response
from appliance.sip.trunk import CLOSE_TIMEOUT
from tests.sip.test_trunk_keepalive import Clock, Provider, add_gateway, appliance


class ChallengingProvider(Provider):
    """Answers a REGISTER without Authorization 401, one with it 200 (the digest is checked
    in test_upstream.py; here only that it comes), each after a round trip of DELAY seconds
    as across the Internet; ANSWER=False: silent, as a dead one."""

    def __init__(self, clock: Callable[[], float], delay: float = 0.2) -> None:
        super().__init__(clock)
        self.answer = True
        self.delay = delay

    def _reply(self, data: bytes, source: tuple[str, int]) -> None:
        asyncio.get_running_loop().call_later(self.delay, self.sock.sendto, data, source)

    def answer_register(self, request: Request, source: tuple[str, int]) -> None:
        if not self.answer:
            return
        if request.get("Authorization") is None:
            challenge = make_response(request, 401, to_tag="prov")
            challenge.headers.append(Header.make(
                "WWW-Authenticate", 'Digest realm="provider.test", nonce="n1", qop="auth"'))
            self._reply(bytes(challenge), source)
            return
        ok = make_response(request, 200, to_tag="prov")
        if request.get("Expires") != "0":
            ok.add("Contact", f"{request.get('contact')};expires={self.expires}")
        self._reply(bytes(ok), source)


async def test_stop_answers_the_challenge_to_the_unregistration(tmp_path: Path) -> None:
    clock = Clock()
    provider = ChallengingProvider(clock)
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (_, api):
            await add_gateway(api, provider)
            assert [r.get("Authorization") is not None
                    for _, _, r in provider.registers()] == [False, True]
        # The appliance has stopped: it unregistered, answering the provider's 401.
        unregisters = [r for _, _, r in provider.registers() if r.get("Expires") == "0"]
        assert [r.get("Authorization") is not None for r in unregisters] == [False, True]
        assert 'username="office"' in (unregisters[1].get("Authorization") or "")
    finally:
        provider.close()


async def test_a_silent_provider_delays_the_stop_by_the_bound_only(tmp_path: Path) -> None:
    clock = Clock()
    provider = ChallengingProvider(clock)
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (_, api):
            await add_gateway(api, provider)
            provider.answer = False
            started = time.monotonic()
        assert time.monotonic() - started < CLOSE_TIMEOUT + 1.5  # the stop, bounded
        assert [r.get("Expires") for _, _, r in provider.registers()][-1] == "0"
    finally:
        provider.close()
