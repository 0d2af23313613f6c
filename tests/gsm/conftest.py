"""Make `tests/fakes` importable as the `fakes` package (pytest runs with --import-mode=importlib,
so the tests directory is not on sys.path by itself)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
