"""The daemon's pipeline under overload and a failing disk; the uplink's batching."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer.queue import Lane, Outgoing, Queued
from gateway.config import parse_config
from gateway.daemon import INPUT_QUEUE, Gateway
from gateway.edge.adapters import modbus_device
from gateway.events import FrameHeard, SlaveRead
from gateway.protocol.framing import Received
from gateway.protocol.messages import Battery, Event, EventCode, Frame, FrameFlags, MessageType
from gateway.tap import Noted
from gateway.uplink import batch_units
from gateway.wire import pack_row
from tests.smallfs import fill, small_fs


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


async def test_an_alarm_never_overtakes_what_its_own_node_said_before_it(tmp_path: Path) -> None:
    """A flat REPORT heard before "cover opened" must not be judged after it and clear it."""
    gateway = make_gateway(tmp_path)
    gateway.submit(heard(7, 1), critical=False)  # other nodes' readings wait behind the alarm
    gateway.submit(heard(1, 1), critical=False)  # the node's own normal report, heard first
    gateway.submit(heard(1, 2, event=True), critical=True)
    gateway.submit(heard(1, 3), critical=False)  # and one heard after the alarm
    taken = gateway._take()
    assert [(e.received.frame.node_id, e.received.frame.seq) for e in taken] == [
        (1, 1),
        (1, 2),
        (7, 1),
        (1, 3),
    ]
    with gateway.queue:
        out = [m for event in taken[:2] for m in gateway.engine.handle(event)]
    alarms = [json.loads(m.payload) for m in out if m.lane is Lane.ALARM]
    assert [(a["kind"], a["state"]) for a in alarms] == [("cover_open", "raised")]
    assert [a["kind"] for a in gateway.engine.active_alarms()] == ["cover_open"]


def on_small_disk(fs: Path) -> Gateway:
    """A gateway whose state directory is FS (a small tmpfs), its queue bound at 1 MiB."""
    config = parse_config(
        {"gateway": {"id": "gw", "state_dir": str(fs)}, "queue": {"max_bytes": 1 << 20}},
        base_dir=fs,
    )
    return Gateway(config)


async def test_failing_disk_keeps_alarms_in_memory_then_writes_them(tmp_path: Path) -> None:
    """A real full tmpfs under the state directory; nothing but alarms and readings to write."""
    with small_fs(tmp_path / "fs", 2048) as fs:
        gateway = on_small_disk(fs)
        with gateway.queue:
            for node in range(1, 301):
                gateway._pending += gateway.engine.handle(heard(node, 0, event=True))
            alarms = sum(m.lane is Lane.ALARM for m in gateway._pending)
            filler = fs / "filler"
            fill(filler)
            assert await gateway._flush() is False  # no telemetry on disk to make room with
            stats = gateway.stats_payload()
            assert stats["queue"]["write_errors"] == 1
            assert stats["queue"]["pending_in_memory"] == 600  # the readings and the alarms
            assert stats["queue"]["storage"] == "degraded"
            assert gateway.birth()["storage"]["state"] == "degraded"
            filler.unlink()
            assert await gateway._flush() is True
            await gateway._watch_storage()
            stats = gateway.stats_payload()
            rows = gateway.queue.peek(1000)
    assert stats["queue"]["storage"] == "ok"
    assert stats["queue"]["pending_in_memory"] == 0
    assert [r.message.lane for r in rows[:alarms]] == [Lane.ALARM] * alarms == [Lane.ALARM] * 300
    assert sum(r.n for r in rows) == 600  # the readings in chunks of up to 100 a row
    assert len(rows) == 300 + 3
    assert json.loads(rows[0].message.payload)["kind"] == "cover_open"


async def test_a_failing_disk_is_tried_again_in_a_while_not_in_a_spin(tmp_path: Path) -> None:
    """Alarms the full disk will not take: held in memory, written again after a flush
    interval (the pipeline sleeps in between), and written once there is room."""
    with small_fs(tmp_path / "fs", 2048) as fs:
        gateway = on_small_disk(fs)
        with gateway.queue:
            filler = fs / "filler"
            fill(filler)
            stop = asyncio.Event()
            async with gateway.tap.listen() as tail:  # what a technician's tail shows
                pipeline = asyncio.create_task(gateway._pipeline(stop))

                async def failed() -> float:
                    """When the tail says the next write failed."""
                    note = await asyncio.wait_for(tail.get(), 10)
                    assert isinstance(note, Noted), note
                    assert note.what == "queue", note
                    assert "FAILED" in note.text, note.text
                    return time.monotonic()

                for node in range(1, 301):  # more than the file's free pages take
                    gateway.submit(heard(node, 0, event=True), critical=True)
                first = await failed()
                between = await failed() - first
                tried = gateway.stats.queue_write_errors
                gateway._wakeup.clear()  # set by each commit that is in, for the uplink
                filler.unlink()
                await asyncio.wait_for(gateway._wakeup.wait(), 10)
                stop.set()
                await pipeline
                rows = gateway.queue.peek(1000)
    assert between >= 0.1, between  # [queue] flush_interval_s (0.2) apart, not a turn of the loop
    assert tried == 2
    assert sum(r.message.lane is Lane.ALARM for r in rows) == 300


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


@given(
    st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=12), max_size=12),
    st.integers(1, 10),
    st.integers(200, 2000),
)
def test_chunk_rows_make_bounded_batches_each_reading_once_in_order(
    chunks: list[list[int]], max_count: int, max_bytes: int
) -> None:
    """Rows of any number of readings (a row that no longer fits the limits is cut, every
    part marked with how many parts its row has): batches stay within the limits and
    carry every reading once, in queue order."""
    queued: list[Queued] = []
    readings: list[bytes] = []
    for seq, sizes in enumerate(chunks):
        texts = [b'{"r":%d,"x":"%s"}' % (len(readings) + k, b"a" * n) for k, n in enumerate(sizes)]
        readings += texts
        payload = pack_row(b"\n".join(texts))
        message = Outgoing(f"m{seq}", Lane.TELEMETRY, "t", payload)
        queued.append(Queued(seq, message, 0.0, len(texts)))
    units = batch_units(queued, max_count=max_count, max_bytes=max_bytes)
    sent = [r for u in units for r in json.loads(u.payload)["readings"]]
    assert [json.dumps(r, separators=(",", ":")).encode() for r in sent] == readings
    ids = [json.loads(u.payload)["msg_id"] for u in units]
    assert len(set(ids)) == len(ids)  # a part's id differs from its row's other parts
    for unit in units:
        body = json.loads(unit.payload)["readings"]
        assert unit.count == len(body) <= max_count
        text = b",".join(json.dumps(r, separators=(",", ":")).encode() for r in body)
        assert len(body) == 1 or len(text) <= max_bytes
        if unit.parts:
            (seq,) = unit.seqs
            assert sum(u.seqs == (seq,) for u in units) == unit.parts > 1
        else:
            assert all(u.parts == 0 for u in units if set(u.seqs) & set(unit.seqs))


async def _asleep(gateway: Gateway) -> None:
    """Until the pipeline sleeps with nothing left to commit."""
    async with asyncio.timeout(10):
        while gateway._asleep_until is None or gateway._pending:
            await asyncio.sleep(0.005)


async def test_a_polled_reading_is_judged_while_the_pipeline_sleeps(tmp_path: Path) -> None:
    gateway = make_gateway(tmp_path)
    device = modbus_device("rs485-0", 1)
    stop = asyncio.Event()
    with gateway.queue:
        pipeline = asyncio.create_task(gateway._pipeline(stop))
        try:
            await _asleep(gateway)
            gateway.submit(SlaveRead("rs485-0", 1, 100.0, {"level": 0.5}), False)
            assert gateway._input_ready.is_set()  # the first reading goes upstream: woken
            await _asleep(gateway)
            assert len(gateway.queue.peek(10)) == 1
            gateway.submit(SlaveRead("rs485-0", 1, 101.0, {"level": 0.5}), False)
            assert not gateway._input_ready.is_set()  # judged, and nothing for the pipeline
            state = gateway.engine.devices.get(device)
            assert state is not None
            assert state.last_seen == 101.0
            gateway.submit(SlaveRead("rs485-0", 1, 161.0, {"level": 0.5}), False)
            assert gateway._input_ready.is_set()  # a minute on: a reading to send
            await _asleep(gateway)
            assert len(gateway.queue.peek(10)) == 2
        finally:
            stop.set()
            gateway._input_ready.set()
            await asyncio.wait_for(pipeline, 10)


async def test_what_judging_a_reading_raises_while_asleep_ends_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised in the pipeline, so the supervisor restarts it as for its own failures."""
    gateway = make_gateway(tmp_path)

    def broken(event: object) -> list[Outgoing]:
        raise RuntimeError("a bug in the engine")

    with gateway.queue:
        pipeline = asyncio.create_task(gateway._pipeline(asyncio.Event()))
        await _asleep(gateway)
        monkeypatch.setattr(gateway.engine, "handle", broken)
        gateway.submit(SlaveRead("rs485-0", 1, 100.0, {"level": 0.5}), False)
        with pytest.raises(RuntimeError, match="a bug in the engine"):
            await asyncio.wait_for(pipeline, 10)
