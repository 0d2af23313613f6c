"""A gateway's line stopped or replaced while its REGISTER is in flight (the provider not
answering): its transaction ends there — no more retransmissions, no second REGISTER stream
next to the new line's — except the unregistration a registered line sends. The trunk runs
on a clock the test moves (as in test_trunk_clock.py)."""

from __future__ import annotations

import asyncio
import dataclasses

from appliance.sip.message import Request, make_response
from appliance.sip.trunk import Trunk
from appliance.sip.wire import Incoming
from tests.sip.test_trunk_clock import PROVIDER, WALL_START, Recorder, gateway


def trunk_on(mono: list[float]) -> tuple[Trunk, Recorder]:
    sender = Recorder()
    return Trunk(sender, clock=lambda: mono[0], wall_clock=lambda: WALL_START,
                 local=lambda: ("127.0.0.1", 5060)), sender


async def registers_sent(sender: Recorder, count: int) -> list[Request]:
    async with asyncio.timeout(5):
        while len(sender.registers()) < count:
            await asyncio.sleep(0.01)
    return sender.registers()


async def silence(trunk: Trunk, mono: list[float], seconds: int) -> None:
    """SECONDS pass without an answer from the provider, its timers run every 0.5 s."""
    for _ in range(seconds * 2):
        mono[0] += 0.5
        await trunk.handle_timer(mono[0])
        await asyncio.sleep(0)


async def test_register_false_ends_the_register_in_flight() -> None:
    mono = [100.0]
    trunk, sender = trunk_on(mono)
    gw = gateway()
    trunk.apply(gw)
    await registers_sent(sender, 1)
    await silence(trunk, mono, 2)  # retransmitted at 0.5 s and 1.5 s
    assert len(sender.registers()) == 3
    trunk.apply(dataclasses.replace(gw, register=False))
    await silence(trunk, mono, 40)
    assert len(sender.registers()) == 3  # none after Register=false
    assert trunk.status(gw.sid).state == "disabled"
    await trunk.close()


async def test_an_update_replaces_the_register_in_flight() -> None:
    """One REGISTER stream after an update: the new line's. The same AoR and Contact at the
    same Proxy continue the Call-ID and CSeq, and nothing unregisters them."""
    mono = [100.0]
    trunk, sender = trunk_on(mono)
    gw = gateway()
    trunk.apply(gw)
    [first] = await registers_sent(sender, 1)
    trunk.apply(dataclasses.replace(gw, password="New-pass-2", ttl=900))
    await registers_sent(sender, 2)
    await silence(trunk, mono, 40)
    later = sender.registers()[1:]
    assert later and all(r.get("Expires") == "900" for r in later)  # the new line's only
    assert {r.call_id for r in later} == {first.call_id}
    assert later[0].cseq.number == first.cseq.number + 1
    await trunk.close()


async def test_another_user_unregisters_the_old_line_once_and_registers_the_new_one(
        ) -> None:
    mono = [100.0]
    trunk, sender = trunk_on(mono)
    gw = gateway()
    trunk.apply(gw)
    [first] = await registers_sent(sender, 1)
    ok = make_response(first, 200, to_tag="prov")
    ok.add("Contact", f"{first.get('contact')};expires=600")
    await trunk.handle(Incoming(ok, "udp", PROVIDER, ("127.0.0.1", 5060)))
    assert trunk.status(gw.sid).state == "registered"
    mono[0] += 540  # the refresh goes out and gets no answer
    await trunk.handle_timer(mono[0])
    [_, refresh] = await registers_sent(sender, 2)
    assert refresh.call_id == first.call_id and refresh.get("Expires") == "600"
    trunk.apply(dataclasses.replace(gw, user_name="fax"))
    # The new line's first REGISTER leaves once its provider's address is resolved (on a
    # thread: real time, which the fake clock's silence below does not wait for).
    async with asyncio.timeout(5):
        while not any(r.call_id != first.call_id for r in sender.registers()[2:]):
            await asyncio.sleep(0.01)
    await silence(trunk, mono, 40)
    later = sender.registers()[2:]
    old = [r for r in later if r.call_id == first.call_id]
    new = [r for r in later if r.call_id != first.call_id]
    # The old binding (a refresh was in flight: it still stands) is unregistered, that
    # transaction retransmitted until it times out; the refresh is not retransmitted.
    assert old and all(r.get("Expires") == "0" for r in old)
    assert len({r.get("Via") for r in old}) == 1  # one transaction
    assert new and all(r.get("Expires") == "600" and "fax@" in (r.get("Contact") or "")
                       for r in new)
    await trunk.close()


async def test_a_sip_socket_on_one_ipv6_address_fails_an_ipv4_line_with_the_reason() -> None:
    # [sip] listen = "[::1]:5060": the REGISTER was built with a Via the parser refused
    # (an unbracketed IPv6 host), the task died and the line stayed `registering` for good.
    mono = [100.0]
    sender = Recorder()
    trunk = Trunk(sender, clock=lambda: mono[0], wall_clock=lambda: WALL_START,
                  local=lambda: ("::1", 5060))
    gw = gateway()
    trunk.apply(gw)
    async with asyncio.timeout(5):
        while trunk.status(gw.sid).state != "failed":
            await asyncio.sleep(0.01)
    status = trunk.status(gw.sid)
    assert "cannot reach the IPv4 provider 127.0.0.1" in (status.last_error or "")
    assert "[::]" in (status.last_error or "")
    assert sender.registers() == []
    await silence(trunk, mono, 330)  # its retries fail the same way, quietly
    assert trunk.status(gw.sid).state == "failed" and sender.registers() == []
    await trunk.close()
