"""Offline: a registered device not heard within its cover's ``offline_after_s``."""

from __future__ import annotations

from gateway.config import Thresholds
from gateway.edge.alarm import AlarmKind
from gateway.edge.rules import Force


def raised(silent_s: float, thr: Thresholds, sub: str, last_seen: str | None) -> Force:
    return Force(
        AlarmKind.NODE_OFFLINE,
        sub,
        active=True,
        value=round(silent_s, 1),
        unit="s",
        threshold=thr.offline_after_s,
        extra={"last_seen": last_seen},
    )


def heard(sub: str) -> Force:
    return Force(AlarmKind.NODE_OFFLINE, sub, active=False, only_if_active=True)
