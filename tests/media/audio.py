"""Test audio: write tone WAVs with the stdlib, find a tone in a recording (Goertzel).

numpy is not in the venv, so detection is a pure-Python Goertzel over one second of
samples: the share of the signal's energy at one frequency (1.0 for a pure tone).
"""

from __future__ import annotations

import array
import math
import wave
from pathlib import Path

RATE = 8000


def write_tone(path: Path, freq: float, seconds: float, *, amplitude: float = 0.5) -> Path:
    n = int(RATE * seconds)
    samples = array.array("h", (int(amplitude * 32767 * math.sin(2 * math.pi * freq * i / RATE))
                                for i in range(n)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.tobytes())
    return path


def read_samples(path: Path) -> tuple[array.array[int], int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        data = array.array("h", w.readframes(w.getnframes()))
        return data, w.getframerate()


def loudest_second(samples: array.array[int], rate: int) -> list[int]:
    """The one-second window with the most energy (skips the silence before audio starts)."""
    n = min(rate, len(samples))
    step = rate // 10
    best, best_e = 0, -1.0
    for start in range(0, max(1, len(samples) - n + 1), step):
        e = sum(s * s for s in samples[start:start + n:4])
        if e > best_e:
            best, best_e = start, e
    return list(samples[best:best + n])


def tone_share(samples: list[int], rate: int, freq: float) -> float:
    """Fraction of the block's energy at ``freq`` (Goertzel power normalised)."""
    n = len(samples)
    if n == 0:
        return 0.0
    k = round(freq * n / rate)
    coeff = 2 * math.cos(2 * math.pi * k / n)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    energy = sum(float(x) * x for x in samples)
    return 0.0 if energy == 0 else 2 * power / (n * energy)


def rms(samples: list[int]) -> float:
    return math.sqrt(sum(float(x) * x for x in samples) / len(samples)) if samples else 0.0


def analyse(path: Path, freq: float) -> tuple[float, float]:
    """(share of energy at ``freq``, RMS) over the loudest second of a WAV."""
    samples, rate = read_samples(path)
    block = loudest_second(samples, rate)
    return tone_share(block, rate, freq), rms(block)
