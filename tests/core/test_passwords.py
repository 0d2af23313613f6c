"""Restcomm's password-strength rule, checked against the worked table of api-behaviour.md §7."""

from __future__ import annotations

import pytest

from appliance import passwords

SCORES = [
    ("RestComm", 36), ("qwertyuiop", 12), ("Abcdefg1", 37), ("Office1", 43),
    ("office123", 45), ("a|b|c|d", 47), ("edge.box.9", 52), ("Office#1", 54),
    ("Winter99", 58), ("Tr0ub4dor", 70), ("Correct-horse", 71), ("Pbx-edge-7", 84),
    ("Admin2024!", 96), ("", 0),
]


@pytest.mark.parametrize(("password", "expected"), SCORES)
def test_score_matches_restcomm(password: str, expected: int) -> None:
    assert passwords.score(password) == expected


# `? * + ( ) [ \` made the original's RegExp throw ("too weak"); api-behaviour.md §0.4
# decided they are scored like any other character: `( ) * + ? [` as symbols (§7's list),
# `\` as no class, their repeats counted literally. Worked by hand:
# `Winter99+` (n 9) = 36 +16 (upper) +8 (lower) +8 (digits) +6 (`+`) +4 (middle 9 9)
#   +10 (k = 4 + 1) -10 (4 lower pairs, 1 digit pair) -2.2 (R = 2: `9`) = 75.8 -> 76,
#   where `Winter99` scores 58.
# `Correct-horse?` (n 14) = 56 +26 +6 +12 (`-`, `?`) +2 (middle `-`) +8 (k = 3 + 1)
#   -18 (9 lower pairs) -6.4 (R = 9: c 2, o 2, r 3, e 2) = 85.6 -> 86.
# `a\b\c\d` (n 7) = 28 +6 (lower) -4.3 (R = 3: `\` literally, not n+1 like `|`) -> 30.
METACHAR_SCORES = [
    ("Winter99+", 76), ("Correct-horse?", 86), ("a\\b\\c\\d", 30),
    ("Tr0ub4dor(x)", 100), ("Str0ng+Passw0rd!", 100), ("Xk9#mQ2*vL7z", 100),
    ("Pass[1]word", 92), ("(secret)Pw1", 88), ("Ab1?cdefgh", 66), ("Xy*9abcdef", 66),
]


@pytest.mark.parametrize(("password", "expected"), METACHAR_SCORES)
def test_regex_metacharacters_are_scored_like_any_other_character(password: str,
                                                                  expected: int) -> None:
    assert passwords.score(password) == expected


def test_metacharacter_repeats_count_literally() -> None:
    # Only `.`, `^`, `$` and `|` keep the RegExp's odd counts; `(` twice is a repeat of 2.
    assert passwords.score("Ab1(cd(ef") == passwords.score("Ab1-cd-ef")
    assert passwords.score("Ab1(cd)ef") == passwords.score("Ab1-cd,ef")


def test_generated_passwords_are_strong_and_unique() -> None:
    generated = {passwords.generate() for _ in range(50)}
    assert len(generated) == 50
    assert all(passwords.is_strong(p) for p in generated)
    assert all(not set(p) & set("?*+()[\\") for p in generated)
