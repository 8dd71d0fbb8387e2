"""The durable queue: order, acknowledgement, bounds, and surviving kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer.queue import DurableQueue, Lane, Outgoing, QueueError


def msg(i: int, lane: Lane = Lane.TELEMETRY, size: int = 10) -> Outgoing:
    return Outgoing(f"m{i}", lane, f"covers/gw/{lane.name.lower()}", bytes(size))


def test_alarms_leave_before_any_telemetry_backlog(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.db") as q:
        q.put_many(msg(i) for i in range(5))
        q.put_many([msg(100, Lane.ALARM), msg(101, Lane.ALARM)])
        q.put_many([msg(5)])
        order = [m.message.msg_id for m in q.peek(10)]
    assert order == ["m100", "m101", "m0", "m1", "m2", "m3", "m4", "m5"]


def test_ack_removes_and_reopen_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with DurableQueue(path) as q:
        q.put_many(msg(i) for i in range(4))
        first = q.peek(2)
        q.ack([m.seq for m in first])
    with DurableQueue(path) as q:
        assert [m.message.msg_id for m in q.peek(10)] == ["m2", "m3"]
        assert q.stats().depth == {Lane.ALARM: 0, Lane.TELEMETRY: 2}


def test_same_message_id_is_queued_once(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.db") as q:
        assert q.put_many([msg(1), msg(1), msg(2)]) == 2
        assert q.put_many([msg(1)]) == 0
        assert len(q.peek(10)) == 2


def test_full_queue_evicts_oldest_telemetry_first_then_alarms_and_counts(tmp_path: Path) -> None:
    clock = iter(range(1000))
    with DurableQueue(tmp_path / "q.db", max_bytes=100, clock=lambda: float(next(clock))) as q:
        q.put_many([msg(1, Lane.ALARM, 30), msg(2, Lane.ALARM, 30)])
        q.put_many([msg(i, size=10) for i in range(10, 14)])  # 100 bytes: full
        q.put_many([msg(20, size=10)])  # evicts m10
        assert [m.message.msg_id for m in q.peek(10)] == ["m1", "m2", "m11", "m12", "m13", "m20"]
        q.put_many([msg(3, Lane.ALARM, 60)])  # needs 60: all telemetry goes, then the oldest alarm
        ids = [m.message.msg_id for m in q.peek(10)]
        stats = q.stats()
    assert ids == ["m2", "m3"]
    assert stats.evicted == {Lane.TELEMETRY: 5, Lane.ALARM: 1}
    assert stats.bytes <= 100


def test_eviction_counters_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with DurableQueue(path, max_bytes=20) as q:
        q.put_many(msg(i) for i in range(5))
    with DurableQueue(path, max_bytes=20) as q:
        assert q.stats().evicted[Lane.TELEMETRY] == 3


def test_stats_oldest_age(tmp_path: Path) -> None:
    now = [1000.0]
    with DurableQueue(tmp_path / "q.db", clock=lambda: now[0]) as q:
        assert q.stats().oldest_age_s is None
        q.put_many([msg(1)])
        now[0] = 1042.5
        assert q.stats().oldest_age_s == pytest.approx(42.5)


def test_unreadable_file_is_moved_aside_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not a database" * 100)
    with DurableQueue(path) as q:
        q.put_many([msg(1)])
        assert len(q.peek(1)) == 1
    assert list(tmp_path.glob("q.corrupt-*"))


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(QueueError, match="newer"):
        DurableQueue(path).open()


def test_nothing_accepted_is_lost_to_sigkill(tmp_path: Path) -> None:
    """A writer reports each committed batch, then dies by SIGKILL mid-stream."""
    path = tmp_path / "q.db"
    writer = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from gateway.buffer.queue import DurableQueue, Lane, Outgoing
        with DurableQueue(Path({str(path)!r})) as q:
            batch = 0
            while True:
                q.put_many(
                    Outgoing(f"b{{batch}}-{{i}}", Lane(i % 2), "t", b"x" * 50) for i in range(50)
                )
                print(batch, flush=True)
                batch += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = -1
    for line in proc.stdout:
        committed = int(line)
        if committed >= 30:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with DurableQueue(path) as q:
        ids = {m.message.msg_id for m in q.peek(1_000_000)}
    for batch in range(committed + 1):
        assert all(f"b{batch}-{i}" in ids for i in range(50)), f"batch {batch} lost"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("put"),
                st.lists(
                    st.tuples(st.integers(0, 40), st.booleans(), st.integers(0, 60)), max_size=8
                ),
            ),
            st.tuples(st.just("ack"), st.integers(0, 10)),
        ),
        max_size=25,
    )
)
def test_running_depth_and_size_match_a_full_count(ops: list[tuple[str, object]]) -> None:
    """stats() keeps running totals instead of scanning; they must always agree with a scan."""
    with tempfile.TemporaryDirectory() as tmp, DurableQueue(Path(tmp) / "q.db", max_bytes=300) as q:
        for op, arg in ops:
            if op == "put":
                assert isinstance(arg, list)
                q.put_many(
                    Outgoing(f"m{i}", Lane.ALARM if alarm else Lane.TELEMETRY, "t", bytes(size))
                    for i, alarm, size in arg
                )
            else:
                assert isinstance(arg, int)
                q.ack([m.seq for m in q.peek(arg)])
            running = q.stats()
            q._recount()  # the full scan, for comparison
            counted = q.stats()
            assert (running.depth, running.bytes) == (counted.depth, counted.bytes)
            assert running.bytes <= 300
