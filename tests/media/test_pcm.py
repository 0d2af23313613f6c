"""GSM voice audio through a real worker: a pjsua2 phone ⇄ worker leg ⇄ the fake modem's PCM pty.

The fake modem streams a 700 Hz tone as 8 kHz S16LE frames every 20 ms while its call is up and
records what the host writes; the phone plays 1100 Hz and records what it hears.
"""

from __future__ import annotations

import array
import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.media import protocol as p
from appliance.media.engine import CommandFailed
from tests.fakes.modem import FakeModem
from tests.media.audio import analyse, loudest_second, tone_share
from tests.media.conftest import Worker

pytest.importorskip("pjsua2")


@pytest.fixture
def modem() -> Iterator[FakeModem]:
    with FakeModem(tone_hz=700) as fake:
        fake.connect_call("+15557654321")
        yield fake


def _samples(pcm: bytes) -> array.array[int]:
    out = array.array("h", pcm[:len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        out.byteswap()
    return out


async def test_audio_both_ways_through_the_worker(worker: Worker, phones, modem: FakeModem,
                                                  tmp_path: Path) -> None:
    heard = tmp_path / "heard.wav"
    phone = await phones("--call", worker.uri, "--header", "X-Leg-Id:GSM1", "--tone", "1100",
                         "--record", str(heard), "--hold", "3")
    await worker.leg("incoming", "GSM1")
    await worker.cmd(p.Answer(leg="GSM1"))
    await worker.cmd(p.PcmAttach(leg="GSM1", device=modem.pcm_path))
    await worker.leg("ended", "GSM1", seconds=10)
    await phone.finish()
    share, level = analyse(heard, 700)  # the modem's tone reached the phone
    assert share > 0.8 and level > 1000, (share, level)
    block = loudest_second(_samples(bytes(modem.pcm_received)), 8000)
    assert len(block) == 8000, len(modem.pcm_received)
    assert tone_share(block, 8000, 1100) > 0.8  # the phone's tone reached the modem
    assert not worker.events.of(p.ErrorEvent)


async def test_detach_bad_device_and_inband_dtmf(worker: Worker, phones, modem: FakeModem,
                                                 tmp_path: Path) -> None:
    phone = await phones("--call", worker.uri, "--header", "X-Leg-Id:GSM2", "--hold", "3")
    await worker.leg("incoming", "GSM2")
    await worker.cmd(p.Answer(leg="GSM2"))
    with pytest.raises(CommandFailed) as info:
        await worker.cmd(p.PcmAttach(leg="GSM2", device=str(tmp_path / "no-such-tty")))
    assert info.value.code == "bad-device"
    await worker.cmd(p.PcmAttach(leg="GSM2", device=modem.pcm_path))
    modem.play_digits("159#")  # DTMF in the modem's downlink audio
    for _ in range(100):
        found = "".join(e.digit for e in worker.events.of(p.DtmfEvent, leg="GSM2"))
        if len(found) >= 4:
            break
        await asyncio.sleep(0.05)
    assert found == "159#"
    assert {e.method for e in worker.events.of(p.DtmfEvent, leg="GSM2")} == {"inband"}
    await worker.cmd(p.PcmDetach(leg="GSM2"))
    await worker.cmd(p.PcmDetach(leg="GSM2"))  # idempotent
    await worker.leg("ended", "GSM2", seconds=10)
    await phone.finish()


def test_a_backlog_drains_to_the_high_water_mark_and_no_further() -> None:
    import collections

    from appliance.media.worker.pcm_tty import HIGH_WATER, next_frame

    queue: collections.deque[bytes] = collections.deque(maxlen=10)
    queue.extend(bytes([i]) * 320 for i in range(10))  # a burst after a stall: 200 ms queued
    played = []
    for tick in range(12):
        frame = next_frame(queue)
        played.append(frame[0] if frame is not None else None)
        if tick >= 4:
            queue.append(bytes([100 + tick]) * 320)  # steady arrival again, one per tick
    # Skips one frame per tick while above the mark, then plays every frame in order.
    assert played[:4] == [1, 3, 5, 7]
    assert len(queue) <= HIGH_WATER + 1
    assert played[-3:] == sorted(played[-3:]) and None not in played[-3:]
    assert next_frame(collections.deque()) is None
