"""How a radio module presents a received packet on its UART (spec: rs485-sensors.md)."""

from __future__ import annotations

from enum import StrEnum


class Dialect(StrEnum):
    TRANSPARENT = "transparent"
    AT = "at"


def module_output(
    dialect: Dialect, frame: bytes, *, rssi_dbm: int, snr_db: int, rssi_append: bool
) -> bytes:
    """The UART bytes for one packet heard over the air."""
    if dialect is Dialect.AT:
        return f"+EVT:RXP2P:{rssi_dbm}:{snr_db}:{frame.hex().upper()}\r\n".encode("ascii")
    if rssi_append:
        return frame + bytes((max(-255, min(-1, rssi_dbm)) + 256,))
    return frame
