"""sip.memory.compact: a table shrunk after a burst stays the same object (the proxy hands its
tables to its collaborators) and keeps every entry in order."""

from __future__ import annotations

import sys

from appliance.sip.memory import compact


def test_compact_shrinks_a_drained_dict_in_place() -> None:
    table = {n: str(n) for n in range(50_000)}
    for n in range(49_990):
        del table[n]
    same, before = table, sys.getsizeof(table)
    compact(table)
    assert table is same and list(table.items()) == [(n, str(n)) for n in range(49_990, 50_000)]
    assert sys.getsizeof(table) < before // 100
