"""The location table: expiry, ordering, wildcard, caps and persistence."""

from __future__ import annotations

import json

import pytest

from appliance.sip.bindings import Binding, Location, Origin, RegistrationError
from appliance.sip.headers import NameAddr, parse_name_addrs
from appliance.sip.wire import Target

AOR = "sip:1001@pbx.example.com"


def contacts(*values: str) -> list[NameAddr]:
    return parse_name_addrs(values)


def register(
    loc: Location,
    *values: str,
    expires: int | None = None,
    call_id: str = "c1",
    cseq: int = 1,
    now: float = 1000.0,
    origin: Origin | None = None,
) -> list[Binding]:
    return loc.register(
        AOR,
        contacts(*values),
        expires_header=expires,
        call_id=call_id,
        cseq=cseq,
        now=now,
        origin=origin,
    )


def test_register_and_lookup() -> None:
    loc = Location()
    origin = Origin(transport="tcp", source=("203.0.113.7", 40001), connection_id="conn-7")
    result = register(loc, '<sip:1001@192.0.2.10:5060>;+sip.instance="<urn:x>"', origin=origin)
    assert len(result) == 1
    b = result[0]
    assert (b.transport, b.source, b.connection_id) == ("tcp", ("203.0.113.7", 40001), "conn-7")
    assert b.expires_in(1000.0) == 3600
    assert (
        b.header_value(1100.0) == '<sip:1001@192.0.2.10:5060>;+sip.instance="<urn:x>";expires=3500'
    )
    assert loc.lookup(AOR, 1000.0) == result and loc.lookup("sip:other@x", 0) == []


def test_expiry_precedence_and_cap() -> None:
    loc = Location()
    result = register(
        loc, "<sip:a@h>;expires=120", "<sip:b@h>", "<sip:c@h>;expires=99999", expires=300
    )
    got = {b.uri: b.expires_in(1000.0) for b in result}
    assert got == {"sip:a@h": 120, "sip:b@h": 300, "sip:c@h": 3600}
    assert register(Location(), "<sip:d@h>")[0].expires_in(1000.0) == 3600  # the default


def test_interval_too_brief() -> None:
    loc = Location()
    with pytest.raises(RegistrationError) as info:
        register(loc, "<sip:a@h>", "<sip:b@h>;expires=30", expires=600)
    assert info.value.status == 423 and info.value.min_expires == 60
    assert len(loc) == 0  # nothing applied


def test_cseq_ordering() -> None:
    loc = Location()
    register(loc, "<sip:a@h>", cseq=5)
    for stale in (5, 4):
        with pytest.raises(RegistrationError) as info:
            register(loc, "<sip:a@h>", cseq=stale, now=1010)
        assert info.value.status == 400
    assert register(loc, "<sip:a@h>", cseq=6, now=1010)[0].cseq == 6
    # A new Call-ID (phone rebooted) replaces the binding whatever its CSeq.
    assert register(loc, "<sip:a@h>", call_id="c2", cseq=1, now=1020)[0].call_id == "c2"


def test_remove_one_and_query() -> None:
    loc = Location()
    register(loc, "<sip:a@h>", "<sip:b@h>")
    assert [b.uri for b in register(loc, "<sip:a@h>;expires=0", cseq=2)] == ["sip:b@h"]
    assert [b.uri for b in register(loc, cseq=3)] == ["sip:b@h"]  # no Contact: a query


def test_wildcard() -> None:
    loc = Location()
    register(loc, "<sip:a@h>", "<sip:b@h>")
    bad_requests: list[tuple[tuple[str, ...], int | None]] = [
        (("*",), None),
        (("*",), 60),
        (("*", "<sip:c@h>"), 0),
    ]
    for values, expires in bad_requests:
        with pytest.raises(RegistrationError) as info:
            register(loc, *values, expires=expires, cseq=2)
        assert info.value.status == 400
    with pytest.raises(RegistrationError):
        register(loc, "*", expires=0, cseq=1)  # same Call-ID, CSeq not higher
    assert register(loc, "*", expires=0, cseq=2) == []
    assert len(loc) == 0


def test_too_many_contacts_is_503_and_atomic() -> None:
    loc = Location(max_contacts=2)
    register(loc, "<sip:a@h>", "<sip:b@h>")
    with pytest.raises(RegistrationError) as info:
        register(loc, "<sip:c@h>", cseq=2)
    assert info.value.status == 503
    assert [b.uri for b in loc.lookup(AOR, 1000)] == ["sip:a@h", "sip:b@h"]
    # Replacing one within the cap is fine.
    assert len(register(loc, "<sip:a@h>;expires=0", "<sip:c@h>", cseq=3)) == 2


def test_expiry_sweep_and_timer() -> None:
    loc = Location()
    register(loc, "<sip:a@h>;expires=60", "<sip:b@h>;expires=120")
    assert loc.get_timer() == 1060
    assert loc.expired(1059) == []
    assert [b.uri for b in loc.expired(1060)] == ["sip:a@h"]
    assert loc.get_timer() == 1120
    assert [b.uri for b in loc.lookup(AOR, 1100)] == ["sip:b@h"]
    assert loc.lookup(AOR, 1120) == []  # expired, even before the sweep
    loc.expired(2000)
    assert len(loc) == 0 and loc.get_timer() is None


def test_lookup_orders_by_q() -> None:
    loc = Location()
    register(loc, "<sip:a@h>;q=0.1", "<sip:b@h>;q=0.9", "<sip:c@h>")
    assert [b.uri for b in loc.lookup(AOR, 1000)] == ["sip:c@h", "sip:b@h", "sip:a@h"]


def test_connection_loss_drops_its_bindings() -> None:
    loc = Location()
    register(loc, "<sip:a@h>", origin=Origin(transport="tcp", connection_id="k1"))
    register(loc, "<sip:b@h>", cseq=2, origin=Origin(connection_id="k2"))
    assert [b.uri for b in loc.remove_connection("k1")] == ["sip:a@h"]
    assert len(loc) == 1


def test_persistence_survives_a_restart() -> None:
    loc = Location()
    register(
        loc,
        "<sip:a@h;transport=tcp>;reg-id=1;q=0.5",
        "<sip:b@h>;expires=60",
        origin=Origin("tcp", ("203.0.113.7", 40001), "conn-1"),
    )
    saved = json.loads(json.dumps(loc.to_dicts()))
    restored = Location()
    restored.load(saved, now=1100.0)  # b expired while we were down
    [a] = restored.lookup(AOR, 1100.0)
    assert a.uri == "sip:a@h;transport=tcp" and a.q == 0.5 and a.params == [("reg-id", "1")]
    assert a.source == ("203.0.113.7", 40001) and a.connection_id is None
    assert a.expires_in(1100.0) == 3500
    # Ordering state survives too.
    with pytest.raises(RegistrationError):
        restored.register(
            AOR,
            contacts("<sip:a@h;transport=tcp>"),
            expires_header=None,
            call_id="c1",
            cseq=1,
            now=1100.0,
        )


def test_to_dict_is_what_asdict_gives() -> None:
    import dataclasses

    binding = Binding(aor="alice", uri="sip:alice@192.0.2.10", expires_at=1.5, call_id="c",
                      cseq=3, transport="tcp", source=("192.0.2.10", 5070),
                      connection_id="tcp-1", q=0.5, params=[("+sip.instance", '"<x>"'),
                                                            ("lr", None)])
    assert binding.to_dict() == dataclasses.asdict(binding)
    assert list(binding.to_dict()) == list(dataclasses.asdict(binding))
    assert json.dumps(binding.to_dict()) == json.dumps(dataclasses.asdict(binding))


def test_header_value_of_a_plain_contact_is_its_name_addr_with_expires() -> None:
    loc = Location()
    b = register(loc, "<sip:1001@192.0.2.10:5060;transport=udp>")[0]
    general = NameAddr(uri=b.uri)
    general.set_param("expires", str(b.expires_in(1100.0)))
    assert b.header_value(1100.0) == str(general) == (
        "<sip:1001@192.0.2.10:5060;transport=udp>;expires=3500")


@pytest.mark.parametrize(("contact", "origin", "target"), [
    # UDP: the source address (rport, NAT), whatever the contact says.
    ("<sip:a@192.168.1.10:5070>", Origin("udp", ("203.0.113.5", 40000)),
     Target("udp", "203.0.113.5", 40000)),
    # TCP on its own connection: that connection (from that address).
    ("<sip:a@192.168.1.10:5070;transport=tcp>", Origin("tcp", ("203.0.113.5", 40000), "tcp-3"),
     Target("tcp", "203.0.113.5", 40000, "tcp-3")),
    # TCP with no connection (restored): the source host (a NAT's, the contact host being
    # private) at the Contact's port, 5060 when none; 5061 for sips.
    ("<sip:a@192.168.1.10:5070;transport=tcp>", Origin("tcp", ("203.0.113.5", 40000)),
     Target("tcp", "203.0.113.5", 5070)),
    ("<sip:a@192.168.1.10;transport=tcp>", Origin("tcp", ("192.168.1.10", 40000)),
     Target("tcp", "192.168.1.10", 5060)),
    ("<sips:a@192.168.1.10>", Origin("tcp", ("192.168.1.10", 40000)),
     Target("tcp", "192.168.1.10", 5061)),
    # No source kept: the contact URI alone.
    ("<sip:a@192.168.1.10:5070;transport=tcp>", Origin("udp", ("", 0)),
     Target("tcp", "192.168.1.10", 5070)),
])
def test_where_requests_to_a_binding_go(contact: str, origin: Origin, target: Target) -> None:
    [binding] = register(Location(), contact, origin=origin)
    assert binding.target() == target


def test_a_restored_tcp_binding_goes_to_the_contacts_port_not_the_registers() -> None:
    loc = Location()
    register(loc, "<sip:a@10.0.0.7:5062;transport=tcp>",
             origin=Origin("tcp", ("10.0.0.7", 51234), "tcp-1"))
    restored = Location()
    restored.load(json.loads(json.dumps(loc.to_dicts())), now=1000.0)
    [binding] = restored.lookup(AOR, 1000.0)
    assert binding.target() == Target("tcp", "10.0.0.7", 5062)
