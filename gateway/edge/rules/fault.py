"""Sensor fault: the device says its sensor failed, or the gateway counted failed polls."""

from __future__ import annotations

from gateway.config import Thresholds
from gateway.edge.alarm import AlarmKind
from gateway.edge.rules import Force
from gateway.observation import DeviceEvent


def from_failures(event: DeviceEvent, thr: Thresholds, sub: str) -> Force | None:
    """Polls that failed in a row: an alarm once they reach ``fault_after_failures``."""
    failures = int(event.detail.get("failures", 0))
    if failures < thr.fault_after_failures:
        return None
    return Force(
        AlarmKind.SENSOR_FAULT,
        sub,
        active=True,
        value=float(failures),
        unit="failures",
        threshold=float(thr.fault_after_failures),
        extra={"reason": str(event.detail.get("reason", ""))},
    )


def answered(sub: str) -> Force:
    """A poll answered: a fault raised by failed polls is over."""
    return Force(AlarmKind.SENSOR_FAULT, sub, active=False, only_if_active=True)
