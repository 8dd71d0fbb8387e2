"""ChirpStack v4 MQTT integration events: hostile JSON checked into frozen records.

ChirpStack publishes one JSON document per device event (spec real-sensors.md
section 5): proto3 JSON, lowerCamelCase names, ``bytes`` as base64, missing
fields meaning zero. Everything here comes off a broker other programs can
publish to, so nothing is trusted: the size is capped before parsing, every
field the gateway uses is type- and range-checked, and any mistake raises
``ChirpstackError`` with a reason the input counts. Fields the gateway does
not use are ignored, as the spec asks.

The payload bytes (``data``) are *not* decoded here: that is the device
model's job, chosen by the registry from the DevEUI.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.errors import GatewayError

MAX_RX_INFO = 64  # receiving gateways looked at per uplink; more are ignored
MAX_TEXT = 256  # longest id or name accepted from an event


class ChirpstackReason(StrEnum):
    TOO_LARGE = "too_large"  # over the input's max_event_bytes, not parsed
    BAD_JSON = "bad_json"  # not JSON, not an object, nested too deep
    BAD_FIELD = "bad_field"  # a field the gateway uses is missing or of the wrong type
    TOPIC_MISMATCH = "topic_mismatch"  # the topic's DevEUI is not the event's


class ChirpstackError(GatewayError):
    """An integration event refused; ``reason`` is counted, ``detail`` logged."""

    def __init__(self, reason: ChirpstackReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class EventKind(StrEnum):
    UP = "up"
    JOIN = "join"
    STATUS = "status"
    ACK = "ack"
    TXACK = "txack"
    LOG = "log"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    dev_eui: str  # 16 lower-case hex digits
    application_id: str
    device_name: str = ""


@dataclass(frozen=True, slots=True)
class UpEvent:
    device: DeviceInfo
    deduplication_id: str
    f_cnt: int
    f_port: int
    data: bytes
    confirmed: bool = False
    rssi_dbm: float | None = None  # of the best receiving gateway
    snr_db: float | None = None
    gateways: int = 0  # how many gateways heard it


@dataclass(frozen=True, slots=True)
class JoinEvent:
    device: DeviceInfo
    deduplication_id: str
    dev_addr: str = ""


@dataclass(frozen=True, slots=True)
class StatusEvent:
    device: DeviceInfo
    deduplication_id: str
    margin_db: int | None
    external_power: bool
    battery_unavailable: bool
    battery_pct: float | None  # None when mains-powered or the device could not tell


@dataclass(frozen=True, slots=True)
class AckEvent:
    device: DeviceInfo
    queue_item_id: str
    acknowledged: bool
    f_cnt_down: int | None


@dataclass(frozen=True, slots=True)
class TxAckEvent:
    device: DeviceInfo
    queue_item_id: str
    f_cnt_down: int | None
    gateway_id: str = ""


@dataclass(frozen=True, slots=True)
class LogEvent:
    device: DeviceInfo
    level: str
    code: str
    description: str


Event = UpEvent | JoinEvent | StatusEvent | AckEvent | TxAckEvent | LogEvent


def topic_kind(topic: str) -> str:
    """The event name: the topic's last level (``…/event/up`` → ``up``)."""
    return topic.rsplit("/", 1)[-1]


def parse_event(topic: str, payload: bytes, *, max_bytes: int) -> Event | None:
    """One integration message; None for an event kind the gateway does not use.

    Raises only ``ChirpstackError``.
    """
    kind = topic_kind(topic)
    try:
        event_kind = EventKind(kind)
    except ValueError:
        return None
    if len(payload) > max_bytes:
        raise ChirpstackError(ChirpstackReason.TOO_LARGE, f"{len(payload)} bytes > {max_bytes}")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ChirpstackError(ChirpstackReason.BAD_JSON, str(err)[:200]) from err
    if not isinstance(doc, dict):
        raise ChirpstackError(ChirpstackReason.BAD_JSON, "not a JSON object")
    device = _device_info(doc)
    _check_topic(topic, device.dev_eui)
    match event_kind:
        case EventKind.UP:
            return _up(doc, device)
        case EventKind.JOIN:
            return JoinEvent(
                device, _text(doc, "deduplicationId"), _text(doc, "devAddr", required=False)
            )
        case EventKind.STATUS:
            return _status(doc, device)
        case EventKind.ACK:
            return AckEvent(
                device,
                _text(doc, "queueItemId"),
                _flag(doc, "acknowledged"),
                _integer(doc, "fCntDown", 0, 2**32 - 1, required=False),
            )
        case EventKind.TXACK:
            return TxAckEvent(
                device,
                _text(doc, "queueItemId"),
                _integer(doc, "fCntDown", 0, 2**32 - 1, required=False),
                _text(doc, "gatewayId", required=False),
            )
        case EventKind.LOG:
            return LogEvent(
                device,
                _text(doc, "level", required=False) or "INFO",
                _text(doc, "code", required=False),
                _text(doc, "description", required=False, limit=1024),
            )
    raise AssertionError(event_kind)  # pragma: no cover - the match is exhaustive


def is_dev_eui(text: str) -> bool:
    return len(text) == 16 and all(c in "0123456789abcdefABCDEF" for c in text)


def _bad(key: str, why: str) -> ChirpstackError:
    return ChirpstackError(ChirpstackReason.BAD_FIELD, f"{key}: {why}")


def _device_info(doc: dict[str, Any]) -> DeviceInfo:
    info = doc.get("deviceInfo")
    if not isinstance(info, dict):
        raise _bad("deviceInfo", "missing or not an object")
    dev_eui = _text(info, "devEui")
    if not is_dev_eui(dev_eui):
        raise _bad("deviceInfo.devEui", f"not 16 hex digits: {dev_eui[:40]!r}")
    return DeviceInfo(
        dev_eui=dev_eui.lower(),
        application_id=_text(info, "applicationId", required=False),
        device_name=_text(info, "deviceName", required=False),
    )


def _check_topic(topic: str, dev_eui: str) -> None:
    """ChirpStack's own rule for commands, applied to events: topic and body name one device."""
    levels = topic.split("/")
    for i, level in enumerate(levels[:-1]):
        if level == "device" and is_dev_eui(levels[i + 1]) and levels[i + 1].lower() != dev_eui:
            raise ChirpstackError(
                ChirpstackReason.TOPIC_MISMATCH, f"topic names {levels[i + 1]}, body {dev_eui}"
            )


def _up(doc: dict[str, Any], device: DeviceInfo) -> UpEvent:
    data_text = _text(doc, "data", required=False, limit=1 << 20)
    try:
        data = base64.b64decode(data_text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise _bad("data", "not base64") from err
    rssi, snr, gateways = _best_link(doc.get("rxInfo", []))
    return UpEvent(
        device=device,
        deduplication_id=_text(doc, "deduplicationId"),
        f_cnt=_integer(doc, "fCnt", 0, 2**32 - 1) or 0,
        f_port=_integer(doc, "fPort", 0, 255) or 0,
        data=data,
        confirmed=_flag(doc, "confirmed"),
        rssi_dbm=rssi,
        snr_db=snr,
        gateways=gateways,
    )


def _best_link(rx_info: object) -> tuple[float | None, float | None, int]:
    """The strongest receiving gateway's rssi and snr (ChirpStack lists every gateway)."""
    if not isinstance(rx_info, list):
        raise _bad("rxInfo", "not a list")
    best: tuple[float, float] | None = None
    for i, rx in enumerate(rx_info[:MAX_RX_INFO]):
        if not isinstance(rx, dict):
            raise _bad(f"rxInfo[{i}]", "not an object")
        rssi = _number(rx, "rssi", -200, 50)
        snr = _number(rx, "snr", -50, 50)
        candidate = (rssi if rssi is not None else 0.0, snr if snr is not None else 0.0)
        if best is None or candidate > best:
            best = candidate
    if best is None:
        return None, None, 0
    return best[0], best[1], len(rx_info)


def _status(doc: dict[str, Any], device: DeviceInfo) -> StatusEvent:
    external = _flag(doc, "externalPowerSource")
    unavailable = _flag(doc, "batteryLevelUnavailable")
    level = _number(doc, "batteryLevel", 0, 100)
    # Mains-powered, or the device could not measure: batteryLevel is a
    # meaningless zero then, not an empty battery.
    battery = None if external or unavailable else level
    margin = _number(doc, "margin", -128, 127)
    return StatusEvent(
        device=device,
        deduplication_id=_text(doc, "deduplicationId", required=False),
        margin_db=None if margin is None else int(margin),
        external_power=external,
        battery_unavailable=unavailable,
        battery_pct=battery,
    )


def _text(obj: dict[str, Any], key: str, *, required: bool = True, limit: int = MAX_TEXT) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise _bad(key, "missing")
        return ""
    if not isinstance(value, str):
        raise _bad(key, f"not a string: {type(value).__name__}")
    if len(value) > limit:
        raise _bad(key, f"longer than {limit} characters")
    if required and not value:
        raise _bad(key, "empty")
    return value


def _flag(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise _bad(key, f"not true/false: {type(value).__name__}")
    return value


def _integer(
    obj: dict[str, Any], key: str, lo: int, hi: int, *, required: bool = True
) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            return 0  # proto3 JSON leaves zeros out of nested messages
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)  # 64-bit integers arrive as strings
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(key, f"not an integer in {lo}..{hi}")
    return value


def _number(obj: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise _bad(key, f"not a number in {lo}..{hi}")
    return float(value)
