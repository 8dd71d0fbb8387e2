"""SCN-1 wire format, declared once with construct (spec: shared/spec/scn1-cover-node-frames.md).

Layout::

    FRAME = SYNC(A5 5A) LEN BODY[LEN] CRC16   (CRC-16/CCITT-FALSE over LEN+BODY)
    BODY  = HEADER TLV*                       (records fill BODY exactly)

Each known TLV declares its L as a ``Const``, so a record of the wrong size
is refused and building fills L in by itself. Encoding (simulator, tests)
builds with these definitions. Decoding is the gateway's hot path: every
fixed-size part (the header, each known record's fields) is a run of integer
fields, so ``fixed_layout`` derives a ``struct.Struct`` from the construct
definition itself and the decoder unpacks with that in a record loop (about
three times faster than construct's compiled parsers). construct stays the
one definition; the test suite checks both forms agree on arbitrary bytes.
"""

from __future__ import annotations

import binascii
from enum import IntEnum
from typing import Any

from construct import (
    Bytes,
    Checksum,
    ChecksumError,
    Const,
    ConstructError,
    Int8sb,
    Int8ub,
    Int16sb,
    Int16ub,
    Int32ub,
    Rebuild,
    Struct,
    Switch,
    len_,
    this,
)

from gateway.protocol.layout import FixedLayout, fixed_layout

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


def _sized(length: int, *fields: Any) -> Any:
    return Struct("length" / Const(length, Int8ub), *fields)


TLV_BODIES: dict[int, Any] = {
    Tag.TILT: _sized(4, "x" / Int16sb, "y" / Int16sb),
    Tag.WATER_DEPTH: _sized(2, "mm" / Int16ub),
    Tag.BATTERY: _sized(2, "mv" / Int16ub),
    Tag.TEMPERATURE: _sized(2, "decidegc" / Int16sb),
    Tag.GAS: _sized(3, "kind" / Int8ub, "value" / Int16ub),
    Tag.LINK: _sized(2, "rssi" / Int8sb, "snr" / Int8sb),
    Tag.EVENT: _sized(7, "code" / Int8ub, "age" / Int32ub, "value" / Int16sb),
    Tag.FIRMWARE: _sized(4, "major" / Int8ub, "minor" / Int8ub, "build" / Int16ub),
    Tag.RESET_CAUSE: _sized(1, "cause" / Int8ub),
    Tag.PRESSURE: _sized(2, "decikpa" / Int16ub),
    Tag.VIBRATION: _sized(2, "mg" / Int16ub),
}

RAW_TLV_BODY = Struct("length" / Rebuild(Int8ub, len_(this.raw)), "raw" / Bytes(this.length))

# int keys: the construct compiler writes keys with repr(), which an IntEnum breaks.
TLV = Struct(
    "tag" / Int8ub,
    "body" / Switch(this.tag, {int(t): b for t, b in TLV_BODIES.items()}, default=RAW_TLV_BODY),
)

# Records that must stay bytes-as-given (unknown tags, or known tags holding
# a value this gateway cannot name) are built with this form.
RAW_TLV = Struct("tag" / Int8ub, "body" / RAW_TLV_BODY)

HEADER = Struct(
    "version" / Int8ub,
    "msg_type" / Int8ub,
    "node_id" / Int32ub,
    "seq" / Int16ub,
    "flags" / Int8ub,
)

ENVELOPE = Struct(
    "sync" / Const(SYNC),
    "length" / Rebuild(Int8ub, len_(this.body)),
    "body" / Bytes(this.length),
    "crc" / Checksum(Int16ub, crc16_ccitt_false, lambda ctx: bytes((ctx.length,)) + ctx.body),
)


HEADER_LAYOUT = fixed_layout(HEADER)
TLV_LAYOUTS: dict[int, FixedLayout] = {int(t): fixed_layout(b) for t, b in TLV_BODIES.items()}
assert HEADER_LAYOUT.fields.size == HEADER_SIZE

__all__ = [
    "ENVELOPE",
    "HEADER",
    "HEADER_LAYOUT",
    "MAX_FRAME",
    "MAX_LEN",
    "MIN_LEN",
    "OVERHEAD",
    "RAW_TLV",
    "SYNC",
    "TLV",
    "TLV_BODIES",
    "TLV_LAYOUTS",
    "VERSION",
    "ChecksumError",
    "ConstructError",
    "FixedLayout",
    "Tag",
    "crc16_ccitt_false",
    "fixed_layout",
]
