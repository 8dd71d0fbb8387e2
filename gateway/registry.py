"""The cover registry: the city's census, one row per cover ("one cover, one number").

Cities keep it as a spreadsheet, so it is a CSV file (UTF-8, a BOM allowed,
Chinese text welcome). A row that does not parse is reported with its line
number and reason and left out; the rest loads.

Columns (header names, any order; * required):
  cover_id*, owner_unit*, node_id (8 hex digits), modbus (``BUS:ADDRESS`` …,
  space separated), cover_kind, name, address, latitude, longitude,
  sensor_depth_mm (a level transmitter's depth below the cover),
  maintenance (yes/no), baseline_x_deg, baseline_y_deg, and any threshold key
  of ``[alarms]`` (``tilt_deg``, ``water_high_mm`` …) to override it for this cover.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.config import INTEGER_THRESHOLDS, THRESHOLD_KEYS, THRESHOLD_RANGES

log = logging.getLogger(__name__)


class OwnerUnit(StrEnum):
    WATER_SUPPLY = "water_supply"
    DRAINAGE = "drainage"
    GAS = "gas"
    HEAT = "heat"
    POWER = "power"
    TELECOM = "telecom"
    TRAFFIC = "traffic"
    STREET_LIGHTING = "street_lighting"
    OTHER = "other"


# The census sheets are often kept in Chinese.
_OWNER_ALIASES = {
    "供水": OwnerUnit.WATER_SUPPLY,
    "自来水": OwnerUnit.WATER_SUPPLY,
    "排水": OwnerUnit.DRAINAGE,
    "雨水": OwnerUnit.DRAINAGE,
    "污水": OwnerUnit.DRAINAGE,
    "燃气": OwnerUnit.GAS,
    "热力": OwnerUnit.HEAT,
    "电力": OwnerUnit.POWER,
    "通信": OwnerUnit.TELECOM,
    "交通": OwnerUnit.TRAFFIC,
    "路灯": OwnerUnit.STREET_LIGHTING,
    "其他": OwnerUnit.OTHER,
}

_YES = {"yes", "y", "true", "1", "是"}
_NO = {"no", "n", "false", "0", "否", ""}


@dataclass(frozen=True)
class Cover:
    cover_id: str
    owner_unit: OwnerUnit
    cover_kind: str = ""
    name: str = ""
    address: str = ""
    latitude: float | None = None
    longitude: float | None = None
    node_id: int | None = None
    modbus: tuple[tuple[str, int], ...] = ()
    sensor_depth_mm: float | None = None
    maintenance: bool = False
    baseline_deg: tuple[float, float] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What every message about this cover carries, so the platform needs no lookup."""
        return {
            "cover_id": self.cover_id,
            "owner_unit": self.owner_unit.value,
            "cover_kind": self.cover_kind,
            "address": self.address,
            "lat": self.latitude,
            "lon": self.longitude,
        }


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Registry:
    covers: dict[str, Cover] = field(default_factory=dict)
    by_node: dict[int, Cover] = field(default_factory=dict)
    by_slave: dict[tuple[str, int], Cover] = field(default_factory=dict)

    def add(self, cover: Cover) -> str | None:
        """Index a cover; the reason it clashes with one already in, else None."""
        if cover.cover_id in self.covers:
            return f"cover {cover.cover_id} appears twice"
        if cover.node_id is not None and cover.node_id in self.by_node:
            other = self.by_node[cover.node_id].cover_id
            return f"node {cover.node_id:08X} is already on cover {other}"
        for slave in cover.modbus:
            if slave in self.by_slave:
                other = self.by_slave[slave].cover_id
                return f"modbus {slave[0]}:{slave[1]} is already on cover {other}"
        self.covers[cover.cover_id] = cover
        if cover.node_id is not None:
            self.by_node[cover.node_id] = cover
        for slave in cover.modbus:
            self.by_slave[slave] = cover
        return None


def _float(row: dict[str, str], key: str) -> float | None:
    text = (row.get(key) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key}: not a number: {text!r}") from None


def _threshold(row: dict[str, str], key: str) -> float | int | None:
    """A per-cover threshold column: finite, inside ``THRESHOLD_RANGES``, whole where counted."""
    value = _float(row, key)
    if value is None:
        return None
    lo, hi = THRESHOLD_RANGES[key]
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{key}: must be {lo:g}–{hi:g}, got {row[key].strip()!r}")
    if key in INTEGER_THRESHOLDS:
        if value != int(value):
            raise ValueError(f"{key}: must be a whole number, got {row[key].strip()!r}")
        return int(value)
    return value


def _modbus(text: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in text.replace(";", " ").replace(",", " ").split():
        bus, sep, address = item.rpartition(":")
        try:
            value = int(address, 0)
        except ValueError:
            value = -1
        if not sep or not bus or not 1 <= value <= 247:
            raise ValueError(f"modbus: {item!r} is not BUS:ADDRESS (address 1–247)")
        out.append((bus, value))
    return tuple(out)


def parse_row(row: dict[str, str]) -> Cover:
    cover_id = (row.get("cover_id") or "").strip()
    if not cover_id:
        raise ValueError("cover_id is empty")
    owner_text = (row.get("owner_unit") or "").strip()
    owner = _OWNER_ALIASES.get(owner_text)
    if owner is None:
        try:
            owner = OwnerUnit(owner_text.lower().replace(" ", "_"))
        except ValueError:
            allowed = ", ".join(u.value for u in OwnerUnit)
            raise ValueError(f"owner_unit {owner_text!r} is not one of {allowed}") from None
    node_text = (row.get("node_id") or "").strip()
    node_id = None
    if node_text:
        try:
            node_id = int(node_text, 16)
        except ValueError:
            node_id = -1
        if not 0 <= node_id <= 0xFFFFFFFF:
            raise ValueError(f"node_id {node_text!r} is not 8 hex digits")
    lat, lon = _float(row, "latitude"), _float(row, "longitude")
    if lat is not None and not -90 <= lat <= 90:
        raise ValueError(f"latitude {lat} outside -90..90")
    if lon is not None and not -180 <= lon <= 180:
        raise ValueError(f"longitude {lon} outside -180..180")
    maintenance_text = (row.get("maintenance") or "").strip().lower()
    if maintenance_text not in _YES | _NO:
        raise ValueError(f"maintenance {maintenance_text!r} is not yes/no")
    bx, by = _float(row, "baseline_x_deg"), _float(row, "baseline_y_deg")
    overrides: dict[str, Any] = {}
    for key in THRESHOLD_KEYS:
        value = _threshold(row, key)
        if value is not None:
            overrides[key] = value
    return Cover(
        cover_id=cover_id,
        owner_unit=owner,
        cover_kind=(row.get("cover_kind") or "").strip(),
        name=(row.get("name") or "").strip(),
        address=(row.get("address") or "").strip(),
        latitude=lat,
        longitude=lon,
        node_id=node_id,
        modbus=_modbus(row.get("modbus") or ""),
        sensor_depth_mm=_float(row, "sensor_depth_mm"),
        maintenance=maintenance_text in _YES,
        baseline_deg=(bx or 0.0, by or 0.0) if bx is not None or by is not None else None,
        overrides=overrides,
    )


def parse_registry(text: str) -> tuple[Registry, list[RowError]]:
    registry = Registry()
    errors: list[RowError] = []
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))
    if reader.fieldnames is None or "cover_id" not in reader.fieldnames:
        return registry, [RowError(1, "header has no cover_id column")]
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        try:
            cover = parse_row(row)
        except ValueError as err:
            errors.append(RowError(line, str(err)))
            continue
        clash = registry.add(cover)
        if clash:
            errors.append(RowError(line, clash))
    for row_error in errors:
        log.warning("registry %s: row left out", row_error)
    return registry, errors


def load_registry(path: Path) -> tuple[Registry, list[RowError]]:
    return parse_registry(path.read_text(encoding="utf-8"))
