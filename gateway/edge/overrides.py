"""What the platform changed at run time: thresholds per cover or cover kind, maintenance.

Layers, later wins: ``[alarms]``, ``[alarms.kind.X]``, the platform's kind
override, the registry row, the platform's cover override. Each override is
one state row, so it survives a restart.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Thresholds
from gateway.edge import state
from gateway.edge.state import StateLog
from gateway.registry import Cover


class Overrides:
    def __init__(
        self, base: Thresholds, kind_thresholds: dict[str, dict[str, Any]], log: StateLog
    ) -> None:
        self.base = base
        self.kind_thresholds = kind_thresholds
        self.kind: dict[str, dict[str, Any]] = {}
        self.cover: dict[str, dict[str, Any]] = {}
        self.maintenance_until: dict[str, float] = {}
        self._log = log
        # By cover for the covers with thresholds of their own, else by kind: a city of
        # covers with the thresholds of their kind costs an entry per kind.
        self._cache: dict[str, Thresholds] = {}
        self._kind_cache: dict[str, Thresholds] = {}

    def reconfigure(self, base: Thresholds, kind_thresholds: dict[str, dict[str, Any]]) -> None:
        self.base, self.kind_thresholds = base, kind_thresholds
        self._forget_cached()

    def _forget_cached(self) -> None:
        self._cache.clear()
        self._kind_cache.clear()

    def thresholds(self, cover: Cover | None) -> Thresholds:
        if cover is None:
            return self.base
        own = bool(cover.overrides) or cover.cover_id in self.cover
        cache, key = (self._cache, cover.cover_id) if own else (self._kind_cache, cover.cover_kind)
        cached = cache.get(key)
        if cached is None:
            cached = (
                self.base.merged(self.kind_thresholds.get(cover.cover_kind, {}))
                .merged(self.kind.get(cover.cover_kind, {}))
                .merged(cover.overrides)
                .merged(self.cover.get(cover.cover_id, {}))
            )
            cache[key] = cached
        return cached

    def set_thresholds(
        self, *, cover_id: str | None, cover_kind: str | None, values: dict[str, Any]
    ) -> None:
        if cover_id:
            self.cover[cover_id] = merged = {**self.cover.get(cover_id, {}), **values}
            self._log.put(state.COVER_OVERRIDE + cover_id, merged)
        else:
            key = cover_kind or ""
            self.kind[key] = merged = {**self.kind.get(key, {}), **values}
            self._log.put(state.KIND_OVERRIDE + key, merged)
        self._forget_cached()

    def clear_thresholds(
        self, *, cover_id: str | None, cover_kind: str | None, keys: list[str] | None
    ) -> list[str]:
        """Remove what ``set_thresholds`` set (``keys`` None: all); returns the keys removed."""
        target, prefix = (
            (self.cover, state.COVER_OVERRIDE) if cover_id else (self.kind, state.KIND_OVERRIDE)
        )
        key = cover_id or cover_kind or ""
        current = target.get(key, {})
        removed = [k for k in current if keys is None or k in keys]
        rest = {k: v for k, v in current.items() if k not in removed}
        if rest:
            target[key] = rest
            self._log.put(prefix + key, rest)
        else:
            target.pop(key, None)
            self._log.delete(prefix + key)
        self._forget_cached()
        return removed

    def set_maintenance(self, cover_id: str, until: float | None) -> None:
        if until is None:
            self.maintenance_until.pop(cover_id, None)
            self._log.delete(state.MAINTENANCE + cover_id)
        else:
            self.maintenance_until[cover_id] = until
            self._log.put(state.MAINTENANCE + cover_id, until)

    def in_maintenance(self, cover: Cover | None, at: float) -> bool:
        if cover is None:
            return False
        return cover.maintenance or self.maintenance_until.get(cover.cover_id, 0.0) > at

    def load(self, key: str, value: Any) -> bool:
        """One saved row, if it is one of ours."""
        if key.startswith(state.COVER_OVERRIDE):
            self.cover[key.removeprefix(state.COVER_OVERRIDE)] = dict(value)
        elif key.startswith(state.KIND_OVERRIDE):
            self.kind[key.removeprefix(state.KIND_OVERRIDE)] = dict(value)
        elif key.startswith(state.MAINTENANCE):
            self.maintenance_until[key.removeprefix(state.MAINTENANCE)] = float(value)
        else:
            return False
        self._forget_cached()
        return True

    def save_all(self) -> None:
        for key, values in self.kind.items():
            self._log.put(state.KIND_OVERRIDE + key, values)
        for key, values in self.cover.items():
            self._log.put(state.COVER_OVERRIDE + key, values)
        for key, until in self.maintenance_until.items():
            self._log.put(state.MAINTENANCE + key, until)
