"""The CBOR telemetry encoding: a positional layout of the JSON batch.

Imported only when a gateway is configured for it (or a payload is decoded).
The layout is documented in docs/mqtt-api.md "CBOR layout"; this module is
its reference implementation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import cbor2
from cbor2 import CBORDecodeError

from gateway.wire import WireError

__all__ = ["CBORDecodeError", "cbor_batch", "cbor_unbatch"]

# --- CBOR: a positional layout (docs/mqtt-api.md "CBOR layout") ---
#
# batch   = [1, msg_id, sent_at, count, base_ms, id_prefix, covers, ports, readings]
# covers  = [[cover_id, owner_unit, cover_kind, address, lat, lon], ...]; trailing
#           "" (cover_kind, address) and null (lat, lon) left off
# reading = [reading_id, time, cover, source, records, derived, rest]
#   reading_id: int n = id_prefix + n in 8 or more hex digits, or the text
#   time:       int = ms after the previous int-timed reading (the first: after base_ms;
#               may be negative), or the text
#   cover:      int = index into covers, or null (not registered)
#   source:     positional over SOURCE_KEYS; node: int = 8 upper-case hex digits;
#               type, msg_type: int = index into CODED; port: int = index into ports
#   records:    flat: a TLVS index then its TLV_KEYS[tlv] values, or a record as a map
#   derived:    positional over DERIVED_KEYS
#   rest:       a map of any other keys (values, quantities, events, partial), or absent
# Positional: an absent key is CBOR undefined, trailing ones are left off; a
# number in a CENTI slot that is an integer means hundredths. An object with a
# key outside its list goes as a map. Strings repeat by reference (tags 256/25).

VERSION = 1
SOURCE_KEYS = (
    "type", "port", "node", "seq", "msg_type", "flags", "rx_rssi_dbm", "rx_snr_db",
    "bus", "slave", "model", "device_id", "counter", "csq",
)  # fmt: skip
FLAG_KEYS = ("node_alarm", "retransmission", "low_battery")
DERIVED_KEYS = ("tilt_deg", "water_distance_mm", "water_level_mm")
TLVS = (
    "tilt", "water_depth", "battery", "temperature", "gas", "link", "event", "firmware",
    "reset_cause", "pressure", "vibration",
)  # fmt: skip
TLV_KEYS: dict[str, tuple[str, ...]] = {
    "tilt": ("x_deg", "y_deg", "tilt_deg"),
    "water_depth": ("distance_mm", "no_echo"),
    "battery": ("voltage_mv",),
    "temperature": ("celsius",),
    "link": ("rssi_dbm", "snr_db"),
}
CENTI = frozenset(
    {"x_deg", "y_deg", "tilt_deg", "celsius", "snr_db", "rx_snr_db", "water_level_mm"}
)
CODED = {"type": ("node", "modbus", "device"), "msg_type": ("REPORT", "EVENT", "HEARTBEAT", "BOOT")}
COVER_KEYS = ("cover_id", "owner_unit", "cover_kind", "address", "lat", "lon")
COVER_DEFAULTS: tuple[Any, ...] = ("", "", "", "", None, None)  # trailing ones are left off
_HEX = frozenset("0123456789abcdef")
_UPPER_HEX = frozenset("0123456789ABCDEF")


def _fits(key: str, value: Any) -> bool:
    """False for an integer a CENTI slot cannot carry back (beyond a float's precision)."""
    return key not in CENTI or type(value) is not int or float(value) == value


def _slot(key: str, value: Any) -> Any:
    if key in CENTI and isinstance(value, float) and abs(value) < 1e15:
        n = round(value * 100)
        if n / 100 == value:
            return n
    if key in CENTI and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # an integer here would read as hundredths
    return value


def _unslot(key: str, value: Any) -> Any:
    if key in CENTI and type(value) is int:
        return value / 100
    return value


def _positional(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    if not d.keys() <= set(keys) or not all(_fits(k, v) for k, v in d.items()):
        return d
    out = [_slot(k, d[k]) if k in d else cbor2.undefined for k in keys]
    while out and out[-1] is cbor2.undefined:
        out.pop()
    return out


def _named(v: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    return {k: _unslot(k, x) for k, x in zip(keys, v, strict=False) if x is not cbor2.undefined}


def _ms(text: Any) -> int | None:
    if not isinstance(text, str) or len(text) != 24 or not text.endswith("Z"):
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    ms = round(at.timestamp() * 1000)
    return ms if _iso_ms(ms) == text else None


def _iso_ms(ms: int) -> str:
    at = datetime.fromtimestamp(ms / 1000, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _source(src: dict[str, Any], ports: dict[str, int]) -> Any:
    """Positional with codes, or, if anything is off the usual shape, the map untouched."""
    if not src.keys() <= set(SOURCE_KEYS) or not isinstance(src.get("flags", {}), dict):
        return src
    if any(not isinstance(src.get(k, ""), str) for k in ("type", "msg_type", "port", "node")):
        return src
    if not all(_fits(k, v) for k, v in src.items()):
        return src
    src = dict(src)
    for key, table in CODED.items():
        if src.get(key) in table:
            src[key] = table.index(src[key])
    port = src.get("port")
    if isinstance(port, str):
        src["port"] = ports.setdefault(port, len(ports))
    node = src.get("node")
    if isinstance(node, str) and len(node) == 8 and set(node) <= _UPPER_HEX:
        src["node"] = int(node, 16)
    flags = src.get("flags")
    if isinstance(flags, dict):
        src["flags"] = _positional(flags, FLAG_KEYS)
    return _positional(src, SOURCE_KEYS)


def _unsource(v: Any, ports: list[str]) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    src = _named(v, SOURCE_KEYS)
    for key, table in CODED.items():
        if type(src.get(key)) is int:
            src[key] = table[src[key]]
    if type(src.get("port")) is int:
        src["port"] = ports[src["port"]]
    if type(src.get("node")) is int:
        src["node"] = f"{src['node']:08X}"
    if isinstance(src.get("flags"), list):
        src["flags"] = _named(src["flags"], FLAG_KEYS)
    return src


def _record(rec: dict[str, Any]) -> Any:
    keys = TLV_KEYS.get(rec.get("tlv", ""))
    if keys is None or set(rec) != {"tlv", *keys} or not all(_fits(k, rec[k]) for k in keys):
        return rec
    return [TLVS.index(rec["tlv"]), *(_slot(k, rec[k]) for k in keys)]


def _unrecord(v: Any) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    tlv = TLVS[v[0]]
    return {"tlv": tlv, **{k: _unslot(k, x) for k, x in zip(TLV_KEYS[tlv], v[1:], strict=True)}}


def _unrecords(flat: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(flat):
        if isinstance(flat[i], dict):
            out.append(flat[i])
            i += 1
            continue
        tlv = TLVS[flat[i]]
        arity = len(TLV_KEYS[tlv])
        values = flat[i + 1 : i + 1 + arity]
        if len(values) != arity:
            raise WireError("a record ends early")
        out.append(_unrecord([flat[i], *values]))
        i += 1 + arity
    return out


def _cover(record: dict[str, Any]) -> list[Any]:
    out = [record.get(k) for k in COVER_KEYS]
    while (
        len(out) > 2
        and out[-1] == COVER_DEFAULTS[len(out) - 1]
        and type(out[-1]) is type(COVER_DEFAULTS[len(out) - 1])
    ):
        out.pop()
    return out


def cbor_batch(batch: dict[str, Any]) -> bytes:
    """The decoded batch in the positional layout above."""
    readings: list[dict[str, Any]] = batch["readings"]
    first = readings[0]
    first_id = first.get("reading_id")
    prefix = first_id[:16] if isinstance(first_id, str) and len(first_id) >= 24 else ""
    base = _ms(first.get("time")) or 0
    cover_ids = list(batch.get("covers", {}))
    index = {c: i for i, c in enumerate(cover_ids)}
    ports: dict[str, int] = {}
    previous = base
    out = []
    for reading in readings:
        r = dict(reading)
        # A slot takes only what it can carry back; anything else rides in the rest map.
        rid = r.pop("reading_id") if isinstance(r.get("reading_id"), str) else cbor2.undefined
        tail = rid[16:] if prefix and isinstance(rid, str) and rid.startswith(prefix) else ""
        if len(tail) >= 8 and set(tail) <= _HEX and f"{int(tail, 16):08x}" == tail:
            rid = int(tail, 16)
        t = r.pop("time") if isinstance(r.get("time"), str) else cbor2.undefined
        ms = _ms(t)
        delta = None if ms is None else ms - previous
        previous = previous if ms is None else ms
        cover = r.pop("cover_id") if isinstance(r.get("cover_id"), str) else None
        source = _source(r.pop("source"), ports) if isinstance(r.get("source"), dict) else None
        records: Any = cbor2.undefined
        if isinstance(r.get("records"), list) and all(isinstance(x, dict) for x in r["records"]):
            records = []
            for x in r.pop("records"):
                packed = _record(x)
                if isinstance(packed, list):
                    records.extend(packed)  # flat: the code says how many values follow
                else:
                    records.append(packed)
        derived: Any = cbor2.undefined
        if isinstance(r.get("derived"), dict):
            derived = _positional(r.pop("derived"), DERIVED_KEYS)
        item = [
            rid,
            t if delta is None else delta,
            index.get(cover, cover) if cover is not None else None,
            source,
            records,
            derived,
            r or cbor2.undefined,
        ]
        while item[-1] is cbor2.undefined:
            item.pop()
        out.append(item)
    covers = [_cover(batch["covers"][c]) for c in cover_ids]
    head = [VERSION, batch["msg_id"], batch["sent_at"], batch["count"], base, prefix, covers]
    return cbor2.dumps([*head, list(ports), out], canonical=True, string_referencing=True)


def cbor_unbatch(payload: bytes) -> dict[str, Any]:
    """The positional layout back to the JSON batch."""
    v = cbor2.loads(payload)
    if not isinstance(v, list) or len(v) != 9 or v[0] != VERSION:
        raise WireError("not a version 1 CBOR telemetry batch")
    _, msg_id, sent_at, count, base, prefix, covers, ports, items = v
    at = base
    cover_ids = [c[0] for c in covers]
    batch: dict[str, Any] = {"msg_id": msg_id, "sent_at": sent_at, "count": count}
    if covers:
        batch["covers"] = {
            c[0]: dict(zip(COVER_KEYS, [*c, *COVER_DEFAULTS[len(c) :]], strict=True))
            for c in covers
        }
    readings = []
    for item in items:
        rid, t, cover, src = item[:4]
        r: dict[str, Any] = {}
        if cover is not None:
            r["cover_id"] = cover_ids[cover] if isinstance(cover, int) else cover
        if rid is not cbor2.undefined:
            r["reading_id"] = f"{prefix}{rid:08x}" if isinstance(rid, int) else rid
        if isinstance(t, int):
            at += t
            r["time"] = _iso_ms(at)
        elif t is not cbor2.undefined:
            r["time"] = t
        if src is not None:
            r["source"] = _unsource(src, ports)
        if len(item) > 4 and item[4] is not cbor2.undefined:
            r["records"] = _unrecords(item[4])
        if len(item) > 5 and item[5] is not cbor2.undefined:
            r["derived"] = _named(item[5], DERIVED_KEYS)
        if len(item) > 6:
            r.update(item[6])
        readings.append(r)
    batch["readings"] = readings
    return batch
