"""The daemon's pipeline under overload and a failing disk; the uplink's batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer.queue import Lane, Outgoing, Queued, QueueError
from gateway.config import parse_config
from gateway.daemon import INPUT_QUEUE, Gateway
from gateway.events import FrameHeard
from gateway.protocol.framing import Received
from gateway.protocol.messages import Battery, Event, EventCode, Frame, FrameFlags, MessageType
from gateway.uplink import batch_units


def make_gateway(tmp_path: Path) -> Gateway:
    config = parse_config({"gateway": {"id": "gw", "state_dir": str(tmp_path)}}, base_dir=tmp_path)
    return Gateway(config)


def heard(node: int, seq: int, *, event: bool = False) -> FrameHeard:
    if event:
        frame = Frame(
            node,
            seq,
            MessageType.EVENT,
            FrameFlags.NODE_ALARM,
            (Event(EventCode.COVER_OPENED, 0, 0),),
        )
    else:
        frame = Frame(node, seq, MessageType.REPORT, FrameFlags.NONE, (Battery(3600),))
    return FrameHeard("lora0", 0.0, Received(frame, b""))


async def test_overload_sheds_telemetry_and_never_an_alarm(tmp_path: Path) -> None:
    gateway = make_gateway(tmp_path)
    for i in range(INPUT_QUEUE + 500):
        gateway.submit(heard(1, i % 65536), critical=False)
    gateway.submit(heard(2, 0, event=True), critical=True)
    assert gateway.stats.shed_telemetry == 500
    taken = gateway._take(limit=INPUT_QUEUE + 1000)
    assert taken[0].received.frame.msg_type is MessageType.EVENT  # alarms jump the queue


async def test_failing_disk_keeps_alarms_in_memory_then_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway(tmp_path)
    with gateway.queue:
        gateway._pending += gateway.engine.handle(heard(2, 0, event=True))
        real = gateway.queue.put_many

        def disk_full(*args: object, **kwargs: object) -> int:
            raise QueueError("database or disk is full")

        monkeypatch.setattr(gateway.queue, "put_many", disk_full)
        assert gateway._flush() is False
        assert gateway.stats.queue_write_errors == 1
        stats = gateway.stats_payload()
        assert stats["queue"]["pending_in_memory"] == 2  # the reading and the alarm
        monkeypatch.setattr(gateway.queue, "put_many", real)
        assert gateway._flush() is True
        rows = gateway.queue.peek(10)
    assert [r.message.lane for r in rows] == [Lane.ALARM, Lane.TELEMETRY]
    assert json.loads(rows[0].message.payload)["kind"] == "cover_open"


def rows(spec: list[tuple[bool, int]]) -> list[Queued]:
    return [
        Queued(
            i,
            Outgoing(
                f"m{i}",
                Lane.ALARM if alarm else Lane.TELEMETRY,
                "t",
                b'{"x":"' + b"a" * size + b'"}',
            ),
            0.0,
        )
        for i, (alarm, size) in enumerate(spec)
    ]


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=60),
    st.integers(1, 10),
    st.integers(200, 2000),
)
def test_batches_are_bounded_and_carry_every_row_once(
    spec: list[tuple[bool, int]], max_count: int, max_bytes: int
) -> None:
    queued = rows(spec)
    units = batch_units(queued, max_count=max_count, max_bytes=max_bytes)
    carried = [s for u in units for s in u.seqs]
    assert sorted(carried) == [q.seq for q in queued]
    for unit in units:
        if queued[unit.seqs[0]].message.lane is Lane.ALARM:
            assert len(unit.seqs) == 1
            continue
        batch = json.loads(unit.payload)
        assert batch["count"] == len(batch["readings"]) == len(unit.seqs) <= max_count
        body = b",".join(queued[s].message.payload for s in unit.seqs)
        assert len(unit.seqs) == 1 or len(body) <= max_bytes
