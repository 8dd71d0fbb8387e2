"""The cover registry: the city's census, one row per cover ("one cover, one number").

Cities keep it as a spreadsheet, so it is a CSV file (UTF-8, a BOM allowed,
Chinese text welcome). A row that does not parse is reported with its line
number and reason and left out; the rest loads.

Columns (header names, any order; * required):
  cover_id*, owner_unit*, node_id (8 hex digits), modbus (``BUS:ADDRESS`` …,
  space separated), cover_kind, name, address, latitude, longitude,
  sensor_depth_mm (a level transmitter's depth below the cover),
  maintenance (yes/no), baseline_x_deg, baseline_y_deg, input (the names of
  the inputs this cover's radio devices may be heard on, space separated; empty:
  the first input a device is heard on), and any threshold key of ``[alarms]``
  (``tilt_deg``, ``water_high_mm`` …) to override it for this cover;
  device (the model: ``scn1`` when empty, ``em310-tilt``, ``em400-mud``,
  ``em400-udl``, ``em310-udl``, ``dds75-lb``) and device_id (a LoRaWAN DevEUI,
  16 hex digits, kept in lower case; an NB-IoT IMEI, 15 digits; for ``scn1`` the
  node id, the same as the node_id column).

A cover with several devices (a tilt sensor and a level sensor) has one row
per device under the same cover_id. The later rows add their device (and
node_id, modbus) to the cover; every other column they fill in must agree with
the cover's first row, or the later row is refused (reported with its line,
its device left unbound) and the cover keeps its first row's values. An empty
column in a later row means "as above".
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.config import INTEGER_THRESHOLDS, THRESHOLD_KEYS, THRESHOLD_RANGES
from gateway.observation import DeviceRef

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

SCN1 = "scn1"

# Which transport each model's ids belong to. EM400-MUD and EM400-UDL are sold
# in a LoRaWAN and an NB-IoT version: the id says which one a row means.
DEVICE_TRANSPORTS: dict[str, frozenset[str]] = {
    SCN1: frozenset({"scn1"}),
    "em310-tilt": frozenset({"lorawan"}),
    "em310-udl": frozenset({"lorawan"}),
    "dds75-lb": frozenset({"lorawan"}),
    "em400-mud": frozenset({"lorawan", "nbiot"}),
    "em400-udl": frozenset({"lorawan", "nbiot"}),
}

# Columns a later row of the same cover may set (each adds a device); all
# others describe the cover and must agree with its first row.
DEVICE_COLUMNS = frozenset({"node_id", "modbus", "device", "device_id"})

_NO_OVERRIDES: Mapping[str, Any] = MappingProxyType({})  # shared by every cover without any

_YES = {"yes", "y", "true", "1", "是"}
_NO = {"no", "n", "false", "0", "否", ""}


@dataclass(frozen=True, slots=True)  # slots: a city has 100k of them
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
    overrides: Mapping[str, Any] = field(default_factory=lambda: _NO_OVERRIDES)
    # Devices bound by the device/device_id columns (LoRaWAN, NB-IoT); SCN-1
    # nodes stay in node_id, Modbus slaves in modbus.
    devices: tuple[DeviceRef, ...] = ()
    inputs: tuple[str, ...] = ()  # empty: bound to the first input a device is heard on

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


def device_transport(model: str, device_id: str) -> str:
    """The transport a registered id belongs to: ``lorawan`` or ``nbiot`` (or ``scn1``)."""
    if model == SCN1:
        return "scn1"
    return "nbiot" if len(device_id) == 15 else "lorawan"


@dataclass
class Registry:
    covers: dict[str, Cover] = field(default_factory=dict)
    by_node: dict[int, Cover] = field(default_factory=dict)
    by_slave: dict[tuple[str, int], Cover] = field(default_factory=dict)
    # LoRaWAN DevEUI (lower case) or NB-IoT IMEI → the device and its cover.
    by_device: dict[str, tuple[DeviceRef, Cover]] = field(default_factory=dict)

    def add(self, cover: Cover) -> str | None:
        """Index a cover; the reason it clashes with one already in, else None."""
        if cover.cover_id in self.covers:
            return f"cover {cover.cover_id} appears twice"
        clash = self._clash(cover, cover.node_id, cover.modbus, cover.devices)
        if clash:
            return clash
        self._index(cover)
        return None

    def add_devices(self, cover_id: str, row: Cover) -> str | None:
        """Bind a later row's devices to a cover already in; the reason it cannot, else None."""
        cover = self.covers[cover_id]
        if row.node_id is not None and cover.node_id not in (None, row.node_id):
            return f"cover {cover_id} already has SCN-1 node {cover.node_id:08X}"
        new_node = row.node_id if row.node_id != cover.node_id else None
        new_slaves = tuple(s for s in row.modbus if s not in cover.modbus)
        new_devices = tuple(d for d in row.devices if d not in cover.devices)
        clash = self._clash(cover, new_node, new_slaves, new_devices)
        if clash:
            return clash
        merged = replace(
            cover,
            node_id=cover.node_id if cover.node_id is not None else row.node_id,
            modbus=cover.modbus + new_slaves,
            devices=cover.devices + new_devices,
        )
        self._index(merged)
        return None

    def _clash(
        self,
        cover: Cover,
        node_id: int | None,
        modbus: tuple[tuple[str, int], ...],
        devices: tuple[DeviceRef, ...],
    ) -> str | None:
        if node_id is not None and node_id in self.by_node:
            other = self.by_node[node_id].cover_id
            return f"node {node_id:08X} is already on cover {other}"
        for slave in modbus:
            if slave in self.by_slave:
                other = self.by_slave[slave].cover_id
                return f"modbus {slave[0]}:{slave[1]} is already on cover {other}"
        for device in devices:
            if device.device_id in self.by_device:
                other = self.by_device[device.device_id][1].cover_id
                return f"device_id {device.device_id} is already on cover {other}"
        return None

    def _index(self, cover: Cover) -> None:
        """(Re)index every key of a cover to this version of it."""
        self.covers[cover.cover_id] = cover
        if cover.node_id is not None:
            self.by_node[cover.node_id] = cover
        for slave in cover.modbus:
            self.by_slave[slave] = cover
        for device in cover.devices:
            self.by_device[device.device_id] = (device, cover)

    def device(self, device_id: str) -> tuple[DeviceRef, Cover] | None:
        """A LoRaWAN or NB-IoT device by its id (any case for a DevEUI) and its cover."""
        return self.by_device.get(device_id.lower())

    def cover_for(self, device: DeviceRef) -> Cover | None:
        """The cover a device is mounted on; None for a device not in the registry."""
        match device.model:
            case "scn1":
                try:
                    return self.by_node.get(int(device.device_id, 16))
                except ValueError:
                    return None
            case "modbus":
                bus, _, address = device.device_id.rpartition(":")
                if not address.isdigit():
                    return None
                return self.by_slave.get((bus, int(address)))
        found = self.by_device.get(device.device_id.lower())
        return found[1] if found is not None and found[0].model == device.model else None

    def radio_devices(self) -> list[tuple[DeviceRef | int, Cover]]:
        """Registered devices that report on their own, so silence means something (offline).

        SCN-1 nodes come as their number (the registry's own int: a city of them needs
        no ``DeviceRef`` and hex string each to be watched), other devices as their ref.
        """
        nodes: list[tuple[DeviceRef | int, Cover]] = list(self.by_node.items())
        return nodes + list(self.by_device.values())


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


def _device(row: dict[str, str]) -> tuple[int | None, tuple[DeviceRef, ...]]:
    """The row's device columns: an SCN-1 node id (from node_id or device_id) and other devices."""
    model = (row.get("device") or "").strip().lower() or SCN1
    device_id = (row.get("device_id") or "").strip()
    node_text = (row.get("node_id") or "").strip()
    if model not in DEVICE_TRANSPORTS:
        allowed = ", ".join(DEVICE_TRANSPORTS)
        raise ValueError(f"device {model!r} is not one of {allowed}")
    if model == SCN1:
        if device_id and node_text and device_id.upper() != node_text.upper():
            raise ValueError(f"device_id {device_id!r} and node_id {node_text!r} disagree")
        return _node_id(node_text or device_id), ()
    if not device_id:
        raise ValueError(f"device {model} needs a device_id (DevEUI or IMEI)")
    transports = DEVICE_TRANSPORTS[model]
    if len(device_id) == 16 and all(c in "0123456789abcdefABCDEF" for c in device_id):
        if "lorawan" not in transports:
            raise ValueError(f"device_id {device_id!r}: {model} is not a LoRaWAN device")
        device_id = device_id.lower()
    elif len(device_id) == 15 and device_id.isascii() and device_id.isdigit():
        if "nbiot" not in transports:
            raise ValueError(f"device_id {device_id!r}: {model} has no NB-IoT version (IMEI)")
    else:
        wanted = " or ".join(
            {"lorawan": "a DevEUI (16 hex digits)", "nbiot": "an IMEI (15 digits)"}[t]
            for t in sorted(transports)
        )
        raise ValueError(f"device_id {device_id!r} is not {wanted}")
    return _node_id(node_text), (DeviceRef(model, device_id),)


def _node_id(text: str) -> int | None:
    if not text:
        return None
    try:
        node_id = int(text, 16)
    except ValueError:
        node_id = -1
    if not 0 <= node_id <= 0xFFFFFFFF:
        raise ValueError(f"node_id {text!r} is not 8 hex digits")
    return node_id


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
    node_id, devices = _device(row)
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
        # Few distinct values in many rows: one string each, not one per row.
        cover_kind=sys.intern((row.get("cover_kind") or "").strip()),
        name=(row.get("name") or "").strip(),
        address=(row.get("address") or "").strip(),
        latitude=lat,
        longitude=lon,
        node_id=node_id,
        modbus=_modbus(row.get("modbus") or ""),
        sensor_depth_mm=_float(row, "sensor_depth_mm"),
        maintenance=maintenance_text in _YES,
        baseline_deg=(bx or 0.0, by or 0.0) if bx is not None or by is not None else None,
        overrides=overrides or _NO_OVERRIDES,
        devices=devices,
        inputs=_inputs(row.get("input") or ""),
    )


_INPUTS: dict[str, tuple[str, ...]] = {}  # the input column's few distinct values, shared


def _inputs(text: str) -> tuple[str, ...]:
    found = _INPUTS.get(text)
    if found is None:
        found = tuple(sys.intern(name) for name in text.replace(",", " ").split())
        if len(_INPUTS) < 1024:  # a bound whatever the sheet holds
            _INPUTS[text] = found
    return found


def _repeated_ids(text: str) -> set[str]:
    """The cover ids on more than one row: only their first rows need keeping while parsing.

    Keeping every first row (a dict of strings per cover) until the end doubled what a
    large census cost to load, and the memory freed after it stayed with the process.
    """
    rows = csv.reader(io.StringIO(text))
    header = [name.strip().lower() for name in next(rows, [])]
    column = header.index("cover_id")
    seen: set[str] = set()
    repeated: set[str] = set()
    for row in rows:
        if len(row) > column:
            cover_id = row[column].strip()
            if cover_id in seen:
                repeated.add(cover_id)
            else:
                seen.add(cover_id)
    return repeated


def parse_registry(text: str) -> tuple[Registry, list[RowError]]:
    registry = Registry()
    errors: list[RowError] = []
    text = text.removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "cover_id" not in reader.fieldnames:
        return registry, [RowError(1, "header has no cover_id column")]
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
    repeated = _repeated_ids(text)
    first_rows: dict[str, tuple[int, dict[str, str]]] = {}
    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        cover_id = (row.get("cover_id") or "").strip()
        first = first_rows.get(cover_id)
        try:
            cover = parse_row(row if first is None else _inherit(cover_id, first, row))
        except ValueError as err:
            errors.append(RowError(line, str(err)))
            continue
        if first is None:
            clash = registry.add(cover)
            if not clash and cover.cover_id in repeated:
                first_rows[cover.cover_id] = (line, row)
        else:
            clash = registry.add_devices(cover.cover_id, cover)
        if clash:
            errors.append(RowError(line, clash))
    for row_error in errors:
        log.warning("registry %s: row left out", row_error)
    return registry, errors


def _disagreement(cover_id: str, first: tuple[int, dict[str, str]], row: dict[str, str]) -> str:
    """Why a later row of a cover contradicts its first row ("" when it does not)."""
    first_line, first_row = first
    for column, value in row.items():
        if not isinstance(column, str) or column in DEVICE_COLUMNS:
            continue
        text = (value or "").strip() if isinstance(value, str) else ""
        if text and text != (first_row.get(column) or "").strip():
            return f"cover {cover_id}: {column} {text!r} differs from line {first_line}"
    return ""


def _inherit(
    cover_id: str, first: tuple[int, dict[str, str]], row: dict[str, str]
) -> dict[str, str]:
    """A later row with the cover's columns it left empty taken from the first row."""
    disagreement = _disagreement(cover_id, first, row)
    if disagreement:
        raise ValueError(disagreement)
    out = dict(row)
    for column, value in first[1].items():
        empty = not (out.get(column) or "").strip()
        if isinstance(column, str) and column not in DEVICE_COLUMNS and empty:
            out[column] = value
    return out


def load_registry(path: Path) -> tuple[Registry, list[RowError]]:
    return parse_registry(path.read_text(encoding="utf-8"))
