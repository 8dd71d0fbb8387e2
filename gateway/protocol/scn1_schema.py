"""SCN-1 declared once, with construct: the definition every other form derives from.

Encoding (the simulator, the tests, ``covergw decode``'s tools) builds with
these definitions. The daemon's decoder does not import this module: it
unpacks with the ``struct`` layouts derived from it ahead of time into
``gateway.protocol.scn1_layouts``. After changing a definition here,
regenerate that module::

    python -m gateway.protocol.scn1_schema > gateway/protocol/scn1_layouts.py

(tests/test_codec_properties.py fails while the two differ.)
"""

from __future__ import annotations

import sys
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

from gateway.protocol.layout import fixed_layout, layout_literal
from gateway.protocol.scn1 import HEADER_SIZE, SYNC, Tag, crc16_ccitt_false


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

assert HEADER.sizeof() == HEADER_SIZE


def _assignment(name: str, call: str) -> list[str]:
    """``name = call`` as ruff formats it: on one line if it fits, else its arguments indented."""
    line = f"{name} = {call}"
    if len(line) <= 100:
        return [line]
    head, args = call.split("(", 1)
    return [f"{name} = {head}(", f"    {args[:-1]}", ")"]


def layouts_source() -> str:
    """The source of ``gateway.protocol.scn1_layouts``, derived from the definitions above."""
    lines = [
        '"""SCN-1\'s fixed layouts as ``struct`` formats: generated, do not edit.',
        "",
        "Derived from the construct definitions in ``gateway.protocol.scn1_schema``",
        "(the one definition) so that the daemon decodes without importing construct.",
        "Regenerate after changing a definition there::",
        "",
        "    python -m gateway.protocol.scn1_schema > gateway/protocol/scn1_layouts.py",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import struct",
        "",
        "from gateway.protocol.layout import FixedLayout",
        "",
        *_assignment("HEADER_LAYOUT", layout_literal(fixed_layout(HEADER))),
        "TLV_LAYOUTS: dict[int, FixedLayout] = {",
    ]
    for tag, body in TLV_BODIES.items():
        literal = layout_literal(fixed_layout(body))
        lines.append(f"    0x{int(tag):02X}: {literal},  # {Tag(tag).name}")
    lines.append("}")
    return "\n".join(lines) + "\n"


__all__ = [
    "ENVELOPE",
    "HEADER",
    "RAW_TLV",
    "TLV",
    "TLV_BODIES",
    "ChecksumError",
    "ConstructError",
    "layouts_source",
]

if __name__ == "__main__":
    sys.stdout.write(layouts_source())
