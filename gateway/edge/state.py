"""The engine's state as rows: one per device, alarm, baseline and override.

The pipeline writes what changed in the same commit as the messages it
belongs to (``DurableQueue.put_many(..., state=...)``), so an alarm and the
state that raised it are never out of step, and a commit costs what changed,
not what exists.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "engine/"
MACHINE = PREFIX + "m/"  # + subject|kind|sub: an alarm machine not in its normal state
BASELINE = PREFIX + "b/"  # + subject|sub: a tilt sensor's installed orientation
DEVICE = PREFIX + "d/"  # + model:id: last heard, input bound, recent counters
KIND_OVERRIDE = PREFIX + "ok/"  # + cover kind: thresholds set by the platform
COVER_OVERRIDE = PREFIX + "oc/"  # + cover id
MAINTENANCE = PREFIX + "mt/"  # + cover id: maintenance until (UTC seconds)
LEGACY_KEY = "engine"  # the whole-state blob written before state rows


class StateLog:
    """The rows changed since the last commit: a value, or None to delete the row."""

    def __init__(self) -> None:
        self._changes: dict[str, str | None] = {}
        # Set by a change that should be committed now (an alarm state, an
        # override); a device row rides with the reading it belongs to.
        self.urgent = False

    def put(self, key: str, value: Any, *, urgent: bool = True) -> None:
        self._changes[key] = json.dumps(value, separators=(",", ":"))
        self.urgent |= urgent

    def delete(self, key: str, *, urgent: bool = True) -> None:
        self._changes[key] = None
        self.urgent |= urgent

    def take(self) -> dict[str, str | None]:
        changes, self._changes = self._changes, {}
        self.urgent = False
        return changes

    def __bool__(self) -> bool:
        return bool(self._changes)
