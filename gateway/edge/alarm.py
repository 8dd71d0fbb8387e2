"""One debounced alarm: normal → pending → active → clearing → normal.

Raising needs the condition to hold for ``hold_s`` *and* over ``count``
consecutive observations; clearing needs the clear condition (the value back
past the hysteresis margin) the same way. Polled sensors use time (a lorry
over a cover is 0.3–1.5 s, the hold is 3 s); sparse radio reports use count;
node events, which the node has already debounced, force the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.values import quick_init


class AlarmKind(StrEnum):
    COVER_OPEN = "cover_open"
    TILT = "tilt"
    WATER_HIGH = "water_high"
    WATER_OVERFLOW = "water_overflow"
    GAS = "gas"
    LOW_BATTERY = "low_battery"
    NODE_OFFLINE = "node_offline"
    SENSOR_FAULT = "sensor_fault"
    TAMPER = "tamper"


SEVERITY = {
    AlarmKind.COVER_OPEN: "critical",
    AlarmKind.TILT: "major",
    AlarmKind.WATER_HIGH: "major",
    AlarmKind.WATER_OVERFLOW: "critical",
    AlarmKind.GAS: "critical",
    AlarmKind.LOW_BATTERY: "minor",
    AlarmKind.NODE_OFFLINE: "major",
    AlarmKind.SENSOR_FAULT: "minor",
    AlarmKind.TAMPER: "major",
}


class AlarmState(StrEnum):
    NORMAL = "normal"
    PENDING = "pending"
    ACTIVE = "active"
    CLEARING = "clearing"


class Transition(StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


@quick_init
@dataclass(frozen=True, slots=True)
class Debounce:
    hold_s: float = 0.0
    count: int = 1

    def met(self, since: float, count: int, at: float) -> bool:
        return at - since >= self.hold_s and count >= self.count


@dataclass(slots=True)  # one per (subject, kind) away from normal: 100k in a storm
class AlarmMachine:
    state: AlarmState = AlarmState.NORMAL
    since: float = 0.0
    count: int = 0
    alarm_id: str | None = None
    raised_at: float | None = None

    def observe(self, *, bad: bool, good: bool, at: float, rule: Debounce) -> Transition | None:
        """One observation; ``bad``: past the raise threshold, ``good``: past the clear margin."""
        match self.state:
            case AlarmState.NORMAL:
                if bad:
                    self._phase(AlarmState.PENDING, at)
                    return self._try_raise(at, rule)
            case AlarmState.PENDING:
                if not bad:
                    self.state = AlarmState.NORMAL
                    return None
                self.count += 1
                return self._try_raise(at, rule)
            case AlarmState.ACTIVE:
                if good:
                    self._phase(AlarmState.CLEARING, at)
                    return self._try_clear(at, rule)
            case AlarmState.CLEARING:
                if not good:
                    self.state = AlarmState.ACTIVE
                    return None
                self.count += 1
                return self._try_clear(at, rule)
        return None

    def force(self, *, active: bool, at: float) -> Transition | None:
        """The node says so (an EVENT): no debounce of our own."""
        if active and self.state not in (AlarmState.ACTIVE, AlarmState.CLEARING):
            return self._raise(at)
        if active and self.state is AlarmState.CLEARING:
            self.state = AlarmState.ACTIVE
        if not active and self.state in (AlarmState.ACTIVE, AlarmState.CLEARING):
            return self._clear()
        if not active and self.state is AlarmState.PENDING:
            self.state = AlarmState.NORMAL
        return None

    @property
    def active(self) -> bool:
        return self.state in (AlarmState.ACTIVE, AlarmState.CLEARING)

    def _phase(self, state: AlarmState, at: float) -> None:
        self.state, self.since, self.count = state, at, 1

    def _try_raise(self, at: float, rule: Debounce) -> Transition | None:
        return self._raise(at) if rule.met(self.since, self.count, at) else None

    def _try_clear(self, at: float, rule: Debounce) -> Transition | None:
        return self._clear() if rule.met(self.since, self.count, at) else None

    def _raise(self, at: float) -> Transition:
        self.state = AlarmState.ACTIVE
        self.raised_at = at
        self.alarm_id = None  # the engine names the occurrence
        return Transition.RAISED

    def _clear(self) -> Transition:
        self.state = AlarmState.NORMAL
        return Transition.CLEARED

    def fingerprint(self) -> tuple[object, ...]:
        """Everything ``to_json`` writes, cheaply: has the machine changed?"""
        return (self.state, self.since, self.count, self.alarm_id, self.raised_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": self.since,
            "count": self.count,
            "alarm_id": self.alarm_id,
            "raised_at": self.raised_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlarmMachine:
        return cls(
            AlarmState(data["state"]),
            float(data["since"]),
            int(data["count"]),
            data.get("alarm_id"),
            data.get("raised_at"),
        )
