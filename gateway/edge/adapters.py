"""The older input forms turned into ``Observation``s, at the edge engine's door.

SCN-1 frames and Modbus reads keep their wire shape upstream (the records and
the register values go into ``extra``), so the platform sees what it always
saw; the rules see only the quantities.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from gateway.config import LEVEL_UNITS_MM, SlaveConfig, SlaveRole
from gateway.events import FrameHeard, SlaveFailed, SlaveRead
from gateway.observation import (
    DeviceEvent,
    DeviceEventKind,
    DeviceRef,
    Link,
    Observation,
    Purpose,
    Quantities,
)
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Frame,
    FrameFlags,
    Gas,
    MessageType,
    Temperature,
    Tilt,
    WaterDepth,
)
from gateway.protocol.render import records_to_dicts
from gateway.values import maker

SCN1 = "scn1"
MODBUS = "modbus"

_EVENT_KINDS = {
    EventCode.COVER_OPENED: DeviceEventKind.COVER_OPENED,
    EventCode.COVER_CLOSED: DeviceEventKind.COVER_CLOSED,
    EventCode.TILT_ALARM: DeviceEventKind.TILT_ALARM,
    EventCode.WATER_ALARM: DeviceEventKind.WATER_ALARM,
    EventCode.IMPACT_TAMPER: DeviceEventKind.TAMPER,
    EventCode.SENSOR_FAULT: DeviceEventKind.SENSOR_FAULT,
}
_PURPOSE = {
    MessageType.REPORT: Purpose.REPORT,
    MessageType.EVENT: Purpose.EVENT,
    MessageType.HEARTBEAT: Purpose.STATUS,
    MessageType.BOOT: Purpose.STATUS,
}
# Enum members the per-frame path names, as module constants: on Python 3.11 an
# Enum class attribute costs ~0.1 µs a lookup (EnumType.__getattr__), a global ~0.03.
_EVENT, _BOOT = MessageType.EVENT, MessageType.BOOT
_FLAGS_OFFSET = 11  # SYNC 2, LEN 1, VER 1, TYPE 1, NODE 4, SEQ 2
NODE_ALARM = "node_alarm"  # SCN-1's FLAGS bit 0, as a device alarm bit
LOW_BATTERY = "low_battery"  # SCN-1's FLAGS bit 2


def scn1_device(node_id: int) -> DeviceRef:
    return DeviceRef(SCN1, f"{node_id:08X}")


TYPE_NAMES = {t: t.name for t in MessageType}  # Enum .name is a Python-level property


def modbus_device(bus: str, address: int) -> DeviceRef:
    return DeviceRef(MODBUS, f"{bus}:{address}")


_NODE_ALARM_BIT = int(FrameFlags.NODE_ALARM)
_LOW_BATTERY_BIT = int(FrameFlags.LOW_BATTERY)
_RETRANSMISSION_BIT = int(FrameFlags.RETRANSMISSION)
_ANY_FLAG = _NODE_ALARM_BIT | _RETRANSMISSION_BIT | _LOW_BATTERY_BIT


def fingerprint(raw: bytes) -> bytes:
    """The frame without its CRC and with the retransmission bit cleared: a retry is the same."""
    if len(raw) <= _FLAGS_OFFSET + 2:
        return raw
    flags = raw[_FLAGS_OFFSET]
    if not flags & _RETRANSMISSION_BIT:
        return raw[:-2]  # nearly every frame: the bit is clear already, one slice
    return raw[:_FLAGS_OFFSET] + bytes([flags & ~_RETRANSMISSION_BIT]) + raw[_FLAGS_OFFSET + 1 : -2]


_NO_LINK = Link()
_NO_GAS: MappingProxyType[str, tuple[float, str]] = MappingProxyType({})
_NO_ALARMS: frozenset[str] = frozenset()
_FLAG_ALARMS = ((_NODE_ALARM_BIT, NODE_ALARM), (_LOW_BATTERY_BIT, LOW_BATTERY))
_ALARM_BITS = _NODE_ALARM_BIT | _LOW_BATTERY_BIT
_ALARM_SET_OF = {  # the four sets two bits make, built once
    bits: frozenset(name for bit, name in _FLAG_ALARMS if bits & bit)
    for bits in range(_ALARM_BITS + 1)
    if not bits & ~_ALARM_BITS
}
# Every value of the flags byte to its set: one look-up per frame, 256 keys, 4 sets.
_ALARM_SETS = {bits: _ALARM_SET_OF[bits & _ALARM_BITS] for bits in range(1 << 8)}


# Every frame makes one of each, with a dozen keywords: without ``type.__call__``.
_make_quantities = maker(Quantities)
_make_observation = maker(Observation)


def frame_quantities(frame: Frame) -> Quantities:
    """What the rules see of an SCN-1 frame: the first record of each kind, the flag bits."""
    # One pass over the records (the first of each kind counts), not one per kind.
    tilt: Tilt | None = None
    water: WaterDepth | None = None
    battery: Battery | None = None
    temperature: Temperature | None = None
    gases: dict[str, tuple[float, str]] | None = None
    for r in frame.records:
        kind = type(r)  # records are final classes: ``is`` costs no call, isinstance does
        if kind is Tilt:
            if tilt is None:
                tilt = r  # type: ignore[assignment]
        elif kind is Battery:
            if battery is None:
                battery = r  # type: ignore[assignment]
        elif kind is WaterDepth:
            if water is None:
                water = r  # type: ignore[assignment]
        elif kind is Temperature:
            if temperature is None:
                temperature = r  # type: ignore[assignment]
        elif kind is Gas:
            assert isinstance(r, Gas)
            gases = gases if gases is not None else {}
            gases[r.kind.name] = (r.value, r.unit)
    return _make_quantities(
        tilt_x_deg=None if tilt is None else tilt.x_deg,
        tilt_y_deg=None if tilt is None else tilt.y_deg,
        distance_mm=None if water is None or water.distance_mm is None else water.distance_mm,
        distance_no_echo=water is not None and water.distance_mm is None,
        battery_mv=None if battery is None else float(battery.voltage_mv),
        temperature_c=None if temperature is None else temperature.celsius,
        gas=_NO_GAS if gases is None else MappingProxyType(gases),
        # plain ints: IntFlag membership is slow on this hot path
        device_alarms=_ALARM_SETS.get(int(frame.flags) & 0xFF, _NO_ALARMS),
    )


def from_frame(event: FrameHeard) -> Observation:
    received = event.received
    frame = received.frame
    quantities = frame_quantities(frame)
    bits = int(frame.flags)  # plain ints: IntFlag membership is slow on this hot path
    events: list[DeviceEvent] = []
    if frame.msg_type is _EVENT:
        # Only an EVENT frame's events are news; any other frame's are history.
        events = [
            DeviceEvent(
                _EVENT_KINDS[e.code],
                event.at - e.age_s,
                e.value,
                e.value_unit,
                MappingProxyType({"node_event": e.code.name.lower()}),
            )
            for e in frame.all(Event)
        ]
    elif frame.msg_type is _BOOT:
        events = [DeviceEvent(DeviceEventKind.BOOT, event.at)]
    node_hex = f"{frame.node_id:08X}"
    source = _node_source(event, node_hex)
    source["flags"] = _flags(bits)
    source["rx_rssi_dbm"] = received.rssi_dbm
    source["rx_snr_db"] = received.snr_db
    return _make_observation(
        device=DeviceRef(SCN1, node_hex),  # scn1_device, its id formatted once
        source=event.source,
        at=event.at,
        quantities=quantities,
        events=tuple(events),
        link=_NO_LINK
        if received.rssi_dbm is None and received.snr_db is None
        else Link(rssi_dbm=received.rssi_dbm, snr_db=received.snr_db),
        counter=frame.seq,
        raw=received.raw,
        extra=MappingProxyType(
            {
                "source": source,
                "records": records_to_dicts(frame.records),
            }
        ),
        purpose=_PURPOSE[frame.msg_type],
        judges_opening=True,
        fingerprint=fingerprint(received.raw),
    )


def _node_source(event: FrameHeard, node_hex: str) -> dict[str, Any]:
    """The keys a node's source block begins with, full or lean (their order is the JSON's)."""
    frame = event.received.frame
    return {
        "type": "node",
        "port": event.source,
        "node": node_hex,
        "seq": frame.seq,
        "msg_type": TYPE_NAMES[frame.msg_type],
    }


def _flags(bits: int) -> dict[str, bool]:
    """As ``flags_to_dict``, without its slow IntFlag membership tests."""
    return {
        "node_alarm": bool(bits & _NODE_ALARM_BIT),
        "retransmission": bool(bits & _RETRANSMISSION_BIT),
        "low_battery": bool(bits & _LOW_BATTERY_BIT),
    }


def lean_node_source(event: FrameHeard, node_hex: str) -> dict[str, Any]:
    """``render.lean_source`` of the source block ``from_frame`` gives, made directly.

    The routine path renders a frame's reading without an ``Observation``: the
    block it would carry, without the nulls and the flags when all are clear.
    """
    received = event.received
    source = _node_source(event, node_hex)
    bits = int(received.frame.flags)
    if bits & _ANY_FLAG:
        source["flags"] = _flags(bits)
    if received.rssi_dbm is not None:
        source["rx_rssi_dbm"] = received.rssi_dbm
    if received.snr_db is not None:
        source["rx_snr_db"] = received.snr_db
    return source


def from_slave_read(event: SlaveRead, slave: SlaveConfig | None) -> Observation:
    q = Quantities()
    if slave is not None and slave.role is SlaveRole.TILT:
        q = Quantities(tilt_x_deg=event.values["roll_deg"], tilt_y_deg=event.values["pitch_deg"])
    elif slave is not None and slave.role is SlaveRole.WATER_LEVEL:
        q = Quantities(water_level_mm=event.values["level"] * LEVEL_UNITS_MM[slave.unit])
    return Observation(
        device=modbus_device(event.bus, event.address),
        source=event.bus,
        at=event.at,
        quantities=q,
        extra=MappingProxyType(
            {
                "source": {"type": "modbus", "bus": event.bus, "slave": event.address},
                "values": {k: round(v, 4) for k, v in event.values.items()},
            }
        ),
        polled=True,
    )


def from_slave_failed(event: SlaveFailed) -> Observation:
    """A failed poll: the gateway's own count of failures, judged by the fault rule."""
    fault = DeviceEvent(
        DeviceEventKind.SENSOR_FAULT,
        event.at,
        float(event.consecutive),
        "failures",
        MappingProxyType({"reason": event.reason, "failures": event.consecutive}),
    )
    return Observation(
        device=modbus_device(event.bus, event.address),
        source=event.bus,
        at=event.at,
        events=(fault,),
        purpose=Purpose.STATUS,
        polled=True,
    )
