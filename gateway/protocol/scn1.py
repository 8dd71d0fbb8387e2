"""SCN-1 wire format, what the decoder needs (spec: shared/spec/scn1-cover-node-frames.md).

Layout::

    FRAME = SYNC(A5 5A) LEN BODY[LEN] CRC16   (CRC-16/CCITT-FALSE over LEN+BODY)
    BODY  = HEADER TLV*                       (records fill BODY exactly)

The format is declared once, with construct, in ``gateway.protocol.scn1_schema``
(encoding, the simulator, the tests and the tools build and parse with it).
Decoding is the gateway's hot path and runs without construct: every fixed-size
part (the header, each known record's fields) is a run of integer fields, whose
``struct`` layouts ``fixed_layout`` derives from the construct definitions. They
are derived ahead of time into ``scn1_layouts`` (generated, checked in), so a
running daemon does not import construct (~2 MiB of its idle memory); a test
regenerates them from construct and fails when the checked-in module differs,
and the property tests hold both forms to the same reading on arbitrary bytes.
"""

from __future__ import annotations

import binascii
from enum import IntEnum

from gateway.protocol.layout import FixedLayout
from gateway.protocol.scn1_layouts import HEADER_LAYOUT, TLV_LAYOUTS

SYNC = b"\xa5\x5a"
VERSION = 1
MIN_LEN = 9
MAX_LEN = 240
HEADER_SIZE = 9
OVERHEAD = 5  # SYNC + LEN + CRC around BODY
MAX_FRAME = MAX_LEN + OVERHEAD


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE; ``binascii.crc_hqx`` is that CRC with the init passed in."""
    return binascii.crc_hqx(data, 0xFFFF)


class Tag(IntEnum):
    TILT = 0x01
    WATER_DEPTH = 0x02
    BATTERY = 0x03
    TEMPERATURE = 0x04
    GAS = 0x05
    LINK = 0x06
    EVENT = 0x07
    FIRMWARE = 0x08
    RESET_CAUSE = 0x09
    PRESSURE = 0x0A
    VIBRATION = 0x0B


__all__ = [
    "HEADER_LAYOUT",
    "HEADER_SIZE",
    "MAX_FRAME",
    "MAX_LEN",
    "MIN_LEN",
    "OVERHEAD",
    "SYNC",
    "TLV_LAYOUTS",
    "VERSION",
    "FixedLayout",
    "Tag",
    "crc16_ccitt_false",
]
