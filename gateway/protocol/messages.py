"""What the rest of the gateway sees of an SCN-1 frame: frozen values in human units.

construct owns the bytes (``scn1.py``); these types own the meaning. Scaled
quantities are floats in the unit named by the field; counts of integral
units (mm, mV, mg) stay ints so nothing is lost to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from operator import countOf
from typing import TypeVar

from gateway.values import quick_init


class MessageType(IntEnum):
    REPORT = 1
    EVENT = 2
    HEARTBEAT = 3
    BOOT = 4


class FrameFlags(IntFlag):
    NONE = 0
    NODE_ALARM = 0x01
    RETRANSMISSION = 0x02
    LOW_BATTERY = 0x04


KNOWN_FLAGS = FrameFlags.NODE_ALARM | FrameFlags.RETRANSMISSION | FrameFlags.LOW_BATTERY


class GasKind(IntEnum):
    CH4 = 1
    H2S = 2
    CO = 3
    O2 = 4


GAS_UNITS: dict[GasKind, str] = {
    GasKind.CH4: "%LEL",
    GasKind.H2S: "ppm",
    GasKind.CO: "ppm",
    GasKind.O2: "%vol",
}


class EventCode(IntEnum):
    COVER_OPENED = 1
    COVER_CLOSED = 2
    TILT_ALARM = 3
    WATER_ALARM = 4
    IMPACT_TAMPER = 5
    SENSOR_FAULT = 6


class ResetCauseCode(IntEnum):
    POWER_ON = 0
    WATCHDOG = 1
    BROWN_OUT = 2
    SOFTWARE = 3
    OTHER = 4


@quick_init
@dataclass(frozen=True, slots=True)
class Tilt:
    x_deg: float
    y_deg: float

    @property
    def magnitude_deg(self) -> float:
        return math.hypot(self.x_deg, self.y_deg)


@quick_init
@dataclass(frozen=True, slots=True)
class WaterDepth:
    """Distance from the cover's underside down to the water; None is "no echo"."""

    distance_mm: int | None


@quick_init
@dataclass(frozen=True, slots=True)
class Battery:
    voltage_mv: int


@quick_init
@dataclass(frozen=True, slots=True)
class Temperature:
    celsius: float


@quick_init
@dataclass(frozen=True, slots=True)
class Gas:
    kind: GasKind
    value: float

    @property
    def unit(self) -> str:
        return GAS_UNITS[self.kind]


@quick_init
@dataclass(frozen=True, slots=True)
class Link:
    """The node's view of the gateway's signal (not the gateway's receive RSSI)."""

    rssi_dbm: int
    snr_db: int


@quick_init
@dataclass(frozen=True, slots=True)
class Event:
    """``value_raw`` is in the triggering sensor's wire unit (0.01° tilt, mm water)."""

    code: EventCode
    age_s: int
    value_raw: int

    @property
    def value(self) -> float:
        if self.code in (EventCode.COVER_OPENED, EventCode.COVER_CLOSED, EventCode.TILT_ALARM):
            return self.value_raw / 100
        return float(self.value_raw)

    @property
    def value_unit(self) -> str:
        if self.code in (EventCode.COVER_OPENED, EventCode.COVER_CLOSED, EventCode.TILT_ALARM):
            return "deg"
        if self.code is EventCode.WATER_ALARM:
            return "mm"
        return "raw"


@quick_init
@dataclass(frozen=True, slots=True)
class Firmware:
    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@quick_init
@dataclass(frozen=True, slots=True)
class ResetCause:
    cause: ResetCauseCode


@quick_init
@dataclass(frozen=True, slots=True)
class Pressure:
    kpa: float


@quick_init
@dataclass(frozen=True, slots=True)
class Vibration:
    peak_mg: int


@quick_init
@dataclass(frozen=True, slots=True)
class UnknownTlv:
    """A record this gateway does not understand, kept so nothing is silently lost.

    Unknown tags, and known tags with an enumerated value newer than this
    gateway (a sixth gas kind), both land here.
    """

    tag: int
    raw: bytes


Record = (
    Tilt
    | WaterDepth
    | Battery
    | Temperature
    | Gas
    | Link
    | Event
    | Firmware
    | ResetCause
    | Pressure
    | Vibration
    | UnknownTlv
)

R = TypeVar("R", bound=Record)


@quick_init
@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded SCN-1 frame; ``records`` keeps wire order."""

    node_id: int
    seq: int
    msg_type: MessageType
    flags: FrameFlags
    records: tuple[Record, ...]

    @property
    def node_hex(self) -> str:
        return f"{self.node_id:08X}"

    def first(self, kind: type[R]) -> R | None:
        for record in self.records:
            if isinstance(record, kind):
                return record
        return None

    def all(self, kind: type[R]) -> tuple[R, ...]:
        return tuple(r for r in self.records if isinstance(r, kind))

    @property
    def unknown_count(self) -> int:
        return countOf(map(type, self.records), UnknownTlv)  # every frame: no generator, no list
