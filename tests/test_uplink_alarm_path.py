"""Alarms never wait for a telemetry backlog: each is published the moment it is committed.

Before, a fresh alarm waited for the 2,000-row drain round in flight. Here a
backlog of 30,000 single-reading telemetry messages drains while alarms are
raised and cleared; each alarm must reach the broker with far fewer than a
round's worth of telemetry messages arriving between its frame and itself
(the median of six alarms, so one slow moment on a loaded machine does not decide).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt

from firmware_sim.broker import Broker
from gateway.buffer.queue import DurableQueue, Lane, Outgoing
from gateway.protocol.messages import EventCode
from tests.uplink_rig import Gw

BACKLOG = 30_000
# Telemetry messages between an alarm's frame and the alarm, the median of six
# (the old uplink: 1,800 to 2,000, the rest of a round; now a few dozen to a few
# hundred, more on a loaded machine).
OVERTAKEN_MEDIAN_MAX = 800


def queue_backlog(gw: Gw, rows: int) -> None:
    """``rows`` telemetry readings already queued before the daemon starts."""
    with DurableQueue(gw.workdir / "state" / "queue.db") as queue:
        for start in range(0, rows, 10_000):
            queue.put_many(
                Outgoing(
                    f"old-{i}",
                    Lane.TELEMETRY,
                    "covers/gw-test/telemetry",
                    json.dumps({"reading_id": f"old-{i}", "pad": "x" * 300}).encode(),
                )
                for i in range(start, min(rows, start + 10_000))
            )


class Platform:
    """A subscriber counting readings and noting, for each alarm, how many came before it."""

    def __init__(self) -> None:
        self.readings = 0
        self.alarms: list[tuple[int, str, str]] = []  # (readings seen before it, msg_id, state)
        self.queue_stats: list[dict[str, Any]] = []  # each stats message's ``queue``
        self._arrived = asyncio.Event()

    async def listen(self, port: int, subscribed: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier="platform-sub") as client:
            await client.subscribe("covers/gw-test/#", qos=1)
            subscribed.set()
            async for message in client.messages:
                topic = str(message.topic)
                assert isinstance(message.payload, bytes)
                if topic.endswith("/telemetry"):
                    self.readings += json.loads(message.payload)["count"]
                elif topic.endswith("/alarm"):
                    body = json.loads(message.payload)
                    self.alarms.append((self.readings, body["msg_id"], body["state"]))
                elif topic.endswith("/stats"):
                    self.queue_stats.append(json.loads(message.payload)["queue"])
                self._arrived.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def listening(port: int) -> AsyncIterator[Platform]:
    platform = Platform()
    subscribed = asyncio.Event()
    sub = asyncio.create_task(platform.listen(port, subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        yield platform
    finally:
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sub


async def test_alarm_overtakes_a_draining_backlog(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        gw = Gw(tmp_path / "gw", port=broker.port, uplink={"telemetry_batch_max": 1})
        queue_backlog(gw, BACKLOG)
        async with listening(broker.port) as seen:
            try:
                gw.start()
                await seen.until(lambda: seen.readings >= 200, timeout=30)
                overtaken = []  # telemetry messages (one reading each) between frame and alarm
                for i, code in enumerate([EventCode.COVER_OPENED, EventCode.COVER_CLOSED] * 3):
                    before = seen.readings
                    gw.event(code)
                    await seen.until(lambda i=i: len(seen.alarms) > i, timeout=30)
                    overtaken.append(seen.alarms[i][0] - before)
                left_behind = seen.readings
                await seen.until(lambda: seen.readings >= BACKLOG, timeout=120)
                assert gw.stop() == 0
            finally:
                gw.close()
    assert left_behind < BACKLOG - 1000, "the backlog had drained: nothing was overtaken"
    assert sorted(overtaken)[len(overtaken) // 2] < OVERTAKEN_MEDIAN_MAX, overtaken


async def test_alarms_reach_the_broker_before_the_backlog_once_each(tmp_path: Path) -> None:
    """Default batching: each alarm arrives while the backlog still drains, in order, once.

    Alarms are published while their commit runs (the short path); each must
    still be deleted from the queue, and none published again from it.
    """
    backlog = 60_000
    with Broker(tmp_path / "broker") as broker:
        gw = Gw(tmp_path / "gw", port=broker.port)
        queue_backlog(gw, backlog)
        async with listening(broker.port) as seen:
            try:
                gw.start()
                await seen.until(lambda: seen.readings >= 1000)
                for i, code in enumerate([EventCode.COVER_OPENED, EventCode.COVER_CLOSED] * 3):
                    gw.event(code)
                    await seen.until(lambda i=i: len(seen.alarms) > i)
                # Each EVENT frame is a reading too.
                await seen.until(lambda: seen.readings >= backlog + 6, timeout=180)
                assert gw.stop() == 0
                left = gw.queued()
            finally:
                gw.close()
    alarms, readings = seen.alarms, seen.readings
    assert [state for _, _, state in alarms] == ["raised", "cleared"] * 3
    assert len({msg_id for _, msg_id, _ in alarms}) == 6  # none published twice
    assert all(before < backlog for before, _, _ in alarms), alarms
    assert readings == backlog + 6
    assert left == []  # every alarm deleted once acknowledged


async def test_an_alarm_does_not_wait_for_a_commit_that_stalls(tmp_path: Path) -> None:
    """A commit that cannot finish (a tool holds the queue's write lock, as a card that
    stalls holds up an fsync): an alarm that arrives meanwhile is published all the
    same, before the commit gives up; once the lock is let go everything is delivered
    and deleted from the queue."""
    with Broker(tmp_path / "broker") as broker:
        gw = Gw(tmp_path / "gw", port=broker.port)
        async with listening(broker.port) as seen:
            try:
                gw.start()
                await seen.until(lambda: len(seen.queue_stats) >= 1)  # serving
                gw.report()
                await seen.until(lambda: seen.readings >= 1)
                # SQLite's busy timeout (5 s) is how long the daemon's commit waits for it.
                tool = sqlite3.connect(gw.workdir / "state" / "queue.db", isolation_level=None)
                tool.execute("BEGIN IMMEDIATE")
                try:
                    gw.report()
                    # Two stats a second apart with the reading still in memory: its
                    # commit (due 0.05 s after it) is stalled on the lock.
                    stats = len(seen.queue_stats)
                    await seen.until(
                        lambda: (
                            len(seen.queue_stats) >= stats + 2
                            and seen.queue_stats[-2]["pending_in_memory"] >= 1
                            and seen.queue_stats[-1]["pending_in_memory"] >= 1
                        )
                    )
                    gw.event(EventCode.COVER_OPENED)
                    await seen.until(lambda: len(seen.alarms) == 1, timeout=20)
                    out = len(seen.queue_stats)
                    await seen.until(lambda: len(seen.queue_stats) > out)
                    stalled = seen.queue_stats[-1]
                finally:
                    tool.execute("ROLLBACK")
                    tool.close()
                await seen.until(lambda: seen.readings >= 3)  # two reports and the event
                assert gw.stop() == 0
                left = gw.queued()
            finally:
                gw.close()
    assert stalled["write_errors"] == 0, stalled  # the alarm did not wait for it to give up
    assert stalled["pending_in_memory"] >= 2  # the reading, and the alarm's own messages
    assert [state for _, _, state in seen.alarms] == ["raised"]
    assert left == []
