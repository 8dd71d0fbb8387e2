"""Alarms and readings as the platform sees them (docs/mqtt-api.md, gateway/schemas/).

The wire shape of SCN-1 and Modbus readings predates the device-neutral
engine and stays as it was: their adapters hand over the source block and
records in ``Observation.extra``. Other devices get a generic source block
and their quantities.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from gateway.jsontext import dumps
from gateway.observation import DeviceRef, Observation, Quantities
from gateway.registry import Cover
from gateway.values import quick_init


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _last_iso() -> Callable[[float], str]:
    """``_iso`` remembering its last answer: a port's read stamps every frame in it alike."""
    last = (math.nan, "")  # one tuple, replaced whole: a reader never sees half of it

    def iso(at: float) -> str:
        nonlocal last
        memo = last
        if at != memo[0]:  # NaN equals nothing: the first call formats
            memo = last = (at, _iso(at))
        return memo[1]

    return iso


iso = _last_iso()


def finite(value: Any) -> Any:
    """A number JSON can carry: NaN and infinity (hostile or broken sensors) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@quick_init
@dataclass(frozen=True, slots=True)
class Subject:
    """Who an alarm is about: a registered cover, or a device not in the registry."""

    key: str
    cover: Cover | None
    device: DeviceRef


def device_source(device: DeviceRef) -> dict[str, Any]:
    """The smallest source block naming a device (offline alarms, slave faults)."""
    match device.model:
        case "scn1":
            return {"type": "node", "node": device.device_id}
        case "modbus":
            bus, _, address = device.device_id.rpartition(":")
            return {"type": "modbus", "bus": bus, "slave": int(address)}
    return {"type": "device", "model": device.model, "device_id": device.device_id}


def alarm_source(obs: Observation) -> dict[str, Any]:
    source = device_source(obs.device)
    if source["type"] == "modbus":
        return source
    source["port"] = obs.source
    if obs.counter is not None:
        source["seq" if source["type"] == "node" else "counter"] = obs.counter
    return source


def quantities_dict(q: Quantities) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(q):
        value = getattr(q, f.name)
        if value is None or value == () or (f.name == "distance_no_echo" and not value):
            continue
        if f.name == "gas":
            if value:
                out["gas"] = {k: {"value": v, "unit": u} for k, (v, u) in value.items()}
        elif f.name == "device_alarms":
            if value:
                out["device_alarms"] = sorted(value)
        else:
            out[f.name] = finite(value)
    return out


def id_maker() -> Callable[[], str]:
    """Message ids: a random prefix per process, then a hex counter.

    Unique across restarts like a uuid4, but consecutive readings share the
    prefix, so a deflated batch spends ~2 B per id instead of ~17 (a uuid4's
    entropy), the CBOR layout carries just the counter (docs/mqtt-api.md), and
    the queue's unique index grows at its end (24 hex digits: stored as 12 bytes).
    """
    prefix = os.urandom(8).hex()  # secrets.token_hex(8), without importing secrets
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):08x}"


def lean_source(source: dict[str, Any]) -> dict[str, Any]:
    """A source block without what carries nothing: nulls, and flags that are all clear."""
    lean = {k: v for k, v in source.items() if v is not None}
    flags = lean.get("flags")
    if flags is not None and not any(flags.values()):
        del lean["flags"]
    return lean


def _queued(body: dict[str, Any], derived: dict[str, Any]) -> bytes:
    """How ``reading`` and ``node_reading`` end: the derived values last, then the JSON
    the queue takes (it packs a chunk of readings at once)."""
    if derived:
        body["derived"] = {k: finite(v) for k, v in derived.items()}
    return dumps(body)


def reading(obs: Observation, reading_id: str, subject: Subject, derived: dict[str, Any]) -> bytes:
    """A reading as rendered JSON: it names its cover by id; the batch carries the record once.

    The queue packs it, with the rest of its chunk of readings, in one zlib stream.

    ``cover_id`` comes first so the uplink finds it without parsing the row
    (``gateway.wire.cover_id_of``).
    """
    cover = subject.cover
    body: dict[str, Any] = {} if cover is None else {"cover_id": cover.cover_id}
    body["reading_id"] = reading_id
    body["time"] = iso(obs.at)
    source = obs.extra.get("source")
    if source is None:
        body["source"] = lean_source(
            {
                **device_source(obs.device),
                "port": obs.source,
                "counter": obs.counter,
                "rx_rssi_dbm": obs.link.rssi_dbm,
                "rx_snr_db": obs.link.snr_db,
                "csq": obs.link.csq,
            }
        )
        body["quantities"] = quantities_dict(obs.quantities)
        if obs.events:
            body["events"] = [
                {
                    "kind": e.kind.value,
                    "time": iso(e.at),
                    "value": e.value,
                    "unit": e.unit,
                    **dict(e.detail),
                }
                for e in obs.events
            ]
        if obs.partial:
            body["partial"] = obs.partial
    else:
        body["source"] = lean_source(source)
    for k, v in obs.extra.items():
        if k != "source":
            body[k] = v
    return _queued(body, derived)


def node_reading(
    reading_id: str,
    at: float,
    subject: Subject,
    *,
    source: dict[str, Any],
    records: list[dict[str, Any]],
    derived: dict[str, Any],
) -> bytes:
    """``reading`` of an SCN-1 frame's observation, from the parts it would carry.

    SOURCE is the lean source block (``adapters.lean_node_source``), RECORDS the
    frame's records as dicts: the same body, key for key, without the
    ``Observation`` (the engine's routine path makes none).
    """
    cover = subject.cover
    body: dict[str, Any] = {} if cover is None else {"cover_id": cover.cover_id}
    body["reading_id"] = reading_id
    body["time"] = iso(at)
    body["source"] = source
    body["records"] = records
    return _queued(body, derived)


def alarm(
    *,
    msg_id: str,
    alarm_id: str,
    gateway: str,
    kind: str,
    severity: str,
    sub: str,
    state: str,
    at: float,
    raised_at: float | None,
    subject: Subject,
    maintenance: bool,
    source: dict[str, Any],
    value: float | None,
    unit: str | None,
    threshold: float | None,
    extra: dict[str, Any],
) -> bytes:
    cover = subject.cover
    payload: dict[str, Any] = {
        "msg_id": msg_id,
        "alarm_id": alarm_id,
        "gateway": gateway,
        "kind": kind,
        "sub": sub or None,
        "state": state,
        "severity": severity,
        "time": iso(at),
        "raised_at": iso(raised_at) if raised_at is not None else None,
        "registered": cover is not None,
        "cover": cover.identity() if cover else None,
        "maintenance": maintenance,
        "source": source,
        "value": finite(value),
        "unit": unit,
        "threshold": finite(threshold),
    }
    payload.update(extra)
    return dumps(payload)
