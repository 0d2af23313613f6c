"""<Say voice>: a woman's voice is another voice than a man's, end to end (the ``voice``
fixture of test_voice_apps.py: one appliance, one media worker, Clients alice and bob)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_SID

pytest.importorskip("pjsua2")


async def test_say_woman_and_alice_speak_in_a_female_voice(voice: Any, tmp_path: Path) -> None:
    """voice="woman" (and Twilio's "alice") is flite's female slt, "man" its kal: three
    <Say>s of one text are two recordings in the TTS cache, not one."""
    appliance, api, rcml, phone = voice
    text = "The voice test."
    rcml.docs["/say"] = (f'<Response><Say voice="woman">{text}</Say><Say voice="man">{text}'
                         f'</Say><Say voice="alice">{text}</Say></Response>')
    alice = await phone("--user", "alice", "--answer", "--once", "--timeout", "20")
    status, body, _ = await api.post(f"Accounts/{ADMIN_SID}/Calls.json",
                                     {"From": "+15551230000", "To": "client:alice",
                                      "Url": f"{rcml.base}/say"})
    assert status == 200, body
    await alice.finish()
    spoken = sorted((appliance.config.data_dir / "cache" / "tts").glob("*/*.wav"))
    assert len(spoken) == 2, spoken
    assert appliance.tts.misses == 2 and appliance.tts.hits == 1
