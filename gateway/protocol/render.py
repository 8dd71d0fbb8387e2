"""Frames as JSON-ready dicts, for people (the decode tool) and the platform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.protocol.framing import Received, Rejected
from gateway.protocol.messages import (
    Battery,
    Event,
    Firmware,
    Frame,
    FrameFlags,
    Gas,
    Link,
    Pressure,
    Record,
    ResetCause,
    Temperature,
    Tilt,
    UnknownTlv,
    Vibration,
    WaterDepth,
)


def _tilt(r: Tilt) -> dict[str, Any]:
    return {
        "tlv": "tilt",
        "x_deg": r.x_deg,
        "y_deg": r.y_deg,
        "tilt_deg": round(r.magnitude_deg, 2),
    }


def _water(r: WaterDepth) -> dict[str, Any]:
    mm = r.distance_mm
    return {"tlv": "water_depth", "distance_mm": mm, "no_echo": mm is None}


def _event(r: Event) -> dict[str, Any]:
    code = r.code
    return {
        "tlv": "event",
        "event": code.name.lower(),
        "code": int(code),
        "age_s": r.age_s,
        "value": r.value,
        "unit": r.value_unit,
    }


def _firmware(r: Firmware) -> dict[str, Any]:
    return {
        "tlv": "firmware",
        "version": str(r),
        "major": r.major,
        "minor": r.minor,
        "build": r.build,
    }


def _unknown(r: UnknownTlv) -> dict[str, Any]:
    return {"tlv": "unknown", "tag": r.tag, "tag_hex": f"0x{r.tag:02X}", "raw_hex": r.raw.hex()}


# One function per record type, found by the record's type: a ``match`` over
# class patterns tries each case in turn (several per record, every frame).
_TO_DICT: dict[type, Callable[[Any], dict[str, Any]]] = {
    Tilt: _tilt,
    WaterDepth: _water,
    Battery: lambda r: {"tlv": "battery", "voltage_mv": r.voltage_mv},
    Temperature: lambda r: {"tlv": "temperature", "celsius": r.celsius},
    Gas: lambda r: {"tlv": "gas", "gas": r.kind.name, "value": r.value, "unit": r.unit},
    Link: lambda r: {"tlv": "link", "rssi_dbm": r.rssi_dbm, "snr_db": r.snr_db},
    Event: _event,
    Firmware: _firmware,
    ResetCause: lambda r: {
        "tlv": "reset_cause",
        "cause": r.cause.name.lower(),
        "code": int(r.cause),
    },
    Pressure: lambda r: {"tlv": "pressure", "kpa": r.kpa},
    Vibration: lambda r: {"tlv": "vibration", "peak_mg": r.peak_mg},
    UnknownTlv: _unknown,
}


def record_to_dict(record: Record) -> dict[str, Any]:
    to_dict = _TO_DICT.get(type(record))
    if to_dict is None:
        raise TypeError(f"not an SCN-1 record: {record!r}")  # pragma: no cover
    return to_dict(record)


def records_to_dicts(records: tuple[Record, ...]) -> list[dict[str, Any]]:
    """``record_to_dict`` of each (a frame's records: what ``Frame`` holds, nothing else)."""
    to_dict = _TO_DICT
    return [to_dict[type(r)](r) for r in records]


def flags_to_dict(flags: FrameFlags) -> dict[str, Any]:
    return {
        "node_alarm": FrameFlags.NODE_ALARM in flags,
        "retransmission": FrameFlags.RETRANSMISSION in flags,
        "low_battery": FrameFlags.LOW_BATTERY in flags,
    }


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    return {
        "node": frame.node_hex,
        "seq": frame.seq,
        "type": frame.msg_type.name,
        "flags": flags_to_dict(frame.flags),
        "records": [record_to_dict(r) for r in frame.records],
    }


def item_to_dict(item: Received | Rejected, *, with_raw: bool = True) -> dict[str, Any]:
    if isinstance(item, Rejected):
        out: dict[str, Any] = {
            "rejected": item.error.reason.value,
            "detail": item.error.detail,
            "offset": item.error.offset,
        }
    else:
        out = frame_to_dict(item.frame)
        if item.rssi_dbm is not None:
            out["rx_rssi_dbm"] = item.rssi_dbm
        if item.snr_db is not None:
            out["rx_snr_db"] = item.snr_db
    if with_raw:
        out["raw_hex"] = item.raw.hex(" ").upper()
    return out


def describe(item: Received | Rejected, *, raw: bool = False) -> str:
    """One line for a person at the wire: node, seq, type, link, values; or why it was refused."""
    if isinstance(item, Rejected):
        text = f"REJECTED {item.error}"
    else:
        f = item.frame
        values = " ".join(
            f"{k}={v}" for r in f.records for k, v in record_to_dict(r).items() if k != "tlv"
        )
        link = "" if item.rssi_dbm is None else f" rssi={item.rssi_dbm}"
        link += "" if item.snr_db is None else f" snr={item.snr_db:g}"
        flags = [name for name, on in flags_to_dict(f.flags).items() if on]
        flagged = f" [{','.join(flags)}]" if flags else ""
        text = f"{f.node_hex} #{f.seq:<5} {f.msg_type.name:<9}{link}{flagged} {values}"
    if raw:
        text += f"  | {item.raw.hex(' ').upper()}"
    return text
