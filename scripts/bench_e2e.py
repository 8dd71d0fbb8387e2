"""End to end through a real covergw process and Mosquitto (not a test).

1. Throughput: N REPORT frames written to a pty as fast as it takes them;
   sustained readings/s = N / (first byte written → last reading at a
   subscriber), through the durable queue (synchronous=FULL) and QoS 1.
2. Latency: single EVENT "cover opened" frames; time from the frame's last
   byte on the pty to its alarm at the subscriber.

    .venv/bin/python scripts/bench_e2e.py [--frames N] [--events M]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from firmware_sim.broker import Broker
from firmware_sim.ptys import PtyPort
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Frame,
    FrameFlags,
    Link,
    MessageType,
    Temperature,
    Tilt,
    WaterDepth,
)


def report(node: int, seq: int) -> bytes:
    return encode_frame(
        Frame(
            node,
            seq,
            MessageType.REPORT,
            FrameFlags.NONE,
            (Tilt(0.3, -0.2), WaterDepth(1800), Battery(3600), Temperature(15.5), Link(-90, 8)),
        )
    )


def opened(node: int, seq: int) -> bytes:
    return encode_frame(
        Frame(
            node,
            seq,
            MessageType.EVENT,
            FrameFlags.NODE_ALARM,
            (Event(EventCode.COVER_OPENED, 0, 4520), Tilt(45.2, -1.1)),
        )
    )


async def write_all(port: PtyPort, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(port.master, view)
        except BlockingIOError:
            await asyncio.sleep(0.0005)
            continue
        view = view[n:]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, Broker(Path(tmp_name) / "broker") as broker:
        tmp = Path(tmp_name)
        port = PtyPort()
        nodes = 2000
        registry = tmp / "covers.csv"
        registry.write_text(
            "cover_id,owner_unit,node_id\n"
            + "".join(f"B-{i:05d},drainage,{0x00E00000 + i:08X}\n" for i in range(args.events)),
            encoding="utf-8",
        )
        config = tmp / "gw.toml"
        config.write_text(
            f'[gateway]\nid = "gw-bench"\nstate_dir = "{tmp}/state"\nregistry = "{registry}"\n'
            f'[uplink]\nhost = "127.0.0.1"\nport = {broker.port}\nstats_interval_s = 60\n'
            f'[[radio]]\nname = "lora0"\nport = "{port.path}"\nbaudrate = 115200\n'
            "[alarms]\noffline_after_s = 86400\n",
            encoding="utf-8",
        )
        proc = subprocess.Popen(  # noqa: S603 - our own daemon
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "--log-level",
                "WARNING",
                "run",
                "--config",
                str(config),
            ],
        )
        readings = 0
        alarm_at: dict[str, float] = {}
        got_all = asyncio.Event()
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.subscribe("covers/gw-bench/#", qos=1)

                async def listen() -> None:
                    nonlocal readings
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        payload = json.loads(message.payload)
                        topic = str(message.topic)
                        if topic.endswith("/telemetry"):
                            readings += sum(
                                1
                                for r in payload["readings"]
                                if r["source"]["msg_type"] == "REPORT"
                            )
                            if readings >= args.frames:
                                got_all.set()
                        elif topic.endswith("/alarm") and payload["state"] == "raised":
                            alarm_at.setdefault(payload["source"]["node"], time.perf_counter())

                listener = asyncio.create_task(listen())
                await asyncio.sleep(1.5)  # daemon up, port open
                stream = b"".join(
                    report(0x00A00000 + i % nodes, i // nodes) for i in range(args.frames)
                )
                start = time.perf_counter()
                await write_all(port, stream)
                written = time.perf_counter()
                await asyncio.wait_for(got_all.wait(), 300)
                done = time.perf_counter()

                latencies = []
                for i in range(args.events):
                    node = 0x00E00000 + i
                    await write_all(port, opened(node, 1))
                    sent = time.perf_counter()
                    while f"{node:08X}" not in alarm_at:
                        await asyncio.sleep(0.0005)
                    latencies.append(alarm_at[f"{node:08X}"] - sent)
                    await asyncio.sleep(0.05)
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_rss = next(
                line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")
            )
        finally:
            proc.terminate()
            proc.wait(15)
            port.close()
    n = args.frames
    print(f"{n} REPORT frames, {len(stream)} bytes, one covergw process, durable queue, QoS 1")
    print(f"  pty took them in            {written - start:6.2f} s")
    rate = n / (done - start)
    print(
        f"  last reading at subscriber  {done - start:6.2f} s  →  {rate:,.0f} readings/s sustained"
    )
    ms = sorted(x * 1000 for x in latencies)
    print(f"covergw peak resident memory: {int(peak_rss) / 1024:.0f} MiB")
    p95 = ms[int(len(ms) * 0.95) - 1]
    print(
        f"frame → alarm at subscriber over {len(ms)} events: "
        f"median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
