"""What the registrar reads of a REGISTER, from a parsed ``Request`` or straight from a
datagram's bytes (the quick path), and the bytes of a reply built from those same bytes.

Theory of operation. Almost every REGISTER an office sees is one shape: a phone on the LAN
refreshing one Contact over UDP, with a handful of well-known headers, often twice in a row
(the 401 challenge, then the answer). Through the general path such a pair costs ~0.3 ms of
CPU: two full parses with validation, a server transaction each, two ``Response`` objects
serialised. ``PlainRegister.parse`` reads that one shape directly from the bytes and answers
None for anything else, which then takes the general path as before — so the quick path is
an optimisation of the common case, never a second dialect:

- accepted: ``REGISTER sip:... SIP/2.0``; CRLF line ends, no folding, ASCII only; one Via
  (``SIP/2.0/UDP`` IPv4 sent-by, an RFC 3261 ``branch``, optional ``rport``, nothing else);
  Max-Forwards, From, To (without a tag), Call-ID, CSeq, exactly one Contact (one plain
  ``<sip:...>`` value), and optionally Expires, Authorization (one), Content-Length 0 and the
  informative headers in ``_PASSIVE``; each header once, by its full name; no body.
- anything else (compact or unknown header names, Require, Route, Path, several Contacts or
  Vias, a ``*`` Contact, a tagged To, TCP, IPv6, non-ASCII display names, a body, an
  out-of-range number...) is None.

``RegisterFields`` is what the registrar's decision needs, whichever way it was read, so both
paths share every rule (digest, nonces, Guard, bindings). The reply is rendered as
``make_response`` renders it: the stamped top Via (``received`` and a forced ``rport``, as
the transport stamps every request), From, To with our tag, Call-ID and CSeq copied, then the
registrar's headers. ``tests/sip/test_register_view.py`` checks, message by message, that
both paths answer the same bytes (tags, nonces and Date aside) and leave the same state.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from appliance.sip.errors import SipParseError
from appliance.sip.headers import is_rfc3261_branch, unreachable
from appliance.sip.message import REASONS, Request
from appliance.sip.transaction_keys import TransactionKey, rfc3261_key

# Headers a REGISTER may carry that the registrar never reads and the reply does not echo
# (User-Agent is read: it is shown with the registration in the API).
_PASSIVE: Final = frozenset({"allow", "supported", "accept", "accept-encoding",
                             "accept-language", "allow-events", "organization", "user-agent"})
_READ: Final = frozenset({"via", "max-forwards", "from", "to", "call-id", "cseq", "contact",
                          "expires", "authorization", "content-length"})
_REQUIRED: Final = frozenset({"via", "max-forwards", "from", "to", "call-id", "cseq", "contact"})
_KNOWN: Final = _READ | _PASSIVE
# A known name as phones write it -> its key (others are lower-cased, then looked up in
# _KNOWN): a lookup instead of a new lower-case string per header line.
_SPELLINGS: Final = {
    **{name: name for name in _KNOWN},
    **{"-".join(part.capitalize() for part in name.split("-")): name for name in _KNOWN},
    "Call-ID": "call-id", "CSeq": "cseq",
}

_TOKEN: Final = r"[A-Za-z0-9.!%*_+`'~-]+"
_PARAMS: Final = rf"(?:;{_TOKEN}(?:={_TOKEN})?)"
# The Via params are one branch and at most one bare rport, in either order: anything else
# (received, maddr, a second branch...) is for the general path.
_VIA: Final = re.compile(rf"SIP/2\.0/UDP (\d{{1,3}}(?:\.\d{{1,3}}){{3}})(?::(\d{{1,5}}))?"
                  rf"(?:;branch=({_TOKEN})(;rport)?|(;rport);branch=({_TOKEN}))")
# A name-addr in angle brackets, an optional quoted display name without escapes, and
# header parameters made of token characters only.
_NAME_ADDR: Final = re.compile(rf'(?:"[^"\\]*" )?<(sip:[^<>\s"\\,]+)>({_PARAMS}*)')
# The user part the registrar keys bindings by, when it needs no unescaping.
_AOR_USER: Final = re.compile(r"sip:([A-Za-z0-9._~+-]+)@[A-Za-z0-9.-]+(?::\d{1,5})?(?:[;?][^<>]*)?")
# To and Contact values read before (a phone sends the same ones with every REGISTER; a
# From's tag may change each time, so Froms are not kept): a plain To -> its login, plain
# Contacts. Emptied when full.
_TO_LOGINS: dict[str, str] = {}
_CONTACTS: set[str] = set()
MAX_KEPT: Final = 4096
# Status → the status line of a reply, encoded (filled as replies are written: one per code
# in ``REASONS`` at most).
_STATUS_LINES: dict[int, bytes] = {}


@dataclass(init=False)
class RegisterFields:
    """What the registrar decides on. LOGIN is the To-URI's user part (None: the To is not
    a SIP URI with a user); CONTACTS and AUTHORIZATIONS are the raw header values;
    REQUEST_URI is the request line's, which a digest ``uri`` must name. (Not a NamedTuple,
    and its ``__init__`` written out: see ``appliance.accel``.)"""

    login: str | None
    authorizations: Sequence[str]
    branch: str
    contacts: Sequence[str]
    expires: str | None
    call_id: str
    cseq: int
    user_agent: str
    request_uri: str

    def __init__(self, login: str | None, authorizations: Sequence[str], branch: str,
                 contacts: Sequence[str], expires: str | None, call_id: str, cseq: int,
                 user_agent: str, request_uri: str) -> None:
        self.login = login
        self.authorizations = authorizations
        self.branch = branch
        self.contacts = contacts
        self.expires = expires
        self.call_id = call_id
        self.cseq = cseq
        self.user_agent = user_agent
        self.request_uri = request_uri


def fields_of(request: Request, login: str | None) -> RegisterFields:
    """The fields of a REGISTER the general parser read (LOGIN: its To user)."""
    top = request.top_via
    return RegisterFields(
        login=login,
        authorizations=tuple(request.get_all("authorization")),
        branch=(top.branch or "") if top is not None else "",
        contacts=tuple(request.get_all("contact")),
        expires=request.get("expires"),
        call_id=request.call_id or "",
        cseq=request.cseq.number,
        user_agent=request.get("user-agent") or "",
        request_uri=request.uri,
    )


@functools.lru_cache(maxsize=1024)
def _answerable(host: str) -> bool:
    """A sent-by the general path would answer: a valid IPv4 address that is not
    ``unreachable`` (the transport drops requests from those)."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return not unreachable(host)


def _is_request_uri(text: str) -> bool:
    """TEXT (ASCII, no space) as the regex "sip:[!->@-~]+" would take it: no "?", since
    headers in a Request-URI are refused by the general parser (a "?" in a user part is not,
    but no phone registers with one; the general path reads those)."""
    return len(text) > 4 and text.startswith("sip:") and text.isprintable() and "?" not in text


def _login_of_to(value: str) -> str | None:
    """The user part of VALUE, a To, when it is a plain name-addr (``_NAME_ADDR``) without
    parameters whose user needs no unescaping; else None."""
    login = _TO_LOGINS.get(value)
    if login is not None:
        return login
    match = _NAME_ADDR.fullmatch(value)
    if match is None or match.group(2):
        return None
    user = _AOR_USER.fullmatch(match.group(1))
    if user is None:
        return None
    if len(_TO_LOGINS) >= MAX_KEPT:
        _TO_LOGINS.clear()
    login = _TO_LOGINS[value] = user.group(1)
    return login


def _is_plain_contact(value: str) -> bool:
    """Whether VALUE, a Contact, is a plain name-addr (``_NAME_ADDR``)."""
    if value in _CONTACTS:
        return True
    if _NAME_ADDR.fullmatch(value) is None:
        return False
    if len(_CONTACTS) >= MAX_KEPT:
        _CONTACTS.clear()
    _CONTACTS.add(value)
    return True


class PlainRegister:
    """A REGISTER of the common shape (see the module docstring), as read from its bytes."""

    __slots__ = ("fields", "head", "tail", "_host", "_port")

    def __init__(self, fields: RegisterFields, head: bytes, tail: bytes, host: str,
                 port: int | None) -> None:
        self.fields = fields
        self.head = head  # the stamped Via, From, To-up-to-the-tag, as the reply copies them
        self.tail = tail  # Call-ID and CSeq lines of the reply
        self._host = host  # the Via's sent-by
        self._port = port

    @property
    def key(self) -> TransactionKey:
        """Its server transaction key (``transaction_keys.server_key``), built when asked:
        the quick path needs it only while the general path holds server transactions."""
        return rfc3261_key(self.fields.branch, self._host, self._port, "REGISTER")

    @classmethod
    def parse(cls, data: bytes, source: tuple[str, int]) -> PlainRegister | None:
        """DATA as a plain REGISTER received from SOURCE, or None for any other shape."""
        if not data.startswith(b"REGISTER sip:"):
            return None
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data):
            return None
        try:
            text = data[:end].decode("ascii")
        except UnicodeDecodeError:
            return None
        start, _, block = text.partition("\r\n")
        request_line = start.split(" ")
        if (len(request_line) != 3 or request_line[2] != "SIP/2.0"
                or not _is_request_uri(request_line[1])):
            return None
        lines = block.split("\r\n")
        # A CR or LF that is not part of a CRLF would be in a line: refused.
        crlfs = len(lines) - 1
        if block.count("\r") != crlfs or block.count("\n") != crlfs:
            return None
        found: dict[str, str] = {}
        for line in lines:
            colon = line.find(":")
            if colon < 0:
                return None
            name = line[:colon]
            key = _SPELLINGS.get(name)
            if key is None:
                key = name.lower()
                if key not in _KNOWN:
                    return None
            found[key] = line[colon + 1:].strip()  # what the general parser keeps of a value
        if (len(found) != len(lines)  # a header twice
                or not found.keys() >= _REQUIRED or found.get("content-length", "0") != "0"):
            return None
        return cls._build(found, source, request_line[1])

    @classmethod
    def _build(cls, found: dict[str, str], source: tuple[str, int],
               request_uri: str) -> PlainRegister | None:
        via = _VIA.fullmatch(found["via"])
        if via is None or not _answerable(via.group(1)):
            return None
        host, port_text, branch, rport_after, _, branch_after = via.groups()
        port = int(port_text) if port_text else None
        if port is not None and not 0 < port < 65536:
            return None
        # Stamped as the transport stamps it: rport gets the source port where it is, or
        # comes last; received comes after the request's own params.
        if branch is not None:
            stamped = (f"branch={branch};rport={source[1]};received={source[0]}" if rport_after
                       else f"branch={branch};received={source[0]};rport={source[1]}")
        else:
            branch = branch_after
            stamped = f"rport={source[1]};branch={branch};received={source[0]}"
        if not is_rfc3261_branch(branch):
            return None
        sent_by = host if port is None else f"{host}:{port}"
        login = _login_of_to(found["to"])
        if (login is None or _NAME_ADDR.fullmatch(found["from"]) is None
                or not _is_plain_contact(found["contact"])):
            return None
        max_forwards, expires = found["max-forwards"], found.get("expires")
        if not (max_forwards.isdigit() and len(max_forwards) <= 10):
            return None
        if expires is not None and not (expires.isdigit() and len(expires) <= 10):
            return None
        cseq, _, method = found["cseq"].partition(" ")
        call_id = found["call-id"]
        # As the regexes "\d{1,9} REGISTER" and "[!-~]+" would: TEXT is ASCII here.
        if not (method == "REGISTER" and cseq.isdigit() and len(cseq) <= 9
                and call_id.isprintable() and call_id and " " not in call_id):
            return None
        authorization = found.get("authorization")
        fields = RegisterFields(
            login=login,
            authorizations=(authorization,) if authorization is not None else (),
            branch=branch, contacts=(found["contact"],), expires=expires, call_id=call_id,
            cseq=int(cseq), user_agent=found.get("user-agent", ""),
            request_uri=request_uri)
        head = (f"Via: SIP/2.0/UDP {sent_by};{stamped}\r\nFrom: {found['from']}\r\n"
                f"To: {found['to']};tag=").encode()
        tail = f"\r\nCall-ID: {call_id}\r\nCSeq: {found['cseq']}\r\n".encode()
        return cls(fields, head, tail, host, port)

    def reply(self, status: int, headers: Sequence[tuple[str, str]], *, to_tag: str) -> bytes:
        """The bytes of the response STATUS carrying HEADERS, as ``make_response`` would
        build it with TO_TAG (which must be a token)."""
        status_line = _STATUS_LINES.get(status)
        if status_line is None:
            reason = REASONS.get(status)
            if reason is None:
                raise SipParseError(f"no reason phrase for {status}")
            status_line = _STATUS_LINES[status] = f"SIP/2.0 {status} {reason}\r\n".encode()
        extra = "".join([f"{name}: {value}\r\n" for name, value in headers])
        return b"".join((status_line, self.head,
                         to_tag.encode(), self.tail, extra.encode("utf-8", "surrogateescape"),
                         b"Content-Length: 0\r\n\r\n"))
