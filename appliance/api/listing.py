"""The lists dashboards poll (Calls pages, Clients), rendered straight from stored records.

The generic path builds a model per row on the store thread, then an `F`/`Rep` tree, a dict
or an Element and finally pretty text per record: about 3 ms of CPU for a 50-call page. Here
each resource's fields are declared once, in wire order, as `Field`s mirroring
`representations.call` / `representations.client`, and compiled per format into a function
whose key text, indentation and null handling are fixed up front. It writes a record from its
stored values (`Store.page_calls_stored`, `Store.list_clients_stored`: a model's values in
its field order, timestamps as storage text) as `json.dumps(indent=2, ensure_ascii=False)`
or ElementTree after `ET.indent` would, in one pass.

The bytes are the generic path's: tests/api/test_listing.py renders generated records both
ways and compares them. A value of an unexpected type or shape goes through the generic
code for that value (`render._pretty`, `render._xml_text`, `timefmt`), errors included.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeGuard

from appliance.api import render
from appliance.api.representations import BASE
from appliance.models import CallRecord, Client, Page
from appliance.timefmt import from_storage, iso, rfc2822

Row = Sequence[Any]  # a stored record: a model's values in its field order


class Field(NamedTuple):
    key: str  # JSON key; "" = XML only
    tag: str  # XML element; "" = JSON only
    value: int | Callable[[Row], Any]  # a position in the record, or what computes the
    # value from the record; unused when CHILDREN are given
    xml_null: str = "empty"  # "empty" element or "omit" it
    json_null: bool = False  # keep an explicit JSON null
    children: tuple[Field, ...] = ()  # a nested object, always present
    convert: Callable[[Any], Any] | None = None  # applied to the value at position VALUE


# -- timestamps from storage text -------------------------------------------------------------

# What storage() writes, from year 1000 on: for that shape the wire formats are slices of
# the text and a per-day prefix, once datetime has accepted the value. (strftime writes years
# before 1000 without leading zeros, so "0999-…" takes the datetime path like anything else.)
_STORED = re.compile(r"[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)
_STORE_SHAPE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)  # rows._STORED
_DAY_PREFIXES: dict[str, str] = {}  # "2024-03-03" -> "Sun, 3 Mar 2024 "
_MAX_DAYS = 4096


def _parsed(text: Any) -> Any:
    """What rows._dt makes of TEXT (the store's conversion for models), errors included."""
    if not text:
        return None
    if _STORE_SHAPE.fullmatch(text):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    return from_storage(text)


def _valid(text: Any) -> TypeGuard[str]:
    if type(text) is not str or not _STORED.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def wire_rfc2822(text: Any) -> str:
    """rfc2822() of a stored timestamp."""
    if type(text) is not str or not _STORED.fullmatch(text):  # _valid, inline: a hot path
        return rfc2822(_parsed(text))
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return rfc2822(_parsed(text))
    prefix = _DAY_PREFIXES.get(text[:10])
    if prefix is None:
        if len(_DAY_PREFIXES) >= _MAX_DAYS:
            _DAY_PREFIXES.clear()
        prefix = _DAY_PREFIXES[text[:10]] = rfc2822(from_storage(text))[:-14]
    return prefix + text[11:19] + " +0000"


def wire_iso(text: Any) -> str | None:
    """iso() of a stored timestamp, None when there is none (representations.call)."""
    if _valid(text):
        return f"{text[:23]}Z"
    parsed = _parsed(text)
    return iso(parsed) if parsed else None


# -- compiling and rendering ------------------------------------------------------------------

_encode = render._encode_string  # noqa: SLF001 - the same escaper the generic path uses


def _json_scalar(value: Any) -> str:
    out: list[str] = []
    render._pretty(value, "", out)  # noqa: SLF001 - the generic encoder, for the rare types
    return "".join(out)


def _json_value(value: Any) -> str:
    if type(value) is str:
        return _encode(value)
    if type(value) is int:  # json.dumps writes int.__repr__
        return str(value)
    return _json_scalar(value)


def _escape_text(text: str) -> str:
    # ElementTree's _escape_cdata.
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def _escape_attribute(text: str) -> str:
    # ElementTree's _escape_attrib.
    text = _escape_text(text)
    if '"' in text:
        text = text.replace('"', "&quot;")
    if "\r" in text:
        text = text.replace("\r", "&#13;")
    if "\n" in text:
        text = text.replace("\n", "&#10;")
    if "\t" in text:
        text = text.replace("\t", "&#09;")
    return text


# Each resource's fields become one generated function per format: straight-line code with
# the texts as constants, as namedtuple and dataclasses generate theirs. A loop over step
# records doing the same work took a third longer (a getter call and a tuple unpacking per
# field). The generated JSON code for one field reads:
#
#     v = row[3]                  # or: v = k2(row), a computed value
#     if v is None:
#         pass                    # or: append(k1), the member written as null
#     elif type(v) is str:
#         append(k0 + enc(v))     # k0: indentation, key and ": "
#     ...                         # an int as json.dumps writes it, the rest generically


class _Source:
    """The text of one generated function and the constants it refers to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines = [f"def {name}(row):", "    parts = []", "    append = parts.append"]
        self.names: dict[str, Any] = {}

    def constant(self, value: Any) -> str:
        name = f"k{len(self.names)}"
        self.names[name] = value
        return name

    def value(self, f: Field) -> None:
        """`v = ` the field's value."""
        if not isinstance(f.value, int):
            self.lines.append(f"    v = {self.constant(f.value)}(row)")
        elif f.convert is not None:
            self.lines.append(f"    v = {self.constant(f.convert)}(row[{f.value}])")
        else:
            self.lines.append(f"    v = row[{f.value}]")

    def build(self, tail: list[str]) -> Callable[[Row], str]:
        namespace = {"enc": _encode, "scalar": _json_scalar, "escape": _escape_text,
                     "xml_text": render._xml_text, **self.names}  # noqa: SLF001
        exec("\n".join(self.lines + tail), namespace)  # noqa: S102 - generated from Fields
        function: Callable[[Row], str] = namespace[self.name]
        return function


def _compile_json(fields: Sequence[Field], indent: str) -> Callable[[Row], str]:
    """A function writing a record as json.dumps(indent=2) writes to_json_value's dict, its
    "{" where the caller is and its "}" at INDENT."""
    inner = indent + "  "
    src = _Source("json_object")
    for f in fields:
        if not f.key:
            continue
        member = f"{inner}{_encode(f.key)}: "
        prefix = src.constant(member)
        if f.children:
            child = src.constant(_compile_json(f.children, inner))
            src.lines.append(f"    append({prefix} + {child}(row))")
            continue
        src.value(f)
        null = f"append({src.constant(member + 'null')})" if f.json_null else "pass"
        src.lines += [
            "    if v is None:", f"        {null}",
            "    elif type(v) is str:", f"        append({prefix} + enc(v))",
            "    elif type(v) is int:  # json.dumps writes int.__repr__",
            f"        append({prefix} + str(v))",
            "    else:", f"        append({prefix} + scalar(v))",
        ]
    close = src.constant("\n" + indent + "}")
    return src.build(["    if not parts:", "        return '{}'",
                      f"    return '{{\\n' + ',\\n'.join(parts) + {close}"])


def _compile_xml(tag: str, fields: Sequence[Field], indent: str) -> Callable[[Row], str]:
    """A function writing a record as the <TAG> element ElementTree writes after ET.indent
    (its start tag where the caller is, its end tag at INDENT), with "/>" for " />"."""
    inner = "\n" + indent + "  "
    src = _Source("xml_element")
    for f in fields:
        if not f.tag:
            continue
        if f.children:
            child = src.constant(_compile_xml(f.tag, f.children, indent + "  "))
            src.lines.append(f"    append({src.constant(inner)} + {child}(row))")
            continue
        empty = src.constant(f"{inner}<{f.tag}/>")
        start, end = src.constant(f"{inner}<{f.tag}>"), src.constant(f"</{f.tag}>")
        src.value(f)
        src.lines += [
            "    if v is None:",
            f"        {f'append({empty})' if f.xml_null == 'empty' else 'pass'}",
            "    else:",
            "        text = v if type(v) is str else str(v) if type(v) is int else xml_text(v)",
            "        if not text:", f"            append({empty})",
            "        elif '&' in text or '<' in text or '>' in text:",
            f"            append({start} + escape(text) + {end})",
            "        else:", f"            append({start} + text + {end})",
        ]
    start, close, empty = (src.constant(f"<{tag}>"), src.constant(f"\n{indent}</{tag}>"),
                           src.constant(f"<{tag}/>"))
    return src.build(["    if not parts:", f"        return {empty}",
                      f"    return {start} + ''.join(parts) + {close}"])


class Compiled:
    """One resource's fields compiled for a list: JSON objects at JSON_INDENT inside their
    array, XML elements at XML_INDENT inside their holder."""

    def __init__(self, tag: str, fields: Sequence[Field], json_indent: str,
                 xml_indent: str) -> None:
        self._json = _compile_json(fields, json_indent)
        self._json_indent = json_indent
        self._xml = _compile_xml(tag, fields, xml_indent)
        self._xml_indent = xml_indent

    def json_items(self, rows: Sequence[Row]) -> str:
        """The JSON array of ROWS, its "[" on the current line."""
        if not rows:
            return "[]"
        indent, render_one = self._json_indent, self._json
        return ("[\n" + indent + f",\n{indent}".join([render_one(r) for r in rows])
                + "\n" + indent[:-2] + "]")

    def xml_items(self, rows: Sequence[Row]) -> str:
        """The XML elements of ROWS, each on its own line (a newline and indentation first)."""
        lead, render_one = "\n" + self._xml_indent, self._xml
        return "".join([lead + render_one(r) for r in rows])


def _xml_list(holder_open: str, holder_tag: str, items: str) -> bytes:
    """<RestcommResponse> around a holder element (its start tag without ">") and ITEMS."""
    if not items:
        return render.xml_document(f"<RestcommResponse>\n  {holder_open}/>\n</RestcommResponse>")
    return render.xml_document(
        f"<RestcommResponse>\n  {holder_open}>{items}\n  </{holder_tag}>\n</RestcommResponse>")


# -- Calls ------------------------------------------------------------------------------------

_CALL = {f.name: i for i, f in enumerate(dataclasses.fields(CallRecord))}
_CALL_SID, _CALL_ACCOUNT = _CALL["sid"], _CALL["account_sid"]


def _call_uri(tail: str) -> Callable[[Row], str]:
    """The call's path, as representations.call builds it, and TAIL."""
    return lambda row: f"{BASE}/Accounts/{row[_CALL_ACCOUNT]}/Calls/{row[_CALL_SID]}{tail}"


def _never(row: Row) -> Any:  # the value of a field that has children
    raise AssertionError


def _call_fields() -> tuple[Field, ...]:
    def at(name: str) -> int:
        return _CALL[name]

    # The _uri(path, as_json) of representations.call, for each format.
    subs_json = (Field("notifications", "", _call_uri("/Notifications.json")),
                 Field("recordings", "", _call_uri("/Recordings.json")))
    subs_xml = (Field("", "Notifications", _call_uri("/Notifications")),
                Field("", "Recordings", _call_uri("/Recordings")))
    return (
        Field("sid", "Sid", at("sid")),
        Field("InstanceId", "InstanceId", at("instance_id"), xml_null="omit"),
        Field("date_created", "DateCreated", at("date_created"), convert=wire_rfc2822),
        Field("date_updated", "DateUpdated", at("date_updated"), convert=wire_rfc2822),
        Field("parent_call_sid", "ParentCallSid", at("parent_call_sid")),
        Field("account_sid", "AccountSid", at("account_sid")), Field("to", "To", at("to")),
        Field("from", "From", at("from_")),
        Field("phone_number_sid", "PhoneNumberSid", at("phone_number_sid")),
        Field("status", "Status", at("status")),
        Field("start_time", "StartTime", at("start_time"), convert=wire_iso),
        Field("end_time", "EndTime", at("end_time"), convert=wire_iso),
        Field("duration", "Duration", at("duration")),
        Field("", "Price", at("price")),  # Restcomm's JSON has no price key
        Field("price_unit", "PriceUnit", at("price_unit")),
        Field("direction", "Direction", at("direction")),
        Field("answered_by", "AnsweredBy", at("answered_by")),
        Field("api_version", "ApiVersion", at("api_version")),
        Field("forwarded_from", "ForwardedFrom", at("forwarded_from")),
        Field("caller_name", "CallerName", at("caller_name")),
        Field("uri", "", _call_uri(".json")),
        Field("", "Uri", _call_uri("")),
        # JSON ends ring_duration, subresource_uris; XML the other way round.
        Field("ring_duration", "", at("ring_duration")),
        Field("subresource_uris", "", _never, children=subs_json),
        Field("", "SubresourceUris", _never, children=subs_xml),
        Field("", "Ring_duration", at("ring_duration")),
    )


# Page items: JSON objects inside the page's array (4 spaces), XML <Call> at level 2.
_CALLS = Compiled("Call", _call_fields(), "    ", "    ")


def calls_page(page: Page[Row], *, uri: str, as_json: bool) -> bytes:
    """render.paged(page, [representations.call(c) for c in models], uri=URI,
    json_key="calls", list_tag="Calls", xml_attributes=True) from stored records."""
    rows = page.items
    fields = render.page_fields(page, uri, len(rows), rows[-1][_CALL_SID] if rows else "")
    if as_json:
        head = "".join([f"  {_encode(k)}: {_json_value(v)},\n" for k, v in fields.items()])
        return render.json_document(f'{{\n{head}  "calls": {_CALLS.json_items(rows)}\n}}')
    attributes = "".join([
        f' {name}="{_escape_attribute("null" if v is None else str(v))}"'
        for name, v in zip(render.XML_PAGE_ATTRIBUTES, fields.values(), strict=True)])
    return _xml_list(f"<Calls{attributes}", "Calls", _CALLS.xml_items(rows))


# -- Clients ----------------------------------------------------------------------------------

_CLIENT = {f.name: i for i, f in enumerate(dataclasses.fields(Client))}
_CLIENT_SID, _CLIENT_ACCOUNT = _CLIENT["sid"], _CLIENT["account_sid"]


def _client_uri(tail: str) -> Callable[[Row], str]:
    """The client's path, as representations.client builds it, and TAIL."""
    return lambda row: f"{BASE}/Accounts/{row[_CLIENT_ACCOUNT]}/Clients/{row[_CLIENT_SID]}{tail}"


def _client_fields() -> tuple[Field, ...]:
    def at(name: str) -> int:
        return _CLIENT[name]

    return (
        Field("sid", "Sid", at("sid")),
        Field("date_created", "DateCreated", at("date_created"), convert=wire_rfc2822),
        Field("date_updated", "DateUpdated", at("date_updated"), convert=wire_rfc2822),
        Field("account_sid", "AccountSid", at("account_sid")),
        Field("api_version", "ApiVersion", at("api_version")),
        Field("friendly_name", "FriendlyName", at("friendly_name")),
        Field("login", "Login", at("login")),
        Field("password_algorithm", "Password_Algorithm", lambda r: "MD5"),
        # rows.client reads int(status); representations.client writes str() of that.
        Field("status", "Status", at("status"), convert=lambda v: str(int(v))),
        Field("voice_url", "VoiceUrl", at("voice_url"), xml_null="omit"),
        Field("voice_method", "VoiceMethod", at("voice_method")),
        Field("voice_fallback_url", "VoiceFallbackUrl", at("voice_fallback_url"),
              xml_null="omit"),
        Field("voice_fallback_method", "VoiceFallbackMethod", at("voice_fallback_method")),
        Field("voice_application_sid", "VoiceApplicationSid", at("voice_application_sid"),
              xml_null="omit"),
        Field("uri", "", _client_uri(".json")),
        Field("", "Uri", _client_uri("")),
        Field("push_client_identity", "PushClientIdentity", at("push_client_identity"),
              xml_null="omit"),
    )


# A bare JSON array (items at 2 spaces); XML <Client> at level 2.
_CLIENTS = Compiled("Client", _client_fields(), "  ", "    ")


def clients(rows: Sequence[Row], as_json: bool) -> bytes:
    """render.many([representations.client(c) for c in models], "Clients") from stored
    records."""
    if as_json:
        return render.json_document(_CLIENTS.json_items(rows))
    return _xml_list("<Clients", "Clients", _CLIENTS.xml_items(rows))
