"""SIP, SIPS (RFC 3261 §19.1) and tel (RFC 3966) URIs: parse and format.

``parse_uri(text)`` returns a ``SipUri`` or a ``TelUri``; ``str(uri)`` formats it back.
Users and passwords are held unescaped and re-escaped on output, so the round trip is
semantic (``%61`` becomes ``a``) rather than byte-exact: a proxy that does not rewrite a
URI should forward the original text, not a re-formatted one. Parameters and headers are
kept raw, in order, with case-insensitive lookup. IPv6 hosts keep their brackets
(``[2001:db8::1]``) so ``host`` + ``:port`` is always unambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from appliance.sip.errors import SipParseError

SCHEMES: Final = frozenset({"sip", "sips", "tel"})

Params = list[tuple[str, str | None]]

# RFC 3261 §25.1: unreserved = alphanum / mark; user-unreserved and the password set add a
# few more. Everything else in a user or password must be %-escaped.
_UNRESERVED: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()"
_USER_SAFE: Final = frozenset(_UNRESERVED + "&=+$,;?/")
_PASSWORD_SAFE: Final = frozenset(_UNRESERVED + "&=+$,")
_HOST_RE: Final = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")
_ESCAPE_RE: Final = re.compile(r"%([0-9A-Fa-f]{2})")


def unescape(text: str) -> str:
    """Decode %XX escapes (as UTF-8, invalid sequences kept escaped)."""
    if "%" not in text:
        return text
    raw = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def escape(text: str, safe: frozenset[str]) -> str:
    """%-escape every UTF-8 byte of TEXT outside SAFE."""
    out: list[str] = []
    for ch in text:
        if ch in safe:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def param(params: Params, name: str) -> str | None:
    """The value of parameter NAME (case-insensitive); None when absent or valueless."""
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return value
    return None


def has_param(params: Params, name: str) -> bool:
    lname = name.lower()
    return any(key.lower() == lname for key, _ in params)


def set_param(params: Params, name: str, value: str | None) -> None:
    """Replace parameter NAME in place, or append it."""
    lname = name.lower()
    for i, (key, _) in enumerate(params):
        if key.lower() == lname:
            params[i] = (key, value)
            return
    params.append((name, value))


def remove_param(params: Params, name: str) -> None:
    lname = name.lower()
    params[:] = [(k, v) for k, v in params if k.lower() != lname]


def format_params(params: Params) -> str:
    return "".join([f";{k}" if v is None else f";{k}={v}" for k, v in params])


def _parse_uri_params(text: str) -> Params:
    out: Params = []
    for item in text.split(";"):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not name:
            raise SipParseError(f"empty URI parameter name in {text!r}")
        out.append((name, value if sep else None))
    return out


def hostport(address: tuple[str, int]) -> str:
    """ADDRESS as ``host:port``, an IPv6 address in brackets so that the port stays apart."""
    host, port = address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def split_hostport(text: str) -> tuple[str, int | None]:
    """``host[:port]`` with an optional bracketed IPv6 host. Raises SipParseError."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SipParseError(f"junk after IPv6 host in {text!r}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
    if not _HOST_RE.match(host):
        raise SipParseError(f"bad host {host!r}")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        raise SipParseError(f"bad port {port_text!r}")
    return host, int(port_text)


@dataclass(init=False)
class SipUri:
    """``sip:`` or ``sips:`` URI."""

    host: str
    scheme: str
    user: str | None
    password: str | None
    port: int | None
    params: Params
    headers: list[tuple[str, str]]

    # Written out (init=False): compiled, the dataclass-made __init__ would run interpreted.
    def __init__(self, host: str, scheme: str = "sip", user: str | None = None,
                 password: str | None = None, port: int | None = None,
                 params: Params | None = None, headers: list[tuple[str, str]] | None = None
                 ) -> None:
        self.host = host
        self.scheme = scheme
        self.user = user
        self.password = password
        self.port = port
        self.params = [] if params is None else params
        self.headers = [] if headers is None else headers

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = escape(self.user, _USER_SAFE)
            if self.password is not None:
                userinfo += ":" + escape(self.password, _PASSWORD_SAFE)
            userinfo += "@"
        text = f"{self.scheme}:{userinfo}{self.hostport}{format_params(self.params)}"
        if self.headers:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.headers)
        return text


@dataclass
class TelUri:
    """``tel:`` URI (RFC 3966): a number plus parameters such as ``phone-context``."""

    number: str
    params: Params = field(default_factory=list)
    scheme: str = "tel"

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def __str__(self) -> str:
        return f"tel:{self.number}{format_params(self.params)}"


def uri_scheme(text: str) -> str | None:
    """The lower-cased scheme of TEXT, or None when it has none."""
    scheme, sep, _ = text.partition(":")
    if not sep or not scheme:
        return None
    lower = scheme.lower()
    if lower in SCHEMES:  # letters only: the checks below pass (the common case, fast)
        return lower
    if not scheme[0].isalpha():
        return None
    if not all(c.isalnum() or c in "+-." for c in scheme):
        return None
    return scheme.lower()


_ILLEGAL_RE: Final = re.compile('[ \t\r\n<>"]')


def parse_uri(text: str) -> SipUri | TelUri:
    """Parse TEXT; SipParseError(416) for an unsupported scheme, (400) when malformed."""
    scheme = uri_scheme(text)
    if scheme is None:
        raise SipParseError(f"URI without scheme: {text!r}")
    if scheme not in SCHEMES:
        raise SipParseError(f"unsupported URI scheme {scheme!r}", 416)
    rest = text[len(scheme) + 1 :]
    if _ILLEGAL_RE.search(rest):
        raise SipParseError(f"illegal character in URI {text!r}")
    if scheme == "tel":
        number, _, params = rest.partition(";")
        if not number:
            raise SipParseError("tel URI without a number")
        return TelUri(number=number, params=_parse_uri_params(params))

    # userinfo first: a user may hold "?" and ";" (RFC 3261 §25.1 user-unreserved, RFC 4475
    # §3.1.1.2), but neither a user nor a password may hold "@", so the first one ends it.
    user = password = None
    userinfo: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
    rest, qmark, header_text = rest.partition("?")
    headers: list[tuple[str, str]] = []
    if qmark:
        for item in header_text.split("&"):
            name, _, value = item.partition("=")
            if not name:
                raise SipParseError(f"empty URI header name in {text!r}")
            headers.append((name, value))
    if userinfo is not None:
        if ":" in userinfo:
            raw_user, raw_password = userinfo.split(":", 1)
            password = unescape(raw_password)
        else:
            raw_user = userinfo
        if not raw_user:
            raise SipParseError(f"empty user in {text!r}")
        user = unescape(raw_user)
    hostport, _, params = rest.partition(";")
    if not hostport:
        raise SipParseError(f"URI without host: {text!r}")
    host, port = split_hostport(hostport)
    return SipUri(
        host=host,
        scheme=scheme,
        user=user,
        password=password,
        port=port,
        params=_parse_uri_params(params),
        headers=headers,
    )


def parse_sip_uri(text: str) -> SipUri:
    """Like ``parse_uri`` but only ``sip:``/``sips:`` (416 otherwise)."""
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise SipParseError(f"not a SIP URI: {text!r}", 416)
    return uri


# RFC 3261 §19.1.4: these URI parameters must match even when only one URI carries them;
# any other parameter counts only when both carry it.
_ALWAYS_COMPARED: Final = frozenset({"user", "ttl", "method", "maddr"})


def same_uri(first: str, second: str, *, default_port: bool = False) -> bool:
    """Whether two URI texts name the same resource by RFC 3261 §19.1.4: scheme and host
    case-insensitive, user and password exact, the port explicit or absent in both,
    parameters compared as that section says, headers all equal. A text that does not
    parse equals only itself. DEFAULT_PORT: an absent port equals the scheme's default
    (5060, 5061 for sips), which §19.1.4 does not allow."""
    if first == second:
        return True
    try:
        a, b = parse_uri(first), parse_uri(second)
    except SipParseError:
        return False
    if not isinstance(a, SipUri) or not isinstance(b, SipUri):
        return False
    if (a.scheme.lower(), a.user, a.password, a.host.lower()) != \
            (b.scheme.lower(), b.user, b.password, b.host.lower()):
        return False
    if default_port:
        default = 5061 if a.scheme.lower() == "sips" else 5060
        if (a.port or default) != (b.port or default):
            return False
    elif a.port != b.port:
        return False
    params_a = {k.lower(): (v or "").lower() for k, v in a.params}
    params_b = {k.lower(): (v or "").lower() for k, v in b.params}
    for name in params_a.keys() | params_b.keys():
        if name in params_a and name in params_b:
            if params_a[name] != params_b[name]:
                return False
        elif name in _ALWAYS_COMPARED:
            return False
    return sorted((k.lower(), v) for k, v in a.headers) == \
        sorted((k.lower(), v) for k, v in b.headers)
