"""Water: high and overflow, from the distance between the sensor and the water.

A smaller distance is higher water. No echo means nothing in range: no water.
A level transmitter's level becomes a distance through the cover's
``sensor_depth_mm`` in the registry; without it there is nothing to judge.
"""

from __future__ import annotations

import math

from gateway.config import Thresholds
from gateway.edge.alarm import AlarmKind, Debounce
from gateway.edge.rules import Check, make_check
from gateway.observation import Quantities

# Enum members the per-frame path names, as module constants: on Python 3.11 an
# Enum class attribute costs ~0.1 µs a lookup (EnumType.__getattr__), a global ~0.03.
_HIGH = AlarmKind.WATER_HIGH
_OVERFLOW = AlarmKind.WATER_OVERFLOW


def distance_mm(q: Quantities, sensor_depth_mm: float | None) -> float | None:
    if q.distance_mm is not None:
        return q.distance_mm
    if q.distance_no_echo:
        return math.inf
    if q.water_level_mm is not None and sensor_depth_mm is not None:
        return sensor_depth_mm - q.water_level_mm
    return None


def checks(
    distance: float, thr: Thresholds, rule: Debounce, sub: str, *, quiet: bool = False
) -> list[Check]:
    margin = thr.water_clear_margin_mm
    out = []
    for kind, limit in ((_HIGH, thr.water_high_mm), (_OVERFLOW, thr.water_overflow_mm)):
        bad = distance <= limit
        if bad or not quiet:
            out.append(
                make_check(
                    kind,
                    sub,
                    bad=bad,
                    good=distance > limit + margin,
                    rule=rule,
                    value=distance,
                    unit="mm",
                    threshold=limit,
                )
            )
    return out
