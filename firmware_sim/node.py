"""A simulated cover node: its sensors' state and the SCN-1 frames its firmware sends.

Pure state and frame building; when to send is the runner's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Firmware,
    Frame,
    FrameFlags,
    Gas,
    GasKind,
    Link,
    MessageType,
    Pressure,
    Record,
    ResetCause,
    ResetCauseCode,
    Temperature,
    Tilt,
    Vibration,
    WaterDepth,
)

LOW_BATTERY_MV = 3300
WATER_ECHO_RANGE_MM = 4000  # beyond this the ultrasonic sensor hears no echo


@dataclass
class NodeState:
    """What the node's sensors currently read; scenarios change these."""

    tilt_deg: tuple[float, float] = (0.0, 0.0)
    water_fitted: bool = False
    water_mm: int = WATER_ECHO_RANGE_MM + 1
    battery_mv: int = 3600
    temperature_c: float = 15.0
    gases: dict[GasKind, float] = field(default_factory=dict)
    pressure_kpa: float | None = None
    vibration_mg: int | None = None
    link: tuple[int, int] = (-90, 8)  # what the node hears of the gateway
    rx_rssi_dbm: int = -95  # what the gateway hears of the node
    rx_snr_db: int = 7


@dataclass
class SimNode:
    node_id: int
    state: NodeState = field(default_factory=NodeState)
    firmware: Firmware = field(default_factory=lambda: Firmware(2, 1, 517))
    seq: int = 0
    in_alarm: bool = False
    silent: bool = False  # stolen or destroyed: sends nothing
    drop_next: int = 0  # frames lost over the air (seen as a SEQ gap)
    duplicate_next: int = 0  # frames heard twice

    @property
    def node_hex(self) -> str:
        return f"{self.node_id:08X}"

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) & 0xFFFF
        return seq

    def _flags(self, *, retransmission: bool = False) -> FrameFlags:
        flags = FrameFlags.NONE
        if self.in_alarm:
            flags |= FrameFlags.NODE_ALARM
        if retransmission:
            flags |= FrameFlags.RETRANSMISSION
        if self.state.battery_mv < LOW_BATTERY_MV:
            flags |= FrameFlags.LOW_BATTERY
        return flags

    def _frame(self, msg_type: MessageType, records: list[Record]) -> Frame:
        return Frame(self.node_id, self._next_seq(), msg_type, self._flags(), tuple(records))

    def _water(self) -> WaterDepth:
        mm = self.state.water_mm
        return WaterDepth(None if mm > WATER_ECHO_RANGE_MM else max(0, mm))

    def _tilt(self) -> Tilt:
        x, y = self.state.tilt_deg
        return Tilt(round(x, 2), round(y, 2))

    def report(self) -> Frame:
        s = self.state
        records: list[Record] = [self._tilt()]
        if s.water_fitted:
            records.append(self._water())
        records += [Battery(s.battery_mv), Temperature(round(s.temperature_c, 1))]
        records += [Gas(kind, round(v, 1)) for kind, v in sorted(s.gases.items())]
        if s.pressure_kpa is not None:
            records.append(Pressure(round(s.pressure_kpa, 1)))
        if s.vibration_mg is not None:
            records.append(Vibration(s.vibration_mg))
        records.append(Link(*s.link))
        return self._frame(MessageType.REPORT, records)

    def heartbeat(self) -> Frame:
        return self._frame(MessageType.HEARTBEAT, [Battery(self.state.battery_mv)])

    def boot(self, cause: ResetCauseCode = ResetCauseCode.POWER_ON) -> Frame:
        self.seq = 0
        self.in_alarm = False
        return self._frame(MessageType.BOOT, [self.firmware, ResetCause(cause)])

    def event(self, code: EventCode, *, age_s: int = 0, value_raw: int | None = None) -> Frame:
        """An EVENT with the reading it concerns; updates the node's own alarm flag."""
        if code in (EventCode.COVER_OPENED, EventCode.TILT_ALARM, EventCode.WATER_ALARM):
            self.in_alarm = True
        elif code is EventCode.COVER_CLOSED:
            self.in_alarm = False
        concerned: list[Record]
        if code is EventCode.WATER_ALARM:
            concerned = [self._water()]
            default = self.state.water_mm
        else:
            tilt = self._tilt()
            concerned = [tilt]
            default = round(tilt.magnitude_deg * 100)
        value = default if value_raw is None else value_raw
        value = max(-32768, min(32767, value))
        return self._frame(MessageType.EVENT, [Event(code, age_s, value), *concerned])

    @staticmethod
    def retransmission(frame: Frame) -> Frame:
        """The same frame again, same SEQ, with FLAGS bit 1 set."""
        return Frame(
            frame.node_id,
            frame.seq,
            frame.msg_type,
            frame.flags | FrameFlags.RETRANSMISSION,
            frame.records,
        )
