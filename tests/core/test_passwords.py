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


@pytest.mark.parametrize("password", ["Pass[1]word", "(secret)Pw1", "Ab1?cdefgh", "Xy*9abcdef"])
def test_regex_metacharacters_are_weak(password: str) -> None:
    assert not passwords.is_strong(password)


def test_generated_passwords_are_strong_and_unique() -> None:
    generated = {passwords.generate() for _ in range(50)}
    assert len(generated) == 50
    assert all(passwords.is_strong(p) for p in generated)
    assert all(not set(p) & set("?*+()[\\") for p in generated)
