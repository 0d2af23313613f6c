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

from appliance.sip.errors import SipParseError
from appliance.sip.headers import CSeq, NameAddr, Via, parse_vias, split_list
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
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")

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


def canonical_name(name: str) -> str:
    lname = name.strip().lower()
    return COMPACT_FORMS.get(lname, lname)


def _encode(text: str) -> bytes:
    # surrogateescape: bytes that were not UTF-8 on the way in go out unchanged.
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Header:
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

    def __bytes__(self) -> bytes:
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
                                                        compare=False)

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

    # --- typed views (parsed on access) ------------------------------------------------
    @property
    def call_id(self) -> str | None:
        return self.get("call-id")

    @property
    def cseq(self) -> CSeq:
        value = self.get("cseq")
        if value is None:
            raise SipParseError("missing CSeq")
        return CSeq.parse(value)

    @property
    def vias(self) -> list[Via]:
        return parse_vias(self.get_all("via"))

    @property
    def top_via(self) -> Via | None:
        first = next((h for h in self.headers if h.name == "via"), None)
        if first is None:
            return None
        cached = self._top_via
        if cached is not None and cached[0] is first:
            return cached[1]
        items = self.values("via")
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
        wrote_length = False
        for header in self.headers:
            if header.name == "content-length":
                if wrote_length:
                    continue
                wrote_length = True
                if header.value != length or header.raw is None:
                    header = Header("content-length", length, header.wire_name or "Content-Length")
            lines.append(bytes(header))
        if not wrote_length:
            lines.append(_encode(f"Content-Length: {length}"))
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def _name_addr(msg: Message, name: str) -> NameAddr:
    value = msg.get(name)
    if value is None:
        raise SipParseError(f"missing {name} header")
    return NameAddr.parse(value)


@dataclass
class Request(Message):
    method: str = ""
    uri: str = ""
    version: str = VERSION

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


def _read_headers(lines: list[bytes]) -> list[Header]:
    headers: list[Header] = []
    raw_lines: list[bytes] = []

    def close() -> None:
        if not raw_lines:
            return
        first = raw_lines[0].decode("utf-8", "surrogateescape")
        name, colon, value = first.partition(":")
        wire = name.rstrip(" \t")
        if not colon or not wire or not set(wire) <= _TOKEN_CHARS:
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
        msg.headers = _read_headers(block.split(b"\n") if block else [])
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
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN_CHARS:
        raise SipParseError(f"bad request line {line[:60]!r}")
    method, uri, version = parts
    request = Request(method=method, uri=uri, version=version)
    if version.upper() != VERSION:  # case-insensitive (RFC 3261 §7.1)
        return request, SipParseError(f"unsupported version {version[:20]!r}", 505)
    scheme = uri_scheme(uri)
    if scheme is None:
        return request, SipParseError(f"bad Request-URI {uri[:60]!r}")
    if scheme not in SCHEMES:
        return request, SipParseError(f"unsupported URI scheme {scheme!r}", 416)
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
)
_REQUEST_RULES = (
    *_COMMON_RULES,
    ("missing Max-Forwards", _missing("max-forwards")),
    ("malformed Max-Forwards", _max_forwards_bad),
)


def _validate(msg: Message) -> None:
    rules = _REQUEST_RULES if isinstance(msg, Request) else _COMMON_RULES
    for rule, broken in rules:
        if broken(msg):
            raise SipParseError(rule)
    for name in ("from", "to"):
        _name_addr(msg, name)


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
    CSeq copied from REQUEST (RFC 3261 §8.2.6.2). Add Contact/Date/etc. on the result."""
    return _response_from(_pairs(request.headers), status, reason, to_tag)


def error_response(err: SipParseError, *, to_tag: str | None = None) -> Response | None:
    """Best-effort reply to a request that failed to parse, or None when none can be sent:
    a response or an ACK gets no reply, and without a readable Via there is nowhere to go."""
    if err.method is None or err.method == "ACK":
        return None
    try:
        if not parse_vias(v for n, v in err.headers if n == "via"):
            return None
    except SipParseError:
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
    # RFC 3581 §4: with rport, received is added even when it equals sent-by.
    if use_rport or top.host.strip("[]").lower() != host.strip("[]").lower():
        top.set_param("received", host)
    if use_rport:
        top.set_param("rport", str(port))
    request.pop_first_value("via")
    request.prepend("via", str(top))
    return top


def max_forwards_status(request: Request) -> int | None:
    """483 when a request has run out of hops (RFC 3261 §16.3 step 3), else None."""
    value = request.get("max-forwards")
    return 483 if value is not None and value.isdigit() and int(value) == 0 else None


def unsupported_extensions(request: Request, supported: Iterable[str], *, proxy: bool) -> list[str]:
    """Option tags of Require (as UAS) or Proxy-Require (as proxy) that we lack → 420."""
    known = {tag.lower() for tag in supported}
    name = "proxy-require" if proxy else "require"
    return [tag for tag in request.values(name) if tag.lower() not in known]
