"""The caller ID a Client's phone sees for the calls the voice machinery places to it
(docs/voice.md "Caller ID"), end to end with real pjsua2 phones (the ``voice`` fixture of
test_voice_apps.py: one appliance, one media worker, Clients alice and bob).

A worker places these legs from its own account (``w0``); without a per-call From every one
of them showed ``sip:w0@127.0.0.1`` as the caller.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import ADMIN_SID
from tests.voice.test_voice_apps import NUMBER, PASSWORD

pytest.importorskip("pjsua2")


def _caller(handset: Any) -> str:
    """The From URI the phone was called with (its only incoming call)."""
    [incoming] = [e for e in handset.events if e.get("event") == "incoming"]
    remote: str = incoming["remote"]
    return remote.strip("<>")


async def _post_call(api: Any, from_: str, to: str, url: str) -> str:
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls.json",
                                     {"From": from_, "To": to, "Url": url})
    assert status == 200, body
    return str(json.loads(body)["sid"])


async def test_post_calls_shows_the_api_from_and_dial_passes_the_caller_on(voice: Any) -> None:
    """POST Calls From=<number> to alice: alice sees the number; her app's <Dial><Client>bob
    without callerId shows bob the same caller (the parent call's), as Twilio does."""
    appliance, api, rcml, phone = voice
    rcml.docs["/dial"] = '<Response><Dial timeout="8"><Client>bob</Client></Dial></Response>'
    alice = await phone("--user", "alice", "--answer", "--once", "--timeout", "20")
    bob = await phone("--user", "bob", "--answer", "--once", "--hold", "1", "--timeout", "20")
    await _post_call(api, "+1 (555) 123-0000", "client:alice", f"{rcml.base}/dial")
    await bob.finish()
    await alice.finish()
    host = appliance.transport.advertised
    assert _caller(alice) == f"sip:+15551230000@{host}", alice.events
    assert _caller(bob) == f"sip:+15551230000@{host}", bob.events


async def test_post_calls_from_a_client_and_dial_caller_id(voice: Any) -> None:
    """POST Calls From=client:bob to alice: alice sees bob; <Dial callerId> is what carol
    sees."""
    appliance, api, rcml, phone = voice
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Clients.json",
                                     {"Login": "carol", "Password": PASSWORD})
    assert status == 200, body
    rcml.docs["/dial"] = ('<Response><Dial timeout="8" callerId="+15559998888">'
                          '<Client>carol</Client></Dial></Response>')
    alice = await phone("--user", "alice", "--answer", "--once", "--timeout", "20")
    carol = await phone("--user", "carol", "--answer", "--once", "--hold", "1",
                        "--timeout", "20")
    await _post_call(api, "client:bob", "client:alice", f"{rcml.base}/dial")
    await carol.finish()
    await alice.finish()
    host = appliance.transport.advertised
    assert _caller(alice) == f"sip:bob@{host}", alice.events
    assert _caller(carol) == f"sip:+15559998888@{host}", carol.events


async def test_a_client_calling_an_app_that_dials_a_client_is_the_caller(voice: Any) -> None:
    """alice calls a number whose app <Dial>s bob: bob sees alice."""
    appliance, api, rcml, phone = voice
    rcml.docs["/start"] = '<Response><Dial timeout="8"><Client>bob</Client></Dial></Response>'
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/IncomingPhoneNumbers.json",
                                     {"PhoneNumber": NUMBER, "VoiceUrl": f"{rcml.base}/start"})
    assert status == 200, body
    bob = await phone("--user", "bob", "--answer", "--once", "--hold", "1", "--timeout", "20")
    sip = appliance.config.sip.listen
    alice = await phone("--user", "alice", "--call", f"sip:{NUMBER}@{sip.host}:{sip.port}",
                        "--timeout", "20")
    await bob.finish()
    await alice.finish()
    assert _caller(bob) == f"sip:alice@{appliance.transport.advertised}", bob.events
