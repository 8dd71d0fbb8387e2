"""``covergw diag lorawan``: what the network server publishes, decoded, live.

For a technician commissioning LoRaWAN sensors: it subscribes to ChirpStack's
MQTT integration (read-only; it never publishes) and prints one line per
event: uplinks decoded by the gateway's own device models (the same code the
daemon runs), joins, network battery status, downlink outcomes, ChirpStack's
log events, and events it refuses with the reason. The model of a device
comes from ``--device DEVEUI=MODEL``, the registry (``--registry``), or the
ChirpStack device-profile name when it names a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import aiomqtt

from gateway.protocol.chirpstack import (
    AckEvent,
    ChirpstackError,
    Event,
    JoinEvent,
    LogEvent,
    StatusEvent,
    TxAckEvent,
    UpEvent,
    parse_event,
)
from gateway.protocol.devices import MODELS, DeviceDecodeError, get_model

MAX_EVENT_BYTES = 256 * 1024


def _stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


def _profile_model(payload: bytes) -> str | None:
    """A model named in the device-profile name ("Milesight EM310-TILT" → em310-tilt)."""
    try:
        doc = json.loads(payload)
        name = str(doc["deviceInfo"]["deviceProfileName"]).lower()
    except (ValueError, KeyError, TypeError):
        return None
    matches = [m for m, model in MODELS.items() if model.transport == "lorawan" and m in name]
    return max(matches, key=len) if matches else None


def describe(topic: str, payload: bytes, models: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """One event as a line for people and an object for ``--json``."""
    try:
        event = parse_event(topic, payload, max_bytes=MAX_EVENT_BYTES)
    except ChirpstackError as err:
        return f"refused  {err.reason.value}: {err.detail}", {
            "topic": topic,
            "rejected": err.reason.value,
            "detail": err.detail,
        }
    if event is None:
        kind = topic.rsplit("/", 1)[-1]
        return f"{kind} (not used by the gateway)", {"topic": topic, "event": kind}
    return _describe(event, payload, models)


def _describe(
    event: Event, payload: bytes, models: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    eui = event.device.dev_eui
    base: dict[str, Any] = {"dev_eui": eui}
    match event:
        case UpEvent():
            return _uplink(event, payload, models, base)
        case JoinEvent():
            return f"{eui}  join (device rejoined; fCnt restarts)", {**base, "event": "join"}
        case StatusEvent():
            battery = "n/a" if event.battery_pct is None else f"{event.battery_pct:g} %"
            power = " external power" if event.external_power else ""
            return f"{eui}  status  battery {battery}{power}  margin {event.margin_db} dB", {
                **base,
                "event": "status",
                "battery_pct": event.battery_pct,
                "external_power": event.external_power,
                "margin_db": event.margin_db,
            }
        case TxAckEvent():
            return f"{eui}  txack  downlink {event.queue_item_id} sent", {
                **base,
                "event": "txack",
                "queue_item_id": event.queue_item_id,
            }
        case AckEvent():
            verdict = "acknowledged" if event.acknowledged else "NOT acknowledged"
            return f"{eui}  ack  downlink {event.queue_item_id} {verdict}", {
                **base,
                "event": "ack",
                "queue_item_id": event.queue_item_id,
                "acknowledged": event.acknowledged,
            }
        case LogEvent():
            return f"{eui}  log  {event.level} {event.code}: {event.description}", {
                **base,
                "event": "log",
                "level": event.level,
                "code": event.code,
                "description": event.description,
            }
    raise AssertionError(event)  # pragma: no cover - parse_event returns only these


def _uplink(
    event: UpEvent, payload: bytes, models: Mapping[str, str], base: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    eui = event.device.dev_eui
    head = (
        f"{eui}  up  fCnt {event.f_cnt} fPort {event.f_port}  "
        f"rssi {event.rssi_dbm} snr {event.snr_db} ({event.gateways} gw)"
    )
    out: dict[str, Any] = {
        **base,
        "event": "up",
        "f_cnt": event.f_cnt,
        "f_port": event.f_port,
        "rssi_dbm": event.rssi_dbm,
        "snr_db": event.snr_db,
        "data_hex": event.data.hex(),
    }
    model = models.get(eui) or _profile_model(payload)
    if model is None:
        out["model"] = None
        return f"{head}  {event.data.hex()}  (model unknown: give --device or --registry)", out
    out["model"] = model
    try:
        decoded = get_model(model).decode(event.data, fport=event.f_port, at=time.time())
    except DeviceDecodeError as err:
        out["rejected"] = err.reason.value
        return f"{head}  {model}  refused {err.reason.value}: {err.detail}", out
    fields = dict(decoded.fields)
    out.update(fields=fields, partial=decoded.partial)
    values = "  ".join(f"{k}={v}" for k, v in fields.items())
    partial = f"  (partial: {decoded.partial})" if decoded.partial else ""
    return f"{head}  {model}  {values}{partial}", out


async def watch(
    host: str,
    port: int,
    *,
    topic: str,
    models: Mapping[str, str],
    out: TextIO,
    as_json: bool = False,
    username: str | None = None,
    password: str | None = None,
    count: int | None = None,
    duration_s: float | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Print events until ``count`` of them, ``duration_s``, or Ctrl-C; 2 if the broker fails."""
    seen = 0
    try:
        async with (
            asyncio.timeout(duration_s),
            aiomqtt.Client(host, port, username=username, password=password) as client,
        ):
            await client.subscribe(topic, qos=1)
            print(f"listening on {host}:{port} {topic}", file=out, flush=True)
            if ready is not None:
                ready.set()
            async for message in client.messages:
                raw = message.payload if isinstance(message.payload, bytes) else b""
                line, obj = describe(str(message.topic), raw, models)
                text = json.dumps(obj, ensure_ascii=False) if as_json else f"{_stamp()}  {line}"
                print(text, file=out, flush=True)
                seen += 1
                if count is not None and seen >= count:
                    break
    except TimeoutError:
        pass
    except aiomqtt.MqttError as err:
        print(f"broker {host}:{port}: {err}", file=out, flush=True)
        return 2
    return 0


def parse_devices(pairs: list[str]) -> dict[str, str]:
    """``DEVEUI=MODEL`` arguments; raises ValueError naming the bad one."""
    out: dict[str, str] = {}
    for pair in pairs:
        eui, sep, model = pair.partition("=")
        if not sep or len(eui) != 16 or model not in MODELS:
            raise ValueError(f"{pair!r}: want DEVEUI=MODEL, MODEL one of {sorted(MODELS)}")
        out[eui.lower()] = model
    return out


def run(args: Any, out: TextIO) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(
            watch(
                args.host,
                args.port,
                topic=args.topic,
                models=args.models,
                out=out,
                as_json=args.json,
                username=args.username,
                password=args.password,
                count=args.count,
                duration_s=args.duration,
            )
        )
    return 0
