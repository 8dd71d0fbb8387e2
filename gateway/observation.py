"""What every input hands the edge engine: a device, a time, physical quantities.

This is the boundary between device models and the edge rules. An input
(SCN-1 radio, Modbus slave, a LoRaWAN sensor through a network server, an
NB-IoT frame) turns what it decoded into one ``Observation``; the rules
(tilt, water, gas, battery, offline, fault, displaced cover) see only these
quantities and events, never a vendor's field names. A new device model is
one module that produces observations; nothing in the engine changes.

Units are in the field names. ``None`` means "this device did not report it
in this message", never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from gateway.values import quick_init


class DeviceEventKind(StrEnum):
    """Things a device says happened, as opposed to values it measured."""

    COVER_OPENED = "cover_opened"
    COVER_CLOSED = "cover_closed"
    TILT_ALARM = "tilt_alarm"
    WATER_ALARM = "water_alarm"
    TAMPER = "tamper"
    SENSOR_FAULT = "sensor_fault"
    BOOT = "boot"  # the device restarted (sequence counters restart too)
    REJOINED = "rejoined"  # LoRaWAN join: frame counter restarts, not a loss
    CONFIG_ACK = "config_ack"  # the device echoed a configuration it took
    DEVICE_INFO = "device_info"  # firmware, hardware, serial number


@quick_init
@dataclass(frozen=True, slots=True)
class DeviceEvent:
    kind: DeviceEventKind
    at: float  # when it happened (a device may report an event after the fact)
    value: float | None = None
    unit: str = ""
    detail: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@quick_init
@dataclass(frozen=True, slots=True)
class Link:
    """Radio link quality as the device's transport reports it."""

    rssi_dbm: float | None = None
    snr_db: float | None = None
    csq: int | None = None  # cellular signal quality, 0 to 31, 99 unknown


@quick_init
@dataclass(frozen=True, slots=True)
class Quantities:
    # Tilt: raw axes as the device reports them; the engine compares them to
    # the installed orientation (baseline) to get the cover's tilt.
    tilt_x_deg: float | None = None
    tilt_y_deg: float | None = None
    tilt_z_deg: float | None = None
    # Water: distance from the sensor down to the water (None: not reported;
    # ``distance_no_echo`` True: measured, nothing in range) or a level.
    distance_mm: float | None = None
    distance_no_echo: bool = False
    water_level_mm: float | None = None
    battery_pct: float | None = None
    battery_mv: float | None = None
    temperature_c: float | None = None
    # Gas readings by kind name ("ch4", "h2s", "co", "o2") with their unit.
    gas: MappingProxyType[str, tuple[float, str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # The device's own judgement that the cover was moved (EM400 position,
    # a cover-mounted distance sensor knocked over).
    cover_displaced: bool | None = None
    # The device's own threshold bits, reported upstream as evidence; the
    # gateway's own debounce still decides.
    device_alarms: frozenset[str] = frozenset()


class Purpose(StrEnum):
    """Why the device sent this message, which decides what the rules make of it."""

    REPORT = "report"  # a routine measurement: judged; a normal one may set a baseline and
    # end what the device raised (cover opened, tamper, its own fault)
    EVENT = "event"  # sent because something happened: judged, never a baseline
    STATUS = "status"  # heartbeat, boot, network status: battery and liveness only


@quick_init
@dataclass(frozen=True, slots=True)
class DeviceRef:
    """Which device: its model and its id in that model's id space.

    ``scn1`` nodes: 8 upper-case hex digits; LoRaWAN: the DevEUI, 16 lower-case
    hex digits; NB-IoT: the 15-digit IMEI; Modbus: ``BUS:ADDRESS``.
    """

    model: str
    device_id: str

    def __str__(self) -> str:
        return f"{self.model}:{self.device_id}"


@quick_init
@dataclass(frozen=True, slots=True)
class Observation:
    device: DeviceRef
    source: str  # the input's name in the config
    at: float  # UTC seconds, stamped by the gateway on receipt
    quantities: Quantities = Quantities()
    events: tuple[DeviceEvent, ...] = ()
    link: Link = Link()
    # Loss and duplicate accounting: the device's counter (SCN-1 seq, LoRaWAN
    # fCnt, NB-IoT frame count) and the transport's idempotency key
    # (ChirpStack's deduplicationId), when there is one.
    counter: int | None = None
    message_id: str | None = None
    # Set when the decoder stopped early (an unknown record): what came
    # before it is kept, the reason is counted.
    partial: str | None = None
    raw: bytes = b""
    # Model-specific values shown in telemetry but used by no rule
    # (firmware version, frame type, sensor flags). ``extra["source"]``, when
    # given, replaces the reading's generic source block; other entries are
    # added to the reading as they are (keep them JSON-ready).
    extra: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    purpose: Purpose = Purpose.REPORT
    # A polled sensor (readings seconds apart) is debounced by time and its
    # telemetry thinned; a reporting device is debounced by report count.
    polled: bool = False
    # The device sends its own cover opened/closed events; without them the
    # gateway infers an opening from a large tilt or ``cover_displaced``.
    judges_opening: bool = False
    # What makes two receptions the same message (a retransmission flag and
    # CRC left out); empty: ``raw``. Same counter, other bytes: an anomaly.
    fingerprint: bytes = b""
    counter_modulus: int = 1 << 16  # where ``counter`` wraps (SCN-1 16 bits, fCnt 32)
