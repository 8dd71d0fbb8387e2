"""Decode SCN-1 frames into ``messages.Frame`` and encode them back.

The decoder is the gateway's trust boundary: whatever the bytes, it returns a
``Frame`` or raises a ``ProtocolError`` subclass naming the check that failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.errors import (
    CrcError,
    LengthError,
    MalformedTlvError,
    SyncError,
    TrailingBytesError,
    TruncatedError,
    UnknownTypeError,
    VersionError,
)
from gateway.protocol import scn1
from gateway.protocol.messages import (
    KNOWN_FLAGS,
    Battery,
    Event,
    EventCode,
    Firmware,
    Frame,
    FrameFlags,
    Gas,
    GasKind,
    Link,
    MessageType,
    Pressure,
    Record,
    ResetCause,
    ResetCauseCode,
    Temperature,
    Tilt,
    UnknownTlv,
    Vibration,
    WaterDepth,
)
from gateway.protocol.scn1 import Tag
from gateway.values import maker

NO_ECHO = 0xFFFF
_MESSAGE_TYPES = {t.value: t for t in MessageType}
_GAS_KINDS = {k.value: k for k in GasKind}
_EVENT_CODES = {c.value: c for c in EventCode}
_RESET_CAUSES = {c.value: c for c in ResetCauseCode}
# FLAGS byte -> its known bits as FrameFlags: a lookup, not an IntFlag call and ``&``
_FLAGS = tuple(FrameFlags(bits & KNOWN_FLAGS) for bits in range(256))


def _gas(kind_code: int, value: int) -> Record | None:
    kind = _GAS_KINDS.get(kind_code)
    return None if kind is None else Gas(kind, value / 10)


def _event(code_value: int, age: int, value: int) -> Record | None:
    code = _EVENT_CODES.get(code_value)
    return None if code is None else Event(code, age, value)


def _reset_cause(cause_value: int) -> Record | None:
    cause = _RESET_CAUSES.get(cause_value)
    return None if cause is None else ResetCause(cause)


# Records are made several per frame: without ``type.__call__`` (``maker``).
_make_tilt, _make_water, _make_temperature, _make_pressure = (
    maker(Tilt),
    maker(WaterDepth),
    maker(Temperature),
    maker(Pressure),
)

# Each takes the record's fields in the order the construct definition
# (scn1_schema.TLV_BODIES) declares them; None: a value newer than this gateway (a
# sixth gas kind), kept whole as an ``UnknownTlv``. Types whose fields are the
# wire's as they are stand for themselves (their ``maker``): no call in between.
_FROM_WIRE: dict[int, Callable[..., Record | None]] = {
    Tag.TILT: lambda x, y: _make_tilt(x / 100, y / 100),
    Tag.WATER_DEPTH: lambda mm: _make_water(None if mm == NO_ECHO else mm),
    Tag.BATTERY: maker(Battery),
    Tag.TEMPERATURE: lambda decidegc: _make_temperature(decidegc / 10),
    Tag.GAS: _gas,
    Tag.LINK: maker(Link),
    Tag.EVENT: _event,
    Tag.FIRMWARE: maker(Firmware),
    Tag.RESET_CAUSE: _reset_cause,
    Tag.PRESSURE: lambda decikpa: _make_pressure(decikpa / 10),
    Tag.VIBRATION: maker(Vibration),
}
# tag -> (L the definition requires, unpack_from, record factory)
_RECORDS: dict[
    int, tuple[int | None, Callable[..., tuple[Any, ...]], Callable[..., Record | None]]
] = {
    tag: (layout.length, layout.fields.unpack_from, _FROM_WIRE[tag])
    for tag, layout in scn1.TLV_LAYOUTS.items()
}
_unpack_header = scn1.HEADER_LAYOUT.fields.unpack_from
_make_frame = maker(Frame)  # every frame, five keywords: without ``type.__call__``


def decode_records(body: bytes, start: int = scn1.HEADER_SIZE) -> tuple[Record, ...]:
    """Decode the TLV records of BODY; offsets in errors are within BODY."""
    records: list[Record] = []
    end = len(body)
    pos = start
    known = _RECORDS
    while pos < end:
        if pos + 2 > end:
            raise MalformedTlvError("record header runs past the end of BODY", offset=pos)
        tag = body[pos]
        size = body[pos + 1]
        stop = pos + 2 + size
        if stop > end:
            raise MalformedTlvError(
                f"record tag 0x{tag:02X} L={size} runs past the end of BODY",
                offset=pos,
            )
        spec = known.get(tag)
        if spec is None:
            records.append(UnknownTlv(tag, body[pos + 2 : stop]))
        else:
            length, unpack, make = spec
            if size != length:
                raise MalformedTlvError(
                    f"{Tag(tag).name} with L={size} does not match its defined size",
                    offset=pos,
                )
            record = make(*unpack(body, pos + 2))
            records.append(UnknownTlv(tag, body[pos + 2 : stop]) if record is None else record)
        pos = stop
    return tuple(records)


def decode_body(body: bytes) -> Frame:
    """Decode a CRC-checked BODY (VER … TLVs)."""
    if len(body) < scn1.HEADER_SIZE:
        raise LengthError(f"BODY of {len(body)} bytes is shorter than its header")
    version, msg_code, node_id, seq, flags = _unpack_header(body)
    if version != scn1.VERSION:
        raise VersionError(f"version {version}, this gateway speaks {scn1.VERSION}")
    msg_type = _MESSAGE_TYPES.get(msg_code)
    if msg_type is None:
        raise UnknownTypeError(f"message type {msg_code}")
    return _make_frame(
        node_id=node_id,
        seq=seq,
        msg_type=msg_type,
        flags=_FLAGS[flags],
        records=decode_records(body),
    )


def check_envelope(data: bytes) -> bytes:
    """Check SYNC, LEN and CRC of exactly one frame; return its BODY."""
    if len(data) < 3:
        raise TruncatedError(f"{len(data)} bytes cannot hold SYNC and LEN")
    if data[:2] != scn1.SYNC:
        raise SyncError(f"starts with {data[:2].hex(' ').upper()}, not A5 5A", offset=0)
    length = data[2]
    if not scn1.MIN_LEN <= length <= scn1.MAX_LEN:
        raise LengthError(f"LEN {length} outside {scn1.MIN_LEN}..{scn1.MAX_LEN}", offset=2)
    total = length + scn1.OVERHEAD
    if len(data) < total:
        raise TruncatedError(f"LEN {length} needs {total} bytes, got {len(data)}")
    if len(data) > total:
        raise TrailingBytesError(f"{len(data) - total} bytes after the CRC", offset=total)
    # ENVELOPE's Checksum field, done directly: the same function over LEN+BODY.
    computed = scn1.crc16_ccitt_false(data[2:-2])
    received = int.from_bytes(data[-2:], "big")
    if computed != received:
        raise CrcError(received=received, computed=computed)
    return data[3:-2]


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one whole frame, SYNC to CRC (a UDP datagram, an AT-line payload)."""
    return decode_body(check_envelope(data))


# --- encoding (simulator and tests): the construct definitions, built ---
# scn1_schema is imported where it is used: the daemon only decodes, without construct.


def _record_fields(record: Record) -> tuple[int, dict[str, int]] | None:
    match record:
        case Tilt(x_deg=x, y_deg=y):
            return Tag.TILT, {"x": round(x * 100), "y": round(y * 100)}
        case WaterDepth(distance_mm=mm):
            return Tag.WATER_DEPTH, {"mm": NO_ECHO if mm is None else mm}
        case Battery(voltage_mv=mv):
            return Tag.BATTERY, {"mv": mv}
        case Temperature(celsius=c):
            return Tag.TEMPERATURE, {"decidegc": round(c * 10)}
        case Gas(kind=kind, value=value):
            return Tag.GAS, {"kind": int(kind), "value": round(value * 10)}
        case Link(rssi_dbm=rssi, snr_db=snr):
            return Tag.LINK, {"rssi": rssi, "snr": snr}
        case Event(code=code, age_s=age, value_raw=value):
            return Tag.EVENT, {"code": int(code), "age": age, "value": value}
        case Firmware(major=major, minor=minor, build=build):
            return Tag.FIRMWARE, {"major": major, "minor": minor, "build": build}
        case ResetCause(cause=cause):
            return Tag.RESET_CAUSE, {"cause": int(cause)}
        case Pressure(kpa=kpa):
            return Tag.PRESSURE, {"decikpa": round(kpa * 10)}
        case Vibration(peak_mg=mg):
            return Tag.VIBRATION, {"mg": mg}
        case UnknownTlv():
            return None
    raise TypeError(f"not an SCN-1 record: {record!r}")  # pragma: no cover


def encode_record(record: Record) -> bytes:
    from gateway.protocol import scn1_schema  # noqa: PLC0415 - construct only to encode

    fields = _record_fields(record)
    try:
        if fields is None:
            assert isinstance(record, UnknownTlv)
            raw = {"tag": record.tag, "body": {"raw": record.raw}}
            return bytes(scn1_schema.RAW_TLV.build(raw))
        tag, values = fields
        return bytes(scn1_schema.TLV.build({"tag": tag, "body": values}))
    except scn1_schema.ConstructError as err:
        raise ValueError(f"cannot encode {record!r}: {err}") from err


def encode_body(frame: Frame, *, version: int = scn1.VERSION, msg_type: int | None = None) -> bytes:
    """BODY bytes; ``version``/``msg_type`` overrides let tests build rejected frames."""
    from gateway.protocol import scn1_schema  # noqa: PLC0415 - construct only to encode

    header = scn1_schema.HEADER.build(
        {
            "version": version,
            "msg_type": int(frame.msg_type) if msg_type is None else msg_type,
            "node_id": frame.node_id,
            "seq": frame.seq,
            "flags": int(frame.flags),
        }
    )
    return bytes(header) + b"".join(encode_record(r) for r in frame.records)


def encode_envelope(body: bytes) -> bytes:
    if not scn1.MIN_LEN <= len(body) <= scn1.MAX_LEN:
        raise ValueError(f"BODY of {len(body)} bytes is outside {scn1.MIN_LEN}..{scn1.MAX_LEN}")
    from gateway.protocol import scn1_schema  # noqa: PLC0415 - construct only to encode

    return bytes(scn1_schema.ENVELOPE.build({"body": body}))


def encode_frame(frame: Frame) -> bytes:
    """Whole frame, SYNC to CRC."""
    return encode_envelope(encode_body(frame))
