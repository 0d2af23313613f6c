"""The upstream (trunk) REGISTER state machine against a registrar built in the test."""

from __future__ import annotations

import itertools

from appliance.sip.digest import Algorithm, DigestAuth, Nonces, Verdict, make_ha1
from appliance.sip.headers import DigestCredentials
from appliance.sip.message import Header, Request, Response, make_response, parse_message
from appliance.sip.upstream import LocalAddress, State, UpstreamAccount, UpstreamRegistration

ACCOUNT = UpstreamAccount(user="office", password="Trunk-pass-1", domain="provider.test",
                          expires=600)
LOCAL = LocalAddress("127.0.0.1", 5060)


def machine() -> UpstreamRegistration:
    counter = itertools.count()
    return UpstreamRegistration(ACCOUNT, LOCAL, call_id="cid-1", from_tag="ft",
                                token=lambda: f"tok{next(counter):08d}")


OFFICE = "192.0.2.1"  # the appliance's address, as the provider sees it


class Provider:
    """A registrar that challenges once and then checks the digest, as Kamailio does."""

    def __init__(self, password: str = "Trunk-pass-1", status: int = 401) -> None:
        self.auth = DigestAuth("provider.test", Nonces(b"k"), algorithms=(Algorithm.MD5,))
        self.ha1 = make_ha1("office", "provider.test", password)
        self.status = status
        self.seen: list[Request] = []

    def answer(self, request: Request, now: float, expires: int = 300) -> Response:
        wire = parse_message(bytes(request))  # what really crosses the network
        assert isinstance(wire, Request)
        self.seen.append(wire)
        header = "Authorization" if self.status == 401 else "Proxy-Authorization"
        value = wire.get(header)
        if value is None:
            response = make_response(wire, self.status)
            name = "WWW-Authenticate" if self.status == 401 else "Proxy-Authenticate"
            for challenge in self.auth.challenges(now, OFFICE):
                response.headers.append(Header.make(name, challenge))
            return response
        verdict = self.auth.verify(DigestCredentials.parse(value), method="REGISTER",
                                   ha1=self.ha1, now=now, ip=OFFICE)
        if verdict is not Verdict.ACCEPTED:
            response = make_response(wire, self.status)
            name = "WWW-Authenticate" if self.status == 401 else "Proxy-Authenticate"
            for challenge in self.auth.challenges(now, OFFICE):
                response.headers.append(Header.make(name, challenge))
            return response
        response = make_response(wire, 200)
        response.headers.append(Header.make("Contact", f"{wire.get('Contact')};expires={expires}"))
        return response


def test_register_with_digest_then_refresh() -> None:
    reg, provider = machine(), Provider()
    request = reg.start(0.0)
    assert request.get("Expires") == "600" and request.uri == "sip:provider.test"
    follow = reg.on_response(provider.answer(request, 0.0), 0.1)
    assert follow is not None and "Authorization" in follow
    assert follow.cseq.number == request.cseq.number + 1
    assert follow.call_id == request.call_id
    assert reg.on_response(provider.answer(follow, 0.2), 0.2) is None
    assert reg.state is State.REGISTERED and reg.expires_at == 300.2
    assert reg.get_timer() == 0.2 + 240  # granted 300: refresh 60 s early
    assert reg.handle_timer(100.0) is None
    refresh = reg.handle_timer(240.2)
    assert refresh is not None and reg.state is State.REGISTERING


def test_proxy_authenticate_is_answered_too() -> None:
    reg, provider = machine(), Provider(status=407)
    request = reg.start(0.0)
    follow = reg.on_response(provider.answer(request, 0.0), 0.0)
    assert follow is not None and "Proxy-Authorization" in follow
    reg.on_response(provider.answer(follow, 0.0), 0.0)
    assert reg.state is State.REGISTERED


def test_wrong_password_fails_and_backs_off_with_jitter() -> None:
    reg, provider = machine(), Provider(password="other")
    request = reg.start(0.0)
    follow = reg.on_response(provider.answer(request, 0.0), 0.0)
    assert follow is not None
    assert reg.on_response(provider.answer(follow, 0.0), 0.0, jitter=1.2) is None
    assert reg.state is State.FAILED
    assert "UserName and Password" in (reg.last_error or "")
    assert reg.get_timer() == 6.0  # 5 s * 1.2
    retry = reg.handle_timer(6.0)
    assert retry is not None and reg.state is State.REGISTERING
    reg.on_timeout(10.0, jitter=1.0)
    assert reg.get_timer() == 20.0  # second failure: 10 s


def test_timeouts_back_off_up_to_five_minutes_then_recover() -> None:
    reg, provider = machine(), Provider()
    now = 0.0
    reg.start(now)
    for _ in range(10):
        reg.on_timeout(now)
        timer = reg.get_timer()
        assert timer is not None
        now = timer
        reg.handle_timer(now)
    assert reg.get_timer() is None and reg.state is State.REGISTERING
    reg.on_timeout(now)
    assert reg.get_timer() == now + 300.0
    # The provider is back: the next try registers.
    request = reg.handle_timer(now + 300.0)
    assert request is not None
    follow = reg.on_response(provider.answer(request, now), now)
    assert follow is not None
    reg.on_response(provider.answer(follow, now), now)
    assert reg.state is State.REGISTERED and reg.last_error is None


def test_503_retry_after_and_423_min_expires() -> None:
    reg = machine()
    request = reg.start(0.0)
    busy = make_response(request, 503)
    busy.headers.append(Header.make("Retry-After", "42"))
    reg.on_response(busy, 1.0)
    assert reg.get_timer() == 43.0 and reg.last_error == "503 Service Unavailable"
    request = reg.handle_timer(43.0)
    assert request is not None
    brief = make_response(request, 423)
    brief.headers.append(Header.make("Min-Expires", "1800"))
    again = reg.on_response(brief, 43.0)
    assert again is not None and again.get("Expires") == "1800"


def test_stop_unregisters_when_registered() -> None:
    reg, provider = machine(), Provider()
    request = reg.start(0.0)
    follow = reg.on_response(provider.answer(request, 0.0), 0.0)
    assert follow is not None
    reg.on_response(provider.answer(follow, 0.0), 0.0)
    bye = reg.stop(10.0)
    assert bye is not None and bye.get("Expires") == "0"
    auth = reg.on_response(provider.answer(bye, 10.0), 10.0)
    assert auth is not None and auth.get("Expires") == "0"
    reg.on_response(provider.answer(auth, 10.0), 10.0)
    assert reg.state is State.STOPPED
    assert machine().stop(0.0) is None


def granted_by(*headers: tuple[str, str], asked: int = 300) -> tuple[float | None, float | None]:
    """Register with ASKED seconds (our Contact sip:office@127.0.0.1:5060) and answer the
    REGISTER 200 with HEADERS as a provider wrote them: (expires_at, refresh timer)."""
    account = UpstreamAccount(user="office", password="pw", domain="provider.test",
                              expires=asked)
    reg = UpstreamRegistration(account, LOCAL, call_id="cid-1", from_tag="ft",
                               token=lambda: "tok")
    request = reg.start(0.0)
    ok = make_response(request, 200, to_tag="prov")
    for name, value in headers:
        ok.headers.append(Header.make(name, value))
    reg.on_response(ok, 0.0)
    assert reg.state is State.REGISTERED
    return reg.expires_at, reg.get_timer()


def test_granted_expiry_of_our_contact_rewritten_by_the_provider() -> None:
    """An SBC fixing NAT lists our Contact at our public address and port, expires=70 and no
    Expires header: 70 s are granted (refresh at 35 s), not the 300 asked."""
    assert granted_by(("Contact", "<sip:office@203.0.113.50:61000>;expires=70")) == (70.0, 35.0)
    # Our Contact as we sent it is still found first, whatever else is listed.
    assert granted_by(("Contact", "<sip:office@203.0.113.50:61000>;expires=30"),
                      ("Contact", "<sip:office@127.0.0.1:5060>;expires=120")) == (120.0, 60.0)


def test_granted_expiry_among_the_account_s_other_devices() -> None:
    """Several contacts of one account: ours (rewritten) is the one with our user part; other
    devices registered with their own user parts do not count, unless none can be told
    apart: then the shortest of all."""
    assert granted_by(("Contact", "<sip:9f3a1c@198.51.100.7:5062>;expires=20, "
                                  "<sip:office@203.0.113.50:61000>;expires=90"),
                      ("Contact", "<sip:desk-2@198.51.100.8:5060;transport=tcp>;expires=3000")
                      ) == (90.0, 45.0)
    # Several with our user part (the account's other boxes use it too): the shortest.
    assert granted_by(("Contact", "<sip:office@198.51.100.9:5060>;expires=3600, "
                                  "<sip:office@203.0.113.50:61000>;expires=80")) == (80.0, 40.0)
    # None with our user part: the shortest of all listed.
    assert granted_by(("Contact", "<sip:a1@203.0.113.50:61000>;expires=100, "
                                  "<sip:b2@198.51.100.9>;expires=3600")) == (100.0, 50.0)


def test_a_tiny_or_zero_grant_never_makes_a_register_loop() -> None:
    """A stale binding of ours at an old NAT port, listed with 1 s or 0 left, is taken for our
    grant (the shortest counts: a short grant to our rewritten Contact must not be missed),
    but the refresh comes no sooner than 5 s: one early refresh, not a tight loop."""
    assert granted_by(("Contact", "<sip:office@203.0.113.50:61000>;expires=3600, "
                                  "<sip:office@203.0.113.50:60999>;expires=1")) == (1.0, 5.0)
    assert granted_by(("Contact", "<sip:office@127.0.0.1:5060>;expires=0")) == (0.0, 5.0)
    # A short grant to our rewritten Contact, beside the account's other box: honoured.
    assert granted_by(("Contact", "<sip:office@203.0.113.50:61000>;expires=25, "
                                  "<sip:office@198.51.100.9:5060>;expires=3600")) == (25.0, 12.5)


def test_granted_expiry_from_the_expires_header_else_as_asked() -> None:
    assert granted_by(("Expires", "120")) == (120.0, 60.0)
    # A rewritten contact without its own parameter takes the Expires header's value.
    assert granted_by(("Contact", "<sip:office@203.0.113.50:61000>"), ("Expires", "150"),
                      asked=3600) == (150.0, 90.0)
    assert granted_by(asked=3600) == (3600.0, 3540.0)


def test_stopping_while_the_first_register_is_in_flight_unregisters() -> None:
    """Register=false (or a delete) right after the authenticated first REGISTER went out:
    the provider may bind it, so an Expires: 0 follows, and the late 200 changes nothing."""
    provider, reg = Provider(), machine()
    first = reg.start(0.0)
    auth = reg.on_response(provider.answer(first, 0.0), 0.1)
    assert auth is not None and auth.get("Authorization")
    assert provider.answer(auth, 0.2).status == 200  # bound; the 200 is still on its way
    bye = reg.stop(0.15)  # (the trunk ends the first REGISTER's transaction: its 200 is lost)
    assert bye is not None and bye.get("Expires") == "0"
    assert bye.cseq.number > auth.cseq.number
    again = reg.on_response(provider.answer(bye, 0.3), 0.3)
    assert again is not None and again.get("Expires") == "0"
    reg.on_response(provider.answer(again, 0.4), 0.4)
    assert reg.state is State.STOPPED


def nat(response: Response, received: str | None, rport: int | None) -> Response:
    """RESPONSE with its top Via stamped as a provider behind whose view there is a NAT."""
    top = response.top_via
    assert top is not None
    if received is not None:
        top.set_param("received", received)
    if rport is not None:
        top.set_param("rport", str(rport))
    response.headers = [h for h in response.headers if h.name.lower() != "via"]
    response.headers.insert(0, Header.make("Via", str(top)))
    return parse_message(bytes(response))  # type: ignore[return-value]


def test_the_public_contact_survives_a_challenge_and_is_what_stop_removes() -> None:
    """The REGISTER moving the binding to the public address carries the removal of the old
    Contact through the provider's challenge; once answered 200 the old one is gone from
    later REGISTERs, and stopping unregisters the public Contact."""
    reg, provider = machine(), Provider()
    request = reg.start(0.0)
    follow = reg.on_response(provider.answer(request, 0.0), 0.0)
    assert follow is not None
    rewrite = reg.on_response(nat(provider.answer(follow, 0.0), "203.0.113.50", 61000), 0.0)
    assert rewrite is not None and reg.state is State.REGISTERING
    both = ["<sip:office@203.0.113.50:61000>", "<sip:office@127.0.0.1:5060>;expires=0"]
    assert rewrite.values("Contact") == both
    auth = reg.on_response(provider.answer(rewrite, 0.1), 0.1)
    assert auth is not None and "Authorization" in auth and auth.values("Contact") == both
    assert reg.on_response(nat(provider.answer(auth, 0.2), "203.0.113.50", 61000), 0.2) is None
    assert reg.state is State.REGISTERED and reg.expires_at == 300.2
    refresh = reg.handle_timer(240.2)
    assert refresh is not None and refresh.values("Contact") == both[:1]
    bye = reg.stop(241.0)
    assert bye is not None and bye.values("Contact") == both[:1]


def test_stopping_during_the_rewrite_removes_both_contacts() -> None:
    reg = machine()
    request = reg.start(0.0)
    rewrite = reg.on_response(nat(make_response(request, 200), "203.0.113.50", 61000), 0.0)
    assert rewrite is not None
    bye = reg.stop(1.0)
    assert bye is not None and bye.get("Expires") == "0"
    assert bye.values("Contact") == ["<sip:office@203.0.113.50:61000>",
                                     "<sip:office@127.0.0.1:5060>;expires=0"]


def test_what_the_via_of_the_200_teaches() -> None:
    def contact_after(received: str | None, rport: int | None) -> str:
        reg = machine()
        request = reg.start(0.0)
        reg.on_response(nat(make_response(request, 200), received, rport), 0.0)
        return f"{reg.contact.host}:{reg.contact.port}"

    assert contact_after(None, None) == "127.0.0.1:5060"  # nothing stamped
    assert contact_after("127.0.0.1", 5060) == "127.0.0.1:5060"  # what we sent
    assert contact_after("203.0.113.50", None) == "203.0.113.50:5060"  # no rport: sent-by's
    assert contact_after(None, 61000) == "127.0.0.1:61000"  # no received: sent-by's host
    # Nothing the trunk could use: an IPv6 or a multicast address, a name, port 0.
    assert contact_after("2001:db8::1", 61000) == "127.0.0.1:5060"
    assert contact_after("224.0.0.1", 61000) == "127.0.0.1:5060"
    assert contact_after("nat.example", 61000) == "127.0.0.1:5060"
    assert contact_after("203.0.113.50", 0) == "127.0.0.1:5060"
    assert contact_after("203.0.113.50", 70000) == "127.0.0.1:5060"


def test_learning_off_keeps_the_lan_contact() -> None:
    reg = UpstreamRegistration(ACCOUNT, LOCAL, call_id="cid-1", from_tag="ft",
                               token=lambda: "tok", learn_public=False)
    request = reg.start(0.0)
    assert reg.on_response(nat(make_response(request, 200), "203.0.113.50", 61000), 0.0) is None
    assert reg.state is State.REGISTERED and reg.contact == LOCAL
