"""Tilt: the angle between the sensor's installed orientation and now.

Two-axis sensors (SCN-1, the wired inclinometer) give angles about x and y;
their tilt is the distance between the two angle pairs, as the spec says.
Three-axis sensors give each axis's angle to the horizontal plane; those
make a direction of gravity in the sensor's frame, and the tilt is the angle
between the installed direction and today's, whatever way the sensor was
mounted.
"""

from __future__ import annotations

import math

from gateway.config import Thresholds
from gateway.edge.alarm import AlarmKind, Debounce
from gateway.edge.rules import Check, make_check
from gateway.observation import Quantities

Orientation = tuple[float, ...]  # (x, y) degrees, or (x, y, z) degrees


# Enum members the per-frame path names, as module constants: on Python 3.11 an
# Enum class attribute costs ~0.1 µs a lookup (EnumType.__getattr__), a global ~0.03.
_TILT = AlarmKind.TILT


def orientation(q: Quantities) -> Orientation | None:
    if q.tilt_x_deg is None or q.tilt_y_deg is None:
        return None
    if q.tilt_z_deg is None:
        return (q.tilt_x_deg, q.tilt_y_deg)
    return (q.tilt_x_deg, q.tilt_y_deg, q.tilt_z_deg)


def _gravity(axes: Orientation) -> tuple[float, float, float]:
    x, y, z = (math.sin(math.radians(a)) for a in axes)
    norm = math.sqrt(x * x + y * y + z * z) or 1.0
    return x / norm, y / norm, z / norm


def tilt_deg(now: Orientation, baseline: Orientation | None) -> float:
    """Against the baseline; with none yet, against level (2 axes) or upright z (3 axes)."""
    if len(now) == 2:
        bx, by = baseline if baseline is not None and len(baseline) == 2 else (0.0, 0.0)
        return math.hypot(now[0] - bx, now[1] - by)
    base = baseline if baseline is not None and len(baseline) == 3 else (0.0, 0.0, 90.0)
    a, b = _gravity(now), _gravity(base)
    dot = max(-1.0, min(1.0, a[0] * b[0] + a[1] * b[1] + a[2] * b[2]))
    return math.degrees(math.acos(dot))


def check(
    tilt: float, thr: Thresholds, rule: Debounce, sub: str, *, quiet: bool = False
) -> Check | None:
    bad = tilt >= thr.tilt_deg
    if quiet and not bad:
        return None
    return make_check(
        _TILT,
        sub,
        bad=bad,
        good=tilt < thr.tilt_deg - thr.tilt_clear_margin_deg,
        rule=rule,
        value=tilt,
        unit="deg",
        threshold=thr.tilt_deg,
    )
