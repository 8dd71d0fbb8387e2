"""The engine's state as rows: one per device, alarm, baseline and override.

The pipeline writes what changed in the same commit as the messages it
belongs to (``DurableQueue.put_many(..., state=...)``), so an alarm and the
state that raised it are never out of step, and a commit costs what changed,
not what exists.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway import jsontext


class Row(Protocol):
    def to_json(self) -> Any: ...


PREFIX = "engine/"
MACHINE = PREFIX + "m/"  # + subject|kind|sub: an alarm machine not in its normal state
BASELINE = PREFIX + "b/"  # + subject|sub: a tilt sensor's installed orientation
DEVICE = PREFIX + "d/"  # + model:id: last heard, input bound, recent counters
KIND_OVERRIDE = PREFIX + "ok/"  # + cover kind: thresholds set by the platform
COVER_OVERRIDE = PREFIX + "oc/"  # + cover id
MAINTENANCE = PREFIX + "mt/"  # + cover id: maintenance until (UTC seconds)
LEGACY_KEY = "engine"  # the whole-state blob written before state rows


def dumps(value: Any) -> str:
    """A row's text (a device row is written with nearly every commit); ``json.loads``
    reads back what either encoder wrote alike."""
    return jsontext.dumps(value).decode()


def join(*parts: str) -> str:
    """Key parts joined by ``|``; a ``|`` inside a part (ids come from outside) is escaped."""
    joined = "|".join(parts)
    if "%" not in joined and joined.count("|") == len(parts) - 1:
        return joined  # nothing to escape: the common case, without a pass per part
    return "|".join(p.replace("%", "%25").replace("|", "%7C") for p in parts)


def split(key: str) -> list[str]:
    return [p.replace("%7C", "|").replace("%25", "%") for p in key.split("|")]


class StateLog:
    """The rows changed since the last commit: a value, or None to delete the row."""

    def __init__(self) -> None:
        self._changes: dict[str, str | None] = {}
        # Rows that change with every message (a device's counters): serialised
        # once per commit, however many messages changed them in between.
        self._live: dict[str, Row] = {}
        # Set by a change that should be committed now (an alarm state, an
        # override); a device row rides with the reading it belongs to.
        self.urgent = False
        # Rows known not to be in the store since the last commit: deleting one
        # only drops what is pending. An unregistered node heard once and pushed
        # out of the LRU before the next commit (a flood of strangers) then costs
        # the store nothing, neither its row nor the row's deletion.
        self._absent: set[str] = set()

    def _note(self, key: str, new: bool) -> None:
        """NEW: the caller knows no row is stored unless a change to it is pending here."""
        if new and key not in self._changes and key not in self._live:
            self._absent.add(key)

    def put(self, key: str, value: Any, *, urgent: bool = True, new: bool = False) -> None:
        self._note(key, new)
        self._live.pop(key, None)
        self._changes[key] = dumps(value)
        self.urgent |= urgent

    def put_live(self, key: str, row: Row, *, new: bool = False, urgent: bool = False) -> None:
        """A row written at the next commit as it is then (serialised only then)."""
        self._note(key, new)
        self._changes.pop(key, None)
        self._live[key] = row
        self.urgent |= urgent

    def delete(self, key: str, *, urgent: bool = True) -> None:
        self._live.pop(key, None)
        if key in self._absent:
            self._changes.pop(key, None)  # never stored: nothing to delete
            return
        self._changes[key] = None
        self.urgent |= urgent

    def take(self) -> dict[str, str | None]:
        changes, self._changes = self._changes, {}
        for key, row in self._live.items():
            changes[key] = dumps(row.to_json())
        self._live = {}
        self._absent.clear()
        self.urgent = False
        return changes

    def __bool__(self) -> bool:
        return bool(self._changes) or bool(self._live)
