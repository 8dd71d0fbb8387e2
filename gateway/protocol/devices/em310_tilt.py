"""Milesight EM310-TILT: three-axis tilt sensor under the cover (spec section 2).

Angles are signed hundredths of a degree; the status byte's bits 0–2 are the
device's own X/Y/Z threshold decisions, reported as ``device_alarms``
(``tilt_x``, ``tilt_y``, ``tilt_z``); the gateway's debounce still decides.
"""

from __future__ import annotations

from typing import Any

from construct import Bytes, Int8ub, Int16sl, Int16ul, Struct

from gateway.protocol.devices import milesight
from gateway.protocol.devices.base import (
    Decoded,
    DeviceDecodeError,
    DeviceModel,
    DeviceReason,
    check_range,
)
from gateway.protocol.devices.milesight import ONE_BYTE, Acc, config_echo, constant, one, record

NAME = "em310-tilt"

ANGLE = Struct(
    "x" / Int16sl,
    "y" / Int16sl,
    "z" / Int16sl,
    "status" / Int8ub,  # the device's own alarm per axis: ALARM_BITS; bits 3-7 ignored
)
ALARM_BITS = {"x": 0x01, "y": 0x02, "z": 0x04}


def _angle(c: Any, acc: Acc) -> None:
    status = c.status
    for axis, bit in ALARM_BITS.items():
        deg = getattr(c, axis) / 100
        acc.q[f"tilt_{axis}_deg"] = deg
        acc.fields[f"tilt_{axis}_deg"] = deg
        alarm = bool(status & bit)
        acc.fields[f"device_alarm_{axis}"] = alarm
        if alarm:
            acc.alarms.add(f"tilt_{axis}")


CONDITIONS = ("disable", "below", "above", "between", "outside", "mutation")
AXES = {"x": 1, "y": 2, "z": 3}
ZERO_REFERENCE = {0xFF: "set", 0xFE: "reset", 0xFD: "set_calibration", 0xFC: "clear_calibration"}

ANGLE_ALARM = Struct(
    "ctrl" / Int8ub,  # bits 0-2 condition, bits 3-5 axis
    "min" / Int16sl,  # degrees x 100
    "max" / Int16sl,
    "lock_time" / Int16ul,  # s: further alarms suppressed this long
    "continue_time" / Int16ul,  # s: threshold must hold this long
)


def _angle_alarm(c: Any) -> tuple[str, dict[str, Any]]:
    condition = c.ctrl & 0x07
    axis = {v: k for k, v in AXES.items()}.get(c.ctrl >> 3 & 0x07, "unknown")
    return f"angle_{axis}_alarm_config", {
        "condition": CONDITIONS[condition] if condition < len(CONDITIONS) else "unknown",
        "threshold_min": c.min / 100,
        "threshold_max": c.max / 100,
        "lock_time": c.lock_time,
        "continue_time": c.continue_time,
    }


REPORT_INTERVAL = Struct("seconds" / Int16ul)
# Raw bytes, decoded leniently in the render: a string type would raise
# UnicodeDecodeError (not a ConstructError) on hostile bytes.
COMBINATION = Struct("expression" / Bytes(8))

TABLE = milesight.table(
    milesight.BATTERY,
    record("angle", 0x03, 0xCF, ANGLE, _angle),
    milesight.ATTRIBUTES,
    config_echo("reboot", 0x10, ONE_BYTE, constant("reboot")),
    config_echo("report_interval", 0x03, REPORT_INTERVAL, one("report_interval", "seconds")),
    config_echo("query_device_status", 0x28, ONE_BYTE, constant("query_device_status")),
    config_echo("sync_time", 0x4A, ONE_BYTE, constant("sync_time")),
    config_echo("angle_alarm", 0x06, ANGLE_ALARM, _angle_alarm),
    config_echo(
        "alarm_combination",
        0x63,
        COMBINATION,
        lambda c: (
            "alarm_combination",
            {"expression": bytes(c.expression).rstrip(b"\0").decode("utf-8", "replace")},
        ),
    ),
    config_echo(
        "zero_reference",
        0x62,
        ONE_BYTE,
        lambda c: ("zero_reference", {"action": ZERO_REFERENCE.get(c.raw, "unknown")}),
    ),
)


def decode(payload: bytes, fport: int | None, at: float) -> Decoded:
    return milesight.decode_one(NAME, payload, TABLE, fport, at)


def build_reading(
    *,
    battery_pct: int | None = None,
    tilt_deg: tuple[float, float, float] | None = None,
    alarms: frozenset[str] = frozenset(),
) -> bytes:
    """An uplink as the device sends it (battery first, as it does)."""
    records: list[tuple[str, dict[str, Any]]] = []
    if battery_pct is not None:
        records.append(("battery", {"battery_pct": battery_pct}))
    if tilt_deg is not None:
        x, y, z = (round(v * 100) for v in tilt_deg)
        status = sum(bit for a, bit in ALARM_BITS.items() if f"tilt_{a}" in alarms)
        records.append(("angle", {"x": x, "y": y, "z": z, "status": status}))
    return milesight.build(TABLE, records)


# --- downlinks (fPort 85, channel 0xFF) ---


def _command(name: str, values: dict[str, Any]) -> tuple[int, bytes]:
    return milesight.FPORT, milesight.build(TABLE, [(name, values)])


def set_interval(*, seconds: int) -> tuple[int, bytes]:
    check_range("seconds", seconds, 1, 64800)
    return _command("report_interval", {"seconds": seconds})


def reboot() -> tuple[int, bytes]:
    return _command("reboot", {"raw": 0xFF})


def rezero() -> tuple[int, bytes]:
    """Take the current plane as the zero reference (the device's own re-zero)."""
    return _command("zero_reference", {"raw": 0xFF})


def set_thresholds(
    *,
    axis: str,
    condition: str,
    min_deg: float = 0.0,
    max_deg: float = 0.0,
    lock_s: int = 0,
    continue_s: int = 0,
) -> tuple[int, bytes]:
    """The device's own alarm on one axis; lock/continue are its own debounce, in seconds."""
    if axis not in AXES or condition not in CONDITIONS:
        raise DeviceDecodeError(
            DeviceReason.BAD_VALUE,
            f"axis {axis!r} (one of {sorted(AXES)}), condition {condition!r} (one of {CONDITIONS})",
        )
    for name, value in (("min_deg", min_deg), ("max_deg", max_deg)):
        check_range(name, value, -327.68, 327.67, integer=False)
    for name, value in (("lock_s", lock_s), ("continue_s", continue_s)):
        check_range(name, value, 0, 0xFFFF)
    return _command(
        "angle_alarm",
        {
            "ctrl": CONDITIONS.index(condition) | AXES[axis] << 3,
            "min": round(min_deg * 100),
            "max": round(max_deg * 100),
            "lock_time": int(lock_s),
            "continue_time": int(continue_s),
        },
    )


MODEL = DeviceModel(
    name=NAME,
    transport="lorawan",
    decoder=decode,
    encoders={
        "set_interval": set_interval,
        "reboot": reboot,
        "rezero": rezero,
        "set_thresholds": set_thresholds,
    },
    default_fport=milesight.FPORT,
    summary="Milesight EM310-TILT three-axis tilt sensor (LoRaWAN)",
)
