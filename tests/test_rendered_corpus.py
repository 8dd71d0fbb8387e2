"""What the platform receives, byte for byte, for a fixed corpus of radio bytes.

The per-frame path has fast forms (the engine's routine path, the records'
and reading's rendering, the state rows' bookkeeping); none may change a
byte of what is published or stored. ``fixtures/rendered_corpus.jsonl`` is
what the engine said for this corpus before those forms existed (main at
87d8341): every message (lane, topic, id, JSON text) and every commit's
state rows. Regenerate it only for a change that means to alter the output::

    .venv/bin/python -m tests.test_rendered_corpus > tests/fixtures/rendered_corpus.jsonl
"""

from __future__ import annotations

import json
import random
from itertools import count
from pathlib import Path

from gateway.config import LimitsConfig, Thresholds
from gateway.edge.engine import EdgeEngine
from gateway.events import FrameHeard
from gateway.protocol.codec import encode_frame
from gateway.protocol.framing import Received, StreamFramer
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Frame,
    FrameFlags,
    Gas,
    GasKind,
    Link,
    MessageType,
    Record,
    Temperature,
    Tilt,
    UnknownTlv,
    WaterDepth,
)
from gateway.registry import Cover, OwnerUnit, Registry
from gateway.wire import unpack_row

FIXTURE = Path(__file__).parent / "fixtures" / "rendered_corpus.jsonl"
START = 1_800_000_000.0


def _records(rnd: random.Random) -> tuple[Record, ...]:
    if rnd.random() < 0.6:  # a normal report: what clears alarms
        return (Tilt(0.3, -0.2), WaterDepth(1800), Battery(3600), Temperature(15.5), Link(-90, 8))
    pool: list[Record] = [
        Tilt(rnd.choice([0.3, -1.5, 12.0, 40.25]), rnd.choice([-0.2, 0.0, 3.5])),
        WaterDepth(rnd.choice([1800, 450, 120, None])),
        Battery(rnd.choice([3600, 3350, 3100])),
        Temperature(rnd.choice([15.5, -3.2])),
        Link(-90, 8),
        Gas(rnd.choice(list(GasKind)), rnd.choice([0.5, 12.5, 40.0])),
        Event(rnd.choice(list(EventCode)), rnd.randint(0, 30), rnd.randint(0, 5000)),
        UnknownTlv(0x7E, b"\x01\x02"),
    ]
    return tuple(rnd.sample(pool, rnd.randint(0, 5)))


def corpus(seed: int = 11, frames: int = 80) -> bytes:
    """Radio bytes: REPORTs mostly, events, boots, retransmissions, duplicates, noise."""
    rnd = random.Random(seed)
    nodes = [0x00A00000 + i for i in range(8)] + [0x00C0FFEE]
    seqs: dict[int, int] = {}
    out = []
    for _ in range(frames):
        node = rnd.choice(nodes)
        last = seqs.get(node, rnd.randint(0, 0xFFFF))
        seqs[node] = seq = (last + rnd.choice([1, 1, 1, 3])) & 0xFFFF
        kind = rnd.choice([MessageType.REPORT] * 6 + list(MessageType))
        flags = FrameFlags(rnd.choice([0, 0, 0, 1, 4, 5]))
        records = _records(rnd)
        out.append(encode_frame(Frame(node, seq, kind, flags, records)))
        if rnd.random() < 0.1:
            retry = flags | FrameFlags.RETRANSMISSION
            out.append(encode_frame(Frame(node, seq, kind, retry, records)))
        if rnd.random() < 0.05:
            out.append(out[-1])
        if rnd.random() < 0.05:
            out.append(bytes(rnd.randrange(256) for _ in range(7)))
    return b"".join(out)


def _engine() -> EdgeEngine:
    registry = Registry()
    for cover in (
        Cover("CV-0", OwnerUnit.DRAINAGE, node_id=0x00A00000, latitude=31.2, longitude=121.4),
        Cover("CV-1", OwnerUnit.GAS, node_id=0x00A00001, baseline_deg=(0.5, -0.5)),
        Cover("CV-2", OwnerUnit.HEAT, node_id=0x00A00002, sensor_depth_mm=2500.0),
        Cover("CV-3", OwnerUnit.POWER, node_id=0x00A00003, overrides={"tilt_deg": 5.0}),
        Cover("CV-9", OwnerUnit.TELECOM, node_id=0x00A00009),  # never heard: goes offline
    ):
        assert registry.add(cover) is None
    ids = count()
    return EdgeEngine(
        gateway_id="gw-corpus",
        registry=registry,
        thresholds=Thresholds().merged({"offline_after_s": 900.0}),
        kind_thresholds={},
        slaves={},
        started_at=START,
        new_id=lambda: f"id{next(ids):06d}",
        limits=LimitsConfig(unregistered_nodes=3, device_frames_per_minute=20),
    )


def rendered() -> list[str]:
    """One JSON line per message, and the stored rows after each commit, in the order they came.

    Stored rows, not the changes: a row made and deleted between two commits
    (a stranger pushed out of the LRU) may cost the store nothing at all.
    """
    engine, framer = _engine(), StreamFramer()
    stream = corpus()
    store: dict[str, str] = {}

    def commit() -> str:
        """What the commit changed in the store: rows written (or rewritten), rows gone."""
        before = dict(store)
        for key, row in engine.take_state().items():
            if row is None:
                store.pop(key, None)
            else:
                store[key] = row
        written = sorted((k, v) for k, v in store.items() if before.get(k) != v)
        return json.dumps(["STORED", written, sorted(before.keys() - store.keys())])

    lines = []
    at = START
    for chunk, start in enumerate(range(0, len(stream), 97)):
        at += 37.5
        for item in framer.feed(stream[start : start + 97]):
            if not isinstance(item, Received):
                continue
            for m in engine.handle(FrameHeard("lora0", at, item)):
                payload = unpack_row(m.payload) if m.lane.name == "TELEMETRY" else m.payload
                lines.append(json.dumps([m.lane.name, m.topic, m.msg_id, payload.decode()]))
        if chunk % 3 == 2:
            lines.append(commit())
            lines += [json.dumps(["TICK", m.msg_id, m.payload.decode()]) for m in engine.tick(at)]
    lines.append(commit())
    return lines


def test_the_corpus_renders_as_it_always_did() -> None:
    expected = FIXTURE.read_text(encoding="utf-8").splitlines()
    got = rendered()
    assert len(got) == len(expected)
    for n, (line, want) in enumerate(zip(got, expected, strict=True)):
        assert line == want, f"line {n + 1} of {FIXTURE.name}"


if __name__ == "__main__":
    print("\n".join(rendered()))
