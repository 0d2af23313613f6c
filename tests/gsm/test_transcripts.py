"""Replay per-model AT transcripts (tests/data/gsm/at/*.txt) through AtParser (style.md §5.9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.gsm import at
from appliance.gsm.at import AtParser, Urc
from appliance.gsm.urc import MalformedUrc, UnknownUrc

DATA = Path(__file__).resolve().parents[1] / "data" / "gsm" / "at"
_PREFIXES = {"AT+CREG?": "+CREG:", "AT+CPMS=": "+CPMS:", "AT+CMGS=": "+CMGS:",
             "AT+CMGR=": "+CMGR:"}


def _command(text: str) -> at.Command:
    prefix = next((p for key, p in _PREFIXES.items() if text.startswith(key)), None)
    return at.Command(text, prefix, expects_prompt=text.startswith("AT+CMGS="))


@pytest.mark.parametrize("path", sorted(DATA.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    parser = AtParser()
    events: list[at.Event] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if raw.startswith(">> "):
            parser.start(_command(raw[3:]))
        elif raw.startswith("<< "):
            events += parser.feed(raw[3:].encode().decode("unicode_escape").encode("latin-1"))
        elif raw.startswith("= "):
            kinds = [type(e).__name__ for e in events]
            assert kinds == raw[2:].split(), f"{path.name}:{number}"
            for event in events:
                if isinstance(event, Urc):  # every vendor URC is known, none is broken
                    assert not isinstance(event.value, UnknownUrc | MalformedUrc), event
            events = []
    assert not events, "events after the last '=' line"
