"""Alarm latency while a backlog drains (issue 11.2), through a real covergw process.

A queue pre-filled with N telemetry readings (a long outage's worth) drains
to a local Mosquitto while single "cover opened"/"closed" EVENT frames are sent
over UDP; latency is frame sent → alarm at a subscriber. Then the same once
the backlog is gone (idle). Not a test: figures vary with the machine.

    .venv/bin/python scripts/bench_alarm_backlog.py [--backlog 200000] [--alarms 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from firmware_sim.broker import Broker
from firmware_sim.node import SimNode
from gateway.buffer.queue import DurableQueue, Lane, Outgoing
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import EventCode

READING = json.dumps(
    {
        "reading_id": "",
        "time": "2026-11-22T11:22:39.412Z",
        "registered": True,
        "cover": {"cover_id": "HZ-0001", "owner_unit": "drainage", "address": "文三路 88 号"},
        "source": {"type": "node", "port": "nbiot", "node": "00C0FFEE", "seq": 7},
        "records": [{"tlv": "tilt", "x_deg": 0.5, "y_deg": 0.1, "tilt_deg": 0.51}],
    },
    ensure_ascii=False,
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(
    sock: socket.socket, port: int, node: SimNode, arrived: list[float], n: int
) -> list[float]:
    gc.freeze()  # the bench's own collector pauses would time the platform, not the gateway
    latencies = []
    for i in range(n):
        code = EventCode.COVER_OPENED if i % 2 == 0 else EventCode.COVER_CLOSED
        before = len(arrived)
        sent = time.monotonic()
        sock.sendto(encode_frame(node.event(code)), ("127.0.0.1", port))
        async with asyncio.timeout(30):
            while len(arrived) <= before:
                await asyncio.sleep(0.0005)
        latencies.append((arrived[before] - sent) * 1000)
        await asyncio.sleep(0.2)
    return latencies


async def main(backlog: int, alarms: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name, Broker(Path(tmp_name) / "broker") as broker:
        tmp = Path(tmp_name)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            udp_port = probe.getsockname()[1]
        (tmp / "covers.csv").write_text("cover_id,owner_unit,node_id\nHZ-0001,drainage,00C0FFEE\n")
        (tmp / "gw.toml").write_text(
            f'[gateway]\nid = "gw-bench"\nstate_dir = "{tmp / "state"}"\n'
            f'registry = "{tmp / "covers.csv"}"\n'
            f'[uplink]\nhost = "127.0.0.1"\nport = {broker.port}\nstats_interval_s = 60\n'
            f"[queue]\nmax_bytes = {2**31}\n"
            f'[[udp]]\nname = "nbiot"\nbind = "127.0.0.1:{udp_port}"\n'
        )
        # Chunked as the daemon queues readings (its telemetry_batch_max default).
        with DurableQueue(tmp / "state" / "queue.db", max_bytes=2**31, chunk_readings=100) as queue:
            for start in range(0, backlog, 10_000):
                queue.put_many(
                    Outgoing(
                        f"old-{i}",
                        Lane.TELEMETRY,
                        "covers/gw-bench/telemetry",
                        READING.replace('""', f'"old-{i}"', 1).encode(),
                    )
                    for i in range(start, min(backlog, start + 10_000))
                )
        telemetry = 0
        arrived: list[float] = []

        async def subscriber(ready: asyncio.Event) -> None:
            nonlocal telemetry
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-sub") as client:
                await client.subscribe("covers/gw-bench/#", qos=1)
                ready.set()
                async for message in client.messages:
                    if str(message.topic).endswith("/alarm"):
                        arrived.append(time.monotonic())
                    elif str(message.topic).endswith("/telemetry"):
                        telemetry += json.loads(message.payload)["count"]

        ready = asyncio.Event()
        sub = asyncio.create_task(subscriber(ready))
        await ready.wait()
        proc = subprocess.Popen(  # noqa: S603 - our own daemon
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(tmp / "gw.toml")],
            stderr=(tmp / "daemon.log").open("wb"),
        )
        node = SimNode(0x00C0FFEE)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            while telemetry < 1000:
                await asyncio.sleep(0.01)
            draining = await measure(sock, udp_port, node, arrived, alarms)
            left = backlog + alarms - telemetry  # each alarm's frame is a reading too
            while telemetry < backlog + alarms:
                await asyncio.sleep(0.05)
            idle = await measure(sock, udp_port, node, arrived, alarms)
        finally:
            proc.terminate()
            proc.wait(30)
            sub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub
    for name, values in (("while draining", draining), ("idle", idle)):
        print(
            f"alarm latency {name:15} n={len(values):3}  p50 {statistics.median(values):6.1f} ms"
            f"  p99 {percentile(values, 99):6.1f} ms  max {max(values):6.1f} ms"
        )
    print(f"backlog {backlog} readings; {left} still queued after the last alarm while draining")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--alarms", type=int, default=40)
    args = parser.parse_args()
    # Alarms alternate raised/cleared: an even count leaves the cover closed for the idle run.
    asyncio.run(main(args.backlog, args.alarms + args.alarms % 2))
