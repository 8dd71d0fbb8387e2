"""SCN-1's fixed layouts as ``struct`` formats: generated, do not edit.

Derived from the construct definitions in ``gateway.protocol.scn1_schema``
(the one definition) so that the daemon decodes without importing construct.
Regenerate after changing a definition there::

    python -m gateway.protocol.scn1_schema > gateway/protocol/scn1_layouts.py
"""

from __future__ import annotations

import struct

from gateway.protocol.layout import FixedLayout

HEADER_LAYOUT = FixedLayout(
    None, struct.Struct(">BBLHB"), ("version", "msg_type", "node_id", "seq", "flags")
)
TLV_LAYOUTS: dict[int, FixedLayout] = {
    0x01: FixedLayout(4, struct.Struct(">hh"), ("x", "y")),  # TILT
    0x02: FixedLayout(2, struct.Struct(">H"), ("mm",)),  # WATER_DEPTH
    0x03: FixedLayout(2, struct.Struct(">H"), ("mv",)),  # BATTERY
    0x04: FixedLayout(2, struct.Struct(">h"), ("decidegc",)),  # TEMPERATURE
    0x05: FixedLayout(3, struct.Struct(">BH"), ("kind", "value")),  # GAS
    0x06: FixedLayout(2, struct.Struct(">bb"), ("rssi", "snr")),  # LINK
    0x07: FixedLayout(7, struct.Struct(">BLh"), ("code", "age", "value")),  # EVENT
    0x08: FixedLayout(4, struct.Struct(">BBH"), ("major", "minor", "build")),  # FIRMWARE
    0x09: FixedLayout(1, struct.Struct(">B"), ("cause",)),  # RESET_CAUSE
    0x0A: FixedLayout(2, struct.Struct(">H"), ("decikpa",)),  # PRESSURE
    0x0B: FixedLayout(2, struct.Struct(">H"), ("mg",)),  # VIBRATION
}
