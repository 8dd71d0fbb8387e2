"""The device-model contract: what every commercial sensor's decoder returns.

A model turns one payload (the LoRaWAN FRMPayload with its fPort, or one
NB-IoT cellular frame) into a ``Decoded``: the quantities the edge rules use,
the events the device reported, and the spec's section-6 names for people.
Everything from the air is hostile: a decoder raises only
``DeviceDecodeError``, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from construct import ConstructError

from gateway.errors import ProtocolError
from gateway.observation import DeviceEvent, Quantities

EMPTY: Mapping[str, Any] = MappingProxyType({})


class DeviceReason(StrEnum):
    """Why a device payload was refused, or why a walk stopped early."""

    TRUNCATED = "truncated"  # a record or a fixed layout cut short
    BAD_LENGTH = "bad_length"  # bytes left over, or a length field that disagrees
    UNKNOWN_CHANNEL = "unknown_channel"  # a Milesight (id, type) pair not in the table
    UNKNOWN_FPORT = "unknown_fport"  # a port the model does not send on
    BAD_START_FLAG = "bad_start_flag"  # NB-IoT frame not starting with 0x02
    BAD_VALUE = "bad_value"  # a downlink parameter out of the device's range
    UNSUPPORTED = "unsupported"  # a downlink action the model does not have
    UNKNOWN_MODEL = "unknown_model"


class DeviceDecodeError(ProtocolError):
    """A device payload (or a downlink request) refused; ``reason`` says why."""

    # A device's reasons are their own StrEnum: the SCN-1 framer's counters
    # (``RejectReason``) never see these errors, the device inputs count them.
    reason: DeviceReason  # type: ignore[assignment]

    def __init__(self, reason: DeviceReason, detail: str, *, offset: int | None = None) -> None:
        self.reason = reason
        super().__init__(detail, offset=offset)


@dataclass(frozen=True, slots=True)
class Decoded:
    """One payload decoded by a device model.

    ``fields`` carries the spec's section-6 names (``tilt_x_deg``,
    ``distance_mm``…) for people and ``covergw decode``; ``quantities`` is
    what the edge rules read. When a payload carries several readings (a
    Dragino datalog, an NB-IoT history frame), they are in ``readings`` in
    wire order, each with its measurement time in ``at`` when the payload
    gives one (UTC seconds; ``None``: use the receipt time), and the top
    level holds only what is common to them (header, device info).
    """

    model: str
    quantities: Quantities = field(default_factory=Quantities)
    events: tuple[DeviceEvent, ...] = ()
    partial: str | None = None  # reason the walk stopped early (a DeviceReason value)
    fields: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    at: float | None = None
    readings: tuple[Decoded, ...] = ()


DecodeFn = Callable[[bytes, int | None, float], Decoded]
DownlinkFn = Callable[..., tuple[int, bytes]]


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """A commercial sensor model: its decoder and its downlink encoders."""

    name: str
    transport: str  # "lorawan" or "nbiot"
    decoder: DecodeFn = field(repr=False)
    encoders: Mapping[str, DownlinkFn] = field(default_factory=lambda: EMPTY, repr=False)
    summary: str = ""
    default_fport: int | None = None  # the port of its ordinary uplink (None: no port)

    @property
    def downlinks(self) -> frozenset[str]:
        return frozenset(self.encoders)

    def decode(self, payload: bytes, *, fport: int | None, at: float) -> Decoded:
        """Decode one payload; raises only ``DeviceDecodeError``."""
        return self.decoder(payload, fport, at)

    def downlink(self, action: str, **params: Any) -> tuple[int, bytes]:
        """fPort and bytes of ACTION ("set_interval", "reboot", "rezero", "set_thresholds")."""
        encoder = self.encoders.get(action)
        if encoder is None:
            raise DeviceDecodeError(
                DeviceReason.UNSUPPORTED,
                f"{self.name} has no downlink {action!r} (it has {sorted(self.encoders)})",
            )
        try:
            return encoder(**params)
        except (TypeError, ConstructError) as err:  # a missing, unknown or unbuildable parameter
            raise DeviceDecodeError(DeviceReason.BAD_VALUE, f"{self.name} {action}: {err}") from err


def check_range(name: str, value: float, low: float, high: float, *, integer: bool = True) -> None:
    """Refuse a downlink parameter outside what the device accepts (or not a whole number)."""
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise DeviceDecodeError(DeviceReason.BAD_VALUE, f"{name}={value!r} outside {low}..{high}")
