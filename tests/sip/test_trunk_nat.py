"""Behind NAT, a gateway registers the public address its provider saw (docs/gateways.md
"Behind the office's NAT: the public Contact"). A real appliance registers to a provider played
by a UDP socket on loopback (tests/sip/test_trunk_keepalive.py) that pretends a NAT stood in
between: its 200 stamps our Via with ``received=127.0.0.2;rport=<port>``, as a provider sees
an office router's public address and mapped port. The appliance's monotonic clock is the
test's, so refresh cycles take no real time."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from appliance.app import Appliance
from appliance.sip.headers import NameAddr
from appliance.sip.message import Request, Response, make_response, stamp_received
from tests.outside.test_registered_contact import DID, Calls, call, number
from tests.sip.test_trunk import GW, state_of
from tests.sip.test_trunk_keepalive import Clock, Provider, add_gateway, appliance, tick

PUBLIC = "127.0.0.2"  # the office router's public address, as the provider sees it
EXPIRES = 600  # granted: refreshed after 540 s


class NatProvider(Provider):
    """Answers every REGISTER 200 with our top Via stamped as seen through a NAT: from
    PUBLIC at the next port of PORTS. Lists the bindings the REGISTER leaves (its Contacts
    without ``expires=0``), as a registrar does."""

    def __init__(self, clock: Clock, ports: itertools.count[int] | itertools.repeat[int],
                 host: str = PUBLIC) -> None:
        super().__init__(clock, expires=EXPIRES)
        self.host = host
        self.ports = ports
        self.answers: list[Response] = []
        self.answer_unregister = True  # False: an unregistration (Expires: 0) gets nothing
        self.answers_left: int | None = None  # None: every REGISTER is answered

    def answer_register(self, request: Request, source: tuple[str, int]) -> None:
        if not self.answer_unregister and request.get("expires") == "0":
            return
        if self.answers_left is not None:
            if self.answers_left == 0:
                return  # bound, but the 200 is lost on its way back
            self.answers_left -= 1
        stamp_received(request, self.host if self.host else source[0],
                       next(self.ports) if self.host else source[1])
        ok = make_response(request, 200, to_tag="prov")
        for value in contacts(request):
            if "expires=0" not in value and request.get("expires") != "0":
                ok.add("Contact", f"{value};expires={self.expires}")
        self.answers.append(ok)
        self.sock.sendto(bytes(ok), source)


def contacts(request: Request) -> list[str]:
    return [str(NameAddr.parse(v)) for v in request.values("Contact")]


def bindings(seen: list[Request]) -> set[str]:
    """The Contacts a registrar holds for the AoR after the REGISTERs SEEN (RFC 3261 §10.3:
    one with ``expires=0``, or any under ``Expires: 0``, is removed; any other is bound)."""
    bound: set[str] = set()
    for request in seen:
        for value in contacts(request):
            uri = value.split(";")[0]
            if value.endswith(";expires=0") or request.get("expires") == "0":
                bound.discard(uri)
            else:
                bound.add(uri)
    return bound


def crash(app: Appliance) -> None:
    """kill -9 or a power cut, as the provider sees it: the stop sends no unregistration."""
    async def nothing() -> None:
        return None
    app.trunk.close = nothing  # type: ignore[method-assign]


async def registers(provider: Provider, count: int) -> list[Request]:
    """The REGISTERs the provider got, once there are COUNT."""
    async with asyncio.timeout(5):
        while len(provider.registers()) < count:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # and no more after them
    return [request for _, _, request in provider.registers()]


async def test_the_public_address_the_provider_saw_becomes_the_contact(tmp_path: Path) -> None:
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (app, api):
            lan = f"sip:office@127.0.0.1:{app.config.sip.listen.port}"
            sid = await add_gateway(api, provider)
            first, second = await registers(provider, 2)
            assert contacts(first) == [f"<{lan}>"]
            # Registered again at once: the public Contact, the LAN one removed in the same
            # REGISTER (same Call-ID, next CSeq), for the same time.
            assert contacts(second) == [f"<sip:office@{PUBLIC}:40123>", f"<{lan}>;expires=0"]
            assert second.call_id == first.call_id
            assert second.cseq.number == first.cseq.number + 1
            assert second.get("expires") == str(EXPIRES)
            gateway = await state_of(api, sid, {"registered", "failed"})
            assert gateway["registration_state"] == "registered", gateway
            # Refreshes keep the public Contact, one REGISTER each: nothing more to learn.
            for _ in range(3):
                await tick(app, clock, EXPIRES - 60)
            refreshes = (await registers(provider, 5))[2:]
            assert [contacts(r) for r in refreshes] == [[f"<sip:office@{PUBLIC}:40123>"]] * 3
            gateway = await state_of(api, sid, {"registered", "failed"})
            assert gateway["registration_state"] == "registered", gateway
            # Deleting the gateway unregisters the binding that stands: the public one.
            status, _, _ = await api.request("DELETE", f"{GW}/{sid}")
            assert status == 200
            last = (await registers(provider, 6))[-1]
            assert last.get("expires") == "0"
            assert contacts(last) == [f"<sip:office@{PUBLIC}:40123>"]
    finally:
        provider.close()


async def test_an_update_keeps_the_public_contact(tmp_path: Path) -> None:
    # An update keeping UserName and Proxy re-registers the same binding: the public one.
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (_, api):
            sid = await add_gateway(api, provider)
            await registers(provider, 2)
            status, body, _ = await api.post(f"{GW}/{sid}.json", {"TTL": "900"})
            assert status == 200, body
            third = (await registers(provider, 3))[2]
            assert contacts(third) == [f"<sip:office@{PUBLIC}:40123>"]
            assert third.get("expires") == "900"
            gateway = await state_of(api, sid, {"registered", "failed"})
            assert gateway["registration_state"] == "registered", gateway
    finally:
        provider.close()


async def test_a_provider_whose_view_flips_costs_one_rewrite_per_refresh(tmp_path: Path
                                                                         ) -> None:
    # Every answer names another port (a NAT that remaps each time, or a broken provider):
    # one rewrite per registration or refresh, never a loop of REGISTERs.
    clock = Clock()
    provider = NatProvider(clock, itertools.count(41000))
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (app, api):
            lan = f"sip:office@127.0.0.1:{app.config.sip.listen.port}"
            sid = await add_gateway(api, provider)
            await registers(provider, 2)
            for _ in range(2):
                await tick(app, clock, EXPIRES - 60)
            seen = [contacts(r) for r in await registers(provider, 6)]
            assert seen == [
                [f"<{lan}>"],
                [f"<sip:office@{PUBLIC}:41000>", f"<{lan}>;expires=0"],  # answered 41001
                [f"<sip:office@{PUBLIC}:41000>"],  # the refresh, answered 41002
                [f"<sip:office@{PUBLIC}:41002>", f"<sip:office@{PUBLIC}:41000>;expires=0"],
                [f"<sip:office@{PUBLIC}:41002>"],
                [f"<sip:office@{PUBLIC}:41004>", f"<sip:office@{PUBLIC}:41002>;expires=0"],
            ]
            gateway = await state_of(api, sid, {"registered", "failed"})
            assert gateway["registration_state"] == "registered", gateway
    finally:
        provider.close()


async def test_no_second_register_when_the_provider_saw_our_own_address(tmp_path: Path
                                                                        ) -> None:
    # received/rport are stamped, but with the address and port the REGISTER came from: no
    # NAT in between, nothing changes.
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(0), host="")
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (app, api):
            lan = f"sip:office@127.0.0.1:{app.config.sip.listen.port}"
            await add_gateway(api, provider)
            await tick(app, clock, EXPIRES - 60)
            seen = await registers(provider, 2)
            port = app.config.sip.listen.port
            stamps = {(via.received, via.rport) for ok in provider.answers
                      if (via := ok.top_via) is not None}
            assert stamps == {("127.0.0.1", port)}
            assert [contacts(r) for r in seen] == [[f"<{lan}>"], [f"<{lan}>"]]  # + a refresh
    finally:
        provider.close()


async def test_learning_can_be_turned_off(tmp_path: Path) -> None:
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0,
                                               "trunk_learn_public_address": False}
                             ) as (app, api):
            lan = f"sip:office@127.0.0.1:{app.config.sip.listen.port}"
            await add_gateway(api, provider)
            seen = await registers(provider, 1)
            assert [contacts(r) for r in seen] == [[f"<{lan}>"]]
    finally:
        provider.close()


async def test_a_call_to_the_public_contact_is_routed_as_one_to_the_lan_contact(
        tmp_path: Path) -> None:
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (app, api):
            await number(api, DID)
            await add_gateway(api, provider)
            await registers(provider, 2)
            sock = Calls(provider).sock
            public = f"{PUBLIC}:40123"
            # The DID in the To (a call to the Contact we registered), at either address.
            assert await call(app, sock, "office", DID, at=public) == (
                404, "No Voice Application")
            assert await call(app, sock, "office", DID) == (404, "No Voice Application")
            assert await call(app, sock, "office", "+15550009999", at=public) == (
                404, "Not Found")
            assert await call(app, sock, "+15550009999", DID, at=public) == (404, "Not Found")
    finally:
        provider.sock.close()



# -- across restarts: the public Contact a run leaves bound at the provider --------------------

OLD, NEW = f"<sip:office@{PUBLIC}:40123>", f"<sip:office@{PUBLIC}:40999>"


async def test_after_a_crash_the_next_start_removes_the_public_contact_left_bound(
        tmp_path: Path) -> None:
    # The provider keeps the public Contact a crashed run registered, and the router (rebooted
    # too, or its mapping lapsed) maps another port now: the next start removes the old one.
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    nat = {"nat_keepalive_interval": 0}
    try:
        async with appliance(tmp_path, clock, nat) as (app, api):
            sid = await add_gateway(api, provider)
            await registers(provider, 2)
            crash(app)
        assert bindings(await registers(provider, 2)) == {OLD}
        provider.ports = itertools.repeat(40999)
        async with appliance(tmp_path, clock, nat) as (app, api):
            lan = f"<sip:office@127.0.0.1:{app.config.sip.listen.port}>"
            gateway = await state_of(api, sid, {"registered", "failed"})
            assert gateway["registration_state"] == "registered", gateway
            seen = (await registers(provider, 4))[2:]
            assert [contacts(r) for r in seen] == [[lan, f"{OLD};expires=0"],
                                                   [NEW, f"{lan};expires=0"]]
            assert seen[0].get("expires") == str(EXPIRES)
            crash(app)
        assert bindings(await registers(provider, 4)) == {NEW}
        # Crashed again: the Contact kept now is the new one, removed at the next start.
        async with appliance(tmp_path, clock, nat) as (app, api):
            lan = f"<sip:office@127.0.0.1:{app.config.sip.listen.port}>"
            seen = (await registers(provider, 6))[4:]
            assert [contacts(r) for r in seen] == [[lan, f"{NEW};expires=0"],
                                                   [NEW, f"{lan};expires=0"]]
        # A clean stop unregistered it: nothing left bound.
        assert bindings(await registers(provider, 7)) == set()
    finally:
        provider.close()


async def test_after_a_clean_stop_the_next_start_has_nothing_to_remove(tmp_path: Path
                                                                        ) -> None:
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    nat = {"nat_keepalive_interval": 0}
    try:
        async with appliance(tmp_path, clock, nat) as (app, api):
            await add_gateway(api, provider)
            await registers(provider, 2)
        last = (await registers(provider, 3))[-1]
        assert (last.get("expires"), contacts(last)) == ("0", [OLD])  # answered 200
        async with appliance(tmp_path, clock, nat) as (app, api):
            lan = f"<sip:office@127.0.0.1:{app.config.sip.listen.port}>"
            seen = (await registers(provider, 5))[3:]
            assert [contacts(r) for r in seen] == [[lan], [OLD, f"{lan};expires=0"]]
        assert bindings(await registers(provider, 6)) == set()
    finally:
        provider.close()


async def test_an_unregistration_left_unanswered_at_the_stop_is_finished_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.sip.trunk.CLOSE_TIMEOUT", 0.3)
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    nat = {"nat_keepalive_interval": 0}
    try:
        async with appliance(tmp_path, clock, nat) as (app, api):
            await add_gateway(api, provider)
            await registers(provider, 2)
            provider.answer_unregister = False  # the provider (or the network) is down
        assert (await registers(provider, 3))[-1].get("expires") == "0"
        provider.answer_unregister = True
        async with appliance(tmp_path, clock, nat) as (app, api):
            lan = f"<sip:office@127.0.0.1:{app.config.sip.listen.port}>"
            seen = (await registers(provider, 5))[3:]
            assert [contacts(r) for r in seen] == [[lan, f"{OLD};expires=0"],
                                                   [OLD, f"{lan};expires=0"]]
    finally:
        provider.close()


async def test_a_start_that_finds_no_nat_forgets_the_public_contact_once_removed(
        tmp_path: Path) -> None:
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    nat = {"nat_keepalive_interval": 0}
    try:
        async with appliance(tmp_path, clock, nat) as (app, api):
            await add_gateway(api, provider)
            await registers(provider, 2)
            crash(app)
        provider.host = ""  # the office has a public address now: the provider sees it
        async with appliance(tmp_path, clock, nat) as (app, api):
            lan = f"<sip:office@127.0.0.1:{app.config.sip.listen.port}>"
            seen = (await registers(provider, 3))[2:]
            assert [contacts(r) for r in seen] == [[lan, f"{OLD};expires=0"]]
            crash(app)
        async with appliance(tmp_path, clock, nat) as (app, api):
            lan3 = f"<sip:office@127.0.0.1:{app.config.sip.listen.port}>"
            seen = (await registers(provider, 4))[3:]
            assert [contacts(r) for r in seen] == [[lan3]]  # nothing more to remove
        assert OLD not in bindings(await registers(provider, 5))
    finally:
        provider.close()


async def test_a_crash_before_the_public_contact_is_confirmed_still_leaves_it_to_remove(
        tmp_path: Path) -> None:
    # The REGISTER of the public Contact reached the provider, its 200 did not come back
    # before the crash: the public Contact may be bound, and the next start removes it.
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    provider.answers_left = 1
    nat = {"nat_keepalive_interval": 0}
    try:
        async with appliance(tmp_path, clock, nat) as (app, api):
            status, body, _ = await api.post(f"{GW}.json", {
                "FriendlyName": "office", "UserName": "office", "Password": "Trunk-pass-1",
                "Proxy": f"127.0.0.1:{provider.port}", "Register": "true", "TTL": "600"})
            assert status == 200, body
            await registers(provider, 2)  # the second, of the public Contact, unanswered
            crash(app)
        provider.answers_left = None
        async with appliance(tmp_path, clock, nat) as (app, api):
            lan = f"<sip:office@127.0.0.1:{app.config.sip.listen.port}>"
            seen = (await registers(provider, 4))[2:]
            assert [contacts(r) for r in seen] == [[lan, f"{OLD};expires=0"],
                                                   [OLD, f"{lan};expires=0"]]
    finally:
        provider.close()


async def test_the_removal_is_made_with_learning_turned_off(tmp_path: Path) -> None:
    clock = Clock()
    provider = NatProvider(clock, itertools.repeat(40123))
    try:
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0}) as (app, api):
            await add_gateway(api, provider)
            await registers(provider, 2)
            crash(app)
        async with appliance(tmp_path, clock, {"nat_keepalive_interval": 0,
                                               "trunk_learn_public_address": False}
                             ) as (app, api):
            lan = f"<sip:office@127.0.0.1:{app.config.sip.listen.port}>"
            seen = (await registers(provider, 3))[2:]
            assert [contacts(r) for r in seen] == [[lan, f"{OLD};expires=0"]]
        assert bindings(await registers(provider, 4)) == set()
    finally:
        provider.close()
