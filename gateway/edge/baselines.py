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


class _Row:
    """A baseline as a live row: serialised at the commit, not when recorded.

    Every stranger's node records one and is usually forgotten before the next
    commit; its row then costs neither the store nor a serialisation.
    """

    __slots__ = ("baseline",)

    def __init__(self, baseline: Orientation) -> None:
        self.baseline = baseline

    def to_json(self) -> list[float]:
        return list(self.baseline)


def _row(subject_key: str, sub: str) -> str:
    """A baseline's row key; a cover's own sensor's without ``join``'s checks when plain."""
    if sub or "|" in subject_key or "%" in subject_key:
        return state.BASELINE + state.join(subject_key, sub)
    return f"{state.BASELINE}{subject_key}|"  # every stranger's node: recorded, then rezeroed


class Baselines:
    """One orientation per (subject, sensor).

    A cover's own SCN-1 node is the sensor ``""``: its baseline is kept under the
    subject's key alone, with nothing else per cover (a city of covers is a city
    of baselines). Other sensors are kept under ``(subject, sub)`` and indexed by
    subject for ``rezero``.
    """

    def __init__(self, log_: StateLog) -> None:
        self._log = log_
        self._by_key: dict[str | tuple[str, str], Orientation] = {}
        # Each subject's other sensors: ``rezero`` (every forgotten device) without a scan.
        self._subs: dict[str, set[str]] = {}

    def kept(self, subject_key: str, sub: str) -> Orientation | None:
        """The installed orientation recorded for the sensor, if any."""
        return self._by_key.get((subject_key, sub) if sub else subject_key)

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
        key = (subject_key, sub) if sub else subject_key
        baseline = self._by_key.get(key)
        if baseline is None and cover is not None and cover.baseline_deg and len(now) == 2:
            baseline = cover.baseline_deg
        if baseline is None and may_record:
            baseline = now
            self._remember(subject_key, sub, baseline)
            # ``new``: none was kept, so none is stored (a stranger's, gone before the
            # next commit, then costs the store nothing). Not urgent: it rides with the
            # reading it was taken from, and a commit forced for each stranger's first
            # frame would write most of their rows only to delete them in the next one.
            self._log.put_live(_row(subject_key, sub), _Row(baseline), new=True, urgent=False)
            # DEBUG: every tilt sensor records one at first contact, and a city's
            # 100k lines at INFO cost first contact ~15 % of its CPU. The row is kept.
            log.debug("tilt baseline of %s recorded: %s deg", (subject_key, sub), baseline)
        return tilt_deg(now, baseline)

    def _remember(self, subject_key: str, sub: str, baseline: Orientation) -> None:
        if sub:
            self._by_key[(subject_key, sub)] = baseline
            self._subs.setdefault(subject_key, set()).add(sub)
        else:
            self._by_key[subject_key] = baseline

    def rezero(self, subject_key: str, *, urgent: bool = True) -> None:
        subs = self._subs.pop(subject_key, None)
        if self._by_key.pop(subject_key, None) is not None:
            self._log.delete(_row(subject_key, ""), urgent=urgent)
        for sub in sorted(subs) if subs else ():
            del self._by_key[(subject_key, sub)]
            self._log.delete(_row(subject_key, sub), urgent=urgent)

    def load(self, key: str, value: Any, *, save: bool = False) -> None:
        subject_key, sub = state.split(key)
        baseline = tuple(float(v) for v in value)
        self._remember(subject_key, sub, baseline)
        if save:
            self._log.put(state.BASELINE + state.join(subject_key, sub), list(baseline))

    def __len__(self) -> int:
        return len(self._by_key)

    def snapshot(self) -> dict[str, list[float]]:
        return {
            state.join(*(k if isinstance(k, tuple) else (k, ""))): list(v)
            for k, v in self._by_key.items()
        }
