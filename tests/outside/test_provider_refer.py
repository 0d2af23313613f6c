"""The provider's REFER in a call to a DID app is refused by the proxy (docs/voice.md
"Transfers"): 403 Transfer Not Supported, the call goes on and ends by the provider's BYE,
the worker stays up. Before, the REFER reached the worker, whose pjsua accepted it (202) and
dialled the Refer-To from its own socket, answering our 407 with the gateway's credentials
(and often died). The provider and the appliance are those of tests/outside/test_nat_route.py
(no NAT).
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from appliance.app import Appliance
from appliance.sip.headers import NameAddr
from appliance.sip.message import Response
from tests.conftest import ADMIN_SID, Api
from tests.outside.test_nat_route import (  # noqa: F401 - office is a fixture, found by name
    _RTP_BASE,
    DID,
    SDP,
    Provider,
    cdrs,
    in_dialog,
    is_final,
    office,
    register,
)
from tests.voice.test_voice_apps import Rcml

pytest.importorskip("pjsua2")


async def test_a_providers_refer_to_a_worker_is_refused_and_the_call_goes_on(
        office: tuple[Appliance, Api, Rcml]) -> None:  # noqa: F811 - the fixture
    appliance, api, rcml = office
    rcml.docs["/did"] = '<Response><Pause length="30"/></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": DID, "VoiceUrl": f"{rcml.base}/did"})
    assert status == 200, body
    sip = appliance.config.sip.listen
    provider = Provider(nat=False)
    try:
        await register(api, provider)
        call_id = f"{secrets.token_hex(8)}@provider"
        via = f"SIP/2.0/UDP 127.0.0.1:{provider.port}"
        caller = "<sip:+15559876543@provider.test>;tag=caller"
        sdp = SDP.format(port=_RTP_BASE + 170)
        invite = (f"INVITE sip:office@{sip.host}:{sip.port} SIP/2.0\r\n"
                  f"Via: {via};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                  f"Max-Forwards: 70\r\nFrom: {caller}\r\nTo: <sip:{DID}@provider.test>\r\n"
                  f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:+15559876543@127.0.0.1:{provider.port}>\r\n"
                  f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
        provider.sock.sendto(invite.encode(), (sip.host, sip.port))
        ok = await provider.next(is_final(call_id, "INVITE"))
        assert isinstance(ok, Response) and ok.status == 200, ok
        routes = ok.values("record-route")[::-1]
        worker = NameAddr.parse(ok.values("contact")[0]).uri
        dialog = {"call_id": call_id, "from_": caller, "to": ok.get("to") or "", "via": via}
        provider.sock.sendto(in_dialog("ACK", 1, worker, routes, **dialog),
                             (sip.host, sip.port))
        await rcml.wait("/did")
        refer = in_dialog("REFER", 2, worker, routes, **dialog).replace(
            b"Content-Length: 0", b"Refer-To: <sip:+15551112222@provider.test>\r\n"
            b"Contact: <sip:+15559876543@127.0.0.1:" + str(provider.port).encode()
            + b">\r\nContent-Length: 0")
        provider.sock.sendto(refer, (sip.host, sip.port))
        refused = await provider.next(is_final(call_id, "REFER"), seconds=5)
        assert isinstance(refused, Response)
        assert (refused.status, refused.reason) == (403, "Transfer Not Supported")
        await asyncio.sleep(1.0)
        # Nothing was dialled for it, and the call goes on until the provider's BYE.
        while not provider.inbox.empty():
            late = provider.inbox.get_nowait()
            assert late.call_id == call_id, late
        provider.sock.sendto(in_dialog("BYE", 3, worker, routes, **dialog),
                             (sip.host, sip.port))
        bye_ok = await provider.next(is_final(call_id, "BYE"), seconds=5)
        assert isinstance(bye_ok, Response) and bye_ok.status == 200
        [cdr] = await cdrs(api, 1)
        assert (cdr["direction"], cdr["to"], cdr["status"]) == ("inbound", DID, "completed")
        assert appliance.supervisor is not None
        assert [(h.up, h.restarts) for h in appliance.supervisor.workers.values()] == [
            (True, 0)]
    finally:
        provider.close()
