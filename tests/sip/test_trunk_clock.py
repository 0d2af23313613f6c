"""The trunk's registration upstream across a step of the wall clock (NTP on a box without
an RTC): its refresh runs on the monotonic clock, and only the expiry the API shows is
dated by the wall clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from appliance.models import Gateway, GatewaySid
from appliance.sip.message import Request, Response, make_response
from appliance.sip.trunk import Trunk
from appliance.sip.wire import Incoming, Target

PROVIDER = ("127.0.0.1", 5090)
WALL_START = 1_800_000_000.0


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Request | Response] = []

    def send(self, message: Request | Response, target: Target,
             data: bytes | None = None) -> bool:
        assert (target.host, target.port) == PROVIDER
        self.sent.append(message)
        return True

    def registers(self) -> list[Request]:
        return [m for m in self.sent if isinstance(m, Request) and m.method == "REGISTER"]


def gateway() -> Gateway:
    now = datetime.fromtimestamp(WALL_START, UTC)
    return Gateway(sid=GatewaySid("GW" + "0" * 32), friendly_name="provider",
                   user_name="office", password="Trunk-pass-1",
                   proxy=f"{PROVIDER[0]}:{PROVIDER[1]}", register=True, ttl=600,
                   date_created=now, date_updated=now)


async def test_a_wall_clock_step_back_neither_stalls_the_refresh_nor_misdates_the_expiry(
        ) -> None:
    mono, wall = [100.0], [WALL_START]
    sender = Recorder()
    trunk = Trunk(sender, clock=lambda: mono[0], wall_clock=lambda: wall[0],
                  local=lambda: ("127.0.0.1", 5060))
    gw = gateway()
    trunk.apply(gw)
    async with asyncio.timeout(5):
        while not sender.registers():
            await asyncio.sleep(0.01)
    [register] = sender.registers()
    ok = make_response(register, 200, to_tag="prov")
    ok.add("Contact", f"{register.get('contact')};expires=600")
    await trunk.handle(Incoming(ok, "udp", PROVIDER, ("127.0.0.1", 5060)))
    status = trunk.status(gw.sid)
    assert status.state == "registered"
    assert status.expires_at == datetime.fromtimestamp(WALL_START + 600, UTC)

    # NTP steps the wall clock back an hour; then the refresh falls due by the monotonic
    # clock. On the wall clock it would have waited an hour more, past the registration's
    # end: the provider would have dropped the office's line meanwhile.
    wall[0] -= 3600
    mono[0] += 590
    wall[0] += 590
    runner = asyncio.get_running_loop().create_task(trunk.run())
    try:
        async with asyncio.timeout(5):
            while len(sender.registers()) < 2:
                await asyncio.sleep(0.01)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    refresh = sender.registers()[1]
    assert refresh.call_id == register.call_id
    assert refresh.cseq.number > register.cseq.number
    # The expiry shown is still 10 s ahead of the (stepped) wall clock.
    assert trunk.status(gw.sid).expires_at == datetime.fromtimestamp(wall[0] + 10, UTC)
    await trunk.close()
