"""Dragino DDS75-LB: ultrasonic distance, fixed big-endian layouts chosen by fPort (spec 4).

No channel records here: each fPort has one layout, checked to the exact
length (the vendor decoder reads short payloads as ``undefined`` and ignores
trailing bytes). The distance is valid only when the sensor flag is 1
(probe detected); otherwise it is left out, kept as ``distance_raw_mm``, and
a ``SENSOR_FAULT`` event says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from construct import Int8ub, Int16sb, Int16ub, Int24ub, Int32ub, Struct

from gateway.observation import DeviceEvent, DeviceEventKind, Quantities
from gateway.protocol.devices.base import (
    Decoded,
    DeviceDecodeError,
    DeviceModel,
    DeviceReason,
    DownlinkFn,
    check_range,
)
from gateway.protocol.layout import fast_parser

NAME = "dds75-lb"
BATTERY_MASK = 0x3FFF  # bits 14-15 are flags, not millivolts
MULTI_BATTERY_MASK = 0x0FFF
MULTI_FLAG = 0x10  # byte 0 of an fPort-2 uplink: a burst of distances
MULTI_MAX = 20  # the vendor decoder reads at most 20 distances
SENSOR_DETECTED = 1

PORT_PERIODIC = 2
PORT_DATALOG = 3
PORT_STATUS = 5
PORT_DETECT = 6
DOWNLINK_PORT = 2  # any port works for Dragino commands; 2 is the common choice

PERIODIC = Struct(
    "bat_raw" / Int16ub,  # mV = bat_raw & 0x3FFF
    "distance_mm" / Int16ub,
    "interrupt" / Int8ub,
    "temp_raw" / Int16sb,  # deci-degrees C; 0 when no DS18B20 probe
    "sensor_flag" / Int8ub,
)
MULTI_TAIL = Struct("interrupt" / Int8ub, "temp_raw" / Int16sb, "sensor_flag" / Int8ub)
DATALOG_RECORD = Struct(
    "bat_raw" / Int16ub,  # bit 15 of the first record is PNACKMD
    "distance_mm" / Int16ub,
    "temp_raw" / Int16sb,  # signed (the vendor reads it unsigned: a quirk)
    "flags" / Int8ub,  # bit 0 interrupt, bits 1 and 6 undocumented
    "time" / Int32ub,  # Unix seconds, unsigned (the vendor's 32-bit signed math breaks in 2038)
)
STATUS = Struct(
    "sensor_model" / Int8ub,
    "fw_major" / Int8ub,
    "fw_minor" / Int8ub,
    "band" / Int8ub,
    "sub_band" / Int8ub,
    "bat_mv" / Int16ub,
)
DISTANCE = Struct("mm" / Int16ub)

_PERIODIC = fast_parser(PERIODIC)
_MULTI_TAIL = fast_parser(MULTI_TAIL)
_DATALOG = fast_parser(DATALOG_RECORD)
_STATUS = fast_parser(STATUS)
_DATALOG_SIZE = DATALOG_RECORD.sizeof()
_PERIODIC_SIZE = PERIODIC.sizeof()  # construct works sizes out on every call: once here
_STATUS_SIZE = STATUS.sizeof()

SENSOR_MODELS = {0x27: "DDS75-LB"}
BANDS = {
    0x01: "EU868",
    0x02: "US915",
    0x03: "IN865",
    0x04: "AU915",
    0x05: "KZ865",
    0x06: "RU864",
    0x07: "AS923",
    0x08: "AS923_1",
    0x09: "AS923_2",
    0x0A: "AS923_3",
    0x0B: "CN470",
    0x0C: "EU433",
    0x0D: "KR920",
    0x0E: "MA869",
}


def _refuse_length(payload: bytes, want: int, what: str) -> None:
    if len(payload) < want:
        raise DeviceDecodeError(
            DeviceReason.TRUNCATED, f"{what} is {want} bytes, got {len(payload)}"
        )
    if len(payload) > want:
        raise DeviceDecodeError(
            DeviceReason.BAD_LENGTH, f"{what} is {want} bytes, got {len(payload)}", offset=want
        )


def _sensor(flag: int, distance_mm: int, fields: dict[str, Any], q: dict[str, Any]) -> None:
    fields["sensor_flag"] = flag
    if flag == SENSOR_DETECTED:
        fields["distance_mm"] = distance_mm
        q["distance_mm"] = float(distance_mm)
    else:
        fields["distance_raw_mm"] = distance_mm


def _fault(flag: int, at: float) -> tuple[DeviceEvent, ...]:
    if flag == SENSOR_DETECTED:
        return ()
    detail = {"sensor_flag": flag, "cause": "ultrasonic probe not detected"}
    return (DeviceEvent(DeviceEventKind.SENSOR_FAULT, at, detail=MappingProxyType(detail)),)


def _periodic(payload: bytes, at: float) -> Decoded:
    if payload and payload[0] & MULTI_FLAG:
        return _multi(payload, at)
    _refuse_length(payload, _PERIODIC_SIZE, "an fPort-2 uplink")
    c = _PERIODIC(payload)
    battery_mv = c.bat_raw & BATTERY_MASK
    temperature = c.temp_raw / 10
    fields: dict[str, Any] = {
        "battery_mv": battery_mv,
        "temperature_c": temperature,
        "interrupt_flag": c.interrupt,
    }
    q: dict[str, Any] = {"battery_mv": float(battery_mv), "temperature_c": temperature}
    _sensor(c.sensor_flag, c.distance_mm, fields, q)
    return Decoded(
        model=NAME,
        quantities=Quantities(**q),
        events=_fault(c.sensor_flag, at),
        fields=MappingProxyType(fields),
        extra=MappingProxyType({"interrupt": bool(c.interrupt)}),
    )


def _multi(payload: bytes, at: float) -> Decoded:
    """The burst variant (vendor-specific, undocumented): distances kept as a list only."""
    size = len(payload)
    if size < 12:  # 8 header bytes (6 of them skipped) + the 4-byte tail
        raise DeviceDecodeError(
            DeviceReason.TRUNCATED, f"a multi-distance uplink needs 12 bytes, got {size}"
        )
    count, odd = divmod(size - 12, 2)
    if odd or count > MULTI_MAX:
        raise DeviceDecodeError(
            DeviceReason.BAD_LENGTH,
            f"{size - 12} distance bytes: want an even count of at most {MULTI_MAX} distances",
        )
    battery_mv = int.from_bytes(payload[0:2], "big") & MULTI_BATTERY_MASK
    distances = [int.from_bytes(payload[i : i + 2], "big") for i in range(8, size - 4, 2)]
    tail = _MULTI_TAIL(payload, len(payload) - 4)
    temperature = tail.temp_raw / 10
    fields = {
        "battery_mv": battery_mv,
        "additional_distance_mm": distances,
        "interrupt_flag": tail.interrupt,
        "temperature_c": temperature,
        "sensor_flag": tail.sensor_flag,
    }
    return Decoded(
        model=NAME,
        quantities=Quantities(battery_mv=float(battery_mv), temperature_c=temperature),
        events=_fault(tail.sensor_flag, at),
        fields=MappingProxyType(fields),
        extra=MappingProxyType({"additional_distance_mm": tuple(distances)}),
    )


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _datalog(payload: bytes, at: float) -> Decoded:
    del at  # every record has its own time
    size = len(payload)
    if size == 0 or size % _DATALOG_SIZE:
        reason = DeviceReason.TRUNCATED if size < _DATALOG_SIZE else DeviceReason.BAD_LENGTH
        raise DeviceDecodeError(
            reason, f"a datalog is a non-zero multiple of {_DATALOG_SIZE} bytes, got {size}"
        )
    readings = []
    for pos in range(0, size, _DATALOG_SIZE):
        c = _DATALOG(payload, pos)
        battery_mv = c.bat_raw & BATTERY_MASK
        temperature = c.temp_raw / 10
        fields = {
            "time": _iso(c.time),
            "battery_mv": battery_mv,
            "distance_mm": c.distance_mm,
            "temperature_c": temperature,
            "interrupt_flag": c.flags & 1,
        }
        readings.append(
            Decoded(
                model=NAME,
                quantities=Quantities(
                    battery_mv=float(battery_mv),
                    distance_mm=float(c.distance_mm),
                    temperature_c=temperature,
                ),
                fields=MappingProxyType(fields),
                extra=MappingProxyType(
                    {"flag_bit1": bool(c.flags & 2), "flag_bit6": bool(c.flags & 0x40)}
                ),
                at=float(c.time),
            )
        )
    return Decoded(
        model=NAME,
        fields=MappingProxyType({"pnackmd": bool(payload[0] & 0x80), "records": len(readings)}),
        readings=tuple(readings),
    )


def _status(payload: bytes, at: float) -> Decoded:
    _refuse_length(payload, _STATUS_SIZE, "an fPort-5 status")
    c = _STATUS(payload)
    firmware = f"{c.fw_major & 0x0F}.{c.fw_minor >> 4}.{c.fw_minor & 0x0F}"
    info = {
        "sensor_model": SENSOR_MODELS.get(c.sensor_model),
        "firmware_version": firmware,
        "frequency_band": BANDS.get(c.band),
        "sub_band": None if c.sub_band == 0xFF else c.sub_band,  # the vendor prints "NULL"
        "battery_mv": c.bat_mv,
    }
    detail = {
        "model": info["sensor_model"],
        "firmware": firmware,
        "frequency_band": info["frequency_band"],
        "sub_band": info["sub_band"],
    }
    return Decoded(
        model=NAME,
        quantities=Quantities(battery_mv=float(c.bat_mv)),
        events=(DeviceEvent(DeviceEventKind.DEVICE_INFO, at, detail=MappingProxyType(detail)),),
        fields=MappingProxyType(info),
    )


def _detect(payload: bytes, at: float) -> Decoded:
    del at
    size = len(payload)
    if size == 0 or size % 2:
        reason = DeviceReason.TRUNCATED if size == 0 else DeviceReason.BAD_LENGTH
        raise DeviceDecodeError(reason, f"detect-mode data is a non-zero even length, got {size}")
    distances = [int.from_bytes(payload[i : i + 2], "big") for i in range(0, size, 2)]
    return Decoded(
        model=NAME,
        fields=MappingProxyType({"detect_distance_mm": distances}),
        extra=MappingProxyType({"detect_distance_mm": tuple(distances)}),
    )


_PORTS = {
    PORT_PERIODIC: _periodic,
    PORT_DATALOG: _datalog,
    PORT_STATUS: _status,
    PORT_DETECT: _detect,
}


def decode(payload: bytes, fport: int | None, at: float) -> Decoded:
    handler = _PORTS.get(fport) if fport is not None else None
    if handler is None:
        raise DeviceDecodeError(
            DeviceReason.UNKNOWN_FPORT, f"{NAME} sends on fPorts {sorted(_PORTS)}, not {fport}"
        )
    return handler(payload, at)


# --- builders (tests, simulator) ---


def build_periodic(
    *,
    battery_mv: int,
    distance_mm: int,
    temperature_c: float = 0.0,
    interrupt: int = 0,
    sensor_flag: int = SENSOR_DETECTED,
) -> bytes:
    return bytes(
        PERIODIC.build(
            {
                "bat_raw": battery_mv,
                "distance_mm": distance_mm,
                "interrupt": interrupt,
                "temp_raw": round(temperature_c * 10),
                "sensor_flag": sensor_flag,
            }
        )
    )


def build_datalog(records: list[Mapping[str, Any]]) -> bytes:
    """RECORDS: mappings with DATALOG_RECORD's keys (bat_raw, distance_mm, temp_raw …)."""
    return b"".join(bytes(DATALOG_RECORD.build(r)) for r in records)


def build_status(
    *,
    firmware: tuple[int, int, int] = (1, 1, 1),
    band: int = 1,
    sub_band: int = 0xFF,
    battery_mv: int,
) -> bytes:
    major, minor, patch = firmware
    return bytes(
        STATUS.build(
            {
                "sensor_model": 0x27,
                "fw_major": major,
                "fw_minor": minor << 4 | patch,
                "band": band,
                "sub_band": sub_band,
                "bat_mv": battery_mv,
            }
        )
    )


def build_detect(distances_mm: list[int]) -> bytes:
    return b"".join(bytes(DISTANCE.build({"mm": d})) for d in distances_mm)


# --- downlinks (Dragino command convention, spec 4.6: confirm on a real device) ---

INTERVAL = Struct("command" / Int8ub, "seconds" / Int24ub)


def set_interval(*, seconds: int) -> tuple[int, bytes]:
    check_range("seconds", seconds, 1, 0xFFFFFF)
    return DOWNLINK_PORT, bytes(INTERVAL.build({"command": 0x01, "seconds": seconds}))


def reboot() -> tuple[int, bytes]:
    return DOWNLINK_PORT, b"\x04\xff"


ENCODERS: Mapping[str, DownlinkFn] = {"set_interval": set_interval, "reboot": reboot}

MODEL = DeviceModel(
    name=NAME,
    transport="lorawan",
    decoder=decode,
    encoders=ENCODERS,
    default_fport=PORT_PERIODIC,
    summary="Dragino DDS75-LB ultrasonic distance sensor (LoRaWAN)",
)
