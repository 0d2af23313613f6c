"""GSM 7-bit default alphabet, septet packing, UCS-2/UTF-16, and splitting text into parts.

Split out of `pdu.py` (style.md §6.9: split at the second reason to change): this module knows
characters and bits, `pdu.py` knows TPDU fields. Pure: no I/O, clock or logging.

References: 3GPP TS 23.038 §6.2.1 (default alphabet and extension table), §6.1.2.1 (packing),
TS 23.040 §9.2.3.24.1 (concatenation), modem.md §3.5 and §3.6.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from appliance.gsm.errors import PduError

# TS 23.038 §6.2.1, index = septet value. 0x1B is the escape to the extension table; it is kept
# as a placeholder here and never produced by a lookup. Traps (§3.5): 0x5F is "§", 0x24 "¤",
# 0x02 "$", 0x60 "¿".
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
assert len(GSM7_BASIC) == 128  # a module invariant, not peer input

ESCAPE = 0x1B
# TS 23.038 §6.2.1.1: each of these costs two septets (ESC + code).
GSM7_EXTENSION: dict[int, str] = {
    0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~", 0x3E: "]",
    0x40: "|", 0x65: "€",
}
_BASIC_INDEX = {ch: i for i, ch in enumerate(GSM7_BASIC) if i != ESCAPE}
_EXTENSION_INDEX = {ch: code for code, ch in GSM7_EXTENSION.items()}

# Capacity per part (TS 23.040 §9.2.3.24, modem.md §3.6 table). A concatenation UDH costs
# 6 octets (8-bit reference) = 7 septets / 3 UCS-2 units, or 7 octets (16-bit) = 8 septets.
GSM7_SINGLE, GSM7_CONCAT8, GSM7_CONCAT16 = 160, 153, 152
UCS2_SINGLE, UCS2_CONCAT8, UCS2_CONCAT16 = 70, 67, 66

# Our ceiling on parts per message. TS 23.040 allows 255, but handsets and SMSCs commonly give
# up well before that (Gammu crashed on 54 parts, gammu#442) and the REST API caps bodies at
# 1600 characters as Twilio does. 10 parts = at most 1530 GSM-7 septets or 670 UTF-16 units;
# an ESC pair or a surrogate pair is never split across parts, so 760 "€" or 330 emoji fit
# (a part holds 76 or 33 of them), not 765 or 335.
MAX_PARTS = 10


class Encoding(enum.Enum):
    GSM7 = "gsm7"
    BINARY = "8bit"
    UCS2 = "ucs2"


def gsm7_encode(text: str) -> list[int]:
    """Text → septet values (extension characters as ESC + code); PduError if not in GSM-7."""
    out: list[int] = []
    for ch in text:
        if ch in _BASIC_INDEX:
            out.append(_BASIC_INDEX[ch])
        elif ch in _EXTENSION_INDEX:
            out += (ESCAPE, _EXTENSION_INDEX[ch])
        else:
            raise PduError(f"character {ch!r} is not in the GSM 7-bit alphabet")
    return out


def gsm7_decode(septets: Iterable[int]) -> str:
    """Septets → text. ESC + an unknown code decodes as the basic character (TS 23.038 §6.2.1.1);
    a trailing lone ESC is dropped."""
    out: list[str] = []
    escaped = False
    for s in septets:
        s &= 0x7F
        if escaped:
            out.append(GSM7_EXTENSION.get(s, GSM7_BASIC[s] if s != ESCAPE else " "))
            escaped = False
        elif s == ESCAPE:
            escaped = True
        else:
            out.append(GSM7_BASIC[s])
    return "".join(out)


def gsm7_length(text: str) -> int | None:
    """Septets needed for `text`, or None if it does not fit the GSM-7 alphabet."""
    n = 0
    for ch in text:
        if ch in _BASIC_INDEX:
            n += 1
        elif ch in _EXTENSION_INDEX:
            n += 2
        else:
            return None
    return n


def pack_septets(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """Septet i goes to bits fill+7i … fill+7i+6 of an LSB-first bit stream (TS 23.038 §6.1.2.1).
    `fill_bits` zero bits come first, to align text after a UDH to a septet boundary."""
    acc = 0
    for i, s in enumerate(septets):
        acc |= (s & 0x7F) << (fill_bits + 7 * i)
    nbits = fill_bits + 7 * len(septets)
    return acc.to_bytes((nbits + 7) // 8, "little")


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """The inverse of `pack_septets`; PduError if `data` holds fewer than `count` septets."""
    if count < 0 or fill_bits + 7 * count > 8 * len(data):
        raise PduError(f"user data holds fewer than {count} septets")
    acc = int.from_bytes(data, "little") >> fill_bits
    return [(acc >> (7 * i)) & 0x7F for i in range(count)]


def ucs2_encode(text: str) -> bytes:
    """UTF-16BE: characters outside the BMP become surrogate pairs (modem.md decision 5)."""
    return text.encode("utf-16-be", "surrogatepass")


def ucs2_decode(data: bytes) -> str:
    """UTF-16BE with surrogates allowed; a lone surrogate or odd byte becomes U+FFFD; text ends
    at the first U+0000 (Telit pads with zeros, modem.md §2.7)."""
    text = data.decode("utf-16-be", "replace")
    return text.split("\x00", 1)[0]


def choose_encoding(text: str) -> Encoding:
    """GSM-7 if every character is in the basic or extension table, otherwise UCS-2. No lossy
    transliteration (modem.md §3.5 encoding policy)."""
    return Encoding.GSM7 if gsm7_length(text) is not None else Encoding.UCS2


def _cost(ch: str, encoding: Encoding) -> int:
    if encoding is Encoding.GSM7:
        return 2 if ch in _EXTENSION_INDEX else 1
    return 2 if ord(ch) > 0xFFFF else 1  # a surrogate pair is two UTF-16 units


def split_text(
    text: str, encoding: Encoding | None = None, *, ref16: bool = False,
    max_parts: int = MAX_PARTS,
) -> tuple[Encoding, list[str]]:
    """Split `text` into the parts of one SMS, at character boundaries.

    Because we iterate over characters, an ESC pair (one extension character) and a surrogate
    pair (one astral character) always land in the same part. Returns the encoding chosen and
    the text of each part; raises PduError if more than `max_parts` parts would be needed.
    """
    if encoding is None:
        encoding = choose_encoding(text)
    if encoding is Encoding.BINARY:
        raise PduError("split_text is for text; 8-bit payloads are sent as bytes")
    if encoding is Encoding.GSM7:
        if gsm7_length(text) is None:
            raise PduError("text does not fit the GSM 7-bit alphabet")
        single, multi = GSM7_SINGLE, GSM7_CONCAT16 if ref16 else GSM7_CONCAT8
    else:
        single, multi = UCS2_SINGLE, UCS2_CONCAT16 if ref16 else UCS2_CONCAT8
    total = sum(_cost(ch, encoding) for ch in text)
    if total <= single:
        return encoding, [text]
    parts: list[str] = []
    cur: list[str] = []
    used = 0
    for ch in text:
        cost = _cost(ch, encoding)
        if used + cost > multi:
            parts.append("".join(cur))
            cur, used = [], 0
        cur.append(ch)
        used += cost
    parts.append("".join(cur))
    if len(parts) > max_parts:
        raise PduError(f"message needs {len(parts)} parts; the maximum is {max_parts}")
    return encoding, parts
