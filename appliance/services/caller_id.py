"""Caller ID [core]: the From the far end of a leg a media worker places is shown.

A worker places every leg from its own pjsua account (``w0``, ``w1``…); the From of each
INVITE is set per call instead (pjsua's ``local_uri``: `MediaEngine.dial` ``from_uri``), by
these rules:

- towards a gateway (docs/gateways.md "Caller ID"), `caller_id_uri`: the caller ID when it
  is a phone number, else the gateway's ``UserName`` (providers accept little else);
- towards a Client's phones (docs/voice.md "Caller ID"), `client_caller`: the first usable
  of the candidates the call gives (``<Dial callerId>``, then the calling party of the
  parent call; the ``From`` of ``POST /Calls``; a GSM caller's number), else
  ``anonymous``. The phones are ours, so a Client's login or a network's alphanumeric ID
  (``Vodafone UK``) is shown as it is.

Pure: the calls service and its parts (`services.api_calls`, `services.dialing`,
`services.gsm_calls`, `services.outbound_calls`) build the URIs with these. Every user part
is %-escaped (`client_caller_uri`) and the worker sends the From in <> (`media.worker.pj`): a
caller ID comes from an API request, an RCML document or the mobile network, and must never
reach a header raw.
"""

from __future__ import annotations

import re
import urllib.parse

from appliance.models import Gateway
from appliance.sip.uri import SipUri

_PHONE_RE = re.compile(r"\+?[0-9]{3,20}")
# The longest name shown to a Client's phone as the caller. A Client login, an 11-character
# GSM alphanumeric sender or a long number fit easily; escaped (at most 3 bytes per byte) it
# stays well inside the worker protocol's 256-character From (`media.protocol.Dial`).
MAX_SHOWN = 64
ANONYMOUS = "anonymous"  # a withheld caller (the user RFC 3323 §4.1.1.3 suggests)
# What the GSM side writes for a withheld number (services.gsm_calls): not a caller ID.
_WITHHELD = frozenset({"", "unknown"})


def dialable(value: str | None) -> str | None:
    """VALUE as a phone number (spaces, dashes, dots and brackets removed) when it is one
    (an optional + and 3-20 digits), else None."""
    number = re.sub(r"[\s\-.()]", "", value or "")
    return number if _PHONE_RE.fullmatch(number) else None


def caller_id_uri(gateway: Gateway, caller_id: str | None) -> str:
    """The From of a leg out through GATEWAY (docs/gateways.md "Caller ID"):
    ``sip:<caller id>@<the gateway's Proxy host>``. The caller ID is CALLER_ID when it is a
    phone number (``<Dial callerId>``, the From of ``POST /Calls``), else the gateway's
    UserName: providers accept the account's own identity, often nothing else."""
    user = dialable(caller_id) or urllib.parse.quote(gateway.user_name,
                                                    safe="-_.!~*'()&=+$,;?/")
    proxy = gateway.proxy.strip()
    if proxy.startswith("["):
        host = proxy[:proxy.find("]") + 1] or proxy
    else:
        host = proxy.rsplit(":", 1)[0] if proxy.count(":") == 1 else proxy
    return f"sip:{user}@{host}"


def client_caller(*candidates: str | None) -> str:
    """The From user a Client's phone is shown (docs/voice.md "Caller ID"): the first of
    CANDIDATES that is a caller ID, else ``anonymous``. A phone number is shown as
    `dialable` writes it (``+1 (555) 123-0000`` → ``+15551230000``), a Client as its login
    (``client:alice`` → ``alice``), anything else as it is when it is printable and at most
    MAX_SHOWN characters; None, an empty value or ``unknown`` (a withheld GSM number) is
    skipped. `client_caller_uri` makes it a From."""
    for value in candidates:
        user = _shown(value)
        if user is not None:
            return user
    return ANONYMOUS


def _shown(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    number = dialable(text)
    if number is not None:
        return number
    if text[:7].lower() == "client:":
        text = text[7:].strip()
    if text in _WITHHELD or len(text) > MAX_SHOWN or not text.isprintable():
        return None
    return text


def client_caller_uri(user: str, host: str) -> str:
    """The From of a leg to a Client's phones: ``sip:<USER>@<HOST>`` (HOST: our front door),
    USER %-escaped as RFC 3261 wants a user part (``Vodafone UK`` → ``Vodafone%20UK``; the
    user-unreserved ``;?/&=+$,`` stay, as pjsip writes them anyway), so no space, quote,
    angle bracket or line break can end the URI or the header; the worker sends it in <>
    (`media.worker.pj`), so a ``;`` or ``?`` cannot end it either."""
    return str(SipUri(host=host, user=user))
