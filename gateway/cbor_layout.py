"""The CBOR telemetry encoding: a positional layout of the JSON batch.

Imported only when a gateway is configured for it (or a payload is decoded).
The layout is documented in docs/mqtt-api.md "CBOR layout"; this module is
its reference implementation. A CBOR batch carries no cover records: each
reading names its cover, and the records travel retained on topics of their
own (``gateway.cover_records``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import cbor2
from cbor2 import CBORDecodeError

from gateway.wire import WireError

__all__ = ["VERSION", "CBORDecodeError", "cbor_batch", "cbor_unbatch"]

# --- CBOR: a positional layout (docs/mqtt-api.md "CBOR layout") ---
#
# batch   = [2, msg_id, sent_at, count, base_ms, id_prefix, cover_form, ports, readings]
#   sent_at:    int = ms after base_ms, or the text
#   cover_form: [prefix, width]: how an integer in a reading's cover slot reads, or null
# reading = [reading_id, time, cover, source, records, derived, rest]
#   reading_id: int n = id_prefix + (the previous int id's counter + n) in 8 or more hex
#               digits (the first: n is the counter), or the text
#   time:       int = ms after the previous int-timed reading (the first: after base_ms;
#               may be negative), or the text
#   cover:      int n = prefix + n in width decimal digits; text: the cover id; null: none
#   source:     positional over SOURCE_KEYS; node: int = 8 upper-case hex digits;
#               type, msg_type: int = index into CODED; port: int = index into ports
#   records:    flat: a TLVS index then its TLV_KEYS values; a negative code -1-i is the
#               record TLVS[i] with its last value left off and implied (IMPLIED);
#               or a record as a map
#   derived:    positional over DERIVED_KEYS
#   rest:       a map of any other keys (values, quantities, events, partial), or absent
# Positional: an absent key is CBOR undefined; trailing slots are left off, and a slot
# left off takes its default (DEFAULTS) or, without one, is absent. A number in a
# SCALE slot that is an integer means value / scale; a float is the value itself. An
# object with a key outside its list goes as a map. Strings repeat by reference
# (tags 256/25).

VERSION = 2
SOURCE_KEYS = (
    "node", "seq", "msg_type", "port", "type", "flags", "rx_rssi_dbm", "rx_snr_db",
    "bus", "slave", "model", "device_id", "counter", "csq",
)  # fmt: skip
FLAG_KEYS = ("node_alarm", "retransmission", "low_battery")
DERIVED_KEYS = ("tilt_deg", "water_level_mm", "water_distance_mm")
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
SCALE = {
    "x_deg": 100,
    "y_deg": 100,
    "tilt_deg": 100,
    "celsius": 10,
    "rx_snr_db": 100,
    "water_level_mm": 10,
}
CODED = {"type": ("node", "modbus", "device"), "msg_type": ("REPORT", "EVENT", "HEARTBEAT", "BOOT")}
# Coded values a source slot left off stands for: REPORT, the batch's first port, a node.
DEFAULTS: dict[str, int] = {"msg_type": 0, "port": 0, "type": 0}
MAX_COVER_WIDTH = 18  # digits of a cover number that still fit a CBOR integer


def _tilt_deg(values: dict[str, Any]) -> Any:
    x: Any = values.get("x_deg")
    y: Any = values.get("y_deg")
    if type(x) not in (int, float) or type(y) not in (int, float):
        return cbor2.undefined
    return round(math.hypot(x, y), 2)


def _no_echo(values: dict[str, Any]) -> Any:
    return values.get("distance_mm") is None


# The last value of these records as the engine renders it (gateway/protocol/render.py).
IMPLIED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "tilt": _tilt_deg,
    "water_depth": _no_echo,
}
# tlv → (code, its keys, the keys of its map, what implies its last value)
_RECORD_FORMS = {
    tlv: (TLVS.index(tlv), keys, frozenset(("tlv", *keys)), IMPLIED.get(tlv))
    for tlv, keys in TLV_KEYS.items()
}
_SOURCE_SET = frozenset(SOURCE_KEYS)
_HEX = frozenset("0123456789abcdef")
_UPPER_HEX = frozenset("0123456789ABCDEF")
_DIGITS = frozenset("0123456789")


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (so 1, 1.0 and True stay apart)."""
    return type(a) is type(b) and a == b


def _fits(key: str, value: Any) -> bool:
    """False for an integer a SCALE slot cannot carry back (beyond a float's precision)."""
    return key not in SCALE or type(value) is not int or float(value) == value


def _slot(key: str, value: Any) -> Any:
    scale = SCALE.get(key)
    if scale is None:
        return value
    if isinstance(value, float) and abs(value) < 1e15:
        n = round(value * scale)
        if n / scale == value:
            return n
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # an integer here would read as value / scale
    return value


def _unslot(key: str, value: Any) -> Any:
    scale = SCALE.get(key)
    if scale is not None and type(value) is int:
        return value / scale
    return value


def _at(table: tuple[str, ...] | list[Any], index: Any) -> Any:
    if type(index) is not int or not 0 <= index < len(table):
        raise WireError(f"index {index!r} outside its table")
    return table[index]


def _trim(out: list[Any], keys: tuple[str, ...], defaults: dict[str, Any]) -> list[Any]:
    """Leave off trailing slots that say what leaving them off says."""
    while out:
        key, value = keys[len(out) - 1], out[-1]
        if key in defaults:
            if not _same(value, defaults[key]):
                break
        elif value is not cbor2.undefined:
            break
        out.pop()
    return out


def _positional(d: dict[str, Any], keys: tuple[str, ...], defaults: dict[str, Any]) -> Any:
    if not d.keys() <= set(keys) or not all(_fits(k, v) for k, v in d.items()):
        return d
    out = [_slot(k, d[k]) if k in d else cbor2.undefined for k in keys]
    return _trim(out, keys, defaults)


def _named(v: Any, keys: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    if not isinstance(v, list) or len(v) > len(keys):
        raise WireError("a positional object has more values than keys")
    out = {k: _unslot(k, x) for k, x in zip(keys, v, strict=False) if x is not cbor2.undefined}
    for key in keys[len(v) :]:
        if key in defaults:
            out[key] = defaults[key]
    return out


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


def _iso_at(ms: int) -> str:
    """A decoded time, or a WireError for one no calendar holds."""
    try:
        return _iso_ms(ms)
    except (OverflowError, OSError, ValueError) as err:
        raise WireError(f"a time out of range: {ms} ms") from err


def _source(src: dict[str, Any], ports: dict[str, int]) -> Any:
    """Positional with codes, or, if anything is off the usual shape, the map untouched."""
    if not src.keys() <= _SOURCE_SET or not isinstance(src.get("flags", {}), dict):
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
        src["flags"] = _positional(flags, FLAG_KEYS, {})
    out = [_slot(k, src[k]) if k in src else cbor2.undefined for k in SOURCE_KEYS]
    return _trim(out, SOURCE_KEYS, DEFAULTS)


def _unsource(v: Any, ports: list[str]) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    src = _named(v, SOURCE_KEYS, DEFAULTS)
    for key, table in CODED.items():
        if type(src.get(key)) is int:
            src[key] = _at(table, src[key])
    if type(src.get("port")) is int:
        src["port"] = _at(ports, src["port"])
    if type(src.get("node")) is int:
        if not 0 <= src["node"] <= 0xFFFFFFFF:
            raise WireError("a node number outside 32 bits")
        src["node"] = f"{src['node']:08X}"
    if isinstance(src.get("flags"), list):
        src["flags"] = _named(src["flags"], FLAG_KEYS, {})
    return src


def _record(rec: dict[str, Any]) -> Any:
    tlv = rec.get("tlv")
    form = _RECORD_FORMS.get(tlv) if type(tlv) is str else None
    if form is None:
        return rec
    code, keys, fields, implied = form
    if rec.keys() != fields or not all(_fits(k, rec[k]) for k in keys):
        return rec
    if implied is not None and _same(rec[keys[-1]], implied(rec)):
        return [-1 - code, *[_slot(k, rec[k]) for k in keys[:-1]]]
    return [code, *[_slot(k, rec[k]) for k in keys]]


def _unrecords(flat: Any) -> list[dict[str, Any]]:
    if not isinstance(flat, list):
        raise WireError("records are not an array")
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(flat):
        code = flat[i]
        if isinstance(code, dict):
            out.append(code)
            i += 1
            continue
        if type(code) is not int:
            raise WireError("a record code is not an integer")
        tlv = _at(TLVS, code if code >= 0 else -1 - code)
        keys = TLV_KEYS.get(tlv)
        if keys is None or (code < 0 and tlv not in IMPLIED):
            raise WireError(f"record code {code} has no positional form")
        arity = len(keys) - (code < 0)
        values = flat[i + 1 : i + 1 + arity]
        if len(values) != arity:
            raise WireError("a record ends early")
        rec: dict[str, Any] = {"tlv": tlv}
        rec.update((k, _unslot(k, x)) for k, x in zip(keys, values, strict=False))
        if code < 0:
            rec[keys[-1]] = IMPLIED[tlv](rec)
            if rec[keys[-1]] is cbor2.undefined:
                raise WireError("an implied value without what it is implied from")
        out.append(rec)
        i += 1 + arity
    return out


def _derived_defaults(records: Any) -> dict[str, Any]:
    """What a derived slot left off stands for: the water distance the record measured."""
    if isinstance(records, list):
        for rec in records:
            if isinstance(rec, dict) and rec.get("tlv") == "water_depth" and "distance_mm" in rec:
                return {"water_distance_mm": rec["distance_mm"]}
    return {}


def _cover_form(readings: list[dict[str, Any]]) -> tuple[str, int] | None:
    """The prefix and digit count of the first cover id that ends in digits."""
    for reading in readings:
        cover = reading.get("cover_id")
        if isinstance(cover, str):
            digits = len(cover) - len(cover.rstrip("0123456789"))
            if 0 < digits <= MAX_COVER_WIDTH:
                return cover[: len(cover) - digits], digits
    return None


def _cover(cover: str, form: tuple[str, int] | None) -> Any:
    if form is not None:
        prefix, width = form
        tail = cover[len(prefix) :]
        if cover.startswith(prefix) and len(tail) == width and set(tail) <= _DIGITS:
            return int(tail)
    return cover


def _uncover(v: Any, form: Any) -> str:
    if isinstance(v, str):
        return v
    if type(v) is not int or v < 0 or not isinstance(form, list) or len(form) != 2:
        raise WireError("a cover number without a cover form")
    prefix, width = form
    if not isinstance(prefix, str) or type(width) is not int or not 0 < width <= MAX_COVER_WIDTH:
        raise WireError("a cover form that is not [prefix, width]")
    digits = f"{v:0{width}d}"
    if len(digits) != width:
        raise WireError("a cover number wider than its form")
    return prefix + digits


def cbor_batch(batch: dict[str, Any]) -> bytes:
    """The decoded batch (without ``covers``) in the positional layout above."""
    readings: list[dict[str, Any]] = batch["readings"]
    first = readings[0] if readings else {}
    first_id = first.get("reading_id")
    prefix = first_id[:16] if isinstance(first_id, str) and len(first_id) >= 24 else ""
    base = _ms(first.get("time")) or 0
    form = _cover_form(readings)
    ports: dict[str, int] = {}
    previous = base
    counter = 0
    out = []
    for reading in readings:
        r = dict(reading)
        # A slot takes only what it can carry back; anything else rides in the rest map.
        rid = r.pop("reading_id") if isinstance(r.get("reading_id"), str) else cbor2.undefined
        tail = rid[16:] if prefix and isinstance(rid, str) and rid.startswith(prefix) else ""
        if len(tail) >= 8 and set(tail) <= _HEX and f"{int(tail, 16):08x}" == tail:
            rid, counter = int(tail, 16) - counter, int(tail, 16)
        t = r.pop("time") if isinstance(r.get("time"), str) else cbor2.undefined
        ms = _ms(t)
        delta = None if ms is None else ms - previous
        previous = previous if ms is None else ms
        cover = r.pop("cover_id") if isinstance(r.get("cover_id"), str) else None
        source = _source(r.pop("source"), ports) if isinstance(r.get("source"), dict) else None
        records: Any = cbor2.undefined
        defaults: dict[str, Any] = {}
        if isinstance(r.get("records"), list) and all(isinstance(x, dict) for x in r["records"]):
            defaults = _derived_defaults(r["records"])
            records = []
            for x in r.pop("records"):
                packed = _record(x)
                if isinstance(packed, list):
                    records.extend(packed)  # flat: the code says how many values follow
                else:
                    records.append(packed)
        derived: Any = cbor2.undefined
        if isinstance(r.get("derived"), dict):
            derived = _positional(r.pop("derived"), DERIVED_KEYS, defaults)
        item = [
            rid,
            t if delta is None else delta,
            None if cover is None else _cover(cover, form),
            source,
            records,
            derived,
            r or cbor2.undefined,
        ]
        while item and item[-1] is cbor2.undefined:
            item.pop()
        out.append(item)
    sent_ms = _ms(batch["sent_at"])
    head = [
        VERSION,
        batch["msg_id"],
        batch["sent_at"] if sent_ms is None else sent_ms - base,
        batch["count"],
        base,
        prefix,
        None if form is None else list(form),
    ]
    return cbor2.dumps([*head, list(ports), out], canonical=True, string_referencing=True)


def cbor_unbatch(payload: bytes) -> dict[str, Any]:
    """The positional layout back to the JSON batch."""
    v = cbor2.loads(payload)
    if not isinstance(v, list) or len(v) != 9 or v[0] != VERSION:
        raise WireError(f"not a version {VERSION} CBOR telemetry batch")
    _, msg_id, sent_at, count, base, prefix, form, ports, items = v
    if type(base) is not int or not isinstance(prefix, str) or not isinstance(items, list):
        raise WireError("a CBOR batch head out of shape")
    if not isinstance(ports, list):
        raise WireError("ports are not an array")
    at = base
    counter = 0
    batch: dict[str, Any] = {
        "msg_id": msg_id,
        "sent_at": _iso_at(base + sent_at) if type(sent_at) is int else sent_at,
        "count": count,
    }
    readings = []
    for item in items:
        if not isinstance(item, list):
            raise WireError("a reading is not an array")
        rid, t, cover, src, records, derived, rest = [*item, *[cbor2.undefined] * 7][:7]
        r: dict[str, Any] = {}
        if cover is not None and cover is not cbor2.undefined:
            r["cover_id"] = _uncover(cover, form)
        if type(rid) is int:
            counter += rid
            if counter < 0:
                raise WireError("a reading counter below zero")
            r["reading_id"] = f"{prefix}{counter:08x}"
        elif rid is not cbor2.undefined:
            r["reading_id"] = rid
        if type(t) is int:
            at += t
            r["time"] = _iso_at(at)
        elif t is not cbor2.undefined:
            r["time"] = t
        if src is not None and src is not cbor2.undefined:
            r["source"] = _unsource(src, ports)
        if records is not cbor2.undefined:
            r["records"] = _unrecords(records)
        if derived is not cbor2.undefined:
            r["derived"] = _named(derived, DERIVED_KEYS, _derived_defaults(r.get("records")))
        if rest is not cbor2.undefined:
            if not isinstance(rest, dict):
                raise WireError("the rest of a reading is not a map")
            r.update(rest)
        readings.append(r)
    batch["readings"] = readings
    return batch
