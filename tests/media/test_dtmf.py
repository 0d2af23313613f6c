"""The pure-Python Goertzel DTMF detector with generated tones (media/dtmf.py)."""

from __future__ import annotations

import array
import math
import random
import sys

import pytest

from appliance.media.dtmf import COLS, KEYS, RATE, ROWS, DtmfDetector, detect_block


def _pcm(samples: list[float]) -> bytes:
    out = array.array("h", (max(-32768, min(32767, int(x))) for x in samples))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def tone(digit: str, ms: float, *, level: float = 8000.0, twist_db: float = 0.0,
         phase: float = 0.3) -> list[float]:
    """A DTMF digit: row and column tones; twist_db > 0 makes the column weaker."""
    r = next(i for i, keys in enumerate(KEYS) if digit in keys)
    c = KEYS[r].index(digit)
    col_level = level * 10 ** (-twist_db / 20)
    n = int(RATE * ms / 1000)
    return [level * math.sin(2 * math.pi * ROWS[r] * i / RATE + phase)
            + col_level * math.sin(2 * math.pi * COLS[c] * i / RATE) for i in range(n)]


def silence(ms: float) -> list[float]:
    return [0.0] * int(RATE * ms / 1000)


def detect(samples: list[float], chunk: int = 123) -> str:
    det = DtmfDetector()
    data = _pcm(samples)
    return "".join(d for i in range(0, len(data), chunk * 2)
                   for d in det.feed(data[i:i + chunk * 2]))


def test_all_sixteen_digits_unaligned() -> None:
    digits = "123A456B789C*0#D"
    signal = silence(7)  # blocks never line up with the tones
    for d in digits:
        signal += tone(d, 70) + silence(50)
    assert detect(signal) == digits


def test_repeated_digit_needs_a_pause() -> None:
    assert detect(tone("5", 80) + silence(50) + tone("5", 80)) == "55"
    assert detect(tone("5", 200)) == "5"  # a long press is one digit


def test_minimum_duration() -> None:
    assert detect(silence(10) + tone("7", 45) + silence(40)) == "7"
    assert detect(silence(10) + tone("7", 20) + silence(40)) == ""


def test_twist_tolerance() -> None:
    assert detect(tone("9", 80, twist_db=6)) == "9"
    assert detect(tone("9", 80, twist_db=-6)) == "9"
    assert detect(tone("9", 80, twist_db=14)) == ""


def test_quiet_tones_are_ignored() -> None:
    assert detect(tone("1", 80, level=100)) == ""
    assert detect(tone("1", 80, level=1500)) == "1"


def test_no_false_detection_on_tones_and_noise() -> None:
    rng = random.Random(7)
    noise = [rng.gauss(0, 3000) for _ in range(RATE * 3)]
    assert detect(noise) == ""
    plain = [8000 * math.sin(2 * math.pi * f * i / RATE)
             for f in (700, 1100, 1209, 941, 440) for i in range(RATE // 2)]
    assert detect(plain) == ""
    # Speech-like: a gliding 100–220 Hz voice with harmonics under formant-ish weights, plus
    # a little noise; it passes near DTMF frequencies all the time.
    speech: list[float] = []
    phase = 0.0
    for i in range(RATE * 3):
        f0 = 160 + 60 * math.sin(2 * math.pi * 0.7 * i / RATE)
        phase += 2 * math.pi * f0 / RATE
        envelope = 0.5 + 0.5 * abs(math.sin(2 * math.pi * 3 * i / RATE))
        x = sum(math.sin(k * phase) * 3000 / (1 + abs(k * f0 - 700) / 300 + abs(k * f0 - 1200)
                                                / 500) for k in range(1, 20))
        speech.append(envelope * x + rng.gauss(0, 200))
    assert detect(speech) == ""


def test_two_non_dtmf_tones() -> None:
    mixed = [6000 * math.sin(2 * math.pi * 700 * i / RATE)
             + 6000 * math.sin(2 * math.pi * 1100 * i / RATE) for i in range(RATE)]
    assert detect(mixed) == ""


@pytest.mark.parametrize("digit", list("147*"))
def test_detect_block(digit: str) -> None:
    block = [int(x) for x in tone(digit, 20)]
    assert detect_block(block) == digit
    assert detect_block([0] * 160) is None
