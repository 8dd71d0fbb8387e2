"""Telemetry on the wire and at rest: row packing and the three batch encodings.

Rows: the engine renders a reading as compact JSON; the queue stores a
chunk of readings, joined by newlines, packed with zlib and a preset
dictionary of typical readings (``pack_chunk``; a reading alone:
``pack_row``), ~10x smaller on disk; the uplink unpacks it (``unpack_row``).
A row that starts with ``{`` is plain JSON (queues written by earlier
versions) and passes as it is.

Batches (docs/mqtt-api.md "Telemetry encodings"): ``json`` (default),
``json-deflate`` (the JSON, zlib), ``cbor`` (the same content, CBOR).
The first payload byte tells them apart on any MQTT version: ``{`` JSON,
``x`` (0x78) zlib, anything else CBOR. A ``json`` batch carries each cover's
record once; the compact encodings carry only each reading's ``cover_id``, and
the records travel retained on ``<root>/cover/<cover_id>``
(``gateway.cover_records``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from gateway import jsontext
from gateway.errors import GatewayError


class WireError(GatewayError):
    """A row or a batch that does not decode: damaged, or not ours."""


class TelemetryEncoding(StrEnum):
    JSON = "json"
    JSON_DEFLATE = "json-deflate"
    CBOR = "cbor"

    @property
    def carries_covers(self) -> bool:
        """True if a batch carries its covers' records (``json``); else they go retained."""
        return self is TelemetryEncoding.JSON


CONTENT_TYPES = {
    TelemetryEncoding.JSON: "application/json",
    TelemetryEncoding.JSON_DEFLATE: "application/json+zlib",
    TelemetryEncoding.CBOR: "application/cbor",
}

# Typical readings as the engine renders them: what a row is deflated against.
# Never edit a dictionary in place: a row names its dictionary by Adler-32
# (zlib's DICTID), so add a new one and keep the old for rows still queued.
_ZDICT_V1 = (
    b'"time":"2026-11-30T04:00:00.000Z","source":{"type":"modbus","bus":"rs485-0","slave":'
    b'"values":{"roll_deg":0.0,"pitch_deg":0.0,"level":0.0}'
    b'{"reading_id":"0123456789abcdef00000001","time":"2026-11-30T04:00:00.000Z",'
    b'"source":{"type":"device","model":"","device_id":"","port":"","counter":'
    b'"quantities":{"tilt_x_deg":0.0,"tilt_y_deg":0.0,"distance_mm":0,"battery_pct":'
    b'"flags":{"node_alarm":true,"retransmission":false,"low_battery":false},'
    b'{"tlv":"event","event":"cover_opened","code":1,"age_s":0,"value":0,"unit":"mm"},'
    b'{"cover_id":"A-000001","reading_id":"0123456789abcdef00000001","time":"2026-11-30T04:00:00.000Z",'
    b'"source":{"type":"node","port":"lora0","node":"00A00001","seq":1,"msg_type":"REPORT",'
    b'"rx_rssi_dbm":-90,"rx_snr_db":8.0},"records":[{"tlv":"tilt","x_deg":0.3,"y_deg":-0.2,'
    b'"tilt_deg":0.36},{"tlv":"water_depth","distance_mm":1800,"no_echo":false},'
    b'{"tlv":"battery","voltage_mv":3600},{"tlv":"temperature","celsius":15.5},'
    b'{"tlv":"link","rssi_dbm":-90,"snr_db":8}],"derived":{"tilt_deg":0.36,'
    b'"water_distance_mm":1800,"water_level_mm":0}}'
)
_ZDICTS = {zlib.adler32(_ZDICT_V1): _ZDICT_V1}
_ROW_ZDICT = _ZDICT_V1
ROW_LEVEL = 3  # as small as 6 on a reading, faster
ROW_WBITS = 11  # a 2 KiB window holds the dictionary and a typical reading; cheap to set up
ROW_MEMLEVEL = 4
MAX_ROW_BYTES = 1 << 20  # an unpacked row larger than this is damage, not a reading


# Primed once with the dictionary; each row packs with a copy (setting a
# dictionary hashes all of it, a copy is a memcpy: ~1.2 µs less per reading).
_ROW_PACKER = zlib.compressobj(
    ROW_LEVEL, zlib.DEFLATED, ROW_WBITS, ROW_MEMLEVEL, zlib.Z_DEFAULT_STRATEGY, _ROW_ZDICT
)


def pack_row(row: bytes) -> bytes:
    """A rendered reading as it is queued: zlib against the preset dictionary."""
    packer = _ROW_PACKER.copy()
    return packer.compress(row) + packer.flush()


# A chunk of readings (a queue row, ``gateway.buffer.queue``) is one stream with
# a 32 KiB window: each reading deflates against the ones before it as well as
# the dictionary. On 100 varied registered readings (453 B of JSON each) that
# is 38.7 B a reading in 0.9 µs, against 56 B in 1.9 µs with the single
# reading's 2 KiB window, and 93 B in 5.0 µs packed one by one. Unpacking is
# the same call (``unpack_row``: the window size is in the stream's header).
# Each chunk's packer is made afresh: unlike the row packer's, its state is
# ~260 KiB, and copying a primed one costs more than setting the dictionary
# (~97 µs against ~77 µs for 100 readings) while it would hold that memory for
# the life of the process.
CHUNK_WBITS = 15
CHUNK_MEMLEVEL = 8


def pack_chunk(rows: bytes) -> bytes:
    """Rendered readings joined by newlines, as a queue row holds them: one zlib stream."""
    packer = zlib.compressobj(
        ROW_LEVEL, zlib.DEFLATED, CHUNK_WBITS, CHUNK_MEMLEVEL, zlib.Z_DEFAULT_STRATEGY, _ROW_ZDICT
    )
    return packer.compress(rows) + packer.flush()


def unpack_row(row: bytes) -> bytes:
    """A queued row back to its JSON; plain JSON rows (earlier versions) pass through."""
    if row[:1] == b"{":
        return row
    if len(row) < 6 or row[0] & 0x0F != 8 or not row[1] & 0x20:
        raise WireError(f"queued row is neither JSON nor a packed reading ({row[:2].hex()})")
    zdict = _ZDICTS.get(int.from_bytes(row[2:6], "big"))
    if zdict is None:
        raise WireError("queued row packed against an unknown dictionary")
    unpacker = zlib.decompressobj(15, zdict=zdict)
    try:
        out = unpacker.decompress(row, MAX_ROW_BYTES)
    except zlib.error as err:
        raise WireError(f"queued row does not inflate: {err}") from err
    if unpacker.unconsumed_tail or not unpacker.eof:
        raise WireError("queued row is truncated or larger than MAX_ROW_BYTES")
    return out


_COVER_PREFIX = b'{"cover_id":"'


def cover_id_of(row: bytes) -> str | None:
    """The cover a rendered reading names, found without parsing the whole row."""
    if not row.startswith(_COVER_PREFIX):
        return None
    end = row.find(b'"', len(_COVER_PREFIX))
    cover_id = row[len(_COVER_PREFIX) : end]
    if end < 0 or b"\\" in cover_id:  # an escaped character: let json find the end
        value = json.loads(row).get("cover_id")
        return value if isinstance(value, str) else None
    return cover_id.decode("utf-8")


# --- batches ---


def json_batch(meta: dict[str, Any], covers: dict[str, dict[str, Any]], rows: list[bytes]) -> bytes:
    """The JSON batch: envelope, each cover's record once, the readings as rendered."""
    head = dict(meta)
    if covers:
        head["covers"] = covers
    # The covers' records are most of what is rendered here (one per cover in the batch).
    return jsontext.dumps(head)[:-1] + b',"readings":[' + b",".join(rows) + b"]}"


def encode_batch(
    encoding: TelemetryEncoding,
    meta: dict[str, Any],
    covers: dict[str, dict[str, Any]],
    rows: list[bytes],
) -> bytes:
    """One telemetry message in the configured encoding; rows are unpacked JSON readings.

    ``covers`` (each named cover's record) goes into a ``json`` batch only: the
    compact encodings leave it to the retained cover topics.
    """
    match encoding:
        case TelemetryEncoding.JSON:
            return json_batch(meta, covers, rows)
        case TelemetryEncoding.JSON_DEFLATE:
            return zlib.compress(json_batch(meta, {}, rows), 9)
        case TelemetryEncoding.CBOR:
            from gateway.cbor_layout import cbor_batch  # noqa: PLC0415 - only when configured

            readings = [json.loads(r) for r in rows]
            return cbor_batch({**meta, "readings": readings})


def decode_batch(payload: bytes, *, max_bytes: int = 1 << 26) -> dict[str, Any]:
    """A telemetry payload in any encoding back to the JSON document the schema describes."""
    from gateway.cbor_layout import CBORDecodeError, cbor_unbatch  # noqa: PLC0415

    try:
        match payload[:1]:
            case b"{":
                body = json.loads(payload)
            case b"x":
                unpacker = zlib.decompressobj()
                text = unpacker.decompress(payload, max_bytes)
                if unpacker.unconsumed_tail or not unpacker.eof:
                    raise WireError("deflated batch truncated or over max_bytes")
                body = json.loads(text)
            case _:
                body = cbor_unbatch(payload)
    except (ValueError, zlib.error, CBORDecodeError, TypeError, IndexError, KeyError) as err:
        raise WireError(f"telemetry payload does not decode: {err}") from err
    if not isinstance(body, dict):
        raise WireError("telemetry payload is not a batch")
    return body


def rows_json(rows: Iterable[bytes]) -> list[bytes]:
    return [unpack_row(r) for r in rows]
