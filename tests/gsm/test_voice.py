"""Voice call control in the driver against the fake modem on a pty (modem.md §2.8, §2.9)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import serial
from fakes.modem import PCM_FRAME, FakeModem

from appliance.gsm import at
from appliance.gsm.errors import CommandError
from appliance.gsm.modem import Modem
from appliance.gsm.state import (
    CallDtmfReceived,
    CallState,
    CallStateChanged,
    IncomingCall,
    ModemEvent,
    ModemSettings,
    Phase,
    VoiceAudio,
)
from appliance.gsm.urc import CallEnded, DtmfTone, parse_urc
from appliance.gsm.voice import CallFailed, VoiceAudioUnsupported

FAST = dict(ping_timeout=0.2, timeout_scale=0.05, reopen_delay=0.1, reopen_max_delay=0.3,
            clcc_interval=0.05, pcm_delay=1.0)


class Rig:
    def __init__(self, fake: FakeModem, modem: Modem, events: list[ModemEvent]) -> None:
        self.fake, self.modem, self.events = fake, modem, events

    def calls(self) -> list[tuple[int, CallState]]:
        return [(e.call_id, e.state) for e in self.events if isinstance(e, CallStateChanged)]

    async def until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():  # noqa: ASYNC110 - the fake's thread changes the state
                await asyncio.sleep(0.01)


@pytest.fixture(params=["Quectel"])
def manufacturer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake(tmp_path: Path, manufacturer: str) -> Iterator[FakeModem]:
    with FakeModem(link=tmp_path / "modem", manufacturer=manufacturer,
                   answer_after=0.15) as fake:
        yield fake


@pytest.fixture
async def rig(fake: FakeModem, tmp_path: Path) -> AsyncIterator[Rig]:
    events: list[ModemEvent] = []

    async def on_sms(pdu: str, index: int | None) -> None:
        return None

    modem = Modem(ModemSettings(str(tmp_path / "modem"), **FAST),  # type: ignore[arg-type]
                  on_sms_received=on_sms, on_event=events.append)
    async with modem:
        async with asyncio.timeout(5):
            await modem.wait_for(lambda s: s.phase is Phase.READY)
        yield Rig(fake, modem, events)


def test_voice_urcs_and_builders() -> None:
    assert parse_urc("+RXDTMF: 8") == DtmfTone("8")
    assert parse_urc("+QTONEDET: 56") == DtmfTone("8")
    assert parse_urc("+QTONEDET: 35") == DtmfTone("#")
    assert parse_urc("BUSY") == CallEnded("BUSY")
    assert parse_urc("VOICE CALL: END: 000017") == CallEnded("VOICE CALL: END: 000017")
    assert at.dial("+15551234567").text == "ATD+15551234567;"
    assert at.send_tone("#").text == "AT+VTS=#"
    for bad in ("", "+", "555;ATH", "12a"):
        with pytest.raises(ValueError):
            at.dial(bad)
    with pytest.raises(ValueError):
        at.send_tone("E")


async def test_dial_progress_dtmf_hangup(rig: Rig) -> None:
    assert rig.modem.voice_audio is VoiceAudio.QUECTEL_USB
    call_id = await rig.modem.dial("+15551234567")
    assert rig.fake.dialled == ["+15551234567"]
    cmds = rig.fake.commands
    # Quectel: the PCM stream is armed (off first) before ATD (modem.md §2.9).
    assert cmds.index("AT+QPCMV=0") < cmds.index("AT+QPCMV=1,0") < cmds.index(
        "ATD+15551234567;")
    await rig.until(lambda: (call_id, CallState.ACTIVE) in rig.calls())
    states = [s for c, s in rig.calls() if c == call_id]
    assert states[-1] is CallState.ACTIVE and states[0] in (CallState.DIALING,
                                                           CallState.ALERTING)
    assert rig.fake.streaming
    await rig.modem.send_dtmf("12#")
    assert rig.fake.dtmf_sent == ["1", "2", "#"]
    await rig.modem.hangup()
    assert rig.calls()[-1] == (call_id, CallState.ENDED)
    ended = [e for e in rig.events if isinstance(e, CallStateChanged)][-1]
    assert ended.reason == "hangup" and ended.number == "+15551234567"
    assert "AT+CHUP" in rig.fake.commands and "AT+QHUP" not in rig.fake.commands
    await rig.until(lambda: rig.fake.commands[-1] == "AT+QPCMV=0")  # audio off after
    assert not rig.modem.calls


async def test_incoming_call_answer_and_remote_hangup(rig: Rig) -> None:
    rig.fake.inject_call("+15557654321", ring_every=0.1)
    await rig.until(lambda: any(isinstance(e, IncomingCall) for e in rig.events))
    await asyncio.sleep(0.35)  # several RING/+CLIP repeats: still one IncomingCall
    incoming = [e for e in rig.events if isinstance(e, IncomingCall)]
    assert len(incoming) == 1 and incoming[0].number == "+15557654321"
    await rig.until(lambda: (1, CallState.INCOMING) in rig.calls())
    await rig.modem.answer()
    assert rig.calls()[-1] == (1, CallState.ACTIVE)
    assert rig.fake.commands.index("AT+QPCMV=1,0") < rig.fake.commands.index("ATA")
    rig.fake.emit_dtmf("8")
    await rig.until(lambda: CallDtmfReceived("8") in rig.events)
    rig.fake.remote_hangup("NO CARRIER")
    await rig.until(lambda: rig.calls()[-1] == (1, CallState.ENDED))
    ended = [e for e in rig.events if isinstance(e, CallStateChanged)][-1]
    assert ended.reason == "NO CARRIER" and ended.incoming


async def test_silent_end_found_by_clcc_polling(rig: Rig) -> None:
    call_id = await rig.modem.dial("5551234")
    await rig.until(lambda: (call_id, CallState.ACTIVE) in rig.calls())
    rig.fake.remote_hangup(None)  # SIM7600 with ^DSCI: no end URC at all
    await rig.until(lambda: rig.calls()[-1] == (call_id, CallState.ENDED))
    assert [e for e in rig.events if isinstance(e, CallStateChanged)][-1].reason == "released"


async def test_busy_and_reject(rig: Rig) -> None:
    rig.fake.dial_outcome = "busy"
    call_id = await rig.modem.dial("+15550000000")
    await rig.until(lambda: rig.calls()[-1] == (call_id, CallState.ENDED))
    assert [e for e in rig.events if isinstance(e, CallStateChanged)][-1].reason == "BUSY"
    rig.fake.inject_call("", ring_every=0.1)  # a withheld number
    await rig.until(lambda: any(isinstance(e, IncomingCall) for e in rig.events))
    assert [e for e in rig.events if isinstance(e, IncomingCall)][0].number is None
    await rig.modem.hangup()  # reject
    assert not rig.fake.calls and not rig.modem.calls
    with pytest.raises(CommandError):  # nothing rings any more
        await rig.modem.answer(audio=False)


async def test_dial_that_never_shows_fails(rig: Rig) -> None:
    rig.fake.dial_outcome = "rejected"
    with pytest.raises(CallFailed):
        await rig.modem.dial("+15550000001", audio=False)


@pytest.mark.parametrize("manufacturer", ["SIMCOM INCORPORATED"], indirect=True)
async def test_simcom_audio_after_active(rig: Rig) -> None:
    assert rig.modem.voice_audio is VoiceAudio.SIMCOM_USB
    call_id = await rig.modem.dial("+15551234567")
    cmds = rig.fake.commands
    assert cmds.index("AT+CPCMREG=0") < cmds.index("ATD+15551234567;")
    await rig.until(lambda: (call_id, CallState.ACTIVE) in rig.calls())
    await rig.until(lambda: "AT+CPCMREG=1" in rig.fake.commands)  # ~1 s × scale later
    assert rig.fake.streaming
    rig.fake.remote_hangup("VOICE CALL: END: 000017")
    await rig.until(lambda: rig.calls()[-1] == (call_id, CallState.ENDED))


@pytest.mark.parametrize("manufacturer", ["huawei"], indirect=True)
async def test_audio_unsupported_elsewhere(rig: Rig) -> None:
    assert rig.modem.voice_audio is VoiceAudio.UNSUPPORTED
    with pytest.raises(VoiceAudioUnsupported, match="voice audio unsupported"):
        await rig.modem.dial("+15551234567")
    assert not rig.fake.dialled
    call_id = await rig.modem.dial("+15551234567", audio=False)  # a call without PCM
    assert call_id == 1
    await rig.modem.hangup()


def test_fake_pcm_stream(fake: FakeModem) -> None:
    fake.connect_call()
    with serial.Serial(fake.pcm_path, timeout=0.5) as pcm:
        data = pcm.read(PCM_FRAME * 5)
        pcm.write(b"\x01\x02" * 160)
        assert len(data) == PCM_FRAME * 5
        assert fake.wait_for(lambda: len(fake.pcm_received) >= 320)
    assert bytes(fake.pcm_received[:4]) == b"\x01\x02\x01\x02"
