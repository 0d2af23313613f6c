"""In-band DTMF detection (ITU-T Q.23/Q.24) over 8 kHz S16LE PCM, for GSM voice audio.

Pure (L0): no I/O, no clock. numpy is not installed, so this is a plain-Python Goertzel over
20 ms blocks (160 samples): eight filters × 160 samples is ~1300 multiply-adds per block,
well under a millisecond at 8 kHz.

A block carries a digit when:

* it is loud enough (`min_level`, RMS in sample units);
* the strongest row and the strongest column tone together hold most of its energy
  (`min_tone_share`), so speech, music and noise, which spread their energy, do not qualify;
* each of the two is at least `min_peak_ratio` above the other tones of its group;
* the twist (row power over column power) is within `max_twist_db` either way.

`DtmfDetector.feed(pcm)` reports a digit once, after `min_blocks` consecutive blocks with it
(2 blocks: tones of ~40 ms and more are found, a 20 ms blip is not), and is ready for the next
digit (the same one too) after one block without it.
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Sequence

RATE = 8000
BLOCK = 160  # 20 ms at 8 kHz
ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = ("123A", "456B", "789C", "*0#D")


def goertzel_shares(samples: Sequence[int], freqs: Sequence[float],
                    rate: int = RATE) -> tuple[list[float], float]:
    """Per frequency, the share of the block's energy at it (≈1.0 for a pure tone at that
    frequency), plus the block's energy (sum of squares)."""
    n = len(samples)
    energy = float(sum(x * x for x in samples))
    if n == 0 or energy == 0.0:
        return [0.0] * len(freqs), 0.0
    shares = []
    for f in freqs:
        coeff = 2.0 * math.cos(2.0 * math.pi * f / rate)
        s1 = s2 = 0.0
        for x in samples:
            s1, s2 = x + coeff * s1 - s2, s1
        power = s1 * s1 + s2 * s2 - coeff * s1 * s2
        shares.append(2.0 * power / (n * energy))
    return shares, energy


def detect_block(samples: Sequence[int], *, rate: int = RATE, min_level: float = 300.0,
                 min_tone_share: float = 0.75, min_peak_ratio: float = 4.0,
                 max_twist_db: float = 8.0) -> str | None:
    """The digit one block carries, or None."""
    n = len(samples)
    if n == 0:
        return None
    shares, energy = goertzel_shares(samples, ROWS + COLS, rate)
    if math.sqrt(energy / n) < min_level:
        return None
    rows, cols = shares[:4], shares[4:]
    r = max(range(4), key=rows.__getitem__)
    c = max(range(4), key=cols.__getitem__)
    row, col = rows[r], cols[c]
    if row + col < min_tone_share or row <= 0.0 or col <= 0.0:
        return None
    if any(row < min_peak_ratio * x for i, x in enumerate(rows) if i != r):
        return None
    if any(col < min_peak_ratio * x for i, x in enumerate(cols) if i != c):
        return None
    if abs(10.0 * math.log10(row / col)) > max_twist_db:
        return None
    return KEYS[r][c]


class DtmfDetector:
    """Feed PCM of any length; get each digit once, when it has lasted `min_blocks` blocks."""

    def __init__(self, *, rate: int = RATE, block: int = BLOCK, min_blocks: int = 2,
                 **thresholds: float) -> None:
        self.rate = rate
        self.block = block
        self.min_blocks = min_blocks
        self.thresholds = thresholds
        self._pending = bytearray()
        self._current: str | None = None
        self._run = 0
        self._reported = False

    def feed(self, pcm: bytes) -> list[str]:
        """S16LE mono bytes in; the digits completed by them out."""
        self._pending += pcm
        size = self.block * 2
        digits: list[str] = []
        while len(self._pending) >= size:
            samples = array.array("h", bytes(self._pending[:size]))
            del self._pending[:size]
            if sys.byteorder == "big":
                samples.byteswap()
            digit = self.feed_block(samples)
            if digit is not None:
                digits.append(digit)
        return digits

    def feed_block(self, samples: Sequence[int]) -> str | None:
        digit = detect_block(samples, rate=self.rate, **self.thresholds)
        if digit is None or digit != self._current:
            self._current, self._run, self._reported = digit, 1 if digit else 0, False
        else:
            self._run += 1
        if digit is not None and not self._reported and self._run >= self.min_blocks:
            self._reported = True
            return digit
        return None

    def reset(self) -> None:
        self._pending.clear()
        self._current, self._run, self._reported = None, 0, False
