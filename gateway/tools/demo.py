"""``covergw demo``: the whole thing on one machine, shown as a platform operator sees it.

A local Mosquitto (unless ``--broker`` names one), the simulator playing a
scenario, and the daemon, wired together; a live table of alarms as they
arrive at the broker, a progress line, and a summary. Ctrl-C ends it
cleanly, leaving nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiomqtt

from gateway.config import parse_config
from gateway.daemon import Gateway

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Board:
    """What the operator sees: one line per alarm, progress, summary."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.alarms: dict[str, dict[str, Any]] = {}
        self.readings = 0
        self.latencies: list[float] = []
        self.stats: dict[str, Any] = {}
        self.header_done = False

    def take(self, topic: str, payload: dict[str, Any]) -> None:
        kind = topic.rsplit("/", 1)[-1]
        if kind == "telemetry":
            self.readings += len(payload["readings"])
        elif kind == "stats":
            self.stats = payload
        elif kind == "alarm" and payload["msg_id"] not in self.alarms:
            self.alarms[payload["msg_id"]] = payload
            self._alarm_line(payload)

    def _alarm_line(self, a: dict[str, Any]) -> None:
        if not self.header_done:
            print(
                f"{'time':<9} {'cover':<14} {'owner unit':<15} {'alarm':<26} {'':<8} "
                f"{'value':>10}  latency",
                file=self.out,
            )
            self.header_done = True
        latency = time.time() - _parse_time(a["time"])
        self.latencies.append(latency)
        cover = a["cover"]
        who = cover["cover_id"] if cover else f"node {a['source'].get('node', '?')}"
        owner = cover["owner_unit"] if cover else "(unregistered)"
        source = a.get("source") or {}
        # Which sensor: a wired slave's sub-key, else a commercial device's model.
        what = a["sub"] or (source.get("model") if source.get("type") == "device" else None)
        kind = a["kind"] + (f" {what}" if what else "")
        value = "" if a["value"] is None else f"{a['value']:g} {a['unit'] or ''}"
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        print(
            f"{stamp:<9} {who:<14} {owner:<15} {kind:<26} {a['state'].upper():<8} "
            f"{value:>10}  {latency * 1000:5.0f} ms",
            file=self.out,
            flush=True,
        )

    def progress(self, now_s: float, duration_s: float) -> None:
        q = self.stats.get("queue", {})
        frames = sum(p.get("frames", 0) for p in self.stats.get("ports", {}).values())
        print(
            f"  … t={now_s:5.0f}/{duration_s:.0f}s  frames {frames}  readings at broker "
            f"{self.readings}  alarms {len(self.alarms)}  queue {q.get('depth_telemetry', 0)}"
            f"+{q.get('depth_alarm', 0)}  uplink {self.stats.get('uplink', {}).get('state', '?')}",
            file=self.out,
            flush=True,
        )

    def summary(self) -> None:
        counts = Counter((a["kind"], a["state"]) for a in self.alarms.values())
        print("\nsummary", file=self.out)
        for (kind, state), n in sorted(counts.items()):
            print(f"  {kind:<16} {state:<8} {n}", file=self.out)
        if self.latencies:
            ordered = sorted(self.latencies)
            p50 = ordered[len(ordered) // 2] * 1000
            print(f"  alarm latency event→broker: median {p50:.0f} ms", file=self.out)
        ports = self.stats.get("ports", {})
        rejected = sum(v for p in ports.values() for k, v in p.items() if k.startswith("rejected_"))
        edge = self.stats.get("edge", {})
        print(
            f"  readings delivered {self.readings}; rejected frames {rejected}; "
            f"duplicates {edge.get('duplicates', 0)}; lost by seq gap {edge.get('lost_frames', 0)}",
            file=self.out,
        )


async def _watch(host: str, port: int, board: Board, ready: asyncio.Event) -> None:
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier=f"covergw-demo-{port}") as client:
                await client.subscribe("covers/#", qos=1)
                ready.set()
                async for message in client.messages:
                    if message.topic.matches("covers/+/cmd"):
                        continue  # requests are anyone's bytes, not the gateway's JSON
                    if isinstance(message.payload, bytes):
                        board.take(str(message.topic), json.loads(message.payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def demo(
    scenario_name: str, *, duration_s: float | None, speed: float, broker: str | None
) -> int:
    from firmware_sim.__main__ import resolve_scenario  # noqa: PLC0415 - demo-only dependency
    from firmware_sim.broker import Broker, free_port  # noqa: PLC0415
    from firmware_sim.runner import ScenarioRunner  # noqa: PLC0415
    from firmware_sim.scenario import load_scenario  # noqa: PLC0415
    from firmware_sim.wiring import census, gateway_config  # noqa: PLC0415

    scenario = load_scenario(resolve_scenario(scenario_name))
    duration = duration_s or scenario.duration_s / speed
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    board = Board(sys.stdout)
    with (
        tempfile.TemporaryDirectory(prefix="covergw-demo-") as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        if broker:
            host, _, port_text = broker.rpartition(":")
            host, port = host or "127.0.0.1", int(port_text)
        else:
            local = stack.enter_context(Broker(tmp / "broker"))
            host, port = "127.0.0.1", local.port
        udp_port = free_port()
        print(
            f"covergw demo: scenario {scenario.name!r} ({len(scenario.nodes)} covers), "
            f"broker {host}:{port}, {duration:.0f} s (Ctrl-C to stop)"
        )
        print(f"  {scenario.description}\n")
        async with ScenarioRunner(
            # The demo's broker doubles as the simulated ChirpStack's.
            scenario,
            speed=speed,
            udp_target=("127.0.0.1", udp_port),
            ns_broker=(host, port),
        ) as sim:
            data = gateway_config(
                tmp,
                broker_port=port,
                endpoints=sim.endpoints(),
                scenario=scenario,
                registry_csv=census(scenario),
                udp_port=udp_port,
                gateway_id="gw-demo",
                uplink={"host": host, "stats_interval_s": 2},
                alarms={"offline_after_s": max(10.0, 3 * 30 / speed)},
                poll_interval_s=0.5,
            )
            gateway = Gateway(parse_config(data, base_dir=tmp))
            ready = asyncio.Event()
            watcher = asyncio.create_task(_watch(host, port, board, ready))
            await asyncio.wait_for(ready.wait(), 10)
            gw_stop = asyncio.Event()
            gw_task = asyncio.create_task(gateway.run(gw_stop))
            sim_task = asyncio.create_task(sim.run(stop))
            started = time.monotonic()
            while not stop.is_set() and not sim_task.done():
                elapsed = time.monotonic() - started
                if elapsed >= duration:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(PROGRESS_EVERY_S, duration - elapsed))
                board.progress(time.monotonic() - started, duration)
            stop.set()
            await sim_task
            await sim.quiesce()
            await asyncio.sleep(1.0)  # the last frames reach the broker
            gw_stop.set()
            await gw_task
            await asyncio.sleep(0.5)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    board.summary()
    return 0


def run(scenario: str, *, duration_s: float | None, speed: float, broker: str | None) -> int:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return asyncio.run(demo(scenario, duration_s=duration_s, speed=speed, broker=broker))
