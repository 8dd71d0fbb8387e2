"""Frames as JSON-ready dicts, for people (the decode tool) and the platform."""

from __future__ import annotations

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


def record_to_dict(record: Record) -> dict[str, Any]:
    match record:
        case Tilt(x_deg=x, y_deg=y):
            return {
                "tlv": "tilt",
                "x_deg": x,
                "y_deg": y,
                "tilt_deg": round(record.magnitude_deg, 2),
            }
        case WaterDepth(distance_mm=mm):
            return {"tlv": "water_depth", "distance_mm": mm, "no_echo": mm is None}
        case Battery(voltage_mv=mv):
            return {"tlv": "battery", "voltage_mv": mv}
        case Temperature(celsius=c):
            return {"tlv": "temperature", "celsius": c}
        case Gas(kind=kind, value=value):
            return {"tlv": "gas", "gas": kind.name, "value": value, "unit": record.unit}
        case Link(rssi_dbm=rssi, snr_db=snr):
            return {"tlv": "link", "rssi_dbm": rssi, "snr_db": snr}
        case Event(code=code, age_s=age):
            return {
                "tlv": "event",
                "event": code.name.lower(),
                "code": int(code),
                "age_s": age,
                "value": record.value,
                "unit": record.value_unit,
            }
        case Firmware(major=major, minor=minor, build=build):
            return {
                "tlv": "firmware",
                "version": str(record),
                "major": major,
                "minor": minor,
                "build": build,
            }
        case ResetCause(cause=cause):
            return {"tlv": "reset_cause", "cause": cause.name.lower(), "code": int(cause)}
        case Pressure(kpa=kpa):
            return {"tlv": "pressure", "kpa": kpa}
        case Vibration(peak_mg=mg):
            return {"tlv": "vibration", "peak_mg": mg}
        case UnknownTlv(tag=tag, raw=raw):
            return {"tlv": "unknown", "tag": tag, "tag_hex": f"0x{tag:02X}", "raw_hex": raw.hex()}
    raise TypeError(f"not an SCN-1 record: {record!r}")  # pragma: no cover


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
