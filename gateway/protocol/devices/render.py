"""Decoded device payloads as JSON-ready dicts: the spec's section-6 names, for people.

Used by ``covergw decode --device`` and by anything that shows a live
uplink (``covergw diag lorawan``). The platform's telemetry has its own
schema; this is the technician's view.
"""

from __future__ import annotations

from typing import Any

from gateway.observation import DeviceEvent
from gateway.protocol.devices.base import Decoded, DeviceDecodeError


def event_to_dict(event: DeviceEvent) -> dict[str, Any]:
    return {"event": event.kind.value, **event.detail}


def decoded_to_dict(decoded: Decoded) -> dict[str, Any]:
    """FIELDS, then ``events``, ``partial``/``reason`` and ``readings`` where there are any."""
    out: dict[str, Any] = dict(decoded.fields)
    if decoded.events:
        out["events"] = [event_to_dict(e) for e in decoded.events]
    if decoded.partial is not None:
        out["partial"] = True
        out["reason"] = decoded.partial
    if decoded.readings:
        out["readings"] = [decoded_to_dict(r) for r in decoded.readings]
    return out


def rejected_to_dict(err: DeviceDecodeError) -> dict[str, Any]:
    out: dict[str, Any] = {"rejected": err.reason.value, "detail": err.detail}
    if err.offset is not None:
        out["offset"] = err.offset
    return out
