"""The Milesight channel format: one generic record walk, driven by a model's table.

A Milesight payload is records of ``channel id, channel type, value`` with no
length byte (spec real-sensors.md section 1): the size of the value is known
only from the (id, type) pair, so the table of pairs *is* the schema. Each
model module declares its table with ``record``/``config_echo`` and the walk
here does the rest. It cannot share SCN-1's TLV loop (that one reads a length
byte); it shares its approach: ``struct`` layouts derived from the construct
bodies (``gateway/protocol/layout.py``), one dict lookup per record.

Stricter than the vendor decoder, as the spec's quirk notes ask: a truncated
record refuses the whole payload; an unknown pair ends the walk, keeps what
came before and marks the reading partial (``unknown_channel``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from construct import Bytes, ConstructError, Int8ub, Struct

from gateway.observation import DeviceEvent, DeviceEventKind, Quantities
from gateway.protocol.devices.base import Decoded, DeviceDecodeError, DeviceReason
from gateway.protocol.layout import fast_parser

FPORT = 85  # Milesight uplinks and downlinks (LoRaObject.md)


class Acc:
    """What one reading collects while the walk runs; frozen into ``Decoded`` at the end."""

    __slots__ = ("alarms", "at", "events", "extra", "fields", "info", "q")

    def __init__(self, at: float) -> None:
        self.at = at
        self.q: dict[str, Any] = {}
        self.fields: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.events: list[DeviceEvent] = []
        self.alarms: set[str] = set()
        self.info: dict[str, Any] = {}

    def empty(self) -> bool:
        return not (self.fields or self.events or self.info or self.extra)

    def finish(self, model: str, partial: str | None) -> Decoded:
        events = self.events
        if self.info:
            events = [
                DeviceEvent(
                    DeviceEventKind.DEVICE_INFO, self.at, detail=MappingProxyType(self.info)
                ),
                *events,
            ]
        if self.alarms:
            self.q["device_alarms"] = frozenset(self.alarms)
        return Decoded(
            model=model,
            quantities=Quantities(**self.q),
            events=tuple(events),
            partial=partial,
            fields=MappingProxyType(self.fields),
            extra=MappingProxyType(self.extra),
        )


Apply = Callable[[Any, Acc], None]


@dataclass(frozen=True, slots=True)
class Record:
    """One (channel id, channel type) pair: its construct body and what it means."""

    name: str
    channel: int
    type: int
    body: Any  # construct Struct, fixed size: used to build
    parse: Callable[..., Any]  # the same body, derived: parse(data, offset)
    size: int
    apply: Apply

    @property
    def key(self) -> int:
        return self.channel << 8 | self.type


def record(name: str, channel: int, type_: int, body: Any, apply: Apply) -> Record:
    return Record(name, channel, type_, body, fast_parser(body), body.sizeof(), apply)


Table = Mapping[int, Record]


def table(*records: Record | Iterable[Record]) -> Table:
    out: dict[int, Record] = {}
    for item in records:
        for rec in (item,) if isinstance(item, Record) else item:
            if rec.key in out:
                raise ValueError(f"two records for {rec.channel:02x} {rec.type:02x}")
            out[rec.key] = rec
    return MappingProxyType(out)


def by_name(tbl: Table) -> Mapping[str, Record]:
    """Records by name for builders; a config echo's 0xFF form wins over 0xFE."""
    out: dict[str, Record] = {}
    for rec in sorted(tbl.values(), key=lambda r: r.channel):
        out[rec.name] = rec
    return MappingProxyType(out)


def walk(
    model: str, payload: bytes, tbl: Table, at: float, *, group: bool = False
) -> list[Decoded]:
    """Decode PAYLOAD's records; with GROUP, split readings the way the NB-IoT decoder does.

    Grouping (spec 3.4): a new reading starts whenever a record's channel id
    modulo 16 is not greater than the previous record's. Without GROUP the
    result is exactly one reading.
    """
    readings: list[Decoded] = []
    acc = Acc(at)
    partial: str | None = None
    prev = -1
    pos = 0
    end = len(payload)
    while pos < end:
        if pos + 2 > end:
            raise DeviceDecodeError(
                DeviceReason.TRUNCATED, "one byte left where a record needs two", offset=pos
            )
        channel = payload[pos]
        rec = tbl.get(channel << 8 | payload[pos + 1])
        if rec is None:
            partial = DeviceReason.UNKNOWN_CHANNEL.value
            acc.extra["unknown_record"] = payload[pos : pos + 2].hex()
            acc.extra["stopped_at_byte"] = pos
            break
        stop = pos + 2 + rec.size
        if stop > end:
            raise DeviceDecodeError(
                DeviceReason.TRUNCATED,
                f"{rec.name} ({channel:02x} {rec.type:02x}) needs {rec.size} bytes, "
                f"{end - pos - 2} left",
                offset=pos,
            )
        if group:
            low = channel & 0x0F
            if low <= prev and not acc.empty():
                readings.append(acc.finish(model, None))
                acc = Acc(at)
            prev = low
        try:
            value = rec.parse(payload, pos + 2)
        except ConstructError as err:  # pragma: no cover - sizes are checked above
            raise DeviceDecodeError(DeviceReason.TRUNCATED, str(err), offset=pos) from err
        rec.apply(value, acc)
        pos = stop
    if not group or partial is not None or not acc.empty() or not readings:
        readings.append(acc.finish(model, partial))
    return readings


def decode_one(model: str, payload: bytes, tbl: Table, fport: int | None, at: float) -> Decoded:
    """A LoRaWAN uplink: fPort 85 (or unknown to the caller), one reading."""
    if fport is not None and fport != FPORT:
        raise DeviceDecodeError(
            DeviceReason.UNKNOWN_FPORT, f"{model} sends on fPort {FPORT}, not {fport}"
        )
    return walk(model, payload, tbl, at)[0]


def build(tbl: Table, records: Iterable[tuple[str, Mapping[str, Any]]]) -> bytes:
    """Payload bytes from (record name, construct values) pairs, in order.

    For tests and the simulator: the same construct bodies the walk parses.
    """
    names = by_name(tbl)
    out = bytearray()
    for name, values in records:
        rec = names[name]
        out += bytes((rec.channel, rec.type))
        out += rec.body.build(values)
    return bytes(out)


# --- records every Milesight model has ------------------------------------------------


def _battery(c: Any, acc: Acc) -> None:
    acc.q["battery_pct"] = float(c.battery_pct)
    acc.fields["battery_pct"] = c.battery_pct


BATTERY = record("battery", 0x01, 0x75, Struct("battery_pct" / Int8ub), _battery)

_CLASSES = {0: "Class A", 1: "Class B", 2: "Class C", 3: "Class CtoB"}


def _info(name: str, render: Callable[[Any], Any]) -> Apply:
    def apply(c: Any, acc: Acc) -> None:
        value = render(c)
        acc.fields[name] = value
        acc.info[_INFO_KEYS.get(name, name)] = value

    return apply


# Device-info detail keys: what an integrator looks for, not the vendor's names.
_INFO_KEYS = {"firmware_version": "firmware", "hardware_version": "hardware", "sn": "serial"}


def _reset(_: Any, acc: Acc) -> None:
    acc.fields["reset_event"] = "reset"
    acc.events.append(DeviceEvent(DeviceEventKind.BOOT, acc.at))


_Two = Struct("major" / Int8ub, "minor" / Int8ub)

ATTRIBUTES: tuple[Record, ...] = (
    record(
        "ipso_version",
        0xFF,
        0x01,
        Struct("raw" / Int8ub),
        _info("ipso_version", lambda c: f"v{c.raw >> 4}.{c.raw & 0x0F}"),
    ),
    record(
        "hardware_version",
        0xFF,
        0x09,
        _Two,
        _info("hardware_version", lambda c: f"v{c.major:x}.{c.minor >> 4:x}"),
    ),
    record(
        "firmware_version",
        0xFF,
        0x0A,
        _Two,
        _info("firmware_version", lambda c: f"v{c.major:x}.{c.minor:x}"),
    ),
    record(
        "tsl_version", 0xFF, 0xFF, _Two, _info("tsl_version", lambda c: f"v{c.major}.{c.minor}")
    ),
    record("sn", 0xFF, 0x16, Struct("sn" / Bytes(8)), _info("sn", lambda c: bytes(c.sn).hex())),
    record(
        "lorawan_class",
        0xFF,
        0x0F,
        Struct("raw" / Int8ub),
        _info("lorawan_class", lambda c: _CLASSES.get(c.raw, "unknown")),
    ),
    record("reset_event", 0xFF, 0xFE, Struct("raw" / Int8ub), _reset),
    record(
        "device_status", 0xFF, 0x0B, Struct("raw" / Int8ub), _info("device_status", lambda _: "on")
    ),
)


def config_echo(
    name: str, type_: int, body: Any, render: Callable[[Any], tuple[str, Mapping[str, Any]]]
) -> tuple[Record, Record]:
    """A setting the device echoes on id 0xFF or 0xFE: a ``CONFIG_ACK`` event, not telemetry.

    RENDER gives the setting's name (it may depend on the value, as an
    alarm's axis does) and its values in units.
    """

    def apply(c: Any, acc: Acc) -> None:
        setting, values = render(c)
        acc.fields[setting] = dict(values)
        acc.events.append(
            DeviceEvent(
                DeviceEventKind.CONFIG_ACK,
                acc.at,
                detail=MappingProxyType({"setting": setting, **values}),
            )
        )

    return (record(name, 0xFE, type_, body, apply), record(name, 0xFF, type_, body, apply))


def constant(setting: str) -> Callable[[Any], tuple[str, Mapping[str, Any]]]:
    """An echo whose value byte carries nothing (reboot, query, sync time): report the raw byte."""
    return lambda c: (setting, {"raw": c.raw})


def one(setting: str, key: str) -> Callable[[Any], tuple[str, Mapping[str, Any]]]:
    return lambda c: (setting, {key: getattr(c, key)})


ONE_BYTE = Struct("raw" / Int8ub)
