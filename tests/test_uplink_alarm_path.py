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
from pathlib import Path

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


async def test_alarm_overtakes_a_draining_backlog(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        gw = Gw(tmp_path / "gw", port=broker.port, uplink={"telemetry_batch_max": 1})
        with DurableQueue(gw.workdir / "state" / "queue.db") as queue:
            pad = "x" * 300
            queue.put_many(
                Outgoing(
                    f"old-{i}",
                    Lane.TELEMETRY,
                    "covers/gw-test/telemetry",
                    json.dumps({"reading_id": f"old-{i}", "pad": pad}).encode(),
                )
                for i in range(BACKLOG)
            )
        telemetry = 0
        alarms: list[int] = []  # telemetry messages seen when each alarm arrived
        arrived = asyncio.Event()

        async def platform(subscribed: asyncio.Event) -> None:
            nonlocal telemetry
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="fast-sub") as client:
                await client.subscribe("covers/gw-test/#", qos=1)
                subscribed.set()
                async for message in client.messages:
                    topic = str(message.topic)
                    if topic.endswith("/telemetry"):
                        telemetry += 1
                    elif topic.endswith("/alarm"):
                        alarms.append(telemetry)
                    arrived.set()

        async def until(predicate: object, timeout: float = 30) -> None:
            async with asyncio.timeout(timeout):
                while not predicate():  # type: ignore[operator]
                    arrived.clear()
                    await arrived.wait()

        subscribed = asyncio.Event()
        sub = asyncio.create_task(platform(subscribed))
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            gw.start()
            await until(lambda: telemetry >= 200)
            overtaken = []
            for i, code in enumerate([EventCode.COVER_OPENED, EventCode.COVER_CLOSED] * 3):
                before = telemetry
                gw.event(code)
                await until(lambda i=i: len(alarms) > i)
                overtaken.append(alarms[i] - before)
            left_behind = telemetry
            await until(lambda: telemetry >= BACKLOG, timeout=120)
            assert gw.stop() == 0
        finally:
            gw.close()
            sub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub
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
        with DurableQueue(gw.workdir / "state" / "queue.db") as queue:
            for start in range(0, backlog, 10_000):
                queue.put_many(
                    Outgoing(
                        f"old-{i}",
                        Lane.TELEMETRY,
                        "covers/gw-test/telemetry",
                        json.dumps({"reading_id": f"old-{i}", "pad": "x" * 300}).encode(),
                    )
                    for i in range(start, start + 10_000)
                )
        readings = 0
        alarms: list[tuple[int, str, str]] = []  # (readings seen before it, msg_id, state)
        arrived = asyncio.Event()

        async def platform(subscribed: asyncio.Event) -> None:
            nonlocal readings
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="order-sub") as client:
                await client.subscribe("covers/gw-test/#", qos=1)
                subscribed.set()
                async for message in client.messages:
                    topic = str(message.topic)
                    assert isinstance(message.payload, bytes)
                    if topic.endswith("/telemetry"):
                        readings += json.loads(message.payload)["count"]
                    elif topic.endswith("/alarm"):
                        body = json.loads(message.payload)
                        alarms.append((readings, body["msg_id"], body["state"]))
                    arrived.set()

        async def until(predicate: object, timeout: float = 60) -> None:
            async with asyncio.timeout(timeout):
                while not predicate():  # type: ignore[operator]
                    arrived.clear()
                    await arrived.wait()

        subscribed = asyncio.Event()
        sub = asyncio.create_task(platform(subscribed))
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            gw.start()
            await until(lambda: readings >= 1000)
            for i, code in enumerate([EventCode.COVER_OPENED, EventCode.COVER_CLOSED] * 3):
                gw.event(code)
                await until(lambda i=i: len(alarms) > i)
            # Each EVENT frame is a reading too.
            await until(lambda: readings >= backlog + 6, timeout=180)
            assert gw.stop() == 0
            left = gw.queued()
        finally:
            gw.close()
            sub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub
    assert [state for _, _, state in alarms] == ["raised", "cleared"] * 3
    assert len({msg_id for _, msg_id, _ in alarms}) == 6  # none published twice
    assert all(seen < backlog for seen, _, _ in alarms), alarms
    assert readings == backlog + 6
    assert left == []  # every alarm deleted once acknowledged
