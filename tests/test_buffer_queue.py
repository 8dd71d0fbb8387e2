"""The durable queue: order, acknowledgement, bounds, and surviving kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
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

from gateway.buffer.queue import DurableQueue, Lane, Outgoing, QueueError, decode_id, encode_id
from gateway.uplink import batch_units
from gateway.wire import decode_batch, pack_row, unpack_row
from tests.smallfs import fill, small_fs


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
    """The bound is what is on disk: database, WAL and the reserve file together."""
    path = tmp_path / "q.db"
    bound = 2 * 1024 * 1024
    with DurableQueue(path, max_bytes=bound) as q:
        q.put_many([msg(i, Lane.ALARM, 1000) for i in range(10)])
        for start in range(100, 4100, 20):  # batches within the WAL allowance
            q.put_many(msg(i, size=1000) for i in range(start, start + 20))
        on_disk = q.disk_bytes() + q.reserve_path.stat().st_size
        stats = q.stats()
        queued = q.peek(10_000)
    assert on_disk <= bound
    assert stats.depth[Lane.ALARM] == 10  # no alarm goes while telemetry can
    assert stats.evicted[Lane.ALARM] == 0
    assert stats.evicted[Lane.TELEMETRY] == 4000 - stats.depth[Lane.TELEMETRY] > 0
    ids = [int(m.message.msg_id[1:]) for m in queued if m.message.lane is Lane.TELEMETRY]
    assert ids == list(range(4100 - len(ids), 4100))  # the oldest went, the newest stayed
    with DurableQueue(path, max_bytes=bound) as q:
        for start in range(10_000, 13_000, 20):  # only alarms now
            q.put_many(msg(i, Lane.ALARM, 1000) for i in range(start, start + 20))
        stats = q.stats()
        alarms = [m.message.msg_id for m in q.peek(10_000)]
        on_disk = q.disk_bytes() + q.reserve_path.stat().st_size
    assert on_disk <= bound
    assert stats.depth[Lane.TELEMETRY] == 0
    assert stats.evicted[Lane.TELEMETRY] == 4000
    assert stats.evicted[Lane.ALARM] == 3010 - len(alarms) > 0
    assert alarms[-1] == "m12999"


def test_eviction_counters_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with DurableQueue(path, max_bytes=256 * 1024) as q:
        q.put_many(msg(i, size=2000) for i in range(200))
        evicted = q.stats().evicted[Lane.TELEMETRY]
    assert evicted > 0
    with DurableQueue(path, max_bytes=256 * 1024) as q:
        assert q.stats().evicted[Lane.TELEMETRY] == evicted
        assert q.stats().depth[Lane.TELEMETRY] == 200 - evicted


def test_a_file_over_a_lowered_bound_does_not_grow_and_no_commit_evicts_the_excess(
    tmp_path: Path,
) -> None:
    """A file over its bound cannot shrink: commits keep it from growing, none (the
    first at start among them) evicts the whole excess, and a draining backlog
    leaves free pages that later commits fill without evicting anything."""
    path = tmp_path / "q.db"
    with DurableQueue(path, max_bytes=64 * 1024 * 1024) as q:
        for start in range(0, 40_000, 500):
            q.put_many(msg(i, size=200) for i in range(start, start + 500))
    size = path.stat().st_size
    with DurableQueue(path, max_bytes=2 * 1024 * 1024) as q:
        q.put_many([], state={"session": "1"})  # state alone: nothing to make room for
        assert q.stats().evicted[Lane.TELEMETRY] == 0
        q.put_many([msg(200_000, Lane.ALARM, 200)])
        assert q.stats().evicted[Lane.TELEMETRY] < 200  # an alarm's commit stays light
        for start in range(100_000, 101_000, 20):
            q.put_many(msg(i, size=200) for i in range(start, start + 20))
        stats = q.stats()
        assert 1000 <= stats.evicted[Lane.TELEMETRY] < 3000  # about one for one, not ~35,000
        assert stats.depth[Lane.TELEMETRY] + stats.evicted[Lane.TELEMETRY] == 41_000
        assert stats.depth[Lane.ALARM] == 1
        oldest = q.peek_lane(Lane.TELEMETRY, 1)[0].message.msg_id
        assert int(oldest[1:]) == stats.evicted[Lane.TELEMETRY]  # the oldest went first
        q.ack([m.seq for m in q.peek_lane(Lane.TELEMETRY, 5000)])  # the uplink drains
        for start in range(101_000, 102_000, 20):
            q.put_many(msg(i, size=200) for i in range(start, start + 20))
        assert q.stats().evicted == stats.evicted  # the drained pages took them
        assert path.stat().st_size <= size


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
    """stats() keeps persisted totals instead of scanning; they must always agree with a scan."""
    with tempfile.TemporaryDirectory() as tmp, DurableQueue(Path(tmp) / "q.db") as q:
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
            counted = dict.fromkeys(Lane, 0)
            for lane, count in q.db.execute("SELECT lane, COUNT(*) FROM outbox GROUP BY lane"):
                counted[Lane(lane)] = count
            assert q.stats().depth == counted


@settings(max_examples=80, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=120), st.data())
def test_any_set_of_acks_deletes_exactly_those_rows(
    alarms: list[bool], data: st.DataObject
) -> None:
    """Acks go as ranges where the numbers run on, IN lists elsewhere: in any order,
    with repeats and numbers the queue does not hold, exactly the acked rows go."""
    with tempfile.TemporaryDirectory() as tmp, DurableQueue(Path(tmp) / "q.db") as q:
        q.put_many(
            Outgoing(f"m{i}", Lane.ALARM if alarm else Lane.TELEMETRY, "t", b"x")
            for i, alarm in enumerate(alarms)
        )
        seqs = [m.seq for m in q.peek(1000)]
        acked = data.draw(st.lists(st.sampled_from([*seqs, 0, max(seqs) + 3]), max_size=200))
        q.ack(acked)
        assert {m.seq for m in q.peek(1000)} == set(seqs) - set(acked)
        counted = dict.fromkeys(Lane, 0)
        for lane, count in q.db.execute("SELECT lane, COUNT(*) FROM outbox GROUP BY lane"):
            counted[Lane(lane)] = count
        assert q.stats().depth == counted


def readings(n: int, *, start: int = 0, size: int = 600) -> list[Outgoing]:
    """Telemetry with the engine's kind of id (uuid hex) and a reading-sized payload."""
    return [
        Outgoing(f"{i:032x}", Lane.TELEMETRY, "covers/gw/telemetry", b"r%07d" % i + bytes(size))
        for i in range(start, start + n)
    ]


def test_damaged_file_is_set_aside_and_readable_rows_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with DurableQueue(path) as q:
        for start in range(0, 3000, 500):
            q.put_many(readings(500, start=start))
        q.put_many([msg(1, Lane.ALARM, 50)])
        q.ack([m.seq for m in q.peek(1)] + [m.seq for m in q.peek(101)[1:]])  # 100 delivered
    pages = path.stat().st_size // 4096
    with path.open("r+b") as f:  # a stretch of the file's middle overwritten, as bad flash does
        f.seek(pages // 2 * 4096)
        f.write(b"\xde\xad\xbe\xef" * 1024 * 8)
    with DurableQueue(path) as q:  # a clean close: no scan at start, the damage shows in use
        kept = q.peek(10_000)
        stats = q.stats()
        q.put_many([msg(2, Lane.ALARM)])
        assert q.peek(1)[0].message.msg_id == "m2"  # the fresh queue works
    assert list(tmp_path.glob("q.corrupt-*"))
    salvaged = stats.counters["salvaged_telemetry"]
    assert 0 < salvaged < 2900
    assert salvaged + stats.counters["lost_unreadable"] == 2900  # every queued row accounted for
    assert stats.depth[Lane.TELEMETRY] == salvaged == len(kept)
    ids = [int(m.message.msg_id, 16) for m in kept]
    assert ids == sorted(ids)  # order kept
    assert all(m.message.payload.startswith(b"r%07d" % int(m.message.msg_id, 16)) for m in kept)


def test_a_queue_written_at_schema_2_migrates(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    script = (Path(__file__).parent / "fixtures" / "queue_v2.sql").read_text()
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()
    with DurableQueue(path) as q:
        stats = q.stats()
        queued = q.peek(10_000)
        assert q.get_state("engine") == '{"alarms":{}}'
        q.put_many([msg(9)])
        newest = q.peek(10_000)[-1].seq
    assert [m.message.msg_id for m in queued[:2]] == [
        "0123456789abcdef0123456789abcdef",
        "evt-manual-0001",
    ]
    assert [m.message.topic for m in queued[:3]] == [
        "covers/gw-v2/alarm",
        "covers/gw-v2/alarm",
        "covers/gw-v2/telemetry",
    ]
    telemetry = queued[2:]
    assert [m.message.msg_id for m in telemetry] == [f"{i:032x}" for i in range(201, 1201)]
    assert telemetry[0].message.payload == b'{"reading_id":"%032x","water_mm":603}' % 201
    assert stats.depth == {Lane.ALARM: 2, Lane.TELEMETRY: 1000}
    assert stats.evicted == {Lane.ALARM: 1, Lane.TELEMETRY: 42}
    assert newest > 1203  # a sequence number once handed out is never reused
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone() == (4,)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_clean_close_is_marked_so_the_next_start_skips_the_scan(tmp_path: Path) -> None:
    path = tmp_path / "q.db"

    def marker() -> int:
        db = sqlite3.connect(path)
        try:
            (value,) = db.execute(
                "SELECT value FROM counters WHERE name = 'clean_close'"
            ).fetchone()
        finally:
            db.close()
        return int(value)

    q = DurableQueue(path)
    q.open()
    assert marker() == 0  # a crash from here on means a check at the next start
    q.close()
    assert marker() == 1


async def test_async_api_commits_on_the_writer_thread(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.db") as q:
        assert await q.put_many_async(readings(50)) == 50
        queued = await q.peek_async(100)
        await q.ack_async([m.seq for m in queued[:20]])
        assert q.stats().depth[Lane.TELEMETRY] == 30
        assert [m.message.msg_id for m in q.peek(1)] == [f"{20:032x}"]


async def test_an_alarm_job_goes_before_telemetry_jobs_waiting_for_the_writer(
    tmp_path: Path,
) -> None:
    """An alarm's commit waits for the writer's job in progress, not for the line behind it.

    The test holds the queue's lock, so the writer stops at its first job while
    the others line up; a peek that was waiting before the alarm's commit was
    submitted runs after it, and so sees the alarm (first come, first served
    would not).
    """
    with DurableQueue(tmp_path / "q.db") as q:
        q.put_many(readings(5))
        with q._lock:
            in_progress = asyncio.create_task(q.peek_async(100))
            waiting = asyncio.create_task(q.peek_async(100))
            alarm = asyncio.create_task(q.put_many_async([msg(1, Lane.ALARM)]))
            await asyncio.sleep(0)  # all three submitted to the writer
        assert await alarm == 1
        seen = [m.message.msg_id for m in await waiting]
        await in_progress
    assert seen[0] == "m1", seen
    assert len(seen) == 6


async def test_ack_by_message_id(tmp_path: Path) -> None:
    """The uplink deletes an alarm it published before its sequence number was known."""
    with DurableQueue(tmp_path / "q.db") as q:
        q.put_many([msg(1, Lane.ALARM), msg(2, Lane.ALARM), *readings(3)])
        await q.ack_ids_async(["m2", "no-such-id"], urgent=True)
        q.ack_ids([f"{0:032x}"])  # an engine-style id, stored as bytes
        left = [m.message.msg_id for m in q.peek(10)]
        depth = q.stats().depth
    assert left == ["m1", f"{1:032x}", f"{2:032x}"]
    assert depth == {Lane.ALARM: 1, Lane.TELEMETRY: 2}


def noisy_readings(n: int, *, start: int = 0) -> list[Outgoing]:
    """Rendered readings (chunked by a v4 queue) that zlib cannot shrink much: ~650 B each."""
    out = []
    for i in range(start, start + n):
        noise = random.Random(i).randbytes(300).hex().encode()
        body = b'{"reading_id":"%032x","noise":"%s"}' % (i, noise)
        out.append(Outgoing(f"{i:032x}", Lane.TELEMETRY, "covers/gw/telemetry", body))
    return out


@pytest.mark.parametrize("chunk", [1, 20])
def test_full_disk_is_a_state_only_queue_errors_and_it_recovers(tmp_path: Path, chunk: int) -> None:
    """A real 2 MiB tmpfs that something else fills: telemetry makes room, acks wait in memory."""
    with (
        small_fs(tmp_path / "fs", 2048) as fs,
        DurableQueue(fs / "q.db", max_bytes=1536 * 1024, chunk_readings=chunk) as q,
    ):
        make = noisy_readings if chunk > 1 else readings  # chunked, or one a row
        q.put_many(make(600))  # about a third of the bound
        filler = fs / "filler"
        fill(filler)  # the logs ate the disk
        alarms: list[str] = []
        put = 600
        for batch in range(1, 40):  # ~1 MB more readings, an alarm with every batch
            alarm = msg(batch, Lane.ALARM, 300)
            try:
                q.put_many([*make(40, start=batch * 40 + 1000), alarm])
            except QueueError:  # the only error there is; the caller keeps the batch
                continue
            alarms.append(alarm.msg_id)
            put += 40
        stats = q.stats()
        assert stats.degraded is not None  # said so
        assert stats.evicted[Lane.TELEMETRY] > 0  # made room
        assert stats.evicted[Lane.ALARM] == 0
        assert len(alarms) >= 35
        assert [m.message.msg_id for m in q.peek(len(alarms))] == alarms
        assert stats.depth[Lane.TELEMETRY] + stats.evicted[Lane.TELEMETRY] == put
        # A reader pins the WAL, so even a delete needs new blocks; the broker is back.
        reader = sqlite3.connect(fs / "q.db")
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM outbox").fetchone()
        for batch in range(40, 60):
            with contextlib.suppress(QueueError):
                q.put_many([*make(40, start=batch * 40 + 1000), msg(batch, Lane.ALARM, 300)])
        delivered = q.peek(2000)
        q.ack([m.seq for m in delivered])  # never raises: held in memory if the disk refuses
        assert not {m.seq for m in q.peek(2000)} & {m.seq for m in delivered}  # not sent twice
        reader.close()
        filler.unlink()  # space comes back
        q.recover()
        stats = q.stats()
        assert stats.degraded is None
        assert stats.held_acks == 0
        left = dict.fromkeys(Lane, 0)
        for lane, count in q.db.execute("SELECT lane, COUNT(*) FROM outbox GROUP BY lane"):
            left[Lane(lane)] = count
        assert stats.depth == left == dict.fromkeys(Lane, 0)
        assert q.reserve_path.stat().st_size == q.reserve_bytes  # ready for the next time
        assert q.put_many(make(10, start=10_000)) == 10


@given(st.one_of(st.text(max_size=40), st.uuids().map(lambda u: u.hex), st.binary().map(bytes.hex)))
def test_message_ids_round_trip_through_their_stored_form(msg_id: str) -> None:
    stored = encode_id(msg_id)
    assert decode_id(stored) == msg_id
    hex_id = len(msg_id) in (24, 32) and not msg_id.strip("0123456789abcdef")  # uuid, engine's
    assert isinstance(stored, bytes) == hex_id


async def test_a_stalled_commit_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    """Another process holds the write lock (as a slow disk holds a commit): the loop runs on."""
    path = tmp_path / "q.db"
    with DurableQueue(path) as q:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # our commit now waits (busy timeout) on the writer
        put = asyncio.create_task(q.put_many_async(readings(5)))
        ticks = 0
        while ticks < 20:  # the loop keeps turning while the commit is stuck
            await asyncio.sleep(0.001)
            ticks += 1
        assert not put.done()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await put == 5
        assert q.stats().depth[Lane.TELEMETRY] == 5


def damaged_copy(tmp_path: Path) -> Path:
    """A queue of 2,000 readings copied while open (what a power cut leaves), a page in
    its middle then overwritten; returns the copy's folder."""
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    live.mkdir()
    crashed.mkdir()
    with DurableQueue(live / "q.db") as q:
        for start in range(0, 2000, 500):
            q.put_many(readings(500, start=start))
        q.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copy(live / "q.db", crashed / "q.db")
    with (crashed / "q.db").open("r+b") as f:
        f.seek(f.seek(0, os.SEEK_END) // 2 // 4096 * 4096)
        f.write(b"\x00\xff" * 4096)
    return crashed


def test_after_an_unclean_stop_damage_is_found_at_open(tmp_path: Path) -> None:
    """A copy taken while the queue is open is what a power cut leaves: the check runs."""
    crashed = damaged_copy(tmp_path)
    with DurableQueue(crashed / "q.db") as q:
        stats = q.stats()  # before any read: the damage was found by the open itself
    assert list(crashed.glob("q.corrupt-*"))
    assert 0 < stats.counters["salvaged_telemetry"] < 2000
    assert stats.counters["salvaged_telemetry"] + stats.counters["lost_unreadable"] == 2000


async def test_the_daemon_s_check_after_an_unclean_stop_runs_beside_the_open(
    tmp_path: Path,
) -> None:
    """check_at_open=False: the open does not scan; check_async finds the damage,
    salvages as the open would have, and a close before it leaves the check owed."""
    crashed = damaged_copy(tmp_path)
    live = tmp_path / "live"  # the undamaged original, closed cleanly
    with DurableQueue(crashed / "q.db", check_at_open=False) as q:
        assert q.unchecked
        assert q.stats().depth[Lane.TELEMETRY] == 2000  # the counters, not a scan
    with DurableQueue(crashed / "q.db", check_at_open=False) as q:
        assert q.unchecked  # still owed: the last close came before the check
        assert not list(crashed.glob("q.corrupt-*"))
        assert await q.check_async() is False
        assert not q.unchecked
        stats = q.stats()
        assert await q.put_many_async(readings(1, start=5000)) == 1  # and it goes on
    assert list(crashed.glob("q.corrupt-*"))
    assert 0 < stats.counters["salvaged_telemetry"] < 2000
    assert stats.counters["salvaged_telemetry"] + stats.counters["lost_unreadable"] == 2000
    with DurableQueue(live / "q.db", check_at_open=False) as q:
        assert not q.unchecked  # closed cleanly: nothing owed
        assert await q.check_async() is True


def test_on_a_full_disk_any_sequence_of_calls_raises_only_queue_errors(tmp_path: Path) -> None:
    """Hypothesis drives puts, acks, peeks and a filler on a real 1 MiB tmpfs."""
    ops = st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(1, 400), st.booleans()),
            st.tuples(st.just("ack"), st.integers(0, 300), st.just(False)),
            st.tuples(st.just("fill"), st.integers(0, 64), st.just(False)),
            st.tuples(st.just("free"), st.just(0), st.just(False)),
        ),
        min_size=1,
        max_size=30,
    )
    with small_fs(tmp_path / "fs", 1024) as fs:

        @settings(max_examples=50, deadline=None)
        @given(ops)
        def run(steps: list[tuple[str, int, bool]]) -> None:
            for leftover in fs.iterdir():
                leftover.unlink()
            serial = 0
            with DurableQueue(fs / "q.db", max_bytes=2 << 20) as q:
                for op, n, alarm in steps:
                    try:
                        if op == "put":
                            batch = readings(n, start=serial)
                            if alarm:
                                batch.append(msg(serial, Lane.ALARM, 200))
                            serial += n + 1
                            q.put_many(batch)
                        elif op == "ack":
                            q.ack([m.seq for m in q.peek(n)])
                        elif op == "fill":
                            fill(fs / f"filler{n}", leave=n * 4096)
                        else:
                            for filler in fs.glob("filler*"):
                                filler.unlink()
                            q.recover()
                    except QueueError:
                        pass  # the one error the queue may raise; anything else fails here
                counted = dict.fromkeys(Lane, 0)
                for lane, count in q.db.execute("SELECT lane, COUNT(*) FROM outbox GROUP BY lane"):
                    counted[Lane(lane)] = count
                stats = q.stats()
                assert {lane: stats.depth[lane] + 0 for lane in Lane} == {
                    lane: counted[lane] - q._held[lane] for lane in Lane
                }

        run()


# --- schema 4: telemetry in chunks, one row per chunk of readings ---


def reading_json(i: int, size: int) -> bytes:
    return b'{"reading_id":"%024x","pad":"%s"}' % (i, b"a" * size)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 300), max_size=30), min_size=1, max_size=6),
    st.integers(1, 12),
    st.integers(200, 2000),
    st.data(),
)
def test_any_split_into_chunks_and_any_row_acks_leave_exactly_the_unacked_readings(
    puts: list[list[int]], max_count: int, max_bytes: int, data: st.DataObject
) -> None:
    """Rows hold whole readings in order, each row fits one uplink batch (and is never
    cut by the uplink), and acks of any rows leave exactly the other rows' readings,
    the depth counted in readings, across a reopen."""
    written: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.db"
        with DurableQueue(path, chunk_readings=max_count, chunk_bytes=max_bytes) as q:
            for sizes in puts:
                batch = [reading_json(len(written) + k, size) for k, size in enumerate(sizes)]
                assert q.put_many(
                    Outgoing(f"{len(written) + k:024x}", Lane.TELEMETRY, "t", r)
                    for k, r in enumerate(batch)
                ) == len(batch)
                written += batch
            rows = q.peek(10_000)
            texts = [unpack_row(r.message.payload) for r in rows]
            for row, text in zip(rows, texts, strict=True):
                parts = text.split(b"\n")
                assert len(parts) == row.n <= max_count
                assert row.n == 1 or len(text) <= max_bytes  # one batch's worth of JSON
                assert row.message.msg_id == json.loads(parts[0])["reading_id"]
            assert [r for t in texts for r in t.split(b"\n")] == written
            units = batch_units(rows, max_count=max_count, max_bytes=max_bytes)
            assert all(u.parts == 0 and u.count <= max_count for u in units)
            assert [s for u in units for s in u.seqs] == [r.seq for r in rows]
            acked = data.draw(
                st.sets(st.sampled_from([r.seq for r in rows])) if rows else st.just(set())
            )
            q.ack(sorted(acked, reverse=True))
            left = [(r.seq, t) for r, t in zip(rows, texts, strict=True) if r.seq not in acked]
            expected = [x for _, t in left for x in t.split(b"\n")]
            assert q.stats().depth[Lane.TELEMETRY] == len(expected)
        with DurableQueue(path, chunk_readings=max_count, chunk_bytes=max_bytes) as q:
            assert q.stats().depth == {Lane.ALARM: 0, Lane.TELEMETRY: len(expected)}
            again = q.peek(10_000)
            assert [r.seq for r in again] == [seq for seq, _ in left]
            got = [x for r in again for x in unpack_row(r.message.payload).split(b"\n")]
            assert got == expected
            (stored,) = q.db.execute("SELECT COALESCE(SUM(n), 0) FROM outbox").fetchone()
            assert stored == len(expected)


def test_a_put_s_telemetry_is_chunked_alarms_stay_one_a_row_and_order_is_kept(
    tmp_path: Path,
) -> None:
    """A payload that is no reading (not JSON, not packed) stays a row of its own, in its
    place; a packed reading alone is kept as it was; a new topic starts a new chunk."""
    packed = pack_row(reading_json(90, 5))
    batch = [
        *(Outgoing(f"{i:024x}", Lane.TELEMETRY, "t", reading_json(i, 5)) for i in range(5)),
        Outgoing("alarm-1", Lane.ALARM, "a", b'{"kind":"cover_open"}'),
        Outgoing("odd", Lane.TELEMETRY, "t", b"\x00not a reading"),
        *(Outgoing(f"{i:024x}", Lane.TELEMETRY, "t", reading_json(i, 5)) for i in range(5, 8)),
        Outgoing(f"{8:024x}", Lane.TELEMETRY, "u", reading_json(8, 5)),
    ]
    with DurableQueue(tmp_path / "q.db", chunk_readings=100) as q:
        assert q.put_many(batch) == 11
        assert q.put_many([Outgoing(f"{90:024x}", Lane.TELEMETRY, "t", packed)]) == 1
        assert q.put_many(batch[:2]) == 0  # the same chunk again: not queued twice
        rows = q.peek(100)
        assert q.stats().depth == {Lane.ALARM: 1, Lane.TELEMETRY: 11}
    assert [(r.message.msg_id, r.message.topic, r.n) for r in rows] == [
        ("alarm-1", "a", 1),
        (f"{0:024x}", "t", 5),
        ("odd", "t", 1),
        (f"{5:024x}", "t", 3),
        (f"{8:024x}", "u", 1),
        (f"{90:024x}", "t", 1),
    ]
    assert rows[2].message.payload == b"\x00not a reading"
    assert rows[-1].message.payload == packed
    assert unpack_row(rows[1].message.payload) == b"\n".join(reading_json(i, 5) for i in range(5))


def test_eviction_takes_whole_chunks_oldest_first_and_counts_readings(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    bound = 2 * 1024 * 1024
    rng = random.Random(7)

    def noisy(i: int) -> bytes:  # readings that do not compress to nothing
        return b'{"reading_id":"%024x","noise":"%s"}' % (i, rng.randbytes(400).hex().encode())

    with DurableQueue(path, max_bytes=bound, chunk_readings=20) as q:
        q.put_many([msg(i, Lane.ALARM, 1000) for i in range(10)])
        for start in range(0, 4000, 40):
            q.put_many(
                Outgoing(f"{i:024x}", Lane.TELEMETRY, "t", noisy(i))
                for i in range(start, start + 40)
            )
        on_disk = q.disk_bytes() + q.reserve_path.stat().st_size
        stats = q.stats()
        rows = q.peek_lane(Lane.TELEMETRY, 10_000)
    assert on_disk <= bound
    assert stats.depth[Lane.ALARM] == 10
    assert stats.evicted[Lane.ALARM] == 0
    assert stats.evicted[Lane.TELEMETRY] % 20 == 0  # whole chunks
    assert stats.evicted[Lane.TELEMETRY] == 4000 - stats.depth[Lane.TELEMETRY] > 0
    assert sum(r.n for r in rows) == stats.depth[Lane.TELEMETRY]
    first = int(rows[0].message.msg_id, 16)
    assert first == stats.evicted[Lane.TELEMETRY]  # the oldest went, the newest stayed


def test_a_queue_written_at_schema_3_migrates_and_its_rows_publish(tmp_path: Path) -> None:
    """tests/fixtures/queue_v3.sql: a queue as today's v3 code wrote it (packed readings,
    a plain JSON row, alarms, state, gaps). Opened with the daemon's chunking it keeps
    every row as a chunk of one, publishes them, and adds chunks after them."""
    path = tmp_path / "q.db"
    script = (Path(__file__).parent / "fixtures" / "queue_v3.sql").read_text()
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()
    with DurableQueue(path, chunk_readings=100, chunk_bytes=64 * 1024) as q:
        stats = q.stats()
        assert stats.depth == {Lane.ALARM: 2, Lane.TELEMETRY: 59}
        assert stats.evicted == {Lane.ALARM: 1, Lane.TELEMETRY: 42}
        assert q.get_state("engine") == '{"alarms":{}}'
        q.put_many(
            Outgoing(f"{i:024x}", Lane.TELEMETRY, "covers/gw-v3/telemetry", reading_json(i, 9))
            for i in range(100, 250)
        )
        rows = q.peek(10_000)
        assert q.stats().depth[Lane.TELEMETRY] == 59 + 150
        units = batch_units(rows, max_count=100, max_bytes=64 * 1024)
        q.ack([s for u in units for s in u.seqs])
        after = q.stats()
    alarms = [u for u in units if u.encoding is None]
    assert [json.loads(u.payload)["msg_id"] for u in alarms] == [
        "0123456789abcdef0123456789abcdef",
        "evt-manual-0001",
    ]
    readings = [
        r for u in units if u.encoding is not None for r in decode_batch(u.payload)["readings"]
    ]
    ids = [r["reading_id"] for r in readings]
    old = [f"{i:024x}" for i in (*range(11, 61), 61, *range(62, 70))]
    assert ids == old + [f"{i:024x}" for i in range(100, 250)]
    assert [r.n for r in rows[2:61]] == [1] * 59
    assert [r.n for r in rows[61:]] == [100, 50]
    assert rows[-1].seq > 72  # a sequence number once handed out is never reused
    assert after.depth == {Lane.ALARM: 0, Lane.TELEMETRY: 0}
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone() == (4,)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_a_damaged_v4_file_salvages_chunks_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with DurableQueue(path, chunk_readings=10) as q:
        q.put_many(
            Outgoing(f"{i:024x}", Lane.TELEMETRY, "t", reading_json(i, 3)) for i in range(35)
        )
        q.put_many([msg(1, Lane.ALARM)])
    db = sqlite3.connect(path)  # damage the unique id index only: every row stays readable
    (root,) = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND sql IS NULL"
    ).fetchone()
    db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * 4096)
        f.write(b"\xde\xad\xbe\xef" * 1024)
    with DurableQueue(path, chunk_readings=10) as q:
        stats = q.stats()
        rows = q.peek(100)
    assert stats.counters["salvaged_telemetry"] == 35
    assert stats.counters["salvaged_alarm"] == 1
    assert stats.depth == {Lane.ALARM: 1, Lane.TELEMETRY: 35}
    assert [r.n for r in rows] == [1, 10, 10, 10, 5]
