"""The pure rules of services.dialing: which sip: URIs are ours, and DialCallStatus."""

from __future__ import annotations

import pytest

from appliance.rcml.interpreter import DialStatus
from appliance.services.dialing import dial_status, sip_user

HOSTS = {"pbx.example.com", "192.0.2.10"}


@pytest.mark.parametrize(("uri", "user"), [
    ("sip:alice@pbx.example.com", "alice"),
    ("sip:alice@PBX.example.com:5060;transport=tcp", "alice"),
    ("sips:bob@192.0.2.10", "bob"),
    ("sip:alice@evil.example.net", None),  # no open relay
    ("sip:pbx.example.com", None),
    ("tel:+15551234", None),
    ("sip:alice@[2001:db8::1]:5060", None),
])
def test_sip_user(uri: str, user: str | None) -> None:
    assert sip_user(uri, HOSTS) == user


def test_sip_user_without_a_host_list_takes_any_host() -> None:
    assert sip_user("sip:alice@anywhere.example", ()) == "alice"


@pytest.mark.parametrize(("codes", "left", "status"), [
    ([408, 486], False, DialStatus.NO_ANSWER),
    ([486, 503], False, DialStatus.BUSY),
    ([503, 404], False, DialStatus.FAILED),
    ([], False, DialStatus.FAILED),
    ([487, 487], False, DialStatus.CANCELED),
    ([408], True, DialStatus.CANCELED),
])
def test_dial_status(codes: list[int], left: bool, status: DialStatus) -> None:
    assert dial_status(codes, left) is status
