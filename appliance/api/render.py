"""One representation, two encodings: XML (<RestcommResponse>, PascalCase) or JSON (snake_case).

A representation is a list of `F` fields in wire order. Null handling follows
api-behaviour.md §1.3/§1.4: JSON omits nulls unless the resource keeps them explicitly; XML
omits URL-ish nulls and writes other nulls as empty elements.
"""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET  # noqa: S405 - we only *write* XML here
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

from appliance.models import Page

Value = Union[str, int, float, bool, None, "Rep", list["Rep"]]


class F(NamedTuple):
    # An immutable record like the Rep below; a NamedTuple because representations build
    # thousands per list response and a tuple is created at half a frozen dataclass's cost.
    key: str  # JSON key; "" = XML only
    tag: str  # XML element; "" = JSON only
    value: Value
    xml_null: str = "empty"  # "empty" element or "omit" it
    json_null: bool = False  # keep an explicit JSON null


@dataclasses.dataclass(frozen=True)
class Rep:
    tag: str  # XML element name of this object
    fields: Sequence[F]


def to_json_value(rep: Rep) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in rep.fields:
        if not f.key:
            continue
        v = f.value
        if v is None:
            if f.json_null:
                out[f.key] = None
            continue
        if isinstance(v, Rep):
            out[f.key] = to_json_value(v)
        elif isinstance(v, list):
            out[f.key] = [to_json_value(r) for r in v]
        else:
            out[f.key] = v
    return out


def _xml_text(v: str | int | float | bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def to_xml_element(rep: Rep) -> ET.Element:
    el = ET.Element(rep.tag)
    for f in rep.fields:
        if not f.tag:
            continue
        v = f.value
        if v is None:
            if f.xml_null == "empty":
                ET.SubElement(el, f.tag)
            continue
        if isinstance(v, Rep):
            child = to_xml_element(v)
            child.tag = f.tag
            el.append(child)
        elif isinstance(v, list):
            holder = ET.SubElement(el, f.tag)
            for r in v:
                holder.append(to_xml_element(r))
        else:
            ET.SubElement(el, f.tag).text = _xml_text(v)
    return el


# What XML 1.0 cannot carry, even as a character reference (its Char production): C0 controls
# but tab, LF and CR; lone surrogates (bytes that were no UTF-8 in a SIP message, which its
# parser keeps with surrogateescape); U+FFFE and U+FFFF. ElementTree writes them as they are.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Every byte of UTF-8 but those C0 controls: what is left once they are deleted is a control.
_XML_BYTES = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x100)])


def xml_document(text: str) -> bytes:
    """The XML document TEXT as UTF-8, each character XML cannot carry replaced by "?", as a
    CDR's bad bytes are (docs/api.md "Text XML cannot carry"), so it always parses."""
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return _NOT_XML.sub("?", text).encode()
    # Two C-speed scans instead of the regex over clean text (a tenth of its time).
    if data.translate(None, _XML_BYTES) or (
            not data.isascii() and (b"\xef\xbf\xbe" in data or b"\xef\xbf\xbf" in data)):
        return _NOT_XML.sub("?", text).encode()
    return data


def json_document(text: str) -> bytes:
    """The JSON text TEXT as UTF-8, each lone surrogate (a byte that was no UTF-8 in a SIP
    message) written "?" as in XML; JSON escapes control characters itself."""
    return text.encode("utf-8", "replace")


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root, space="  ")
    # ElementTree writes "<X />"; Restcomm (XStream) writes "<X/>".
    return xml_document(ET.tostring(root, encoding="unicode").replace(" />", "/>"))


# The C escaper when the interpreter has one (CPython does): the same output as json.dumps.
_encode_string: Callable[[str], str] = (json.encoder.c_encode_basestring  # type: ignore[attr-defined]
                                        or json.encoder.py_encode_basestring)


def _pretty(value: Any, indent: str, out: list[str]) -> None:
    """json.dumps(value, indent=2, ensure_ascii=False), byte for byte, without the
    pure-Python iterencode that `indent` forces (it was half of a list request's time)."""
    if isinstance(value, str):
        out.append(_encode_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int | float):
        out.append(json.dumps(value))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        out.append("{\n")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",\n")
            first = False
            out.append(inner)
            out.append(_encode_string(str(key)))
            out.append(": ")
            _pretty(item, inner, out)
        out.append("\n" + indent + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[\n")
        first = True
        for item in value:
            if not first:
                out.append(",\n")
            first = False
            out.append(inner)
            _pretty(item, inner, out)
        out.append("\n" + indent + "]")
    else:
        out.append(json.dumps(value, ensure_ascii=False))


def json_bytes(value: Any) -> bytes:
    out: list[str] = []
    _pretty(value, "", out)
    return json_document("".join(out))


def one(rep: Rep, as_json: bool, wrap: bool = True) -> bytes:
    if as_json:
        return json_bytes(to_json_value(rep))
    el = to_xml_element(rep)
    if not wrap:
        return _xml_bytes(el)
    root = ET.Element("RestcommResponse")
    root.append(el)
    return _xml_bytes(root)


def many(reps: Sequence[Rep], list_tag: str, as_json: bool) -> bytes:
    """An unpaged list: a bare JSON array, or <RestcommResponse><Tag>…</Tag>."""
    if as_json:
        return json_bytes([to_json_value(r) for r in reps])
    root = ET.Element("RestcommResponse")
    holder = ET.SubElement(root, list_tag)
    for r in reps:
        holder.append(to_xml_element(r))
    return _xml_bytes(root)


def message(text: str, as_json: bool) -> bytes:
    """Restcomm's {"message": …} / <RestcommResponse><Message>… error body."""
    if as_json:
        return json.dumps({"message": text.encode("utf-8", "replace").decode()}).encode()
    root = ET.Element("RestcommResponse")
    ET.SubElement(root, "Message").text = text
    return _xml_bytes(root)


def page_fields(page: Page[Any], uri: str, count: int, last_sid: object) -> dict[str, Any]:
    """The paging fields of a list, by JSON key and in wire order, with Restcomm's arithmetic
    (api-behaviour.md §9; D5 and D6 fixed). COUNT is the number of items on this page and
    LAST_SID the SID of its last item (unused when COUNT is 0)."""
    size = page.page_size
    last = page.num_pages
    start = page.page * size
    end = start + count if page.page == last else start + size - 1
    next_uri = None
    if page.page < last:
        next_uri = f"{uri}?Page={page.page + 1}&PageSize={size}"
        if count:
            next_uri += f"&AfterSid={last_sid}"
    return {
        "page": page.page, "num_pages": last, "page_size": size, "total": page.total,
        "start": str(start), "end": str(end), "uri": uri,
        "first_page_uri": f"{uri}?Page=0&PageSize={size}",
        "previous_page_uri": (f"{uri}?Page={page.page - 1}&PageSize={size}"
                              if page.page > 0 else None),
        "next_page_uri": next_uri, "last_page_uri": f"{uri}?Page={last}&PageSize={size}",
    }


# The XML attribute for each of page_fields' keys, in the same order.
XML_PAGE_ATTRIBUTES = ("page", "numpages", "pagesize", "total", "start", "end", "uri",
                       "firstpageuri", "previouspageuri", "nextpageuri", "lastpageuri")


def paged(page: Page[Any], reps: Sequence[Rep], *, uri: str, json_key: str, list_tag: str,
          xml_attributes: bool, as_json: bool) -> bytes:
    """A paged list with Restcomm's arithmetic (api-behaviour.md §9; D5 and D6 fixed)."""
    fields = page_fields(page, uri, len(reps),
                         getattr(page.items[-1], "sid", "") if page.items else "")
    if as_json:
        body: dict[str, Any] = {**fields, json_key: [to_json_value(r) for r in reps]}
        return json_bytes(body)
    root = ET.Element("RestcommResponse")
    holder = ET.SubElement(root, list_tag)
    if xml_attributes:
        for name, value in zip(XML_PAGE_ATTRIBUTES, fields.values(), strict=True):
            # An attribute cannot be null; Restcomm writes the text "null".
            holder.set(name, "null" if value is None else str(value))
    for r in reps:
        holder.append(to_xml_element(r))
    return _xml_bytes(root)
