"""Text to speech through the real flite / espeak-ng / sox binaries."""

from __future__ import annotations

import os
import shutil
import wave
from pathlib import Path

import pytest

from appliance.media.engine import VoiceMissing
from appliance.media.tts import MAX_TEXT, Tts, TtsError, TtsInputError

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng/sox not installed")


def wav_format(path: Path) -> tuple[int, int, int, int]:
    with wave.open(str(path)) as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()


@needs_flite
async def test_flite_8k_and_cache_hit(tmp_path: Path) -> None:
    tts = Tts(tmp_path)
    path = await tts.synthesize("Hello, you have reached the appliance.")
    rate, channels, width, frames = wav_format(path)
    assert (rate, channels, width) == (8000, 1, 2) and frames > 8000  # > 1 s of speech
    again = await tts.synthesize("Hello, you have reached the appliance.")
    assert again == path and (tts.hits, tts.misses) == (1, 1)
    other = await tts.synthesize("Something else.")
    assert other != path and tts.misses == 2
    assert not list(tmp_path.glob(".tts-*"))  # noqa: ASYNC240 - temporary files cleaned up


@needs_flite
async def test_cache_keeps_under_its_cap_least_recently_used_out(tmp_path: Path) -> None:
    tts = Tts(tmp_path / "tts", max_bytes=60_000)
    tts._files.keep_s = 0.0  # nothing protected as being played right now
    first = await tts.synthesize("One two three.")
    second = await tts.synthesize("Four five six.")
    size = first.stat().st_size + second.stat().st_size  # noqa: ASYNC240
    assert 30_000 < size < 60_000, size  # both fit; a third does not
    os.utime(second, (1000.0, 1000.0))  # long unused, unlike the first
    third = await tts.synthesize("Seven eight nine.")
    assert first.exists() and third.exists() and not second.exists()  # noqa: ASYNC240
    assert await tts.synthesize("Four five six.") == second and tts.misses == 4


@needs_flite
async def test_flite_16k_voice_is_resampled(tmp_path: Path) -> None:
    path = await Tts(tmp_path).synthesize("Testing", voice="slt")
    assert wav_format(path)[:3] == (8000, 1, 2)


@needs_espeak
async def test_espeak_for_other_languages(tmp_path: Path) -> None:
    path = await Tts(tmp_path).synthesize("Hola, buenos días", language="es")
    rate, channels, width, frames = wav_format(path)
    assert (rate, channels, width) == (8000, 1, 2) and frames > 4000


@pytest.mark.parametrize("text, kw", [
    ("", {}), ("   ", {}), ("x" * (MAX_TEXT + 1), {}),
    ("hi", {"language": "e n"}), ("hi", {"language": "es", "voice": "../../etc"}),
])
async def test_bad_input(tmp_path: Path, text: str, kw: dict[str, str]) -> None:
    with pytest.raises(TtsInputError) as info:
        await Tts(tmp_path).synthesize(text, **kw)
    assert info.value.status == 400


@needs_espeak
async def test_engine_failure_is_typed(tmp_path: Path) -> None:
    with pytest.raises(TtsError) as info:
        await Tts(tmp_path).synthesize("hola", language="zz")
    assert "espeak-ng exited" in str(info.value)
    with pytest.raises(TtsError):
        await Tts(tmp_path, flite="/nonexistent/flite").synthesize("hello")


async def test_timeout_kills_the_engine(tmp_path: Path) -> None:
    sleeper = tmp_path / "slow.sh"
    sleeper.write_text("#!/bin/sh\nsleep 10\n")
    sleeper.chmod(0o755)
    with pytest.raises(TtsError) as info:
        await Tts(tmp_path, flite=str(sleeper), timeout=0.2).synthesize("hello")
    assert "timed out" in str(info.value)


@needs_flite
@needs_espeak
async def test_say_woman_is_a_female_voice_with_its_own_cache_entry(tmp_path: Path) -> None:
    """<Say voice="woman"> (or "alice") is flite's slt in English and espeak-ng's +f3
    variant otherwise; "man" (and any other value) the default: each its own WAV."""
    tts = Tts(tmp_path)
    man = await tts.say("The voice test.", voice="man")
    woman = await tts.say("The voice test.", voice="woman")
    assert woman != man and wav_format(woman)[:3] == (8000, 1, 2)
    assert await tts.say("The voice test.", voice="alice") == woman
    assert await tts.say("The voice test.") == man == await tts.synthesize("The voice test.")
    assert await tts.say("The voice test.", voice="woman") == await tts.synthesize(
        "The voice test.", voice="slt")
    spanish = await tts.say("Hola", language="es", voice="woman")
    assert spanish != await tts.say("Hola", language="es", voice="man")
    assert spanish == await tts.synthesize("Hola", language="es", voice="es+f3")
    assert tts.misses == 4


def _fake_engine(path: Path, listing: str) -> str:
    """An engine that lists LISTING as its voices and synthesises nothing."""
    path.write_text(f"#!/bin/sh\necho '{listing}'\n")
    path.chmod(0o755)
    return str(path)


async def test_no_female_voice_is_voice_missing(tmp_path: Path) -> None:
    """Neither engine fails on a voice it lacks (it speaks its default): what it has is
    listed once, and a missing female voice is VoiceMissing (the runner falls back)."""
    flite = _fake_engine(tmp_path / "flite", "Voices available: kal kal16 awb rms")
    espeak = _fake_engine(tmp_path / "espeak", " 5  variant  --/M  male2  !v/m2")
    tts = Tts(tmp_path / "tts", flite=flite, espeak=espeak)
    with pytest.raises(VoiceMissing, match="flite has no female voice"):
        await tts.say("hello", voice="woman")
    with pytest.raises(VoiceMissing, match="espeak-ng has no female voice"):
        await tts.say("hola", language="es", voice="alice")
    Path(flite).unlink()  # noqa: ASYNC240 - listed once: not run again
    with pytest.raises(VoiceMissing):
        await tts.say("hello", voice="woman")


async def test_an_engine_that_cannot_list_has_no_female_voice(tmp_path: Path) -> None:
    tts = Tts(tmp_path, flite=str(tmp_path / "no-flite"))
    with pytest.raises(VoiceMissing):
        await tts.say("hello", voice="woman")
    with pytest.raises(TtsInputError):
        await tts.say("hola", language="e s", voice="woman")
