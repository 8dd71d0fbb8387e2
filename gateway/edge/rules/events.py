"""What a device says happened: the device has debounced it, so it forces the state."""

from __future__ import annotations

from gateway.edge.alarm import AlarmKind
from gateway.edge.rules import Force, Iso
from gateway.observation import DeviceEvent, DeviceEventKind

_ALARMS = {
    DeviceEventKind.COVER_OPENED: (AlarmKind.COVER_OPEN, True),
    DeviceEventKind.COVER_CLOSED: (AlarmKind.COVER_OPEN, False),
    DeviceEventKind.TILT_ALARM: (AlarmKind.TILT, True),
    DeviceEventKind.WATER_ALARM: (AlarmKind.WATER_HIGH, True),
    DeviceEventKind.TAMPER: (AlarmKind.TAMPER, True),
    DeviceEventKind.SENSOR_FAULT: (AlarmKind.SENSOR_FAULT, True),
}


def forces(events: tuple[DeviceEvent, ...], *, sub: str, fault_sub: str, iso: Iso) -> list[Force]:
    out = []
    for event in events:
        if event.kind not in _ALARMS or "failures" in event.detail:
            continue  # not an alarm, or the gateway's own poll count (rules.fault)
        kind, active = _ALARMS[event.kind]
        extra = {
            "event_time": iso(event.at),
            "node_event": str(event.detail.get("node_event", event.kind.value)),
        }
        out.append(
            Force(
                kind,
                fault_sub
                if kind is AlarmKind.SENSOR_FAULT
                else ""
                if kind is AlarmKind.COVER_OPEN
                else sub,
                active=active,
                at=event.at,
                value=event.value,
                unit=event.unit,
                extra=extra,
            )
        )
    return out
