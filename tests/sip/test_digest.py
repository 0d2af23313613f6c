"""Digest: published vectors, stateless nonces, verification verdicts, nc replay."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sip.digest import (
    HEADERS,
    Algorithm,
    DigestAuth,
    NonceCounts,
    Nonces,
    NonceStatus,
    Verdict,
    algorithm_of,
    compute_response,
    make_ha1,
)
from appliance.sip.headers import DigestCredentials, format_challenge
from appliance.sip.message import Request

REALM = "pbx.example.com"
SECRET = b"0123456789abcdef0123456789abcdef"
IP = "192.0.2.10"  # the phone the challenges are sent to
OTHER_IP = "192.0.2.66"


def test_rfc2617_example() -> None:
    # RFC 2617 §3.5: GET /dir/index.html, qop=auth.
    ha1 = make_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    response = compute_response(
        ha1=ha1,
        algorithm=Algorithm.MD5,
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (Algorithm.MD5, "8ca523f5e9506fed4657c9700eebdbec"),
        (Algorithm.SHA256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: Algorithm, expected: str) -> None:
    # RFC 7616 §3.9.1 (note the lower-case "of" in this RFC's password).
    ha1 = make_ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    response = compute_response(
        ha1=ha1,
        algorithm=algorithm,
        method="GET",
        uri="/dir/index.html",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        qop="auth",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert response == expected


def test_nonces() -> None:
    nonces = Nonces(SECRET, lifetime=300)
    nonce = nonces.issue(1000.0, IP)
    assert nonce != nonces.issue(1000.0, IP)  # salted
    assert nonces.issue(1000.0, IP, salt="aa") == nonces.issue(1000.9, IP, salt="aa")
    assert nonces.check(nonce, 1000.0, IP) is NonceStatus.VALID
    assert nonces.check(nonce, 1300.0, IP) is NonceStatus.VALID
    assert nonces.check(nonce, 1300.5, IP) is NonceStatus.STALE
    assert Nonces(b"other secret").check(nonce, 1000.0, IP) is NonceStatus.INVALID
    ts, salt, mac = nonce.split(".")
    assert nonces.check(f"{int(ts, 16) + 1:x}.{salt}.{mac}", 1000.0, IP) is NonceStatus.INVALID
    future = nonces.issue(2000.0, IP)
    assert nonces.check(future, 1000.0, IP) is NonceStatus.INVALID
    for junk in ("", "abc", "zz.1.2", "..", "1.2"):
        assert nonces.check(junk, 1000.0, IP) is NonceStatus.INVALID


@pytest.mark.parametrize("secret", [b"", SECRET, b"k" * 64, b"k" * 65, bytes(range(200))])
def test_nonce_mac_is_hmac_sha256(secret: bytes) -> None:
    # The format nonces held across a restart (the secret is persisted) are checked against:
    # the first 32 hex digits of HMAC-SHA256(secret, ts "." salt "." ip), keys of any length.
    nonce = Nonces(secret).issue(0x65F1A2B3, IP, salt="0123456789ab")
    expected = hmac.new(secret, f"65f1a2b3.0123456789ab.{IP}".encode(), hashlib.sha256)
    assert nonce == f"65f1a2b3.0123456789ab.{expected.hexdigest()[:32]}"


def test_a_nonce_is_good_only_from_the_address_it_was_issued_to() -> None:
    nonces = Nonces(SECRET, lifetime=300)
    nonce = nonces.issue(1000.0, IP)
    assert IP not in nonce  # bound by the MAC, not written in the nonce
    assert nonces.check(nonce, 1000.0, IP) is NonceStatus.VALID
    for other in (OTHER_IP, "192.0.2.1", "", "::ffff:192.0.2.10", "192.0.2.100"):
        assert nonces.check(nonce, 1000.0, other) is NonceStatus.INVALID, other
    # Expired: STALE from its own address only; from another it is not ours at all.
    assert nonces.check(nonce, 1400.0, IP) is NonceStatus.STALE
    assert nonces.check(nonce, 1400.0, OTHER_IP) is NonceStatus.INVALID
    # The one-entry MAC cache is keyed on the address too (checked twice per request).
    assert nonces.check(nonce, 1000.0, IP) is NonceStatus.VALID
    assert nonces.check(nonce, 1000.0, OTHER_IP) is NonceStatus.INVALID
    assert nonces.check(nonce, 1000.0, IP) is NonceStatus.VALID
    # The same salt and time issued to two addresses: two different nonces.
    assert nonces.issue(1000.0, IP, salt="aa") != nonces.issue(1000.0, OTHER_IP, salt="aa")
    v6 = nonces.issue(1000.0, "2001:db8::1%eth0")
    assert nonces.check(v6, 1000.0, "2001:db8::1%eth0") is NonceStatus.VALID
    assert nonces.check(v6, 1000.0, "2001:db8::1") is NonceStatus.INVALID


def test_a_nonce_from_another_address_is_rejected_whatever_the_password(
        auth: DigestAuth) -> None:
    # A blind spoofer fetches nonces at its own address and sends from the phone's: the
    # verdict is the same for the right and a wrong password, fresh or expired (no oracle;
    # the callers re-challenge it before verify and count nothing).
    foreign = auth.nonces.issue(0, OTHER_IP)
    for now in (0, 301):
        right = credentials(auth, 0, nonce=foreign)
        wrong = credentials(auth, 0, nonce=foreign, password="wrong")
        assert check(auth, right, now) is check(auth, wrong, now) is Verdict.REJECTED
    assert check(auth, credentials(auth, 0, nonce=foreign), 0, ip=OTHER_IP) is Verdict.ACCEPTED


def credentials(
    auth: DigestAuth,
    now: float,
    *,
    password: str = "secret",
    username: str = "1001",
    algorithm: Algorithm = Algorithm.MD5,
    qop: str | None = "auth",
    nc: str = "00000001",
    nonce: str | None = None,
    method: str = "REGISTER",
    realm: str = REALM,
) -> DigestCredentials:
    nonce = nonce or auth.nonces.issue(now, IP)
    ha1 = make_ha1(username, realm, password, algorithm)
    response = compute_response(
        ha1=ha1,
        algorithm=algorithm,
        method=method,
        uri=f"sip:{REALM}",
        nonce=nonce,
        qop=qop,
        nc=nc,
        cnonce="c0ffee",
    )
    value = (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="sip:{REALM}", '
        f'response="{response}", algorithm={algorithm.value}'
    )
    if qop:
        value += f', qop={qop}, nc={nc}, cnonce="c0ffee"'
    return DigestCredentials.parse(value)


@pytest.fixture
def auth() -> DigestAuth:
    return DigestAuth(REALM, Nonces(SECRET), counts=NonceCounts())


STORED = {a: make_ha1("1001", REALM, "secret", a) for a in (Algorithm.MD5, Algorithm.SHA256)}


def check(
    auth: DigestAuth, creds: DigestCredentials, now: float, method: str = "REGISTER",
    ip: str = IP,
) -> Verdict:
    algorithm = algorithm_of(creds)
    ha1 = STORED.get(algorithm.base) if algorithm else None
    return auth.verify(creds, method=method, ha1=ha1, now=now, ip=ip)


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("qop", ["auth", None])
def test_accepts_the_right_password(
    auth: DigestAuth, algorithm: Algorithm, qop: str | None
) -> None:
    verdict = check(auth, credentials(auth, 10.0, algorithm=algorithm, qop=qop), 10.0)
    # Without qop there is no cnonce, so the -sess variants cannot be computed.
    expected = Verdict.MALFORMED if algorithm.session and qop is None else Verdict.ACCEPTED
    assert verdict is expected


def test_without_qop_a_nonce_is_good_for_one_request(auth: DigestAuth) -> None:
    nonce = auth.nonces.issue(10.0, IP)
    creds = credentials(auth, 10.0, qop=None, nonce=nonce)
    assert check(auth, creds, 10.0) is Verdict.ACCEPTED
    assert check(auth, creds, 11.0) is Verdict.STALE  # a replay, or an RFC 2069 phone
    other = credentials(auth, 10.0, qop=None, nonce=nonce, password="guess")
    assert check(auth, other, 11.0) is Verdict.REJECTED  # a wrong password stays a failure
    without_counts = DigestAuth(REALM, auth.nonces)
    assert check(without_counts, creds, 11.0) is Verdict.ACCEPTED


def test_auth_int_covers_the_body(auth: DigestAuth) -> None:
    nonce = auth.nonces.issue(0, IP)
    ha1 = STORED[Algorithm.MD5]
    response = compute_response(
        ha1=ha1,
        algorithm=Algorithm.MD5,
        method="MESSAGE",
        uri="sip:x",
        nonce=nonce,
        qop="auth-int",
        nc="00000001",
        cnonce="c",
        body=b"hello",
    )
    creds = DigestCredentials.parse(
        f'Digest username="1001", realm="{REALM}", nonce="{nonce}", uri="sip:x", '
        f'response="{response}", qop=auth-int, nc=00000001, cnonce="c"'
    )
    assert auth.verify(creds, method="MESSAGE", ha1=ha1, now=0, ip=IP,
                       body=b"hello") is Verdict.ACCEPTED
    assert auth.verify(creds, method="MESSAGE", ha1=ha1, now=0, ip=IP,
                       body=b"evil") is Verdict.REJECTED


def test_rejections(auth: DigestAuth) -> None:
    assert check(auth, credentials(auth, 0, password="wrong"), 0) is Verdict.REJECTED
    assert check(auth, credentials(auth, 0), 0, method="INVITE") is Verdict.REJECTED
    creds = credentials(auth, 0)
    assert auth.verify(creds, method="REGISTER", ha1=None, now=0, ip=IP) is Verdict.REJECTED
    forged = credentials(auth, 0, nonce="5.aa.00000000000000000000000000000000")
    assert check(auth, forged, 0) is Verdict.REJECTED


def test_stale_only_for_the_right_password(auth: DigestAuth) -> None:
    assert check(auth, credentials(auth, 0), 301) is Verdict.STALE
    assert check(auth, credentials(auth, 0, password="wrong"), 301) is Verdict.REJECTED


def test_malformed(auth: DigestAuth) -> None:
    assert check(auth, credentials(auth, 0, realm="other"), 0) is Verdict.MALFORMED
    bad_alg = DigestCredentials.parse(
        'Digest username="1001", realm="pbx.example.com", nonce="n", uri="u", response="r", '
        "algorithm=SHA-512-256"
    )
    assert check(auth, bad_alg, 0) is Verdict.MALFORMED
    missing = DigestCredentials.parse('Digest username="1001", realm="pbx.example.com"')
    assert check(auth, missing, 0) is Verdict.MALFORMED
    bad_nc = credentials(auth, 0, nc="1")
    assert check(auth, bad_nc, 0) is Verdict.MALFORMED
    md5_only = DigestAuth(REALM, Nonces(SECRET), algorithms=(Algorithm.MD5,))
    assert (
        check(md5_only, credentials(md5_only, 0, algorithm=Algorithm.SHA256), 0)
        is Verdict.MALFORMED
    )


def test_nc_replay(auth: DigestAuth) -> None:
    nonce = auth.nonces.issue(0, IP)
    assert check(auth, credentials(auth, 0, nonce=nonce), 0) is Verdict.ACCEPTED
    # The same nc again, right response (cached credentials reused, or a replay): re-challenged
    # with stale=true, never accepted twice, and no failure.
    assert check(auth, credentials(auth, 0, nonce=nonce), 1) is Verdict.STALE
    assert check(auth, credentials(auth, 0, nonce=nonce), 2) is Verdict.STALE
    assert check(auth, credentials(auth, 0, nonce=nonce, nc="00000002"), 1) is Verdict.ACCEPTED
    assert check(auth, credentials(auth, 0, nonce=nonce, nc="00000001"), 1) is Verdict.STALE


def test_a_replayed_nc_is_no_oracle_and_no_free_guess(auth: DigestAuth) -> None:
    """The response is checked before the nc: a wrong password with a used nc is REJECTED (a
    failure) like one with a fresh nc, so only the right password is ever STALE; and a wrong
    response does not use up its nc."""
    nonce = auth.nonces.issue(0, IP)
    assert check(auth, credentials(auth, 0, nonce=nonce), 0) is Verdict.ACCEPTED
    wrong = credentials(auth, 0, nonce=nonce, password="guess")
    assert check(auth, wrong, 1) is Verdict.REJECTED  # nc 1, used
    wrong_fresh = credentials(auth, 0, nonce=nonce, password="guess", nc="00000002")
    assert check(auth, wrong_fresh, 1) is Verdict.REJECTED
    unknown = credentials(auth, 0, nonce=nonce)
    assert auth.verify(unknown, method="REGISTER", ha1=None, now=1, ip=IP) is Verdict.REJECTED
    assert check(auth, credentials(auth, 0, nonce=nonce, nc="00000002"), 1) is Verdict.ACCEPTED


def test_nonce_counts_are_bounded() -> None:
    counts = NonceCounts(cap=3)
    for n in ("a", "b", "c", "d"):
        assert counts.accept(n, 1)
    assert len(counts) == 3
    assert counts.accept("a", 1)  # evicted, so no longer remembered
    assert not counts.accept("d", 1)


def test_stale_nonces_are_forgotten_oldest_first() -> None:
    nonces = Nonces(SECRET)
    counts = NonceCounts()
    old = [nonces.issue(1000.0 + i, IP) for i in range(3)]
    fresh = nonces.issue(2000.0, IP)
    for nonce in (*old, fresh):
        assert counts.accept(nonce, 1)
    counts.forget_stale(1002.0)  # issued before: the first two
    assert len(counts) == 2
    assert counts.accept(old[0], 1)  # forgotten (it is stale: verify never gets here)
    assert not counts.accept(fresh, 1)  # still remembered: a replay
    counts.forget_stale(1e9)
    assert len(counts) == 0


def test_challenges_sha256_first_and_stale(auth: DigestAuth) -> None:
    values = auth.challenges(0, IP, stale=True)
    assert [DigestCredentials.parse(v).algorithm for v in values] == ["SHA-256", "MD5"]
    parsed = DigestCredentials.parse(values[0])
    assert parsed.params["stale"] == "true" and parsed.params["qop"] == "auth"
    assert auth.nonces.check(parsed.params["nonce"], 0, IP) is NonceStatus.VALID
    assert auth.nonces.check(parsed.params["nonce"], 0, OTHER_IP) is NonceStatus.INVALID
    assert "stale" not in DigestCredentials.parse(auth.challenges(0, IP)[1]).params


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from(list('ab."\\\x00 ,=')), max_size=8), st.booleans())
def test_challenges_are_format_challenge_with_the_nonce(realm: str, stale: bool) -> None:
    # The challenge values are built from cached templates: each must be exactly what
    # format_challenge gives for the nonce issued, whatever the realm.
    auth = DigestAuth(realm, Nonces(SECRET), (Algorithm.MD5, Algorithm.SHA256_SESS))
    values = auth.challenges(7.0, IP, stale=stale)
    nonces = {m.group(1) for v in values for m in re.finditer(r'nonce="([0-9a-f.]+)"', v)}
    assert len(nonces) == 1
    nonce = nonces.pop()
    assert auth.nonces.check(nonce, 7.0, IP) is NonceStatus.VALID
    assert values == [format_challenge(realm, nonce, algorithm=a, stale=stale)
                      for a in ("MD5", "SHA-256-sess")]


def test_proxy_authorization_flow(auth: DigestAuth) -> None:
    challenge_name, credentials_name = HEADERS[407]
    assert challenge_name == "Proxy-Authenticate"
    invite = Request(method="INVITE", uri="sip:0044123@pbx.example.com")
    creds = credentials(auth, 0, method="INVITE")
    value = "Digest " + ", ".join(
        f'{k}="{v}"' if k not in ("qop", "nc", "algorithm") else f"{k}={v}"
        for k, v in creds.params.items()
    )
    invite.add(credentials_name, value)
    parsed = DigestCredentials.parse(invite.get("proxy-authorization") or "")
    assert check(auth, parsed, 0, method="INVITE") is Verdict.ACCEPTED
    assert invite.get("authorization") is None
