"""Password strength scoring, Restcomm's rule (PR #1508) implemented natively.

A password is strong iff its score is >= 50. The table of steps is in api-behaviour.md §7;
the odd repeat counts for `.`, `^`, `$` and `|` come from the original counting each character
with ``new RegExp(ch, 'g')`` and are kept so that scores match Restcomm's exactly.

The other regular-expression metacharacters, `? * + ( ) [ \\`, made that RegExp throw and the
password count as too weak. api-behaviour.md §0.4 decided that this was an accident: they are
scored by the rule like any other character (a symbol when §7 lists them as one, `\\` not),
their repeats counted literally.
"""

from __future__ import annotations

import math
import secrets
import string

STRONG_SCORE = 50

_SYMBOLS = frozenset("$%&'()*+,-./" ":;<=>?" "{|}~" "!^_`[]")
_SEQUENCE_ROWS = ("abcdefghijklmnopqrstuvwxyz", "01234567890", "\\!@#$%&/()=?¿")


def _kind(ch: str) -> str:
    if "a" <= ch <= "z":
        return "lower"
    if "A" <= ch <= "Z":
        return "upper"
    if "0" <= ch <= "9":
        return "digit"
    if ch in _SYMBOLS:
        return "symbol"
    return "other"


def _occurrences(lowered: str, ch: str) -> int:
    """How often the original's ``new RegExp(ch, 'g')`` matched in LOWERED (the quirks it
    had); any other character, the metacharacters it threw on included, literally."""
    if ch == ".":
        return len(lowered)
    if ch in "^$":
        return 1
    if ch == "|":
        return len(lowered) + 1
    return lowered.count(ch)


def score(password: str) -> int:
    """The 0-100 score of PASSWORD."""
    n = len(password)
    if n == 0:
        return 0
    kinds = [_kind(ch) for ch in password]
    upper = kinds.count("upper")
    lower = kinds.count("lower")
    digits = kinds.count("digit")
    symbols = kinds.count("symbol")

    total = 4.0 * n
    if upper:
        total += 2 * (n - upper)
    if lower:
        total += 2 * (n - lower)
    if upper or lower:
        total += 4 * digits
    total += 6 * symbols
    total += 2 * sum(1 for k in kinds[1:-1] if k in ("digit", "symbol"))

    classes = sum(1 for c in (lower, upper, digits, symbols) if c) + (1 if n >= 8 else 0)
    if classes >= 3:
        total += 2 * classes

    for a, b in zip(kinds, kinds[1:], strict=False):
        if a == b and a in ("lower", "upper", "digit"):
            total -= 2

    lowered = password.lower()
    for row in _SEQUENCE_ROWS:
        for i in range(len(row) - 2):
            window = row[i:i + 3]
            if window in lowered or window[::-1] in lowered:
                total -= 3

    if digits == n:
        total -= n
    if upper + lower == n:
        total -= n

    repeated = 0
    for ch in set(lowered):
        count = _occurrences(lowered, ch)
        if count > 1:
            repeated += count
    total -= 10 * repeated / n

    return max(0, min(100, math.floor(total + 0.5)))


def is_strong(password: str) -> bool:
    return score(password) >= STRONG_SCORE


def generate(length: int = 24) -> str:
    """A random password that scores as strong, of characters any shell or form takes."""
    alphabet = string.ascii_letters + string.digits + "-_"
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(length))
        if is_strong(candidate) and any(c in "-_" for c in candidate[1:-1]):
            return candidate
