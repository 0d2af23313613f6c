"""RCML documents -> verbs. defusedxml only: the document comes from a remote URL.

Everything is validated before anything runs (plivo's lesson): a document that is not XML,
or whose root is not <Response>, is an RcmlError.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - only for the Element type; parsing is defused

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from appliance.errors import ApplianceError
from appliance.rcml.verbs import Redirect, Sms, Unsupported, Verb

MAX_DOCUMENT = 256 * 1024
MAX_VERBS = 100


class RcmlError(ApplianceError):
    """The document cannot be run; `code` is the Twilio/Restcomm error code to report."""

    status = 400

    def __init__(self, message: str, code: int = 12100) -> None:
        super().__init__(message)
        self.code = code


def _method(value: str | None) -> str:
    upper = (value or "POST").upper()
    return upper if upper in ("GET", "POST") else "POST"


def _text(el: ET.Element) -> str:
    return (el.text or "").strip()


def parse_document(data: bytes) -> list[Verb]:
    """Parse an RCML document into verbs, in order."""
    if len(data) > MAX_DOCUMENT:
        raise RcmlError(f"document larger than {MAX_DOCUMENT} bytes", 12300)
    try:
        root = fromstring(data)
    except (ET.ParseError, DefusedXmlException, ValueError) as err:
        raise RcmlError(f"not a valid XML document: {err}", 12100) from err
    if root.tag != "Response":
        raise RcmlError(f"the root element is <{root.tag}>, not <Response>", 12100)
    verbs: list[Verb] = []
    for el in list(root)[:MAX_VERBS + 1]:
        if len(verbs) >= MAX_VERBS:
            raise RcmlError(f"more than {MAX_VERBS} verbs", 12300)
        if el.tag == "Sms":
            verbs.append(Sms(text=_text(el), to=el.get("to") or None,
                             from_=el.get("from") or None, action=el.get("action") or None,
                             method=_method(el.get("method")),
                             status_callback=el.get("statusCallback") or None))
        elif el.tag == "Redirect":
            url = _text(el)
            if not url:
                raise RcmlError("<Redirect> without a URL", 12100)
            verbs.append(Redirect(url=url, method=_method(el.get("method"))))
        else:
            verbs.append(Unsupported(el.tag))
    return verbs
