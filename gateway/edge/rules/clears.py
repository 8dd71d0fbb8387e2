"""A normal routine report (device not in alarm, cover flat) ends what the device raised."""

from __future__ import annotations

from gateway.config import Thresholds
from gateway.edge.alarm import AlarmKind
from gateway.edge.rules import Force


def after_normal_report(
    tilt: float | None, thr: Thresholds, *, fault_sub: str, judges_opening: bool
) -> list[Force]:
    flat = tilt is None or tilt < thr.tilt_deg - thr.tilt_clear_margin_deg
    value = None if tilt is None else round(tilt, 2)
    out = []
    if judges_opening and flat:  # others: rules.opening decides both ways
        out.append(Force(AlarmKind.COVER_OPEN, "", active=False, value=value, only_if_active=True))
    out.append(Force(AlarmKind.TAMPER, "", active=False, value=value, only_if_active=True))
    out.append(
        Force(AlarmKind.SENSOR_FAULT, fault_sub, active=False, value=value, only_if_active=True)
    )
    return out
