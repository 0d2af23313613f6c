"""Build network-side PDUs (SMS-DELIVER, SMS-STATUS-REPORT) that a fake modem hands to the host.

Field by field per TS 23.040 §9.2.2.1 / §9.2.2.3, reusing only the low-level pieces of
`appliance.gsm` (address and timestamp encoders, septet packing) so a decoder bug is not
mirrored by the builder.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from appliance.gsm.alphabet import gsm7_encode, pack_septets, ucs2_encode
from appliance.gsm.pdu import Concat, encode_address, encode_scts, encode_smsc

WHEN = datetime(2024, 3, 3, 9, 5, 7, tzinfo=timezone(timedelta(hours=1)))


def deliver_pdu(
    sender: str, text: str, *, ucs2: bool = False, concat: Concat | None = None,
    when: datetime = WHEN, smsc: str | None = "+15550000001",
) -> str:
    """`<SCA><SMS-DELIVER>` hex for `text` from `sender` (digits, `+digits`, or a name such
    as "Vodafone": an alphanumeric address)."""
    udh = b""
    if concat is not None:
        ie = concat.encode()
        udh = bytes([len(ie)]) + ie
    if ucs2:
        ud = udh + ucs2_encode(text)
        dcs, udl = 0x08, len(ud)
    else:
        septets = gsm7_encode(text)
        fill = (7 - (len(udh) * 8) % 7) % 7 if udh else 0
        ud = udh + pack_septets(septets, fill)
        dcs, udl = 0x00, (len(udh) * 8 + fill) // 7 + len(septets)
    fo = 0x04 | (0x40 if udh else 0)  # MTI 00, MMS=1 (no more messages)
    address = (encode_address(sender) if re.fullmatch(r"\+?[0-9]+", sender)
               else _alphanumeric_address(sender))
    tpdu = bytes([fo]) + address + bytes([0x00, dcs]) + encode_scts(when)
    return (encode_smsc(smsc) + tpdu + bytes([udl]) + ud).hex().upper()


def _alphanumeric_address(name: str) -> bytes:
    """TS 23.040 §9.1.2.5: TON 101 (TOA 0xD0), GSM-7 packed; the length counts semi-octets."""
    septets = gsm7_encode(name)
    return bytes([(len(septets) * 7 + 3) // 4, 0xD0]) + pack_septets(septets)


def status_report_pdu(
    mr: int, recipient: str, status: int = 0x00, *, when: datetime = WHEN,
    smsc: str | None = None,
) -> str:
    """`<SCA><SMS-STATUS-REPORT>` hex: FO 06, MR, RA, SCTS, DT, ST."""
    tpdu = bytes([0x06, mr]) + encode_address(recipient) + encode_scts(when)
    tpdu += encode_scts(when + timedelta(seconds=5)) + bytes([status])
    return (encode_smsc(smsc) + tpdu).hex().upper()
