"""Test doubles shared by the test suites (imported as `fakes`; see tests/gsm/conftest.py)."""
