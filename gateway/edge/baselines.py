"""Tilt baselines: each tilt sensor's installed orientation, one row per sensor.

The registry's ``baseline_x_deg``/``baseline_y_deg`` serve two-axis sensors
until one is recorded; otherwise the first normal reading becomes it.
``rezero`` forgets a cover's baselines so the next normal reading is the new one.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.edge import state
from gateway.edge.rules.tilt import Orientation, tilt_deg
from gateway.edge.state import StateLog
from gateway.registry import Cover

log = logging.getLogger(__name__)


class Baselines:
    def __init__(self, log_: StateLog) -> None:
        self._log = log_
        self._by_key: dict[tuple[str, str], Orientation] = {}  # (subject, sub)
        # Each subject's sensors: ``rezero`` (every forgotten device) without a scan.
        self._subs: dict[str, set[str]] = {}

    def relative_tilt(
        self,
        subject_key: str,
        sub: str,
        cover: Cover | None,
        now: Orientation,
        *,
        may_record: bool,
    ) -> float:
        """Tilt against the installed orientation; until there is one, against level."""
        key = (subject_key, sub)
        baseline = self._by_key.get(key)
        if baseline is None and cover is not None and cover.baseline_deg and len(now) == 2:
            baseline = cover.baseline_deg
        if baseline is None and may_record:
            baseline = now
            self._by_key[key] = baseline
            self._subs.setdefault(subject_key, set()).add(sub)
            self._log.put(state.BASELINE + state.join(*key), list(baseline))
            log.info("tilt baseline of %s recorded: %s deg", key, baseline)
        return tilt_deg(now, baseline)

    def rezero(self, subject_key: str, *, urgent: bool = True) -> None:
        for sub in sorted(self._subs.pop(subject_key, ())):
            del self._by_key[(subject_key, sub)]
            self._log.delete(state.BASELINE + state.join(subject_key, sub), urgent=urgent)

    def load(self, key: str, value: Any, *, save: bool = False) -> None:
        subject_key, sub = state.split(key)
        self._by_key[(subject_key, sub)] = baseline = tuple(float(v) for v in value)
        self._subs.setdefault(subject_key, set()).add(sub)
        if save:
            self._log.put(state.BASELINE + state.join(subject_key, sub), list(baseline))

    def __len__(self) -> int:
        return len(self._by_key)

    def snapshot(self) -> dict[str, list[float]]:
        return {state.join(*k): list(v) for k, v in self._by_key.items()}
