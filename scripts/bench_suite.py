"""``./dev bench``: every performance figure of the gateway, measured on the real thing.

Not a test. Each figure runs the real daemon (``covergw run`` as a process)
against a Mosquitto of its own on loopback, fed through real ptys and real
UDP, and reads what arrives at a subscriber, ``/proc`` for CPU and memory, and
the state directory for disk. It prints one table (figure, value, target, the
command that reproduces it) and writes the same as JSON.

These machines are noisy: throughput is also given as a ratio against a naive
baseline measured in the same run (one SQLite commit and one QoS 1 publish per
reading, the simplest correct store-and-forward), which moves with the machine.

    .venv/bin/python scripts/bench_suite.py [--smoke] [--only KEY ...] [--json FILE]
        [--nodes 1000,10000,100000]   # the nodes figures as a curve

``--smoke`` runs every figure at a size that takes seconds: CI runs it to
prove the suite still works; its numbers mean nothing. Targets live here and
in docs/performance.md, never in a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_alarm_session import raised_node
from bench_e2e import opened, report
from bench_framer import reports as mixed_frames

from firmware_sim.broker import Broker
from firmware_sim.ptys import PtyPort
from gateway.buffer.queue import DurableQueue, Lane, Outgoing
from gateway.control import request as control_request
from gateway.protocol.codec import encode_frame
from gateway.protocol.framing import StreamFramer
from gateway.protocol.messages import (
    Battery,
    Frame,
    FrameFlags,
    Link,
    MessageType,
    Temperature,
    Tilt,
    WaterDepth,
)
from gateway.wire import TelemetryEncoding, decode_batch

GW = "gw-bench"
CHUNK = 500  # frames written at a time by the end-to-end figure
WINDOW = 10_000  # readings it lets be outstanding (the daemon's input queue holds 20,000)
DAEMON = (sys.executable, "-m", "gateway.cli", "--log-level", "ERROR", "run")
# What the daemon imports in any figure's configuration: compiled once into the
# suite's byte-code cache before the first figure (see bytecode_cache). The last
# line is the standard library's share that a daemon imports only once running
# (argparse's gettext, the broker name's codec, asyncio's default executor for
# paho's connect): with a cache prefix Python no longer reads the standard
# library's own __pycache__, so without them a daemon compiled these from source
# (~1.2 MiB of its idle RSS) where an installed one reads byte-code. The idle
# figure names any module a daemon still compiled.
WARM_UP = (
    "import gateway.cli, gateway.daemon_main, gateway.daemon, gateway.commands, "
    "gateway.drivers.serial_radio, gateway.drivers.udp, gateway.drivers.modbus, "
    "gateway.control, gateway.cover_records, gateway.cbor_layout, "
    "locale, encodings.idna, concurrent.futures.thread"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")

SIZES: dict[str, dict[str, int]] = {
    "full": {
        "decode_frames": 50_000,
        "e2e_frames": 50_000,
        "naive_readings": 2_000,
        "idle_events": 200,
        "backlog_rows": 520_000,
        "backlog_events": 100,
        "nodes_small": 10_000,
        "nodes_large": 100_000,
        "active_events": 50,
        "idle_window_s": 60,
        "udp_covers": 20_000,
        "udp_rate": 500,
        "peer_window_s": 60,
        "startup_rows": 1_000_000,
        "wire_frames": 2_000,
    },
    "smoke": {
        "decode_frames": 2_000,
        "e2e_frames": 2_000,
        "naive_readings": 100,
        "idle_events": 10,
        "backlog_rows": 5_000,
        "backlog_events": 5,
        "nodes_small": 300,
        "nodes_large": 600,
        "active_events": 5,
        "idle_window_s": 1,
        "udp_covers": 200,
        "udp_rate": 500,
        "peer_window_s": 1,
        "startup_rows": 5_000,
        "wire_frames": 1_000,
    },
}


@dataclass
class Figure:
    key: str
    title: str
    value: float | None
    unit: str
    target: str  # e.g. "<= 20"; empty when the figure is context for another
    command: str
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or not self.target:
            return None
        op, bound = self.target.split()
        return self.value <= float(bound) if op == "<=" else self.value >= float(bound)


def cmd(key: str) -> str:
    return f".venv/bin/python scripts/bench_suite.py --only {key}"


# --- frames ---


def varied(node: int, seq: int) -> bytes:
    """A REPORT with values that move as real ones do (the wire figures: compression flatters
    constants). Drawn from a seed per (node, seq), so every run sends the same bytes."""
    rnd = random.Random(node * 65536 + seq)
    records = (
        Tilt(round(rnd.gauss(0.3, 0.2), 2), round(rnd.gauss(-0.2, 0.2), 2)),
        WaterDepth(rnd.randint(1200, 2400)),
        Battery(rnd.randint(3400, 3650)),
        Temperature(round(rnd.uniform(8, 22), 1)),
        Link(rnd.randint(-115, -70), rnd.randint(-10, 12)),
    )
    return encode_frame(Frame(node, seq & 0xFFFF, MessageType.REPORT, FrameFlags.NONE, records))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


# --- the process under test ---


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_sched_ns(pid: int) -> dict[int, int]:
    """Each live thread's time on CPU in ns (the first field of its ``schedstat``).

    Precise where ``proc_cpu_s`` counts clock ticks (10 ms): the figures that
    are a few ticks a minute read this. A thread that ends between two
    readings takes its time with it; ``sched_cpu_s`` says how many did.
    """
    ns: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            ns[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return ns


def sched_cpu_s(before: dict[int, int], after: dict[int, int]) -> tuple[float, int]:
    """CPU seconds between two ``proc_sched_ns`` readings, and how many threads ended between
    them (their time since ``before`` is missing from the figure)."""
    ns = sum(t - before.get(tid, 0) for tid, t in after.items())
    return ns / 1e9, len(before.keys() - after.keys())


def proc_mem_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Platform:
    """The platform's side: one subscriber to the gateway's whole topic tree."""

    port: int
    readings: int = 0
    telemetry_bytes: int = 0
    telemetry_messages: int = 0
    record_bytes: int = 0  # retained cover records (compact encodings): once per cover
    alarms: dict[str, float] = field(default_factory=dict)  # node → arrival (perf_counter)
    online_at: float | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic.endswith("/telemetry"):
            body = decode_batch(payload)  # any telemetry_encoding
            self.readings += len(body.get("readings", ()))
            self.telemetry_bytes += len(payload) + len(topic)
            self.telemetry_messages += 1
        elif "/cover/" in topic:
            self.record_bytes += len(payload) + len(topic)
        elif topic.endswith("/alarm"):
            arrived = time.perf_counter()
            node = raised_node(payload)
            if node:
                self.alarms.setdefault(node, arrived)
        elif (
            topic.endswith("/status")
            and not retained
            and self.online_at is None
            and json.loads(payload).get("state") == "online"
        ):
            self.online_at = time.perf_counter()
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], limit_s: float) -> None:
        await until(self._changed, predicate, limit_s)


async def until(changed: asyncio.Event, predicate: Callable[[], bool], limit_s: float) -> None:
    """Until PREDICATE holds, looked at again each time CHANGED is set; at most LIMIT_S."""
    async with asyncio.timeout(limit_s):
        while not predicate():
            changed.clear()
            await changed.wait()


@contextlib.asynccontextmanager
async def subscribed(port: int) -> AsyncIterator[Platform]:
    seen = Platform(port)
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-{port}") as client:
        await client.subscribe(f"covers/{GW}/#", qos=1)

        async def pump() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.take(str(message.topic), message.payload, bool(message.retain))

        task = asyncio.create_task(pump())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass
class Daemon:
    tmp: Path
    broker_port: int
    radio: PtyPort | None = None
    udp_port: int | None = None
    modbus: str = ""
    registry_rows: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    encoding: str = "json"

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def write_config(self) -> Path:
        lines = [
            f'[gateway]\nid = "{GW}"\nstate_dir = "{self.state}"',
            f'[uplink]\nhost = "127.0.0.1"\nport = {self.broker_port}\nstats_interval_s = 600'
            f'\ntelemetry_encoding = "{self.encoding}"',
            "[alarms]\noffline_after_s = 86400",
        ]
        if self.registry_rows:
            registry = self.tmp / "covers.csv"
            registry.write_text(
                "cover_id,owner_unit,node_id\n" + "".join(self.registry_rows), encoding="utf-8"
            )
            lines[0] += f'\nregistry = "{registry}"'
        if self.radio is not None:
            lines.append(
                f'[[radio]]\nname = "lora0"\nport = "{self.radio.path}"\nbaudrate = 115200'
            )
        if self.udp_port is not None:
            # Every simulated node sends from 127.0.0.1: lift the per-source limit (sized
            # for one node per address) so the figure is the daemon's own intake.
            lines.append(
                f'[[udp]]\nname = "nbiot"\nbind = "127.0.0.1:{self.udp_port}"\n'
                "source_rate = 100000.0\nsource_burst = 100000"
            )
        if self.modbus:
            lines.append(self.modbus)
        config = self.tmp / "gw.toml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return config

    def start(self) -> float:
        config = self.write_config()
        started = time.perf_counter()
        self.proc = subprocess.Popen(  # noqa: S603 - our own daemon
            [*DAEMON, "--config", str(config)],
            env=DAEMON_ENV or None,
        )
        return started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def status(self) -> dict[str, Any]:
        return await control_request(self.state / "control.sock", "status")

    async def wait_ready(self, limit_s: float = 30) -> None:
        async with asyncio.timeout(limit_s):
            while True:
                with contextlib.suppress(OSError, ValueError, TimeoutError):
                    await self.status()
                    return
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


async def write_all(port: PtyPort, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(port.master, view[:65536])
        except BlockingIOError:
            await asyncio.sleep(0.0005)
            continue
        view = view[n:]


async def feed(port: PtyPort, seen: Platform, frames: list[bytes]) -> None:
    """Write FRAMES closed-loop: never more than WINDOW readings outstanding.

    Well inside the daemon's input queue, so what is measured is the rate it
    sustains without shedding (a faster writer makes it shed telemetry, by
    design, and count it; a "no loss" figure would then never complete).
    """
    base = seen.readings
    for first in range(0, len(frames), CHUNK):
        await seen.until(lambda first=first: seen.readings - base >= first - WINDOW, 600)
        await write_all(port, b"".join(frames[first : first + CHUNK]))


async def alarm_latencies(
    seen: Platform,
    port: PtyPort,
    nodes: list[int],
    *,
    gap_s: float = 0.02,
    alone: AlarmSession | None = None,
) -> tuple[list[float], list[float]]:
    """Single EVENT frames, one at a time: last byte on the pty → alarm at the platform (ms),
    at SEEN (every topic, one session) and at ALONE (alarms only; empty without one).

    The bench's own objects are frozen first: its collector's full passes
    (15-25 ms each while a backlog's telemetry pours in) timed the platform, not the gateway.
    """
    gc.freeze()
    shared: list[float] = []
    apart: list[float] = []
    for node in nodes:
        await write_all(port, opened(node, 7))
        sent = time.perf_counter()
        key = f"{node:08X}"
        await seen.until(lambda key=key: key in seen.alarms, 60)  # type: ignore[misc]
        shared.append((seen.alarms[key] - sent) * 1000)
        if alone is not None:
            apart.append((await alone.arrival(key, 60) - sent) * 1000)
        await asyncio.sleep(gap_s)
    return shared, apart


class AlarmSession:
    """``bench_alarm_session.py`` running: a platform's alarm consumer, apart from the suite."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.alarms: dict[str, float] = {}  # node → arrival (perf_counter, in that process)
        self._changed = asyncio.Event()

    async def __aenter__(self) -> AlarmSession:
        script = Path(__file__).with_name("bench_alarm_session.py")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(self.broker_port), stdout=subprocess.PIPE
        )
        assert self._proc.stdout is not None
        async with asyncio.timeout(30):
            ready = await self._proc.stdout.readline()
        if ready.strip() != b"READY":
            raise RuntimeError(f"alarm session did not subscribe: {ready!r}")
        self._reader = asyncio.create_task(self._read(self._proc.stdout))
        return self

    async def _read(self, out: asyncio.StreamReader) -> None:
        async for line in out:
            node, at = line.split()
            self.alarms.setdefault(node.decode(), float(at))
            self._changed.set()

    async def arrival(self, node: str, limit_s: float) -> float:
        await until(self._changed, lambda: node in self.alarms, limit_s)
        return self.alarms[node]

    async def __aexit__(self, *_: object) -> None:
        self._proc.terminate()
        await self._proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def alarm_rows(base: int, count: int, prefix: str = "A") -> list[str]:
    return [f"{prefix}-{i:06d},drainage,{base + i:08X}\n" for i in range(count)]


# --- the figures ---


class Suite:
    def __init__(self, tmp: Path, size: dict[str, Any]) -> None:
        self.tmp = tmp
        self.n = size
        self.figures: list[Figure] = []
        self._runs = 0

    def add(self, *figures: Figure) -> None:
        for f in figures:
            self.figures.append(f)
            print(f"  {f.title}: {shown(f.value)} {f.unit}  (target {f.target or '—'})", flush=True)

    def workdir(self) -> Path:
        self._runs += 1
        path = self.tmp / f"run{self._runs}"
        path.mkdir()
        return path

    @contextlib.asynccontextmanager
    async def running(
        self, *, radio: bool = True, registry: list[str] | None = None, **kw: Any
    ) -> AsyncIterator[tuple[Daemon, Platform, Broker]]:
        work = self.workdir()
        with Broker(work / "broker") as broker:
            port = PtyPort() if radio else None
            daemon = Daemon(work, broker.port, radio=port, registry_rows=registry or [], **kw)
            try:
                async with subscribed(broker.port) as seen:
                    daemon.start()
                    await daemon.wait_ready()
                    await seen.until(lambda: seen.online_at is not None, 30)
                    yield daemon, seen, broker
            finally:
                daemon.stop()
                if port is not None:
                    port.close()

    def decode(self) -> None:
        frames = mixed_frames(self.n["decode_frames"])
        stream = b"".join(frames)
        best = float("inf")
        for _ in range(3):
            framer = StreamFramer()
            start = time.perf_counter()
            for i in range(0, len(stream), 256):
                framer.feed(stream[i : i + 256])
            best = min(best, time.perf_counter() - start)
        self.add(
            Figure(
                "decode",
                "decode through the stream framer, mixed REPORT/EVENT",
                len(frames) / best,
                "frames/s/core",
                ">= 60000",
                ".venv/bin/python scripts/bench_framer.py",
            )
        )

    async def naive_rate(self) -> float:
        """The simplest correct store-and-forward: commit, publish QoS 1, wait, delete."""
        work = self.workdir()
        payload = json.dumps({"reading": "x" * 400}).encode()
        count = self.n["naive_readings"]
        with Broker(work / "broker") as broker:
            db = sqlite3.connect(work / "naive.db", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, payload BLOB)")
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                start = time.perf_counter()
                for _ in range(count):
                    row = db.execute("INSERT INTO q (payload) VALUES (?)", (payload,)).lastrowid
                    await client.publish(f"covers/{GW}/telemetry", payload, qos=1)
                    db.execute("DELETE FROM q WHERE id = ?", (row,))
                elapsed = time.perf_counter() - start
            db.close()
        return count / elapsed

    async def _fed(self, count: int, nodes: int, registry: list[str]) -> tuple[float, float, float]:
        """COUNT REPORTs round-robin from NODES nodes: readings/s, CPU s, wire B/reading."""
        base = 0x00A00000
        async with self.running(registry=registry) as (daemon, seen, _):
            assert daemon.radio is not None
            frames = [report(base + i % nodes, i // nodes) for i in range(count)]
            cpu0 = proc_cpu_s(daemon.pid)
            start = time.perf_counter()
            await feed(daemon.radio, seen, frames)
            await seen.until(lambda: seen.readings >= count, 600)
            elapsed = time.perf_counter() - start
            cpu = proc_cpu_s(daemon.pid) - cpu0
        return count / elapsed, cpu, seen.telemetry_bytes / max(1, seen.readings)

    async def throughput(self, naive: float) -> None:
        """Strangers (the figure: 2,000 unregistered nodes churning through their LRU), then
        the same frames from 2,000 registered covers (context: the common case on a box)."""
        count = self.n["e2e_frames"]
        nodes = 2000
        rate, cpu, per_reading = await self._fed(count, nodes, [])
        # At most 25 frames per cover: within each one's forwarding rate (60 a minute).
        registered = min(count, 25 * nodes)
        reg_rate, reg_cpu, _ = await self._fed(registered, nodes, alarm_rows(0x00A00000, nodes))
        self.add(
            Figure(
                "e2e_rate",
                "end to end, frames in → broker-acknowledged, no loss",
                rate,
                "readings/s",
                ">= 25000",
                cmd("e2e_rate"),
                f"{rate / naive:.1f}× the naive baseline ({naive:,.0f}/s) in the same run",
            ),
            Figure(
                "e2e_cpu",
                "CPU per reading, end to end",
                cpu / count * 1e6,
                "µs",
                "<= 35",
                cmd("e2e_rate"),
            ),
            Figure(
                "wire_bytes",
                "telemetry bytes on the wire per reading (JSON, topic + payload)",
                per_reading,
                "B",
                "",
                cmd("e2e_rate"),
                "targets: ≤ 40 B compact (cbor), ≤ 60 B deflated JSON; JSON stays the default",
            ),
            Figure(
                "e2e_registered_rate",
                "… the same from 2,000 registered covers",
                reg_rate,
                "readings/s",
                "",
                cmd("e2e_rate"),
                f"{reg_rate / naive:.1f}× the naive baseline; {registered:,} readings",
            ),
            Figure(
                "e2e_registered_cpu",
                "… CPU per reading from 2,000 registered covers",
                reg_cpu / registered * 1e6,
                "µs",
                "",
                cmd("e2e_rate"),
            ),
        )

    async def wire(self) -> None:
        """Telemetry bytes per reading in each encoding: registered covers, varied values.

        At most 10 frames per node: the engine forwards a node's telemetry up to a rate
        (more is judged, not sent), and 200 covers keep the status answer small enough.
        """
        count, nodes = self.n["wire_frames"], 200
        base = 0x00A00000
        registry = [f"W-{i:06d},drainage,{base + i:08X}\n" for i in range(nodes)]
        for encoding in TelemetryEncoding:
            async with self.running(registry=registry, encoding=encoding.value) as (
                daemon,
                seen,
                _,
            ):
                assert daemon.radio is not None
                stream = b"".join(varied(base + i % nodes, i // nodes) for i in range(count))
                await write_all(daemon.radio, stream)
                await seen.until(lambda: seen.readings >= count, 600)
                per_reading = seen.telemetry_bytes / max(1, seen.readings)
            target = {"json": "", "json-deflate": "<= 60", "cbor": "<= 40"}[encoding.value]
            self.add(
                Figure(
                    f"wire_bytes_{encoding.value.replace('-', '_')}",
                    f"telemetry B/reading on the wire, {encoding.value}, registered, varied",
                    per_reading,
                    "B",
                    target,
                    cmd("wire"),
                    f"{seen.telemetry_messages} messages for {seen.readings} readings"
                    + (
                        f"; plus {seen.record_bytes / nodes:.0f} B per cover once per"
                        " broker session (its retained record)"
                        if seen.record_bytes
                        else ""
                    ),
                )
            )

    async def idle_latency(self) -> None:
        count = self.n["idle_events"]
        base = 0x00E00000
        cached = cached_modules()
        async with self.running(registry=alarm_rows(base, count)) as (daemon, seen, _):
            assert daemon.radio is not None
            ms, _ = await alarm_latencies(seen, daemon.radio, [base + i for i in range(count)])
            rss = proc_mem_mib(daemon.pid)
        # A module the warm-up missed was compiled inside the measured daemon: say so.
        late = sorted(cached_modules() - cached) if cached else []
        note = f"compiled at run time, add to WARM_UP: {', '.join(late)}" if late else ""
        self.add(
            Figure(
                "latency_idle_p50",
                "alarm latency idle, p50",
                statistics.median(ms),
                "ms",
                "",
                cmd("latency_idle"),
            ),
            Figure(
                "latency_idle_p99",
                "alarm latency idle, p99",
                percentile(ms, 99),
                "ms",
                "<= 5",
                cmd("latency_idle"),
            ),
            Figure(
                "rss_idle",
                "RSS idle (one radio, a few covers)",
                rss,
                "MiB",
                "<= 30",
                cmd("rss"),
                note,
            ),
        )

    def prefill(self, state: Path, rows: int) -> None:
        """A backlog as the daemon itself queues it, written through the queue's own API."""
        prefix = "5eed" * 4

        def row(i: int) -> bytes:
            """A registered node's REPORT as the engine renders it (varied values)."""
            rnd = random.Random(i)
            node = i % 2000
            reading = {
                "cover_id": f"A-{node:06d}",
                "reading_id": f"{prefix}{i:08x}",
                "time": f"2026-11-30T04:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
                "source": {
                    "type": "node",
                    "port": "lora0",
                    "node": f"{0x00A00000 + node:08X}",
                    "seq": i // 2000 % 65536,
                    "msg_type": "REPORT",
                },
                "records": [
                    {"tlv": "tilt", "x_deg": rnd.randint(-60, 60) / 100, "y_deg": -0.2,
                     "tilt_deg": rnd.randint(0, 80) / 100},
                    {"tlv": "water_depth", "distance_mm": rnd.randint(1200, 2400),
                     "no_echo": False},
                    {"tlv": "battery", "voltage_mv": rnd.randint(3400, 3650)},
                    {"tlv": "temperature", "celsius": rnd.randint(80, 220) / 10},
                    {"tlv": "link", "rssi_dbm": rnd.randint(-115, -70),
                     "snr_db": rnd.randint(-10, 12)},
                ],
                "derived": {"tilt_deg": rnd.randint(0, 30) / 100},
            }  # fmt: skip
            return json.dumps(reading, separators=(",", ":")).encode()

        # Chunked as the daemon queues them (its [uplink] telemetry_batch_max and
        # telemetry_batch_bytes defaults): one row per chunk of readings.
        with DurableQueue(
            state / "queue.db", max_bytes=1 << 40, chunk_readings=100, chunk_bytes=64 * 1024
        ) as queue:
            batch = 5000
            for start in range(0, rows, batch):
                queue.put_many(
                    Outgoing(f"{prefix}{i:08x}", Lane.TELEMETRY, f"covers/{GW}/telemetry", row(i))
                    for i in range(start, min(rows, start + batch))
                )

    def disk_bytes(self, state: Path) -> int:
        return sum(p.stat().st_size for p in state.glob("queue.db*"))

    async def backlog(self) -> None:
        """Alarms while a backlog drains, timed at a platform session taking alarms alone
        (docs/mqtt-api.md "Order": what a platform is told to do, and the gateway's share);
        and, for context, at the suite's own reader of every topic on one session, which
        reads each alarm behind whatever telemetry it has not read yet."""
        rows, events = self.n["backlog_rows"], self.n["backlog_events"]
        base = 0x00E10000
        work = self.workdir()
        daemon_state = work / "state"
        daemon_state.mkdir()
        self.prefill(daemon_state, rows)
        disk = self.disk_bytes(daemon_state) / rows
        with Broker(work / "broker") as broker:
            port = PtyPort()
            daemon = Daemon(work, broker.port, radio=port, registry_rows=alarm_rows(base, events))
            try:
                async with subscribed(broker.port) as seen, AlarmSession(broker.port) as alone:
                    daemon.start()
                    await daemon.wait_ready()
                    await seen.until(lambda: seen.readings > 0, 60)
                    shared, ms = await alarm_latencies(
                        seen, port, [base + i for i in range(events)], gap_s=0.05, alone=alone
                    )
                    draining = seen.readings < rows
            finally:
                daemon.stop()
                port.close()
        drained = "" if draining else "; the backlog was drained before the last alarm"
        self.add(
            Figure(
                "latency_backlog_p99",
                f"alarm latency while a {rows:,}-reading backlog drains, p99",
                percentile(ms, 99),
                "ms",
                "<= 20",
                cmd("backlog"),
                f"p50 {statistics.median(ms):.1f} ms; at a session taking alarms alone" + drained,
            ),
            Figure(
                "latency_backlog_shared_p99",
                "… at one session reading every topic (the suite's own reader)",
                percentile(shared, 99),
                "ms",
                "",
                cmd("backlog"),
                f"p50 {statistics.median(shared):.1f} ms; its pace, not the gateway's"
                " (docs/storage.md, drain_max_rate)",
            ),
            Figure(
                "disk_per_reading",
                "disk per queued reading (database and WAL)",
                disk,
                "B",
                "<= 200",
                cmd("backlog"),
            ),
        )

    async def startup(self) -> None:
        rows = self.n["startup_rows"]
        work = self.workdir()
        (work / "state").mkdir()
        self.prefill(work / "state", rows)
        with Broker(work / "broker") as broker:
            daemon = Daemon(work, broker.port)
            try:
                async with subscribed(broker.port) as seen:
                    started = daemon.start()
                    await seen.until(lambda: seen.online_at is not None, 120)
                    assert seen.online_at is not None
                    elapsed = seen.online_at - started
            finally:
                daemon.stop()
        interpreter = self.interpreter_start_s()
        self.add(
            Figure(
                "startup",
                f"start to retained `online` with {rows:,} readings queued",
                elapsed - interpreter,
                "s",
                "<= 0.3",
                cmd("startup"),
                f"after the interpreter's own start-up ({interpreter:.2f} s) is taken off",
            )
        )

    @staticmethod
    def interpreter_start_s() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import gateway.cli"], check=True)
        return time.perf_counter() - start

    async def nodes(self) -> None:
        curve = self.n.get("curve")  # --nodes 1000,10000,100000: one run per count
        if curve:
            for count in curve:
                await self._nodes(count, f"{count}")
            return
        for count, label in ((self.n["nodes_small"], "small"), (self.n["nodes_large"], "large")):
            await self._nodes(count, label)

    async def _nodes(self, count: int, label: str) -> None:
        events = self.n["active_events"]
        base = 0x00E20000
        # Registered covers, each with its node: what a city block is (strangers' node
        # ids are bounded by limits.unregistered_nodes and would measure that bound).
        covers = alarm_rows(base, events) + alarm_rows(0x01000000, count, prefix="N")
        async with self.running(registry=covers) as (daemon, seen, _):
            assert daemon.radio is not None
            frames = [report(0x01000000 + i, 1) for i in range(count)]
            start = time.perf_counter()
            await feed(daemon.radio, seen, frames)
            await seen.until(lambda: seen.readings >= count, 1200)
            first_contact = time.perf_counter() - start
            rss = proc_mem_mib(daemon.pid)
            ms, _ = await alarm_latencies(seen, daemon.radio, [base + i for i in range(events)])
            window = self.n["idle_window_s"]
            cpu0 = proc_cpu_s(daemon.pid)
            await asyncio.sleep(window)
            idle_cpu = (proc_cpu_s(daemon.pid) - cpu0) / window * 60
            peak = proc_mem_mib(daemon.pid, "VmHWM")
        self.add(
            Figure(
                f"latency_nodes_{label}",
                f"alarm latency p50 with {count:,} active nodes",
                statistics.median(ms),
                "ms",
                "<= 5",
                cmd("nodes"),
            ),
            Figure(
                f"first_contact_{label}",
                f"one frame from each of {count:,} nodes, pty → broker",
                first_contact,
                "s",
                "<= 10" if label == "large" or count >= 100_000 else "",
                cmd("nodes"),
                f"{count / first_contact:,.0f} frames/s",
            ),
            Figure(
                f"rss_nodes_{label}",
                f"RSS with {count:,} active nodes",
                rss,
                "MiB",
                "<= 150" if label == "large" or count >= 100_000 else "<= 60",
                cmd("nodes"),
                f"peak {peak:.0f} MiB",
            ),
            Figure(
                f"idle_cpu_{label}",
                f"idle CPU with {count:,} nodes",
                idle_cpu,
                "CPU-s/min",
                "<= 0.3",
                cmd("nodes"),
            ),
        )

    async def udp_contact(self) -> None:
        count, rate = self.n["udp_covers"], self.n["udp_rate"]
        base = 0x02000000
        rows = [f"U-{i:06d},drainage,{base + i:08X}\n" for i in range(count)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            udp_port = int(probe.getsockname()[1])
        async with self.running(radio=False, registry=rows, udp_port=udp_port) as (_, seen, _b):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                start = time.perf_counter()
                for i in range(count):
                    out.sendto(report(base + i, 1), ("127.0.0.1", udp_port))
                    ahead = start + (i + 1) / rate - time.perf_counter()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            with contextlib.suppress(TimeoutError):
                await seen.until(lambda: seen.readings >= count, 30)
            taken = seen.readings
        self.add(
            Figure(
                "udp_first_contact",
                f"first contact of {count:,} registered covers over UDP at {rate}/s, taken in",
                100 * taken / count,
                "%",
                ">= 100",
                cmd("udp"),
                f"{taken:,} of {count:,}",
            )
        )

    async def peer(self, *, noisy: bool = False) -> None:
        """The peer's work: two Modbus RTU slaves polled at 1 Hz into the local broker.

        NOISY: their values move from one read to the next, as a real
        inclinometer's and level transmitter's last digits do (the daemon skips
        work for a reading that repeats the last one; a real sensor rarely does).
        """
        work = self.workdir()
        scenario = work / "peer.toml"
        wit_noise, level_noise = (0.05, 0.002) if noisy else (0.0, 0.0)
        scenario.write_text(
            '[scenario]\nname = "peer"\nduration_s = 100000\nseed = 1\n'
            '[[buses]]\nname = "rs485-0"\n'
            '[[buses.slaves]]\nmodel = "wit_inclinometer"\naddress = 80\n'
            f"noise = {wit_noise}\n"
            '[[buses.slaves]]\nmodel = "qdy30a_level"\naddress = 1\nlevel = 0.5\ndecimals = 3\n'
            f"noise = {level_noise}\n",
            encoding="utf-8",
        )
        sim = subprocess.Popen(  # noqa: S603 - our own simulator
            [sys.executable, "-m", "firmware_sim", "--scenario", str(scenario), "--json"],
            stdout=subprocess.PIPE,
        )
        try:
            assert sim.stdout is not None
            endpoints = json.loads(sim.stdout.readline())
            bus = endpoints["buses"]["rs485-0"]
            modbus = (
                f'[[modbus]]\nname = "rs485-0"\nport = "{bus["path"]}"\n'
                f"baudrate = {bus['baudrate']}\n"
                '[[modbus.slaves]]\naddress = 80\nprofile = "wit_inclinometer"\n'
                "poll_interval_s = 1.0\n"
                '[[modbus.slaves]]\naddress = 1\nprofile = "qdy30a_level"\n'
                "poll_interval_s = 1.0\n"
            )
            async with self.running(radio=False, modbus=modbus) as (daemon, _, _b):
                await asyncio.sleep(min(2, self.n["peer_window_s"]))  # the first polls
                window = self.n["peer_window_s"]
                cpu0, sched0 = proc_cpu_s(daemon.pid), proc_sched_ns(daemon.pid)
                await asyncio.sleep(window)
                sched, ended = sched_cpu_s(sched0, proc_sched_ns(daemon.pid))
                ticks = proc_cpu_s(daemon.pid) - cpu0
        finally:
            sim.terminate()
            sim.wait(10)
        cpu = sched / window * 60
        note = f"schedstat, all threads; /proc/PID/stat ticks: {ticks / window * 60:.3f}"
        if ended:
            note += f"; {ended} threads ended in the window, their time lost"
        if noisy:
            self.add(
                Figure(
                    "peer_cpu_noisy",
                    "… the same, sensor values that move each read (±0.05°, ±2 mm)",
                    cpu,
                    "CPU-s/min",
                    "",
                    cmd("peer"),
                    note,
                )
            )
            return
        self.add(
            Figure(
                "peer_cpu",
                "CPU on the peer's work (two Modbus slaves at 1 Hz)",
                cpu,
                "CPU-s/min",
                "<= 0.026",
                cmd("peer"),
                f"{note}; ThingsBoard IoT Gateway measured 13 CPU-s/min on the same work",
            )
        )

    async def run(self, only: set[str]) -> None:
        def wanted(key: str) -> bool:
            return not only or key in only

        if wanted("decode"):
            print("decode", flush=True)
            self.decode()
        if wanted("e2e_rate"):
            print("end to end (and the naive baseline)", flush=True)
            await self.throughput(await self.naive_rate())
        if wanted("wire"):
            print("telemetry bytes per reading, each encoding", flush=True)
            await self.wire()
        if wanted("latency_idle") or wanted("rss"):
            print("idle alarm latency", flush=True)
            await self.idle_latency()
        if wanted("backlog"):
            print("alarm latency under a draining backlog", flush=True)
            await self.backlog()
        if wanted("startup"):
            print("start-up with a full queue", flush=True)
            await self.startup()
        if wanted("nodes"):
            print("many nodes", flush=True)
            await self.nodes()
        if wanted("udp"):
            print("first contact over UDP", flush=True)
            await self.udp_contact()
        if wanted("peer"):
            print("the peer's work", flush=True)
            await self.peer()
            await self.peer(noisy=True)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def shown(value: float | None) -> str:
    """Two decimals; three below 1 (a CPU-s/min figure near its target)."""
    return "—" if value is None else f"{value:,.{3 if abs(value) < 1 else 2}f}"


def table(figures: list[Figure]) -> Iterator[str]:
    yield f"{'figure':<66} {'value':>12} {'unit':<11} {'target':<10} met"
    for f in figures:
        value = shown(f.value)
        met = {True: "yes", False: "NO", None: ""}[f.met]
        yield f"{f.title[:66]:<66} {value:>12} {f.unit:<11} {f.target:<10} {met}"
    yield ""
    yield "Reproduce one figure with its command:"
    for f in figures:
        yield f"  {f.key:<22} {f.command}" + (f"   ({f.note})" if f.note else "")


DAEMON_ENV: dict[str, str] = {}  # empty: the suite's own environment


def cached_modules() -> set[str]:
    """The modules in the daemons' byte-code cache (empty with ``--env-as-is``)."""
    cache = DAEMON_ENV.get("PYTHONPYCACHEPREFIX")
    if cache is None:
        return set()
    return {f"{p.parent.name}/{p.name.split('.')[0]}" for p in Path(cache).rglob("*.pyc")}


def bytecode_cache(cache: Path) -> dict[str, str]:
    """The daemon's environment as installed: modules loaded from compiled byte-code.

    The .deb compiles everything at install (deploy/build-deb.sh), but a
    development machine may set PYTHONDONTWRITEBYTECODE, and then every start
    compiles every module from source: a slower start and ~1.5 MiB more RSS
    that no box carries. The suite gives its daemons a byte-code cache of
    their own (PYTHONPYCACHEPREFIX), filled once here. ``--env-as-is`` runs
    them in the suite's own environment instead (compiled from source where
    no ``__pycache__`` is found beside a module, or none may be written).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    subprocess.run([sys.executable, "-c", WARM_UP], env=env, check=True)  # noqa: S603
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every figure, seconds-long")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        metavar="KEY",
        help="decode e2e_rate wire latency_idle rss backlog startup nodes udp peer",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--env-as-is",
        action="store_true",
        help="daemons in the suite's own environment, not the byte-code cache it fills",
    )
    parser.add_argument(
        "--nodes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=None,
        metavar="N,N,...",
        help="the nodes figures as a curve over these counts (docs/performance.md)",
    )
    args = parser.parse_args()
    size: dict[str, Any] = dict(SIZES["smoke" if args.smoke else "full"])
    if args.nodes:
        size["curve"] = args.nodes
    with tempfile.TemporaryDirectory(prefix="covergw-bench-") as tmp:
        if not args.env_as_is:
            DAEMON_ENV.update(bytecode_cache(Path(tmp) / "pycache"))
        suite = Suite(Path(tmp), size)
        asyncio.run(suite.run(set(args.only)))
    print()
    for line in table(suite.figures):
        print(line)
    result = {
        "mode": "smoke" if args.smoke else "full",
        "bytecode": "the environment as it is" if args.env_as_is else "cached, as installed",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "figures": [{**asdict(f), "met": f.met} for f in suite.figures],
    }
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
