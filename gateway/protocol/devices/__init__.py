"""Commercial sensor models: one declarative module each, found by name.

``get_model("em310-tilt").decode(payload, fport=85, at=now)`` gives a
``Decoded``; ``.downlink("set_interval", seconds=600)`` gives the fPort and
bytes to enqueue. The NB-IoT cellular frame has its own entry point,
``decode_nb_frame``, since its header names the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.protocol.devices import dds75_lb, em310_tilt, em310_udl, em400, nbiot
from gateway.protocol.devices.base import (
    Decoded,
    DeviceDecodeError,
    DeviceModel,
    DeviceReason,
)
from gateway.protocol.devices.nbiot import NbFrame, build_nb_frame, decode_nb_frame
from gateway.protocol.devices.stats import DeviceStats

MODELS: Mapping[str, DeviceModel] = MappingProxyType(
    {
        m.name: m
        for m in (
            em310_tilt.MODEL,
            em400.MUD_MODEL,
            em400.UDL_MODEL,
            em310_udl.MODEL,
            dds75_lb.MODEL,
            nbiot.MUD_NB_MODEL,
            nbiot.UDL_NB_MODEL,
        )
    }
)


def get_model(name: str) -> DeviceModel:
    try:
        return MODELS[name]
    except KeyError as err:
        raise DeviceDecodeError(
            DeviceReason.UNKNOWN_MODEL, f"unknown device model {name!r} (known: {sorted(MODELS)})"
        ) from err


__all__ = [
    "MODELS",
    "Decoded",
    "DeviceDecodeError",
    "DeviceModel",
    "DeviceReason",
    "DeviceStats",
    "NbFrame",
    "build_nb_frame",
    "decode_nb_frame",
    "get_model",
]
