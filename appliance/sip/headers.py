"""Typed views over raw header values: parsed only when code touches them.

A ``Message`` keeps each header as its raw text (``message.py``); the functions here turn
those values into ``Via``, ``NameAddr``, ``CSeq`` and digest parameter objects, and back.
Every list header accepts both forms RFC 3261 §7.3.1 allows: several comma-separated
values in one line and repeated lines. Commas inside quoted strings or ``<...>`` never
split. All parse errors are ``SipParseError`` (400).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from appliance.sip.errors import SipParseError
from appliance.sip.uri import (
    Params,
    SipUri,
    TelUri,
    format_params,
    has_param,
    param,
    parse_uri,
    remove_param,
    set_param,
    split_hostport,
)

MAGIC_COOKIE: Final = "z9hG4bK"  # RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with it
# RFC 3261 §25.1 token: methods, header names, unquoted display-name words.
TOKEN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "-.!%*_+`'~")


def is_utf8(text: str) -> bool:
    """Whether TEXT holds no lone surrogate: the parser keeps a byte that was no UTF-8 on the
    wire as one (surrogateescape), so that it goes out unchanged, but any strict encoding of
    it (a hash, a digest, a database write) fails."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_rfc3261_branch(branch: str | None) -> bool:
    """A branch that identifies a transaction on its own: the magic cookie *and* something
    after it. The bare cookie claims RFC 3261 but identifies nothing, so such requests fall
    back to the RFC 2543 key (RFC 4475 §3.2.1 badbranch): two of them from one phone must
    not be taken for retransmissions of each other."""
    return branch is not None and len(branch) > len(MAGIC_COOKIE) and \
        branch.startswith(MAGIC_COOKIE)


def split_list(value: str) -> list[str]:
    """Split a header value at top-level commas; empty elements are dropped."""
    if "," not in value:  # one element whatever the quoting: the common case
        value = value.strip()
        return [value] if value else []
    if '"' not in value and "<" not in value:  # no quoting: every comma splits
        return [item for item in (part.strip() for part in value.split(",")) if item]
    items: list[str] = []
    start = 0
    quoted = escaped = False
    angle = 0
    for i, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == "," and not angle:
            items.append(value[start:i].strip())
            start = i + 1
    items.append(value[start:].strip())
    return [item for item in items if item]


def split_values(values: Iterable[str]) -> list[str]:
    """Every list element of every line, in order."""
    return [item for value in values for item in split_list(value)]


def _split_semicolons(text: str) -> list[str]:
    if '"' not in text:  # no quoted strings: every semicolon splits
        return text.split(";")
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ";":
            parts.append(text[start:i])
            start = i + 1
    if quoted:
        raise SipParseError(f"unterminated quoted string in {text!r}")
    parts.append(text[start:])
    return parts


_NOT_IN_PARAM_NAME: Final = frozenset(' \t"<>')  # characters a parameter name may not hold


def parse_params(text: str) -> Params:
    """``;a=b;c;d="x;y"`` → ``[("a", "b"), ("c", None), ("d", '"x;y"')]`` (values raw)."""
    params: Params = []
    for item in _split_semicolons(text):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not name or not _NOT_IN_PARAM_NAME.isdisjoint(name):
            raise SipParseError(f"bad header parameter {item!r}")
        params.append((name, value.strip() if sep else None))
    return params


def quote(text: str) -> str:
    """A quoted-string with ``"`` and ``\\`` escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote(text: str) -> str:
    """Undo ``quote``; a value that is not quoted is returned unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return _UNESCAPE_RE.sub(r"\1", inner) if "\\" in inner else inner
    return text


_UNESCAPE_RE: Final = re.compile(r"\\(.)")


# --- Via (RFC 3261 §20.42, RFC 3581) ---------------------------------------------------

_VIA_RE: Final = re.compile(
    r"^\s*([!-~]+?)\s*/\s*([!-~]+?)\s*/\s*([A-Za-z0-9.!%*_+`'~-]+)\s+([^;(]+?)\s*(;.*)?$",
    re.DOTALL,
)
_COMMENT_RE: Final = re.compile(r"\([^)]*\)")
_SPACE_RE: Final = re.compile(r"\s+")


@dataclass(init=False)
class Via:
    host: str
    port: int | None
    transport: str
    params: Params
    protocol: str

    # Written out (init=False): compiled, the dataclass-made __init__ would run interpreted.
    def __init__(self, host: str, port: int | None = None, transport: str = "UDP",
                 params: Params | None = None, protocol: str = "SIP/2.0") -> None:
        self.host = host
        self.port = port
        self.transport = transport
        self.params = [] if params is None else params
        self.protocol = protocol

    @classmethod
    def parse(cls, value: str) -> Via:
        host, port, transport, params, protocol = _via_fields(value)
        return cls(host=host, port=port, transport=transport, params=list(params),
                   protocol=protocol)

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    def set_param(self, name: str, value: str | None) -> None:
        set_param(self.params, name, value)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def rport(self) -> int | None:
        """The filled-in rport, None when absent *or* empty (see ``wants_rport``)."""
        value = self.param("rport")
        return int(value) if value and value.isdigit() else None

    @property
    def wants_rport(self) -> bool:
        return self.has_param("rport")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def response_target(self) -> tuple[str, int] | None:
        """Where a response to this Via goes (RFC 3261 §18.2.2, RFC 3581 §4): ``received``
        and ``rport`` when filled in, else sent-by. ``maddr`` is ignored and None is
        returned for a broadcast or multicast target: we never answer those (sip.md §3)."""
        host = self.received or self.host
        default = 5061 if self.transport in ("TLS", "WSS") else 5060
        port = self.rport or self.port or default
        if _never_answered(host.strip("[]")):
            return None
        return host, port  # an address, or a name the transport resolves

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


@functools.lru_cache(maxsize=1024)
def unreachable(host: str) -> bool:
    """A destination never sent to or answered: a broadcast, multicast or unspecified
    address (a name is not; IPv6 may come in brackets)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    ip = _ipv4_form(ip)  # what a dual-stack socket sends to (``::ffff:0.0.0.0``)
    return ip.is_multicast or ip.is_unspecified or ip == _BROADCAST


_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")


def _ipv4_form(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
               ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped if mapped is not None else ip


@functools.lru_cache(maxsize=1024)
def _never_answered(host: str) -> bool:
    """A broadcast or multicast address (a name is not)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    ip = _ipv4_form(ip)
    return ip.is_multicast or ip == _BROADCAST


# Parses by value, cached: the responses of one transaction carry the same Vias, and the
# messages of one dialog the same From and To. Each caller gets its own mutable object built
# from the cached immutable fields; errors are not cached. Bounded (the values come off the
# wire): a value not seen recently is simply parsed again.
_PARSE_CACHE: Final = 4096


@functools.lru_cache(maxsize=_PARSE_CACHE)
def _via_fields(value: str) -> tuple[str, int | None, str, tuple[tuple[str, str | None], ...],
                                     str]:
    match = _VIA_RE.match(_COMMENT_RE.sub("", value) if "(" in value else value)
    if not match:
        raise SipParseError(f"bad Via {value!r}")
    name, version, transport, sent_by, params = match.groups()
    host, port = split_hostport(_SPACE_RE.sub("", sent_by))
    return host, port, transport.upper(), tuple(parse_params(params or "")), f"{name}/{version}"


def clear_parse_caches() -> None:
    """Empty the by-value parse caches (after a burst: their entries, allocated late in the
    load, would otherwise pin the memory pages around them until pushed out)."""
    _via_fields.cache_clear()
    _name_addr_fields.cache_clear()
    CSeq.parse.cache_clear()


def parse_vias(values: Iterable[str]) -> list[Via]:
    return [Via.parse(item) for item in split_values(values)]


# --- name-addr / addr-spec (From, To, Contact, Route, Record-Route) --------------------


@dataclass(init=False)
class NameAddr:
    """``"Display" <uri>;params`` or a bare addr-spec. ``uri`` is kept as raw text.

    RFC 3261 §20.10: without angle brackets every ``;param`` after the URI belongs to the
    header, not to the URI; ``str()`` therefore always emits angle brackets when the URI
    carries parameters or headers of its own.
    """

    uri: str
    display: str | None
    params: Params

    # Written out (init=False): compiled, the dataclass-made __init__ would run interpreted.
    def __init__(self, uri: str, display: str | None = None, params: Params | None = None
                 ) -> None:
        self.uri = uri
        self.display = display
        self.params = [] if params is None else params

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        uri, display, params = _name_addr_fields(value)
        return cls(uri=uri, display=display, params=list(params))

    @classmethod
    def _parse(cls, value: str) -> NameAddr:
        text = value.strip()
        if text == "*":
            return cls(uri="*")
        display: str | None = None
        if text.startswith('"'):
            i, escaped = 1, False
            while i < len(text):
                ch = text[i]
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    break
                i += 1
            else:
                raise SipParseError(f"unterminated display name in {value!r}")
            display = unquote(text[: i + 1])
            text = text[i + 1 :].lstrip()
            if not text.startswith("<"):
                raise SipParseError(f"quoted display name without <uri> in {value!r}")
        lt = text.find("<")
        if lt >= 0:
            if display is None:
                display = text[:lt].strip() or None
                if display is not None and not _unquoted_display_ok(display):
                    raise SipParseError(f"unquoted display name with separators in {value!r}")
            gt = text.find(">", lt)
            if gt < 0:
                raise SipParseError(f"unterminated <uri> in {value!r}")
            uri, rest = text[lt + 1 : gt], text[gt + 1 :]
            if uri != uri.strip():  # LAQUOT/RAQUOT take no inner LWS (RFC 4475 §3.1.2.14)
                raise SipParseError(f"whitespace inside <uri> in {value!r}")
            if rest.strip() and not rest.strip().startswith(";"):
                raise SipParseError(f"junk after <uri> in {value!r}")
        else:
            uri, _, rest = text.partition(";")
            rest = ";" + rest if rest else ""
            uri = uri.strip()
            if " " in uri or "\t" in uri:
                raise SipParseError(f"bad addr-spec {value!r}")
            if "?" in uri:
                # An addr-spec with headers must be in <> (RFC 3261 §20.10; RFC 4475
                # §3.1.2.13 regbadct): without them there is no telling where it ends.
                raise SipParseError(f"addr-spec with headers outside <> in {value!r}")
        if not uri:
            raise SipParseError(f"empty URI in {value!r}")
        return cls(uri=uri, display=display, params=parse_params(rest))

    @property
    def is_wildcard(self) -> bool:
        return self.uri == "*"

    def parsed_uri(self) -> SipUri | TelUri:
        return parse_uri(self.uri)

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    def set_param(self, name: str, value: str | None) -> None:
        set_param(self.params, name, value)

    def remove_param(self, name: str) -> None:
        remove_param(self.params, name)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    @property
    def expires(self) -> int | None:
        """Contact ``expires`` param; None when absent or not a number."""
        value = self.param("expires")
        return int(value) if value and value.isdigit() else None

    @property
    def q(self) -> float | None:
        value = self.param("q")
        try:
            return float(value) if value else None
        except ValueError:
            return None

    def __str__(self) -> str:
        if self.is_wildcard:
            return "*"
        text = f"<{self.uri}>"
        if self.display is not None:
            text = f"{quote(self.display)} {text}"
        return text + format_params(self.params)


# Characters that give an unquoted display name a second reading: a list separator, a quote,
# the start of params or of a URI scheme.
_DISPLAY_AMBIGUOUS: Final = frozenset(',";:')


def _unquoted_display_ok(display: str) -> bool:
    """Unquoted, RFC 3261 §25.1 allows tokens and LWS only. We refuse just what makes the
    value ambiguous — a comma (RFC 4475 §3.1.2.15 baddn), a quote, a semicolon or a colon —
    and let the rest through: phones do send "John (Desk) <sip:...>", "bob@office <sip:...>"
    or UTF-8 names unquoted, and where such a name ends is never in doubt."""
    return _DISPLAY_AMBIGUOUS.isdisjoint(display)


@functools.lru_cache(maxsize=_PARSE_CACHE)
def _name_addr_fields(value: str) -> tuple[str, str | None, tuple[tuple[str, str | None], ...]]:
    parsed = NameAddr._parse(value)
    return parsed.uri, parsed.display, tuple(parsed.params)


def parse_name_addrs(values: Iterable[str]) -> list[NameAddr]:
    """Contact, Route and Record-Route lists."""
    if isinstance(values, (list, tuple)) and len(values) == 1 and "," not in values[0]:
        # One line of one element (a REGISTER's usual Contact): ``split_values`` would
        # give it stripped, or nothing when it is blank.
        item = values[0].strip()
        return [NameAddr.parse(item)] if item else []
    return [NameAddr.parse(item) for item in split_values(values)]


# --- CSeq -----------------------------------------------------------------------------

CSEQ_LIMIT: Final = 2**31  # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    @classmethod
    @functools.lru_cache(maxsize=_PARSE_CACHE)  # noqa: B019 - a bounded cache of immutables
    def parse(cls, value: str) -> CSeq:
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
            raise SipParseError(f"bad CSeq {value!r}")
        number = int(parts[0])
        if number >= CSEQ_LIMIT:
            raise SipParseError(f"CSeq number {number} not below 2**31")
        return cls(number, parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# --- Digest credentials and challenges (RFC 7616 §3.3-3.4) ------------------------------


_DIGEST_ITEM_RE: Final = re.compile(r'(?:[^,"]|"[^"]*")+')
# name=token or name="quoted" (no escapes). The list regex only checks the shape, so it
# captures nothing and never backtracks (no character of a name, a value or the blanks
# around "=" can end one); the pair regex then reads the quoted and the token value apart.
_DIGEST_PAIR: Final = r'[A-Za-z0-9_.!%*+`\'~-]++[ \t]*+=[ \t]*+(?:"[^"\\]*+"|[^\s,"=\\]++)'
_DIGEST_PAIR_RE: Final = re.compile(
    r'([A-Za-z0-9_.!%*+`\'~-]+)[ \t]*=[ \t]*(?:"([^"\\]*)"|([^\s,"=\\]+))')
_DIGEST_LIST_RE: Final = re.compile(
    rf"[ \t]*+{_DIGEST_PAIR}[ \t]*+(?:,[ \t]*+{_DIGEST_PAIR}[ \t]*+)*+")


def _split_digest_pairs(text: str) -> tuple[dict[str, str], int] | None:
    """The params of TEXT, a list ``_DIGEST_LIST_RE`` matched, split at its commas, and
    how many pairs there were; None when a quoted value holds a comma (a part opens a quote
    it does not close), which only the pair regex reads right."""
    params: dict[str, str] = {}
    parts = text.split(",")
    for part in parts:
        name, _, value = part.partition("=")
        value = value.strip()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                return None
            value = value[1:-1]
        params[name.strip().lower()] = value
    return params, len(parts)


def is_digest(value: str) -> bool:
    """Whether an Authorization-style VALUE uses the Digest scheme (the only one we read:
    credentials in another scheme are as good as none, RFC 4475 §3.3.7)."""
    return value.strip().partition(" ")[0].lower() == "digest"


@dataclass(init=False)
class DigestCredentials:
    """An ``Authorization``/``Proxy-Authorization`` value; param names lower-cased (never
    changed once parsed)."""

    params: dict[str, str]

    # Written out (init=False): compiled, the dataclass-made __init__ would run interpreted.
    def __init__(self, params: dict[str, str]) -> None:
        self.params = params

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        if not is_utf8(value):
            # Every digest parameter is a token, hex or a quoted string, none of which can
            # hold such a byte (RFC 3261 §25.1); and each is hashed or compared as UTF-8.
            raise SipParseError("digest credentials hold bytes that are not UTF-8")
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "digest":
            raise SipParseError(f"unsupported auth scheme {scheme!r}")
        params: dict[str, str] = {}
        # No '<' and no backslash, balanced quotes: quoted strings cannot hide a comma in any
        # other way, so one regex finds the same elements as split_list's character walk.
        if "<" in rest or "\\" in rest or rest.count('"') % 2:
            items = split_list(rest)
        elif _DIGEST_LIST_RE.fullmatch(rest):
            # The shape every phone sends (name=token or name="quoted", commas between):
            # the same params as the general loop below, split at the commas (string
            # methods beat a second regex pass) unless a quoted value holds one.
            split = _split_digest_pairs(rest)
            if split is not None:
                params, count = split
            else:
                pairs = _DIGEST_PAIR_RE.findall(rest)
                params = {name.lower(): quoted or token for name, quoted, token in pairs}
                count = len(pairs)
            if len(params) != count:
                seen: set[str] = set()
                for name, _, _ in _DIGEST_PAIR_RE.findall(rest):
                    if (key := name.lower()) in seen:
                        raise SipParseError(f"repeated digest parameter {key!r}")
                    seen.add(key)
            return cls(params)
        else:
            items = [i for i in (m.strip() for m in _DIGEST_ITEM_RE.findall(rest)) if i]
        for item in items:
            name, sep, raw = item.partition("=")
            if not sep or not name.strip():
                raise SipParseError(f"bad digest parameter {item!r}")
            key = name.strip().lower()
            if key in params:
                raise SipParseError(f"repeated digest parameter {key!r}")
            params[key] = unquote(raw.strip())
        return cls(params)

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    @property
    def username(self) -> str | None:
        return self.params.get("username")

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def nonce(self) -> str | None:
        return self.params.get("nonce")

    @property
    def algorithm(self) -> str:
        return self.params.get("algorithm", "MD5")


def format_challenge(
    realm: str,
    nonce: str,
    *,
    algorithm: str = "MD5",
    qop: str | None = "auth",
    stale: bool = False,
    opaque: str | None = None,
) -> str:
    """A ``WWW-Authenticate``/``Proxy-Authenticate`` value."""
    parts = [f"realm={quote(realm)}", f"nonce={quote(nonce)}"]
    if opaque is not None:
        parts.append(f"opaque={quote(opaque)}")
    if stale:
        parts.append("stale=true")
    parts.append(f"algorithm={algorithm}")
    if qop:
        parts.append(f"qop={quote(qop)}")
    return "Digest " + ", ".join(parts)
