"""SIP messages: ``parse_message(data)`` ↔ ``bytes(msg)``.

Theory of operation. A message is a start line, an *ordered list of raw headers* and a body
(the Kamailio/reSIProcate model, sip.md §2.2). Each ``Header`` keeps its canonical lower-case
name (compact forms mapped), its unfolded value and, when it came off the wire, the exact
original bytes of its line(s). Serialisation re-emits those original bytes, so a proxy forwards
every header it did not touch byte-identical, and only the edits it makes (prepend Via, pop
Route, ...) are freshly formatted. Content-Length is always recomputed from the body.

Typed views (``msg.vias``, ``msg.cseq``, ...) are parsed from the raw values on access.
Validation follows one table of RFC rules → status (``_REQUEST_RULES``), Kamailio ``sanity``
style. A datagram is always one message: bytes beyond Content-Length are ignored, a body
shorter than Content-Length is an error. Stream framing is ``framing.py``'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from appliance.sip.errors import SipParseError
from appliance.sip.headers import (
    TOKEN_CHARS,
    CSeq,
    NameAddr,
    Via,
    is_utf8,
    parse_vias,
    split_list,
    split_values,
    unreachable,
)
from appliance.sip.uri import SCHEMES, uri_scheme

# The largest message we accept on any transport. pjsip caps packets at 4000 bytes
# (PJSIP_MAX_PKT_LEN) and Kamailio's BUF_SIZE is 65535; a UDP datagram cannot exceed 65535
# bytes anyway, so this is the most a peer can make us hold per message.
MAX_MESSAGE = 65535
VERSION = "SIP/2.0"

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Spelling used when *we* write a header; names not listed are written as the caller gave them.
_WIRE_NAMES = {
    name.lower(): name
    for name in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Length",
        "Content-Type", "Route", "Record-Route", "Expires", "Min-Expires", "Allow", "Accept",
        "Supported", "Require", "Proxy-Require", "Unsupported", "Server", "User-Agent", "Date",
        "WWW-Authenticate", "Proxy-Authenticate", "Authorization", "Proxy-Authorization",
        "Retry-After", "Event", "Allow-Events", "Subject", "Content-Encoding", "Refer-To",
        "Referred-By", "Session-Expires", "Identity", "Accept-Contact", "Reject-Contact",
        "Request-Disposition", "Warning", "Timestamp", "Path", "Reason",
    )
}

# Headers that may appear at most once (RFC 3261 §7.3.1: only list headers may repeat).
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-length")

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    603: "Decline",
}


# Spellings seen -> canonical name. Bounded: header names come off the wire, so past the cap
# new spellings are just not remembered (a slower path, never a growing table).
_CANONICAL: dict[str, str] = {}
_MAX_CACHED_NAMES = 512


def canonical_name(name: str) -> str:
    canon = _CANONICAL.get(name)
    if canon is None:
        lname = name.strip().lower()
        canon = COMPACT_FORMS.get(lname, lname)
        if len(_CANONICAL) < _MAX_CACHED_NAMES:
            _CANONICAL[name] = canon
    return canon


_V = TypeVar("_V")


def _encode(text: str) -> bytes:
    # surrogateescape: bytes that were not UTF-8 on the way in go out unchanged.
    return text.encode("utf-8", "surrogateescape")


class Header(NamedTuple):
    """One header line. A tuple (immutable, and the cheapest object Python builds: a message
    has a dozen of these and the parser makes them for every datagram)."""

    name: str  # canonical, lower-case, compact form expanded
    value: str  # unfolded, surrounding whitespace stripped
    wire_name: str = ""
    raw: bytes | None = None  # the original line(s) without the final CRLF

    @classmethod
    def make(cls, name: str, value: str) -> Header:
        """A header we write: lower-case or compact names get the usual spelling."""
        canon = canonical_name(name)
        wire = name if name != name.lower() else _WIRE_NAMES.get(canon, name)
        return cls(canon, value, wire)

    def __bytes__(self) -> bytes:  # type: ignore[override]  # tuple has no __bytes__ to keep
        if self.raw is not None:
            return self.raw
        return _encode(f"{self.wire_name}: {self.value}")


@dataclass
class Message:
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    # The parsed top Via and the (immutable) header line it came from: the transport, the
    # transaction layer and the services each ask for it, and parsing it is not free.
    _top_via: tuple[Header, Via | None] | None = field(default=None, repr=False,
                                                        compare=False, init=False)
    # Typed views of single-valued headers (CSeq, From, To, ...), each with the header line it
    # was parsed from: a view is reused only while that very line is still the first of its
    # name, so edits through any path (set, remove, a new headers list) are always seen.
    # Views are shared: treat them as read-only (copy a NameAddr before changing it).
    _views: dict[str, tuple[Header, Any]] | None = field(default=None, repr=False,
                                                         compare=False, init=False)

    # --- raw header access -------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """Value of the first NAME line (any spelling), or None."""
        canon = canonical_name(name)
        for header in self.headers:
            if header.name == canon:
                return header.value
        return None

    def get_all(self, name: str) -> list[str]:
        """Values of every NAME line, in order (not comma-split: see ``values``)."""
        canon = canonical_name(name)
        return [h.value for h in self.headers if h.name == canon]

    def values(self, name: str) -> list[str]:
        """Every comma-separated element of every NAME line, in order."""
        return [item for value in self.get_all(name) for item in split_list(value)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def add(self, name: str, value: str) -> None:
        """Append a NAME line at the end."""
        self.headers.append(Header.make(name, value))

    def prepend(self, name: str, value: str) -> None:
        """Insert a NAME line above the first existing NAME line (or at the top)."""
        canon = canonical_name(name)
        index = next((i for i, h in enumerate(self.headers) if h.name == canon), 0)
        self.headers.insert(index, Header.make(name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every NAME line by one, at the position of the first."""
        canon = canonical_name(name)
        index = next((i for i, h in enumerate(self.headers) if h.name == canon), None)
        self.remove(name)
        header = Header.make(name, value)
        if index is None:
            self.headers.append(header)
        else:
            self.headers.insert(index, header)

    def remove(self, name: str) -> int:
        """Drop every NAME line; returns how many were dropped."""
        canon = canonical_name(name)
        before = len(self.headers)
        self.headers = [h for h in self.headers if h.name != canon]
        return before - len(self.headers)

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first list element of NAME (top Via, top Route).

        A line holding several comma-separated elements is rewritten without the first
        one; the other lines stay byte-identical.
        """
        canon = canonical_name(name)
        for i, header in enumerate(self.headers):
            if header.name != canon:
                continue
            items = split_list(header.value)
            if len(items) <= 1:
                del self.headers[i]
                if items:
                    return items[0]
                continue
            self.headers[i] = Header(canon, ", ".join(items[1:]), header.wire_name or name)
            return items[0]
        return None

    # --- typed views (parsed on access, cached per header line) -------------------------
    def first(self, name: str) -> Header | None:
        """The first NAME line (canonical name), or None."""
        for header in self.headers:
            if header.name == name:
                return header
        return None

    def view(self, name: str, parse: Callable[[str], _V]) -> _V | None:
        """PARSE applied to the first NAME line's value (canonical NAME), cached; None when
        there is no such line. Parse errors propagate and are not cached."""
        header = self.first(name)
        if header is None:
            return None
        views = self._views
        if views is None:
            views = self._views = {}
        else:
            cached = views.get(name)
            if cached is not None and cached[0] is header:
                return cached[1]  # type: ignore[no-any-return]
        parsed = parse(header.value)
        views[name] = (header, parsed)
        return parsed

    @property
    def call_id(self) -> str | None:
        return self.get("call-id")

    @property
    def cseq(self) -> CSeq:
        cseq = self.view("cseq", CSeq.parse)
        if cseq is None:
            raise SipParseError("missing CSeq")
        return cseq

    @property
    def vias(self) -> list[Via]:
        return parse_vias(self.get_all("via"))

    @property
    def top_via(self) -> Via | None:
        first = self.first("via")
        if first is None:
            return None
        cached = self._top_via
        if cached is not None and cached[0] is first:
            return cached[1]
        items = split_list(first.value) or self.values("via")
        via = Via.parse(items[0]) if items else None
        self._top_via = (first, via)
        return via

    @property
    def from_(self) -> NameAddr:
        return _name_addr(self, "from")

    @property
    def to(self) -> NameAddr:
        return _name_addr(self, "to")

    # --- serialisation -----------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        length = str(len(self.body))
        lines = [_encode(self.start_line())]
        append = lines.append
        wrote_length = False
        for header in self.headers:
            raw = header.raw
            if header.name == "content-length":
                if wrote_length:
                    continue
                wrote_length = True
                if header.value != length or raw is None:
                    raw = _encode(f"{header.wire_name or 'Content-Length'}: {length}")
            if raw is None:
                raw = _encode(f"{header.wire_name}: {header.value}")
            append(raw)
        if not wrote_length:
            append(_encode(f"Content-Length: {length}"))
        append(b"")
        append(self.body)
        return b"\r\n".join(lines)


def _name_addr(msg: Message, name: str) -> NameAddr:
    parsed = msg.view(name, NameAddr.parse)
    if parsed is None:
        raise SipParseError(f"missing {name} header")
    return parsed


@dataclass
class Request(Message):
    method: str = ""
    uri: str = ""
    version: str = VERSION
    # transaction_keys.server_key's cache: the top Via it was computed from, and the key.
    _server_key: tuple[Any, tuple[str, ...]] | None = field(default=None, repr=False,
                                                            compare=False, init=False)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"


@dataclass
class Response(Message):
    status: int = 200
    reason: str = ""
    version: str = VERSION

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"


# --- parsing --------------------------------------------------------------------------


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Header block (start line included) and everything after the blank line."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return data[:crlf], data[crlf + 4 :]
    if lf >= 0:  # bare-LF messages: tolerated, as most stacks do
        return data[:lf], data[lf + 2 :]
    raise SipParseError("no blank line after the headers")


# The text before a header line's colon -> (canonical name, wire name), for names already
# checked once. Bounded like _CANONICAL: the names come off the wire.
_HEADER_NAMES: dict[str, tuple[str, str]] = {}


def _read_block(block: bytes) -> list[Header]:
    """The header lines of BLOCK (start line excluded) as ``Header`` values.

    The common shape — CRLF line ends, no folding — takes a fast path: one split, one decode
    per line and a name already checked once. Anything else goes through ``_read_headers``,
    the general reader; both give the same headers.
    """
    if not block:
        return []
    if (block[:1] in (b" ", b"\t") or b"\n " in block or b"\n\t" in block
            or block.count(b"\n") != block.count(b"\r\n") or block.endswith(b"\r")):
        return _read_headers(block.split(b"\n"))
    headers: list[Header] = []
    append = headers.append
    names = _HEADER_NAMES
    for line in block.split(b"\r\n"):
        text = line.decode("utf-8", "surrogateescape")
        name, colon, value = text.partition(":")
        known = names.get(name) if colon else None
        if known is None:
            wire = name.rstrip(" \t")
            if not colon or not wire or not set(wire) <= TOKEN_CHARS:
                raise SipParseError(f"bad header line {text[:40]!r}", headers=_pairs(headers))
            known = (canonical_name(wire), wire)
            if len(names) < _MAX_CACHED_NAMES:
                names[name] = known
        append(Header(known[0], value.strip(), known[1], line))
    return headers


def _read_headers(lines: list[bytes]) -> list[Header]:
    headers: list[Header] = []
    raw_lines: list[bytes] = []

    def close() -> None:
        if not raw_lines:
            return
        first = raw_lines[0].decode("utf-8", "surrogateescape")
        name, colon, value = first.partition(":")
        wire = name.rstrip(" \t")
        if not colon or not wire or not set(wire) <= TOKEN_CHARS:
            raise SipParseError(f"bad header line {first[:40]!r}", headers=_pairs(headers))
        parts = [value.strip()]
        parts += [r.decode("utf-8", "surrogateescape").strip() for r in raw_lines[1:]]
        value = " ".join(p for p in parts if p)
        headers.append(Header(canonical_name(wire), value, wire, b"\r\n".join(raw_lines)))
        raw_lines.clear()

    for line in lines:
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):  # folded continuation (RFC 3261 §7.3.1)
            if not raw_lines:
                raise SipParseError("continuation line before any header")
            raw_lines.append(line)
            continue
        close()
        raw_lines.append(line)
    close()
    return headers


def _pairs(headers: Iterable[Header]) -> list[tuple[str, str]]:
    return [(h.name, h.value) for h in headers]


def parse_message(data: bytes) -> Request | Response:
    """Parse one complete message (a datagram, or what ``framing`` cut from a stream)."""
    if len(data) > MAX_MESSAGE:
        raise SipParseError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}", 513)
    data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    head, rest = _split_head(data)
    start, _, block = head.partition(b"\n")
    start_line = start.removesuffix(b"\r").decode("utf-8", "surrogateescape")
    msg: Request | Response
    # A bad version or URI scheme is reported only after the headers are read, so that
    # error_response() can still answer 505/416 to the right Via.
    deferred: SipParseError | None = None
    if start_line[:4].upper() == "SIP/":
        msg = _parse_status_line(start_line)
    else:
        msg, deferred = _parse_request_line(start_line)
    method = msg.method if isinstance(msg, Request) else None
    try:
        msg.headers = _read_block(block)
        if deferred is not None:
            raise deferred
        msg.body = _body(msg, rest)
        _validate(msg)
    except SipParseError as err:
        err.method = method
        if not err.headers:
            err.headers = _pairs(msg.headers)
        raise
    return msg


def _parse_status_line(line: str) -> Response:
    parts = line.split(" ", 2)
    if len(parts) < 2:
        raise SipParseError(f"bad status line {line[:60]!r}")
    if parts[0].upper() != VERSION:
        raise SipParseError(f"unsupported version {parts[0][:20]!r}", 505)
    code = parts[1]
    if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
        raise SipParseError(f"bad status code {code!r}")
    return Response(status=int(code), reason=parts[2] if len(parts) > 2 else "")


def _parse_request_line(line: str) -> tuple[Request, SipParseError | None]:
    parts = line.split(" ")
    if not parts[0] or not set(parts[0]) <= TOKEN_CHARS:
        raise SipParseError(f"bad request line {line[:60]!r}")
    if len(parts) != 3:
        # A method, then SPs in the wrong places: LWS inside the Request-URI, several SPs
        # between the elements, SPs after the version (RFC 4475 §3.1.2.8-10). Still a
        # request: read its headers, so that it gets its 400 like any other bad request.
        request = Request(method=parts[0], uri=" ".join(parts[1:-1]), version=parts[-1])
        return request, SipParseError(f"bad request line {line[:60]!r}")
    method, uri, version = parts
    request = Request(method=method, uri=uri, version=version)
    if version.upper() != VERSION:  # case-insensitive (RFC 3261 §7.1)
        return request, SipParseError(f"unsupported version {version[:20]!r}", 505)
    scheme = uri_scheme(uri)
    if scheme is None:
        return request, SipParseError(f"bad Request-URI {uri[:60]!r}")
    if scheme not in SCHEMES:
        return request, SipParseError(f"unsupported URI scheme {scheme!r}", 416)
    if "?" in uri and scheme != "tel" and "?" in uri.split("@", 1)[-1]:
        # Headers have no place in a Request-URI (RFC 3261 §19.1.5); refusing them is what
        # RFC 4475 §3.1.2.11 (escruri) suggests, and they never reach a forwarded request.
        # (A "?" before the "@" is part of the user: RFC 4475 §3.1.1.2.)
        return request, SipParseError(f"headers in the Request-URI {uri[:60]!r}")
    return request, None


def _body(msg: Message, rest: bytes) -> bytes:
    lengths = msg.get_all("content-length")
    if not lengths:
        return rest  # allowed on datagrams: the body runs to the end (RFC 3261 §18.3)
    if len(lengths) > 1:
        raise SipParseError("more than one Content-Length")
    if not lengths[0].isdigit():
        raise SipParseError(f"bad Content-Length {lengths[0][:20]!r}")
    length = int(lengths[0])
    if length > len(rest):
        raise SipParseError(f"body shorter than Content-Length {length}")
    return rest[:length]  # extra bytes on a datagram are ignored (RFC 3261 §18.3)


def _missing(*names: str) -> Callable[[Message], bool]:
    return lambda m: any(m.get(n) is None for n in names)


def _cseq_bad(msg: Message) -> bool:
    try:
        cseq = msg.cseq
    except SipParseError:
        return True
    return isinstance(msg, Request) and cseq.method != msg.method


def _max_forwards_bad(msg: Message) -> bool:
    value = msg.get("max-forwards")
    return value is not None and not (value.isdigit() and len(value) <= 10)


def _repeated(msg: Message) -> bool:
    return any(len(msg.get_all(name)) > 1 for name in _SINGLE)


def _call_id_bad(value: str | None) -> bool:
    """An empty Call-ID, or one with a space or a control character: RFC 3261's `word`
    ["@" `word`] allows neither, and it keys our transactions and dialogs."""
    return not value or any(c <= " " or c == "\x7f" for c in value)


def _vias_bad(msg: Message) -> bool:
    try:
        return not msg.vias
    except SipParseError:
        return True


# The sanity table (sip.md §2.3): (rule, predicate that is True when the message breaks it).
# Every failure answers 400; 505/416/513 are decided earlier, on the start line and size.
_COMMON_RULES: tuple[tuple[str, Callable[[Message], bool]], ...] = (
    ("missing To, From, Call-ID, CSeq or Via", _missing("to", "from", "call-id", "cseq", "via")),
    ("a single-valued header appears twice", _repeated),
    ("malformed CSeq, or CSeq method differs from the request method", _cseq_bad),
    ("malformed Via", _vias_bad),
    ("malformed Call-ID", lambda msg: _call_id_bad(msg.get("call-id"))),
)
_REQUEST_RULES = (
    *_COMMON_RULES,
    ("missing Max-Forwards", _missing("max-forwards")),
    ("malformed Max-Forwards", _max_forwards_bad),
)

# Where the grammar allows only tokens, hosts and digits (RFC 3261 §25.1) and the value is a
# key: hashed into our To tags and branches, matched against transactions and dialogs,
# stored. A byte there that is no UTF-8 (kept as a lone surrogate, see ``_encode``) would fail
# the first strict encoding of it, long after a transaction was opened for the request.
# Free text (display names, the URIs of From, To and Contact, Subject...) keeps such bytes
# and forwards them unchanged.
_KEY_HEADERS = frozenset(("call-id", "cseq", "via"))
_BYTES_RULE = "a byte that is not UTF-8 in the Request-URI, Call-ID, CSeq, a Via or a tag"


def _key_bytes_bad(msg: Message) -> bool:
    """Whether MSG breaks ``_BYTES_RULE`` (its From and To must parse)."""
    if isinstance(msg, Request) and not is_utf8(msg.uri):
        return True
    if not all(is_utf8(h.value) for h in msg.headers if h.name in _KEY_HEADERS):
        return True
    return not (is_utf8(msg.from_.tag or "") and is_utf8(msg.to.tag or ""))


def _validate(msg: Message) -> None:
    """The sanity table, in its order, computed in one pass over the headers (the table
    above stays the reference: ``_validate_by_table`` applies it rule by rule)."""
    counts: dict[str, int] = {}
    for header in msg.headers:
        counts[header.name] = counts.get(header.name, 0) + 1
    request = isinstance(msg, Request)
    if not counts.keys() >= _REQUIRED_SET:
        raise SipParseError(_COMMON_RULES[0][0])
    if any(counts.get(n, 0) > 1 for n in _SINGLE):
        raise SipParseError(_COMMON_RULES[1][0])
    if _cseq_bad(msg):
        raise SipParseError(_COMMON_RULES[2][0])
    try:
        vias = msg.vias
    except SipParseError:
        vias = []
    if not vias:
        raise SipParseError(_COMMON_RULES[3][0])
    if _call_id_bad(msg.get("call-id")):
        raise SipParseError(_COMMON_RULES[4][0])
    if request:
        if "max-forwards" not in counts:
            raise SipParseError(_REQUEST_RULES[5][0])
        if _max_forwards_bad(msg):
            raise SipParseError(_REQUEST_RULES[6][0])
    first = msg.first("via")
    if first is not None and split_list(first.value):
        msg._top_via = (first, vias[0])  # the same parse top_via would make
    for name in ("from", "to"):
        _name_addr(msg, name)
    if _key_bytes_bad(msg):
        raise SipParseError(_BYTES_RULE)


_REQUIRED = ("to", "from", "call-id", "cseq", "via")
_REQUIRED_SET = frozenset(_REQUIRED)


def _validate_by_table(msg: Message) -> None:
    rules = _REQUEST_RULES if isinstance(msg, Request) else _COMMON_RULES
    for rule, broken in rules:
        if broken(msg):
            raise SipParseError(rule)
    for name in ("from", "to"):
        _name_addr(msg, name)
    if _key_bytes_bad(msg):
        raise SipParseError(_BYTES_RULE)


# --- building responses ---------------------------------------------------------------

_COPIED = ("via", "from", "to", "call-id", "cseq")


def _response_from(
    pairs: Iterable[tuple[str, str]], status: int, reason: str | None, to_tag: str | None
) -> Response:
    resp = Response(status=status, reason=reason or REASONS.get(status, ""))
    for name, value in pairs:
        if name not in _COPIED:
            continue
        if name == "to" and to_tag is not None and status != 100:
            to = NameAddr.parse(value)
            if to.tag is None:
                to.set_param("tag", to_tag)
                value = str(to)
        resp.add(name, value)
    return resp


def make_response(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """A response with Via(s), From, To (+ TO_TAG unless it has one, or for 100), Call-ID and
    CSeq copied from REQUEST (RFC 3261 §8.2.6.2). Add Contact/Date/etc. on the result.

    The same result as ``_response_from`` over the request's pairs, built straight from its
    headers (and its cached To view): this runs for every request we answer."""
    resp = Response(status=status, reason=reason or REASONS.get(status, ""))
    headers = resp.headers
    tag = to_tag if status != 100 else None
    first_to = True
    for header in request.headers:
        name = header.name
        if name not in _COPIED_WIRE:
            continue
        value = header.value
        if name == "to" and tag is not None:
            # The first To line's parse is cached on the request; later ones are rare.
            to = request.to if first_to else NameAddr.parse(value)
            first_to = False
            if to.tag is None:
                to = NameAddr(to.uri, to.display, list(to.params))  # the view is shared
                to.set_param("tag", tag)
                value = str(to)
        headers.append(Header(name, value, _COPIED_WIRE[name]))
    return resp


_COPIED_WIRE = {name: _WIRE_NAMES[name] for name in _COPIED}


def error_response(err: SipParseError, *, to_tag: str | None = None) -> Response | None:
    """Best-effort reply to a request that failed to parse, or None when none can be sent:
    a response or an ACK gets no reply, and without a readable Via there is nowhere to go.
    Nor does a top Via naming a broadcast, multicast or unspecified address: such requests
    are never answered, broken or not (sip.md §3; the transport drops the well-formed ones)."""
    if err.method is None or err.method == "ACK":
        return None
    # Only the top Via must be readable: the reply goes back to the source address, and a
    # broken Via further down (RFC 4475 §3.1.2.1 badinv01) is the sender's to see echoed.
    vias = split_values(v for n, v in err.headers if n == "via")
    if not vias:
        return None
    try:
        top = Via.parse(vias[0])
    except SipParseError:
        return None
    if unreachable(top.host):
        return None
    try:
        return _response_from(err.headers, err.status, None, to_tag)
    except SipParseError:  # an unreadable To: echo it without adding a tag
        return _response_from(err.headers, err.status, None, None)


def stamp_received(request: Request, host: str, port: int, *, force_rport: bool = True) -> Via:
    """Record the source address in the top Via (RFC 3261 §18.2.1, RFC 3581 §4).

    ``received`` is added when sent-by is not the source address; ``rport`` is filled when
    the phone asked for it, or always with FORCE_RPORT (phones behind NAT need it even when
    they do not ask). Only the top Via element is rewritten. Returns the new top Via.
    """
    top = request.top_via
    if top is None:
        raise SipParseError("request without Via")
    use_rport = top.wants_rport or force_rport
    if use_rport and top.received == host and top.param("rport") == str(port):
        return top  # stamped already (the transport did, the proxy asks again): unchanged
    # RFC 3581 §4: with rport, received is added even when it equals sent-by.
    if use_rport or top.host.strip("[]").lower() != host.strip("[]").lower():
        top.set_param("received", host)
    if use_rport:
        top.set_param("rport", str(port))
    _replace_top_via(request, top)
    return top


def _replace_top_via(request: Request, top: Via) -> None:
    """``pop_first_value("via")`` then ``prepend("via", str(top))``, in one pass over the
    headers for the usual case of a first Via line holding a single element."""
    headers = request.headers
    index = next((i for i, h in enumerate(headers) if h.name == "via"), None)
    first = headers[index] if index is not None else None
    items = split_list(first.value) if first is not None else []
    if index is None or first is None or len(items) != 1:
        request.pop_first_value("via")
        request.prepend("via", str(top))
        return
    del headers[index]
    # prepend: above the first remaining Via line, or at the very top when none is left
    at = next((i for i in range(index, len(headers)) if headers[i].name == "via"), 0)
    new = Header("via", str(top), "Via")
    headers.insert(at, new)
    request._top_via = (new, top)


def max_forwards_status(request: Request) -> int | None:
    """483 when a request has run out of hops (RFC 3261 §16.3 step 3), else None."""
    value = request.get("max-forwards")
    return 483 if value is not None and value.isdigit() and int(value) == 0 else None


def unsupported_extensions(request: Request, supported: Iterable[str], *, proxy: bool) -> list[str]:
    """Option tags of Require (as UAS) or Proxy-Require (as proxy) that we lack → 420."""
    known = {tag.lower() for tag in supported}
    name = "proxy-require" if proxy else "require"
    return [tag for tag in request.values(name) if tag.lower() not in known]
