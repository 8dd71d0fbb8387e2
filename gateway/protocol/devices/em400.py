"""Milesight EM400-MUD and EM400-UDL: ultrasonic distance to the water (spec section 3).

Both send the same uplink records; they differ in the downlinks they take
(the UDL has no install-height command). The LoRaWAN table stops at the
NB-IoT-only location record, as the vendor's LoRaWAN decoder does; the
cellular table (``NB_TABLE``) knows it. Temperature is signed on both
transports (the vendor's cellular decoder reads it unsigned: a quirk).
The position record's "tilt" means the sensor was knocked over or the
cover lifted: ``cover_displaced``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from construct import Int8ub, Int16sl, Int16ul, Int32sl, Padding, Struct

from gateway.protocol.devices import milesight
from gateway.protocol.devices.base import (
    Decoded,
    DeviceDecodeError,
    DeviceModel,
    DeviceReason,
    DownlinkFn,
    check_range,
)
from gateway.protocol.devices.milesight import ONE_BYTE, Acc, config_echo, constant, one, record

MUD = "em400-mud"
UDL = "em400-udl"

ALARM_STATUS = {0: "threshold_alarm_release", 1: "threshold_alarm"}
POSITIONS = {0: "normal", 1: "tilt"}


def temperature(c: Any, acc: Acc) -> None:
    value = c.decidegc / 10
    acc.q["temperature_c"] = value
    acc.fields["temperature_c"] = value


def distance(c: Any, acc: Acc) -> None:
    acc.q["distance_mm"] = float(c.mm)
    acc.fields["distance_mm"] = c.mm


def _with_alarm(name: str, apply: Any) -> Any:
    def with_alarm(c: Any, acc: Acc) -> None:
        apply(c, acc)
        acc.fields[f"{name}_alarm"] = ALARM_STATUS.get(c.status, "unknown")
        if c.status == 1:
            acc.alarms.add(name)

    return with_alarm


def position(c: Any, acc: Acc) -> None:
    name = POSITIONS.get(c.raw, "unknown")
    acc.fields["position"] = name
    displaced = None if name == "unknown" else name == "tilt"
    acc.q["cover_displaced"] = displaced
    acc.fields["cover_displaced"] = displaced


GEOFENCE = {0: "inside", 1: "outside", 2: "unset", 3: "unknown"}
MOTION = {0: "unknown", 1: "start", 2: "moving", 3: "stop"}


def location(c: Any, acc: Acc) -> None:
    # Latitude first and a 2-bit motion mask, as the vendor's decoder reads
    # it (its README says otherwise; spec 3.4 says follow the decoder).
    values = {
        "latitude": c.lat / 1_000_000,
        "longitude": c.lon / 1_000_000,
        "motion_status": MOTION[c.status & 0x03],
        "geofence_status": GEOFENCE.get(c.status >> 4, "unknown"),
    }
    acc.fields.update(values)
    acc.extra.update(values)


TEMPERATURE = Struct("decidegc" / Int16sl)
DISTANCE = Struct("mm" / Int16ul)
LOCATION = Struct("lat" / Int32sl, "lon" / Int32sl, "status" / Int8ub)

CONDITIONS = ("disable", "below", "above", "between", "outside")
MODES = {1: "standard", 2: "bin"}
DISTANCE_ALARM = Struct(
    "ctrl" / Int8ub,  # bits 0-2 condition, bits 3-5 mode, bit 7 send a release uplink
    "min" / Int16ul,  # mm
    "max" / Int16ul,
    Padding(4),
)


def _distance_alarm(c: Any) -> tuple[str, dict[str, Any]]:
    condition = c.ctrl & 0x07
    return "distance_alarm_config", {
        "condition": CONDITIONS[condition] if condition < len(CONDITIONS) else "unknown",
        "mode": MODES.get(c.ctrl >> 3 & 0x07, "unknown"),
        "alarm_release": bool(c.ctrl & 0x80),
        "threshold_min_mm": c.min,
        "threshold_max_mm": c.max,
    }


U16 = Struct("value" / Int16ul)
U16S = Struct("seconds" / Int16ul)
ENABLE = Struct("enable" / Int8ub)


def _enable(setting: str) -> Any:
    return lambda c: (setting, {"enabled": c.enable == 1})


WORKING_MODES = {0: "standard", 1: "bin", 2: "parking"}

UPLINK = (
    milesight.BATTERY,
    record("temperature", 0x03, 0x67, TEMPERATURE, temperature),
    record("distance", 0x04, 0x82, DISTANCE, distance),
    record("position", 0x05, 0x00, ONE_BYTE, position),
    record(
        "temperature_alarm",
        0x83,
        0x67,
        Struct("decidegc" / Int16sl, "status" / Int8ub),
        _with_alarm("temperature", temperature),
    ),
    record(
        "distance_alarm",
        0x84,
        0x82,
        Struct("mm" / Int16ul, "status" / Int8ub),
        _with_alarm("distance", distance),
    ),
)

ECHOES = (
    config_echo("reboot", 0x10, ONE_BYTE, constant("reboot")),
    config_echo("collection_interval", 0x02, U16S, one("collection_interval", "seconds")),
    config_echo("report_interval", 0x03, U16S, one("report_interval", "seconds")),
    config_echo("distance_alarm_config", 0x06, DISTANCE_ALARM, _distance_alarm),
    config_echo(
        "recollection",
        0x1C,
        Struct("count" / Int8ub, "interval" / Int8ub),
        lambda c: ("recollection", {"count": c.count, "interval_s": c.interval}),
    ),
    config_echo("query_device_status", 0x28, ONE_BYTE, constant("query_device_status")),
    config_echo("sync_time", 0x4A, ONE_BYTE, constant("sync_time")),
    config_echo("install_height_enable", 0x13, ENABLE, _enable("install_height_enable")),
    config_echo("tilt_distance_link", 0x3E, ENABLE, _enable("tilt_distance_link")),
    config_echo("tof_detection_enable", 0x56, ENABLE, _enable("tof_detection_enable")),
    config_echo(
        "people_existing_height",
        0x70,
        U16,
        lambda c: ("people_existing_height", {"mm": c.value}),
    ),
    config_echo(
        "working_mode",
        0x71,
        ONE_BYTE,
        lambda c: (
            "working_mode",
            {"mode": {0: "standard", 1: "bin", 2: "parking"}.get(c.raw, "unknown")},
        ),
    ),
)
INSTALL_HEIGHT = config_echo(
    "install_height", 0x77, U16, lambda c: ("install_height", {"mm": c.value})
)

MUD_TABLE = milesight.table(*UPLINK, milesight.ATTRIBUTES, *ECHOES, INSTALL_HEIGHT)
UDL_TABLE = milesight.table(*UPLINK, milesight.ATTRIBUTES, *ECHOES)
# The cellular versions: the same records plus location (both models; the
# frame does not say which one sent it).
NB_TABLE = milesight.table(
    *UPLINK,
    record("location", 0x06, 0x88, LOCATION, location),
    milesight.ATTRIBUTES,
    *ECHOES,
    INSTALL_HEIGHT,
)


def decode_mud(payload: bytes, fport: int | None, at: float) -> Decoded:
    return milesight.decode_one(MUD, payload, MUD_TABLE, fport, at)


def decode_udl(payload: bytes, fport: int | None, at: float) -> Decoded:
    return milesight.decode_one(UDL, payload, UDL_TABLE, fport, at)


def build_reading(
    *,
    battery_pct: int | None = None,
    temperature_c: float | None = None,
    distance_mm: int | None = None,
    position: int | None = None,
    temperature_alarm: int | None = None,
    distance_alarm: int | None = None,
) -> bytes:
    """An uplink as the device sends it; an ``*_alarm`` status sends the alarm variant."""
    records: list[tuple[str, dict[str, Any]]] = []
    if battery_pct is not None:
        records.append(("battery", {"battery_pct": battery_pct}))
    if temperature_c is not None:
        decidegc = round(temperature_c * 10)
        if temperature_alarm is None:
            records.append(("temperature", {"decidegc": decidegc}))
        else:
            records.append(
                ("temperature_alarm", {"decidegc": decidegc, "status": temperature_alarm})
            )
    if distance_mm is not None:
        if distance_alarm is None:
            records.append(("distance", {"mm": distance_mm}))
        else:
            records.append(("distance_alarm", {"mm": distance_mm, "status": distance_alarm}))
    if position is not None:
        records.append(("position", {"raw": position}))
    return milesight.build(NB_TABLE, records)


# --- downlinks (fPort 85, channel 0xFF) ---


def _command(name: str, values: dict[str, Any]) -> tuple[int, bytes]:
    return milesight.FPORT, milesight.build(MUD_TABLE, [(name, values)])


def set_interval(*, seconds: int) -> tuple[int, bytes]:
    check_range("seconds", seconds, 60, 64800)
    return _command("report_interval", {"seconds": seconds})


def reboot() -> tuple[int, bytes]:
    return _command("reboot", {"raw": 0xFF})


def set_thresholds(
    *, condition: str, min_mm: int = 0, max_mm: int = 0, release: bool = True
) -> tuple[int, bytes]:
    """Standard-mode distance alarm; RELEASE asks for an uplink when the value returns."""
    if condition not in CONDITIONS:
        raise DeviceDecodeError(
            DeviceReason.BAD_VALUE, f"condition {condition!r} (one of {CONDITIONS})"
        )
    check_range("min_mm", min_mm, 0, 4500)
    check_range("max_mm", max_mm, 0, 4500)
    ctrl = CONDITIONS.index(condition) | 1 << 3 | (0x80 if release else 0)
    return _command("distance_alarm_config", {"ctrl": ctrl, "min": int(min_mm), "max": int(max_mm)})


ENCODERS: Mapping[str, DownlinkFn] = {
    "set_interval": set_interval,
    "reboot": reboot,
    "set_thresholds": set_thresholds,
}

MUD_MODEL = DeviceModel(
    name=MUD,
    transport="lorawan",
    decoder=decode_mud,
    encoders=ENCODERS,
    default_fport=milesight.FPORT,
    summary="Milesight EM400-MUD multi-function ultrasonic distance sensor (LoRaWAN)",
)
UDL_MODEL = DeviceModel(
    name=UDL,
    transport="lorawan",
    decoder=decode_udl,
    encoders=ENCODERS,
    default_fport=milesight.FPORT,
    summary="Milesight EM400-UDL ultrasonic level sensor (LoRaWAN)",
)
