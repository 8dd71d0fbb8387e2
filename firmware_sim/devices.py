"""Simulated commercial sensors: what each model puts on the air, from scenario values.

A LoRaWAN device's uplink goes out through the simulated network server as a
ChirpStack ``up`` event (fPort, fCnt, base64 data); an NB-IoT device sends the
Milesight cellular frame as one UDP datagram. The bytes come from the
decoders' own builders, so simulator and gateway agree on the wire format by
construction; the values are the scenario's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.protocol.devices import build_nb_frame, dds75_lb, em310_tilt, em310_udl, em400

LORAWAN_MODELS = ("em310-tilt", "em400-mud", "em400-udl", "em310-udl", "dds75-lb")
NB_MODELS = ("em400-mud", "em400-udl")  # with an IMEI as id
DEVICE_FIELDS = {
    "tilt_deg",  # [x, y, z]: each axis's angle to the horizontal plane (flat: [0, 0, 90])
    "distance_mm",
    "battery_pct",
    "battery_mv",
    "temperature_c",
    "position",  # 0 normal, 1 knocked over (EM400 "tilt"); EM310-UDL too
    "rssi_dbm",
    "snr_db",
    "csq",
}
# The devices' own alarms, as configured at the factory in these scenarios.
DEVICE_TILT_ALARM_DEG = 30.0
DEVICE_DISTANCE_ALARM_MM = 500


def is_imei(device_id: str) -> bool:
    return len(device_id) == 15 and device_id.isdigit()


@dataclass
class SimDevice:
    model: str
    device_id: str  # DevEUI (16 lower-case hex digits) or IMEI
    tilt_deg: tuple[float, float, float] = (0.0, 0.0, 90.0)
    distance_mm: float = 2500.0
    battery_pct: float = 95.0
    battery_mv: float = 3400.0
    temperature_c: float = 15.0
    position: float = 0.0
    rssi_dbm: float = -95.0
    snr_db: float = 6.0
    csq: float = 20.0
    counter: int = 0  # LoRaWAN fCnt, NB-IoT frame counter
    silent: bool = False
    drop_next: int = 0
    duplicate_next: int = 0
    rejoin: bool = False  # a join event before the next uplink (after a reset)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nbiot(self) -> bool:
        return is_imei(self.device_id)

    def set(self, name: str, value: Any) -> None:
        if name == "tilt_deg":
            x, y, z = value
            self.tilt_deg = (float(x), float(y), float(z))
        else:
            setattr(self, name, float(value))

    def get(self, name: str) -> Any:
        return getattr(self, name)

    def next_counter(self) -> int:
        value = self.counter
        self.counter = (self.counter + 1) % (1 << 16 if self.nbiot else 1 << 32)
        return value

    def uplink(self) -> tuple[int, bytes]:
        """(fPort, payload) as the device would send now."""
        distance = max(0, min(0xFFFF, round(self.distance_mm)))
        battery = max(0, min(100, round(self.battery_pct)))
        match self.model:
            case "em310-tilt":
                x, y, z = self.tilt_deg
                alarms = {
                    f"tilt_{axis}"
                    for axis, off in (("x", abs(x)), ("y", abs(y)), ("z", abs(90 - z)))
                    if off >= DEVICE_TILT_ALARM_DEG
                }
                return 85, em310_tilt.build_reading(
                    battery_pct=battery, tilt_deg=self.tilt_deg, alarms=frozenset(alarms)
                )
            case "em400-mud" | "em400-udl":
                return 85, self._em400(distance, battery)
            case "em310-udl":
                return 85, em310_udl.build_reading(
                    battery_pct=battery, distance_mm=distance, position=round(self.position)
                )
            case "dds75-lb":
                return 2, dds75_lb.build_periodic(
                    battery_mv=round(self.battery_mv),
                    distance_mm=distance,
                    temperature_c=self.temperature_c,
                )
        raise ValueError(f"no simulated {self.model}")

    def _em400(self, distance: int, battery: int) -> bytes:
        return em400.build_reading(
            battery_pct=battery,
            temperature_c=round(self.temperature_c, 1),
            distance_mm=distance,
            position=round(self.position),
            distance_alarm=1 if distance <= DEVICE_DISTANCE_ALARM_MM else None,
        )

    def nb_frame(self) -> bytes:
        """The whole cellular frame around one reading."""
        distance = max(0, min(0xFFFF, round(self.distance_mm)))
        records = self._em400(distance, max(0, min(100, round(self.battery_pct))))
        csq = max(0, min(99, round(self.csq)))
        return build_nb_frame(records, imei=self.device_id, frame_cnt=self.next_counter(), csq=csq)
