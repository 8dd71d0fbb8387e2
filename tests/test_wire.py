"""Telemetry encodings and packed rows: round trips, hostile bytes, and what reaches the broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import time
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.buffer.queue import DurableQueue, Lane, Outgoing, Queued
from gateway.cbor_layout import _iso_ms
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.drivers.base import PortState
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import (
    Battery,
    Frame,
    FrameFlags,
    MessageType,
    Temperature,
    Tilt,
    WaterDepth,
)
from gateway.uplink import batch_units
from gateway.wire import (
    CONTENT_TYPES,
    TelemetryEncoding,
    WireError,
    decode_batch,
    encode_batch,
    pack_chunk,
    pack_row,
    unpack_row,
)
from tests.harness import Broker, Collector, free_udp_port

# --- codecs ---

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
known_keys = st.sampled_from(
    ["type", "port", "node", "seq", "msg_type", "flags", "rx_snr_db", "x_deg", "tilt_deg"]
)
objects = st.dictionaries(st.one_of(known_keys, st.text(max_size=8)), json_values, max_size=6)
records = st.one_of(
    objects,
    st.builds(
        lambda x, y, t: {"tlv": "tilt", "x_deg": x, "y_deg": y, "tilt_deg": t},
        json_values,
        json_values,
        json_values,
    ),
    st.builds(lambda mm: {"tlv": "battery", "voltage_mv": mm}, json_values),
)
times = st.one_of(
    st.integers(0, 4_000_000_000_000).map(_iso_ms),
    st.text(max_size=30),
)
readings = st.fixed_dictionaries(
    {
        "reading_id": st.one_of(
            st.text(min_size=1, max_size=30),
            st.integers(0, 2**40).map(lambda n: f"0123456789abcdef{n:08x}"),
        ),
        "time": times,
        "source": st.one_of(
            objects,
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["node", "modbus", "device", "x"]),
                    "node": st.one_of(st.integers(0, 2**32 - 1).map("{:08X}".format), st.text()),
                    "flags": st.one_of(objects, st.just({"node_alarm": True})),
                }
            ),
        ),
    },
    optional={
        "cover_id": st.sampled_from(["C-1", "C-2", "gone"]),
        "records": st.lists(records, max_size=4),
        "derived": objects,
        "values": objects,
        "partial": st.text(),
    },
)
COVERS = {
    c: {
        "cover_id": c,
        "owner_unit": "drainage",
        "cover_kind": "",
        "address": "文三路",
        "lat": 30.1,
        "lon": None,
    }
    for c in ("C-1", "C-2")
}
META = {"msg_id": "batch-x-1", "sent_at": "2026-11-30T04:00:00.000Z"}


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(readings, min_size=1, max_size=4), st.sampled_from(list(TelemetryEncoding)))
def test_every_encoding_decodes_to_the_json_batch(
    batch: list[dict[str, Any]], encoding: TelemetryEncoding
) -> None:
    rows = [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() for r in batch]
    expected = json.loads(
        encode_batch(TelemetryEncoding.JSON, {**META, "count": len(rows)}, COVERS, rows)
    )
    if not encoding.carries_covers:  # the records go retained on their own topics
        del expected["covers"]
    payload = encode_batch(encoding, {**META, "count": len(rows)}, COVERS, rows)
    assert decode_batch(payload) == expected


# Readings as the engine renders them, with the values the compact slots are made for
# (hundredths of a degree, tenths of a degree C, implied tilt_deg and no_echo, a derived
# water distance equal to the record's) and the odd one that is not.
hundredths = st.integers(-9000, 9000).map(lambda n: n / 100)
node_ids = st.integers(0, 2**32 - 1).map("{:08X}".format)


@st.composite
def rendered(draw: st.DrawFn, counter: int) -> dict[str, Any]:
    x, y = draw(hundredths), draw(hundredths)
    distance = draw(st.one_of(st.none(), st.integers(0, 20000)))
    tilt = round(math.hypot(x, y), 2)
    records = [
        {"tlv": "tilt", "x_deg": x, "y_deg": y, "tilt_deg": draw(st.sampled_from([tilt, 1.5]))},
        {"tlv": "water_depth", "distance_mm": distance, "no_echo": distance is None},
        {"tlv": "battery", "voltage_mv": draw(st.integers(0, 65535))},
        {"tlv": "temperature", "celsius": draw(st.integers(-400, 850)) / 10},
        {
            "tlv": "link",
            "rssi_dbm": draw(st.integers(-140, 0)),
            "snr_db": draw(st.integers(-20, 20)),
        },
    ]
    derived: dict[str, Any] = {"tilt_deg": draw(hundredths)}
    if draw(st.booleans()):
        derived["water_distance_mm"] = draw(st.sampled_from([distance, 7.5, None]))
    if draw(st.booleans()):
        derived["water_level_mm"] = draw(st.integers(-5000, 5000)) / 10
    source = {
        "type": "node",
        "port": draw(st.sampled_from(["lora0", "lora1"])),
        "node": draw(node_ids),
        "seq": draw(st.integers(0, 65535)),
        "msg_type": draw(st.sampled_from(["REPORT", "EVENT", "HEARTBEAT", "BOOT"])),
    }
    if draw(st.booleans()):
        source["flags"] = {"node_alarm": True, "retransmission": False, "low_battery": False}
    reading = {
        "reading_id": f"0123456789abcdef{counter + draw(st.integers(0, 3)):08x}",
        "time": _iso_ms(1_796_000_000_000 + draw(st.integers(-5000, 5000))),
        "source": source,
        "records": draw(st.permutations(records))[: draw(st.integers(0, 5))],
        "derived": derived,
    }
    cover = draw(st.one_of(st.none(), st.integers(0, 999_999).map("HZ-{:06d}".format), st.text()))
    if cover is not None:
        reading["cover_id"] = cover
    return reading


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_rendered_readings_round_trip_through_the_compact_layout(data: st.DataObject) -> None:
    readings = [data.draw(rendered(n * 3)) for n in range(data.draw(st.integers(1, 6)))]
    rows = [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() for r in readings]
    meta = {**META, "count": len(rows)}
    expected = json.loads(encode_batch(TelemetryEncoding.JSON, meta, {}, rows))
    for encoding in (TelemetryEncoding.CBOR, TelemetryEncoding.JSON_DEFLATE):
        assert decode_batch(encode_batch(encoding, meta, {}, rows)) == expected


def test_a_typical_cbor_reading_takes_under_40_bytes() -> None:
    """The bench's figure, in miniature: 100 registered covers' REPORTs in one batch."""
    rows = []
    for i in range(100):
        x, y = (i % 40 - 20) / 100, (i % 30 - 15) / 100
        reading = {
            "cover_id": f"W-{i:06d}",
            "reading_id": f"59a87905e43876ed{1000 + i:08x}",
            "time": _iso_ms(1_796_021_062_858 + i * 3),
            "source": {"type": "node", "port": "lora0", "node": f"{0xA00000 + i:08X}", "seq": 7,
                       "msg_type": "REPORT"},
            "records": [
                {"tlv": "tilt", "x_deg": x, "y_deg": y, "tilt_deg": round(math.hypot(x, y), 2)},
                {"tlv": "water_depth", "distance_mm": 1200 + 7 * i, "no_echo": False},
                {"tlv": "battery", "voltage_mv": 3400 + i},
                {"tlv": "temperature", "celsius": (80 + i) / 10},
                {"tlv": "link", "rssi_dbm": -70 - i % 40, "snr_db": i % 20 - 10},
            ],
            "derived": {"tilt_deg": 0.16, "water_distance_mm": 1200 + 7 * i},
        }  # fmt: skip
        rows.append(json.dumps(reading, separators=(",", ":")).encode())
    meta = {"msg_id": "batch-59a87905e43876ed000003e8-100", "sent_at": _iso_ms(1_796_021_063_000)}
    payload = encode_batch(TelemetryEncoding.CBOR, {**meta, "count": 100}, {}, rows)
    assert len(payload) / 100 <= 40
    assert decode_batch(payload)["readings"] == [json.loads(r) for r in rows]


@given(st.binary(max_size=2000))
def test_packed_rows_round_trip(row: bytes) -> None:
    assert unpack_row(pack_row(row)) == row


@given(st.lists(st.binary(max_size=3000).filter(lambda r: b"\n" not in r), min_size=1, max_size=40))
def test_packed_chunks_round_trip_reading_by_reading(readings: list[bytes]) -> None:
    """A chunk (a queue row of several readings) is one stream with a 32 KiB window."""
    packed = pack_chunk(b"\n".join(readings))
    assert packed[:1] != b"{"  # never mistaken for a plain JSON row
    assert unpack_row(packed).split(b"\n") == readings


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_wire_errors(data: bytes) -> None:
    for decode in (unpack_row, decode_batch):
        with contextlib.suppress(WireError):  # anything else fails the test
            decode(data)


def test_a_row_from_an_earlier_version_passes_and_damage_is_named() -> None:
    plain = b'{"reading_id":"r1","time":"t","registered":false,"cover":null}'
    assert unpack_row(plain) == plain
    packed = pack_row(plain)
    with pytest.raises(WireError):
        unpack_row(packed[:-3])
    with pytest.raises(WireError):
        unpack_row(packed[:2] + b"\0\0\0\0" + packed[6:])  # an unknown dictionary


# --- the real daemon, a real broker ---

REGISTRY = """\
cover_id,owner_unit,address,latitude,longitude,node_id
W-1,drainage,文三路,30.27,120.15,00A00001
"""


def report(node: int, seq: int) -> bytes:
    records = (Tilt(0.3, -0.2), WaterDepth(1800), Battery(3600), Temperature(15.5))
    return encode_frame(Frame(node, seq, MessageType.REPORT, FrameFlags.NONE, records))


@pytest.mark.parametrize("encoding", list(TelemetryEncoding))
async def test_each_encoding_reaches_the_broker_decodable_and_valid(
    tmp_path: Path, encoding: TelemetryEncoding
) -> None:
    (tmp_path / "covers.csv").write_text(REGISTRY, encoding="utf-8")
    udp_port = free_udp_port()
    config = {
        "gateway": {
            "id": "gw-wire",
            "state_dir": str(tmp_path / "state"),
            "registry": "covers.csv",
        },
        "udp": [{"name": "udp0", "bind": f"127.0.0.1:{udp_port}"}],
    }
    raw: list[aiomqtt.Message] = []
    with Broker(tmp_path / "broker") as broker:
        config["uplink"] = {
            "host": "127.0.0.1",
            "port": broker.port,
            "telemetry_encoding": encoding.value,
        }
        async with (
            Collector(broker.port) as collector,
            aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as v5,
        ):
            await v5.subscribe("covers/+/telemetry", qos=1)

            async def take() -> None:
                async for message in v5.messages:
                    raw.append(message)

            taker = asyncio.create_task(take())
            gateway = Gateway(parse_config(config, base_dir=tmp_path))
            stop = asyncio.Event()
            task = asyncio.create_task(gateway.run(stop))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for seq in range(1, 4):
                    await collector.wait_for(lambda: bool(collector.of("status")), timeout=30)
                    udp.sendto(report(0x00A00001, seq), ("127.0.0.1", udp_port))
                    udp.sendto(report(0x00B00000 + seq, 1), ("127.0.0.1", udp_port))
                await collector.wait_for(lambda: len(collector.readings()) >= 6, timeout=30)
                await collector.wait_for(lambda: bool(raw), timeout=30)
            stop.set()
            await asyncio.wait_for(task, 15)
            taker.cancel()
    assert collector.errors == []  # the decoded batches match the telemetry schema
    got = collector.readings()
    registered = [r for r in got if r["registered"]]
    assert [r["source"]["seq"] for r in registered] == [1, 2, 3]
    # From the batch, once (json), or from the retained record on its own topic (compact).
    assert {r["cover"]["address"] for r in registered} == {"文三路"}
    batches = collector.of("telemetry")
    with_records = [b for b in batches if "covers" in b]
    assert bool(with_records) == encoding.carries_covers
    assert ("W-1" in collector.records) != encoding.carries_covers
    assert all(r["cover"] is None for r in got if r["source"]["node"].startswith("00B"))
    first = raw[0]
    assert first.payload[:1] == {"json": b"{", "json-deflate": b"x"}.get(
        encoding, first.payload[:1]
    )
    assert first.properties is not None
    assert first.properties.ContentType == CONTENT_TYPES[encoding]
    assert ("encoding", encoding.value) in first.properties.UserProperty


def test_a_damaged_queued_reading_is_acknowledged_not_sent_and_not_fatal() -> None:
    def queued(seq: int, payload: bytes) -> Queued:
        return Queued(seq, Outgoing(f"r{seq}", Lane.TELEMETRY, "covers/gw/telemetry", payload), 0.0)

    good = pack_row(b'{"cover_id":"C-1","reading_id":"r","time":"t","source":{"type":"node"}}')
    units = batch_units(
        [queued(1, good), queued(2, good[:-4]), queued(3, good)],
        max_count=10,
        max_bytes=10_000,
        covers=COVERS.get,
    )
    damaged = [u for u in units if not u.topic]
    assert [u.seqs for u in damaged] == [(2,)]  # acknowledged, never published
    sent = [decode_batch(u.payload) for u in units if u.topic]
    assert [len(b["readings"]) for b in sent] == [2]
    assert sent[0]["covers"] == {"C-1": COVERS["C-1"]}


cbor_values = st.recursive(
    st.one_of(scalars, st.just(cbor2.undefined), st.integers(-(2**70), 2**70)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=8), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=30,
)
small_ints = st.one_of(st.integers(-30, 30), st.integers(-(2**66), 2**66))
slots = st.one_of(
    small_ints, cbor_values, st.lists(st.one_of(small_ints, cbor_values), max_size=14)
)
heads = st.tuples(
    st.one_of(st.text(max_size=5), cbor_values),
    st.one_of(small_ints, cbor_values),
    st.one_of(small_ints, cbor_values),
    small_ints,
    st.one_of(st.just("0123456789abcdef"), cbor_values),
    st.one_of(st.tuples(st.text(max_size=3), small_ints).map(list), cbor_values),
    st.one_of(st.lists(st.text(max_size=3), max_size=3), cbor_values),
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(heads, st.lists(st.lists(slots, max_size=8), max_size=3))
def test_a_batch_of_the_right_shape_with_wrong_insides_raises_only_wire_errors(
    head: tuple[Any, ...], readings: list[Any]
) -> None:
    payload = cbor2.dumps([2, *head, readings])
    with contextlib.suppress(WireError):  # anything else fails the test
        decode_batch(payload)


async def test_rows_queued_under_larger_batches_are_cut_and_each_reading_arrives_once(
    tmp_path: Path,
) -> None:
    """Readings queued as chunks of up to 50 (``telemetry_batch_max`` then), sent after a
    restart with batches of at most 7: the uplink cuts each row, every reading reaches
    the broker once, in batches of at most 7, and every row is acknowledged."""
    (tmp_path / "covers.csv").write_text(REGISTRY, encoding="utf-8")
    udp_port = free_udp_port()

    def config(port: int, batch_max: int) -> dict[str, Any]:
        return {
            "gateway": {
                "id": "gw-cut",
                "state_dir": str(tmp_path / "state"),
                "registry": "covers.csv",
            },
            "udp": [{"name": "udp0", "bind": f"127.0.0.1:{udp_port}"}],
            "uplink": {
                "host": "127.0.0.1",
                "port": port,
                "telemetry_batch_max": batch_max,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.2,
            },
            "queue": {"flush_interval_s": 0.5},
        }

    nodes = [0x00B00000 + i for i in range(1, 61)]
    gateway = Gateway(parse_config(config(free_udp_port(), 50), base_dir=tmp_path))  # no broker
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        async with asyncio.timeout(30):
            while gateway.drivers[0].state is not PortState.OPEN:  # the UDP port is bound
                await asyncio.sleep(0.05)
            for node in nodes:
                udp.sendto(report(node, 1), ("127.0.0.1", udp_port))
            while gateway.queue.stats().depth[Lane.TELEMETRY] < len(nodes):
                await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 15)
    with DurableQueue(tmp_path / "state" / "queue.db") as queue:
        rows = queue.peek(1000)
    assert max(r.n for r in rows) > 7  # rows the new limit has to cut
    with Broker(tmp_path / "broker") as broker:
        async with Collector(broker.port) as collector:
            gateway = Gateway(parse_config(config(broker.port, 7), base_dir=tmp_path))
            stop = asyncio.Event()
            task = asyncio.create_task(gateway.run(stop))
            await collector.wait_for(lambda: len(collector.readings()) >= len(nodes), timeout=30)
            async with asyncio.timeout(15):
                while gateway.queue.stats().depth[Lane.TELEMETRY]:
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 15)
    assert collector.errors == []
    batches = collector.of("telemetry")
    assert max(len(b["readings"]) for b in batches) <= 7
    assert sorted(int(r["source"]["node"], 16) for r in collector.readings()) == nodes
    assert len({b["msg_id"] for b in batches}) == len(batches)


async def test_a_backlog_drains_no_faster_than_the_drain_rate(tmp_path: Path) -> None:
    """3,000 queued readings at 5,000/s: a round of 2,000, then 0.4 s before the rest."""
    state = tmp_path / "state"
    with DurableQueue(state / "queue.db", chunk_readings=100) as queue:
        queue.put_many(
            Outgoing(
                f"{i:024x}",
                Lane.TELEMETRY,
                "covers/gw-drain/telemetry",
                b'{"reading_id":"%024x","time":"2026-11-30T04:00:00.000Z",'
                b'"source":{"type":"node","port":"udp0","node":"00B00001","seq":1}}' % i,
            )
            for i in range(3000)
        )
    arrived: list[tuple[float, int]] = []
    with Broker(tmp_path / "broker") as broker:
        async with aiomqtt.Client("127.0.0.1", broker.port) as platform:
            await platform.subscribe("covers/gw-drain/telemetry", qos=1)
            config = {
                "gateway": {"id": "gw-drain", "state_dir": str(state)},
                "uplink": {"host": "127.0.0.1", "port": broker.port, "drain_max_rate": 5000},
            }
            gateway = Gateway(parse_config(config, base_dir=tmp_path))
            stop = asyncio.Event()
            task = asyncio.create_task(gateway.run(stop))
            async with asyncio.timeout(30):
                async for message in platform.messages:
                    assert isinstance(message.payload, bytes)
                    count = decode_batch(message.payload)["count"]
                    arrived.append((time.monotonic(), count))
                    if sum(n for _, n in arrived) >= 3000:
                        break
            stop.set()
            await asyncio.wait_for(task, 15)
    assert sum(n for _, n in arrived) == 3000
    assert arrived[-1][0] - arrived[0][0] >= 0.35  # 2,000 readings take 0.4 s at 5,000/s
