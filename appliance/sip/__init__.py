"""The SIP front door's pure core: messages, URIs, header views, framing, transactions,
digest auth, the location table and per-source budgets. No I/O, no clock, no logging here:
time arrives as ``now`` and the asyncio transports live in ``transport``/``registrar``/``proxy``.
"""

from appliance import accel

# The registrar's hot path, compiled, when a build matching these sources exists (``accel``:
# the one place the package reads files at import, to hash the compiled modules' sources).
__path__ = accel.search_path(__name__, __path__)
