"""Battery: low by voltage, by percentage, or by the device's own low-battery bit."""

from __future__ import annotations

from gateway.config import Thresholds
from gateway.edge.alarm import AlarmKind, Debounce
from gateway.edge.rules import Check, make_check
from gateway.observation import Quantities

LOW_BATTERY_BITS = frozenset({"low_battery"})  # device alarm bits that mean "my battery is low"
LOW_PCT = 15.0  # devices that report a percentage only (Milesight): raise below
CLEAR_PCT = 20.0  # and clear at or above


# Enum members the per-frame path names, as module constants: on Python 3.11 an
# Enum class attribute costs ~0.1 µs a lookup (EnumType.__getattr__), a global ~0.03.
_LOW_BATTERY = AlarmKind.LOW_BATTERY


def check(
    q: Quantities, thr: Thresholds, rule: Debounce, sub: str, *, quiet: bool = False
) -> Check | None:
    flagged = not q.device_alarms.isdisjoint(LOW_BATTERY_BITS)  # no new set per reading
    if q.battery_mv is not None or (flagged and q.battery_pct is None):
        mv = q.battery_mv
        bad = flagged or (mv is not None and mv < thr.low_battery_mv)
        if quiet and not bad:
            return None
        return make_check(
            _LOW_BATTERY,
            sub,
            bad=bad,
            good=not flagged and mv is not None and mv >= thr.low_battery_clear_mv,
            rule=rule,
            value=None if mv is None else float(mv),
            unit="mV",
            threshold=thr.low_battery_mv,
        )
    if q.battery_pct is not None:
        pct = q.battery_pct
        bad = flagged or pct < LOW_PCT
        if quiet and not bad:
            return None
        return make_check(
            _LOW_BATTERY,
            sub,
            bad=bad,
            good=not flagged and pct >= CLEAR_PCT,
            rule=rule,
            value=pct,
            unit="%",
            threshold=LOW_PCT,
        )
    return None
