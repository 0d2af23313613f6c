"""The SIP front door's pure core: messages, URIs, header views, framing, transactions,
digest auth, the location table and per-source budgets. No I/O, no clock, no logging here:
time arrives as ``now`` and the asyncio transports live in ``transport``/``registrar``/``proxy``.
"""
