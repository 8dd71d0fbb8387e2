"""Milesight EM310-UDL: the older ultrasonic level sensor (spec 3.5).

Same record scheme as the EM400, other channel numbers: distance on 0x03,
position on 0x04. Its alarm thresholds are signed 16-bit millimetres.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from construct import Int8ub, Int16sl, Int16ul, Struct

from gateway.protocol.devices import em400, milesight
from gateway.protocol.devices.base import (
    Decoded,
    DeviceDecodeError,
    DeviceModel,
    DeviceReason,
    DownlinkFn,
    check_range,
)
from gateway.protocol.devices.milesight import ONE_BYTE, config_echo, constant, one, record

NAME = "em310-udl"

CONDITIONS = em400.CONDITIONS
DISTANCE_ALARM = Struct(
    "ctrl" / Int8ub,  # bits 0-2 condition, bit 7 send a release uplink
    "min" / Int16sl,  # mm
    "max" / Int16sl,
    "lock_time" / Int16ul,  # s
    "continue_time" / Int16ul,  # s
)


def _distance_alarm(c: Any) -> tuple[str, dict[str, Any]]:
    condition = c.ctrl & 0x07
    return "distance_alarm_config", {
        "condition": CONDITIONS[condition] if condition < len(CONDITIONS) else "unknown",
        "alarm_release": bool(c.ctrl & 0x80),
        "threshold_min_mm": c.min,
        "threshold_max_mm": c.max,
        "lock_time": c.lock_time,
        "continue_time": c.continue_time,
    }


SECONDS = Struct("seconds" / Int16ul)

TABLE = milesight.table(
    milesight.BATTERY,
    record("distance", 0x03, 0x82, em400.DISTANCE, em400.distance),
    record("position", 0x04, 0x00, ONE_BYTE, em400.position),
    milesight.ATTRIBUTES,
    config_echo("reboot", 0x10, ONE_BYTE, constant("reboot")),
    config_echo("collection_interval", 0x02, SECONDS, one("collection_interval", "seconds")),
    config_echo("report_interval", 0x03, SECONDS, one("report_interval", "seconds")),
    config_echo("distance_alarm_config", 0x06, DISTANCE_ALARM, _distance_alarm),
)


def decode(payload: bytes, fport: int | None, at: float) -> Decoded:
    return milesight.decode_one(NAME, payload, TABLE, fport, at)


def build_reading(
    *, battery_pct: int | None = None, distance_mm: int | None = None, position: int | None = None
) -> bytes:
    records: list[tuple[str, dict[str, Any]]] = []
    if battery_pct is not None:
        records.append(("battery", {"battery_pct": battery_pct}))
    if distance_mm is not None:
        records.append(("distance", {"mm": distance_mm}))
    if position is not None:
        records.append(("position", {"raw": position}))
    return milesight.build(TABLE, records)


def _command(name: str, values: dict[str, Any]) -> tuple[int, bytes]:
    return milesight.FPORT, milesight.build(TABLE, [(name, values)])


def set_interval(*, seconds: int) -> tuple[int, bytes]:
    check_range("seconds", seconds, 60, 64800)
    return _command("report_interval", {"seconds": seconds})


def reboot() -> tuple[int, bytes]:
    return _command("reboot", {"raw": 0xFF})


def set_thresholds(
    *,
    condition: str,
    min_mm: int = 0,
    max_mm: int = 0,
    release: bool = True,
    lock_s: int = 0,
    continue_s: int = 0,
) -> tuple[int, bytes]:
    if condition not in CONDITIONS:
        raise DeviceDecodeError(
            DeviceReason.BAD_VALUE, f"condition {condition!r} (one of {CONDITIONS})"
        )
    check_range("min_mm", min_mm, -32768, 32767)
    check_range("max_mm", max_mm, -32768, 32767)
    check_range("lock_s", lock_s, 0, 0xFFFF)
    check_range("continue_s", continue_s, 0, 0xFFFF)
    return _command(
        "distance_alarm_config",
        {
            "ctrl": CONDITIONS.index(condition) | (0x80 if release else 0),
            "min": int(min_mm),
            "max": int(max_mm),
            "lock_time": int(lock_s),
            "continue_time": int(continue_s),
        },
    )


ENCODERS: Mapping[str, DownlinkFn] = {
    "set_interval": set_interval,
    "reboot": reboot,
    "set_thresholds": set_thresholds,
}

MODEL = DeviceModel(
    name=NAME,
    transport="lorawan",
    decoder=decode,
    encoders=ENCODERS,
    default_fport=milesight.FPORT,
    summary="Milesight EM310-UDL ultrasonic level sensor (LoRaWAN)",
)
