"""The shape-cached Router answers exactly what a full scan of the routes answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.api.app import ROUTES
from appliance.api.routes import Router, match

_WORDS = sorted({seg for r in ROUTES for seg in r.pattern if not seg.startswith("{")})
_SEGMENT = st.one_of(st.sampled_from(_WORDS), st.just(""),
                     st.text(alphabet="ACPNabc0123456789", min_size=1, max_size=6))
_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])


def _scan(segments: list[str], method: str) -> tuple[object, dict[str, str], set[str]]:
    return match([r for r in ROUTES if len(r.pattern) == len(segments)], segments, method)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_SEGMENT, min_size=0, max_size=7), _METHODS)
def test_router_agrees_with_a_full_scan(segments: list[str], method: str) -> None:
    router = Router(ROUTES)
    # Twice: the first answer fills the shape cache, the second comes from it.
    assert router.match(segments, method) == _scan(segments, method)
    assert router.match(segments, method) == _scan(segments, method)


def test_one_shape_serves_different_sids_with_their_own_values() -> None:
    router = Router(ROUTES)
    a = router.match(["Accounts", "AC1", "Clients", "CL1"], "GET")
    b = router.match(["Accounts", "AC2", "Clients", "CL2"], "GET")
    assert a[0] is b[0] and a[0] is not None
    assert a[1] == {"A": "AC1", "sid": "CL1"}
    assert b[1] == {"A": "AC2", "sid": "CL2"}
    assert a[2] == b[2] and "DELETE" in a[2]


def test_literal_wins_over_placeholder_through_the_cache() -> None:
    router = Router(ROUTES)
    local = router.match(["Accounts", "AC1", "IncomingPhoneNumbers", "Local"], "GET")
    sid = router.match(["Accounts", "AC1", "IncomingPhoneNumbers", "PN1"], "GET")
    assert local[0] is not sid[0]
    assert "PN1" in sid[1].values() and "Local" not in local[1].values()
