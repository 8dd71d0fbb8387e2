"""The Milesight NB-IoT cellular frame (EM400-MUD / EM400-UDL cellular versions, spec 3.4).

A big-endian header naming the device (IMEI) and SIM, then Milesight
records (little-endian) that may hold several readings. The header is
checked exactly: 86 bytes, ``length`` = 81 + ``data_length``, the frame
exactly 86 + ``data_length`` bytes; nothing after it is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from construct import Bytes, Int8ub, Int16ub, Struct, this

from gateway.protocol.devices import em400, milesight
from gateway.protocol.devices.base import (
    Decoded,
    DeviceDecodeError,
    DeviceModel,
    DeviceReason,
)
from gateway.protocol.layout import fast_parser

START_FLAG = 0x02
HEADER_SIZE = 86
LENGTH_OFFSET = 81  # length counts the bytes after itself: 81 header bytes + data
CSQ_UNKNOWN = 99

# Strings are raw bytes here and decoded below: construct's string types
# raise UnicodeDecodeError, not a ConstructError, on hostile bytes.
HEADER = Struct(
    "start_flag" / Int8ub,
    "id" / Int16ub,
    "length" / Int16ub,
    "flag" / Int8ub,
    "frame_cnt" / Int16ub,
    "protocol_version" / Int8ub,
    "firmware_version" / Bytes(4),
    "hardware_version" / Bytes(4),
    "sn" / Bytes(16),
    "imei" / Bytes(15),
    "imsi" / Bytes(15),
    "iccid" / Bytes(20),
    "csq" / Int8ub,
    "data_length" / Int16ub,
)
FRAME = Struct("header" / HEADER, "data" / Bytes(this.header.data_length))
_HEADER_FAST = fast_parser(HEADER)


@dataclass(frozen=True, slots=True)
class NbFrame:
    """One cellular frame: who sent it, over which SIM, and its readings in wire order.

    The frame carries no measurement times: every reading's ``at`` is None
    (the receipt time applies).
    """

    model: str
    imei: str  # 15 digits: the device's id in the registry
    imsi: str
    iccid: str
    csq: int  # 0..31; 99 the modem did not know
    frame_cnt: int
    sn: str
    frame_id: int
    flag: int
    protocol_version: int
    firmware_version: str
    hardware_version: str
    readings: tuple[Decoded, ...]

    def header_fields(self) -> dict[str, Any]:
        return {
            "imei": self.imei,
            "imsi": self.imsi,
            "iccid": self.iccid,
            "csq": None if self.csq == CSQ_UNKNOWN else self.csq,
            "frame_cnt": self.frame_cnt,
            "sn": self.sn,
            "id": self.frame_id,
            "flag": self.flag,
            "protocol_version": self.protocol_version,
            "firmware_version": self.firmware_version,
            "hardware_version": self.hardware_version,
        }


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0 ").decode("ascii", "replace")


def decode_nb_frame(data: bytes, *, at: float, model: str = em400.MUD) -> NbFrame:
    """Decode one whole frame; raises only ``DeviceDecodeError``.

    MODEL labels the readings (the frame does not say MUD or UDL; both
    send the same records).
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise DeviceDecodeError(
            DeviceReason.TRUNCATED, f"{size} bytes, the header alone is {HEADER_SIZE}"
        )
    header = _HEADER_FAST(data)
    if header.start_flag != START_FLAG:
        raise DeviceDecodeError(
            DeviceReason.BAD_START_FLAG,
            f"starts with 0x{header.start_flag:02x}, not 0x02",
            offset=0,
        )
    want = HEADER_SIZE + header.data_length
    if size < want:
        raise DeviceDecodeError(
            DeviceReason.TRUNCATED,
            f"data_length {header.data_length} needs {want} bytes, got {size}",
        )
    if size > want:
        raise DeviceDecodeError(
            DeviceReason.BAD_LENGTH, f"{size - want} bytes after data_length", offset=want
        )
    if header.length != LENGTH_OFFSET + header.data_length:
        raise DeviceDecodeError(
            DeviceReason.BAD_LENGTH,
            f"length {header.length} but data_length {header.data_length} "
            f"(length must be {LENGTH_OFFSET} + data_length)",
            offset=3,
        )
    imei = bytes(header.imei)
    if not imei.isdigit():
        raise DeviceDecodeError(
            DeviceReason.BAD_VALUE, f"IMEI {imei!r} is not 15 digits", offset=33
        )
    readings = milesight.walk(model, data[HEADER_SIZE:], em400.NB_TABLE, at, group=True)
    return NbFrame(
        model=model,
        imei=imei.decode("ascii"),
        imsi=_text(header.imsi),
        iccid=_text(header.iccid),
        csq=header.csq,
        frame_cnt=header.frame_cnt,
        sn=_text(header.sn),
        frame_id=header.id,
        flag=header.flag,
        protocol_version=header.protocol_version,
        firmware_version=_text(header.firmware_version),
        hardware_version=_text(header.hardware_version),
        readings=tuple(readings),
    )


def build_nb_frame(
    records: bytes,
    *,
    imei: str = "868508064807350",
    imsi: str = "460043224213110",
    iccid: str = "89860412102270062857",
    sn: str = "6749D19054690031",
    frame_id: int = 1,
    frame_cnt: int = 0,
    csq: int = 9,
    flag: int = 0,
    protocol_version: int = 1,
    firmware_version: str = "0101",
    hardware_version: str = "0110",
) -> bytes:
    """A whole frame around RECORDS (e.g. ``em400.build_reading(...)`` joined)."""

    def text(value: str, size: int) -> bytes:
        return value.encode("ascii").ljust(size, b"\0")[:size]

    return bytes(
        FRAME.build(
            {
                "header": {
                    "start_flag": START_FLAG,
                    "id": frame_id,
                    "length": LENGTH_OFFSET + len(records),
                    "flag": flag,
                    "frame_cnt": frame_cnt,
                    "protocol_version": protocol_version,
                    "firmware_version": text(firmware_version, 4),
                    "hardware_version": text(hardware_version, 4),
                    "sn": text(sn, 16),
                    "imei": text(imei, 15),
                    "imsi": text(imsi, 15),
                    "iccid": text(iccid, 20),
                    "csq": csq,
                    "data_length": len(records),
                },
                "data": records,
            }
        )
    )


def _as_model(model: str) -> DeviceModel:
    def decode(payload: bytes, fport: int | None, at: float) -> Decoded:
        del fport  # the cellular frame has no port
        frame = decode_nb_frame(payload, at=at, model=model)
        partial = next((r.partial for r in frame.readings if r.partial), None)
        return Decoded(
            model=model,
            partial=partial,
            fields=MappingProxyType(frame.header_fields()),
            readings=frame.readings,
        )

    return DeviceModel(
        name=f"{model}-nb",
        transport="nbiot",
        decoder=decode,
        summary=f"{model} cellular frame (NB-IoT): header and readings",
    )


MUD_NB_MODEL = _as_model(em400.MUD)
UDL_NB_MODEL = _as_model(em400.UDL)
