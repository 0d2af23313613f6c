"""A media worker's own SIP address is never challenged, counted nor banned by the guard.

A worker's only credentials are a gateway's (registered for any realm: the provider's is not
known beforehand). Before, an INVITE from a worker that no leg admitted (a REFER's Refer-To,
say) got the front door's 407, the worker answered it with the gateway's UserName and
Password, each was a "bad credentials" failure of 127.0.0.1, and after
``max_auth_failures`` 127.0.0.1 was banned: every call needing a worker then failed for
``ban_seconds``. Now such an INVITE is refused 403 without a challenge, and a ban of its
address never holds against a worker's port.
"""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.media.engine import LegChanged, LegState, MediaEvent
from tests.conftest import ADMIN_SID
from tests.voice.test_voice_apps import NUMBER


async def test_a_workers_unadmitted_legs_are_refused_and_never_ban_it(voice: Any) -> None:
    appliance, api, rcml, phone = voice
    engine = appliance.media_engine
    ended: dict[str, int] = {}

    def on_event(ev: MediaEvent) -> None:
        if isinstance(ev, LegChanged) and ev.state is LegState.ENDED:
            ended[ev.leg] = ev.code

    unsubscribe = engine.subscribe(on_event)
    sip = appliance.config.sip.listen
    try:
        for _ in range(appliance.config.sip.max_auth_failures + 2):
            # A leg the calls service never admitted, with a gateway's credentials, sent
            # to the front door as a leg to a gateway is.
            leg = await engine.dial(f"sip:bob@{sip.host}:{sip.port}", username="office",
                                    password="Gateway-Pass-1", ring_seconds=8,
                                    proxy=f"sip:{sip.host}:{sip.port};lr")
            async with asyncio.timeout(12):
                while leg not in ended:
                    await asyncio.sleep(0.05)
            assert ended[leg] == 403, ended
    finally:
        unsubscribe()
    assert not appliance.guard.is_banned("127.0.0.1", appliance.wall_clock())
    # Calls through the worker go on: a Client's call to an app is answered.
    rcml.docs["/start"] = '<Response><Pause length="10"/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/start"})
    assert status == 200, body
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--hold", "1", "--timeout", "15")
    await alice.finish()
    assert any(e["event"] == "state" and e["state"] == "CONFIRMED" for e in alice.events)
