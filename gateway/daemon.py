"""``covergw run``: the drivers, the edge engine, the durable queue and the uplink, wired.

Data flows one way: drivers → (protocol) → inputs → engine → queue → uplink.
One task (the pipeline) owns the engine and is the queue's only writer.
Readers never wait for it: when the inputs back up, telemetry is shed and
counted; alarms never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.buffer.queue import DurableQueue, Lane, Outgoing, QueueError
from gateway.commands import CommandHandler
from gateway.config import GatewayConfig, SlaveConfig, load_config
from gateway.console import Console
from gateway.control import ControlServer
from gateway.drivers.base import Driver
from gateway.drivers.modbus import ModbusBus, SlaveError
from gateway.drivers.serial_radio import SerialRadio
from gateway.drivers.udp import UdpListener
from gateway.edge.engine import EdgeEngine, iso
from gateway.errors import ConfigError
from gateway.events import Input
from gateway.metrics import StatsCollector
from gateway.metrics import serve as serve_metrics
from gateway.protocol.framing import Item
from gateway.registry import Registry, load_registry
from gateway.sdnotify import Notifier
from gateway.tap import Heard, Tap
from gateway.tools.status import status_line
from gateway.uplink import Uplink

log = logging.getLogger(__name__)

INPUT_QUEUE = 20_000
MEMORY_BACKLOG = 50_000  # messages held in memory while the disk refuses writes
TICK_S = 1.0
STATE_KEY = "engine"


@dataclass
class PipelineStats:
    shed_telemetry: int = 0
    dropped_unwritten: int = 0
    queue_write_errors: int = 0


def slave_map(config: GatewayConfig) -> dict[tuple[str, int], SlaveConfig]:
    return {(bus.name, s.address): s for bus in config.modbus for s in bus.slaves}


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.last_reload: dict[str, Any] | None = None
        self._reload_requested = False
        self.clock = clock
        self.started_at = clock()
        self.stats = PipelineStats()
        self.notifier = notifier or Notifier(None)
        self._inputs: asyncio.Queue[Input] = asyncio.Queue(maxsize=INPUT_QUEUE)
        self._critical: deque[Input] = deque()
        self._input_ready = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._pending: list[Outgoing] = []
        registry, errors = self._load_registry()
        self.registry_errors = errors
        self.engine = EdgeEngine(
            gateway_id=config.gateway_id,
            registry=registry,
            thresholds=config.thresholds,
            kind_thresholds=config.kind_thresholds,
            slaves=slave_map(config),
            started_at=self.started_at,
        )
        self.tap = Tap()
        self.drivers: list[Driver] = [
            *(SerialRadio(r, self.submit, clock=clock, tap=self._heard) for r in config.radios),
            *(UdpListener(u, self.submit, clock=clock, tap=self._heard) for u in config.udp),
            *(ModbusBus(b, self.submit, clock=clock) for b in config.modbus),
        ]
        self.commands = CommandHandler(self, gateway_id=config.gateway_id, clock=clock)
        if config.console is not None:
            self.drivers.append(Console(config.console, self, gateway_id=config.gateway_id))
        self.queue = DurableQueue(config.queue_path, max_bytes=config.queue.max_bytes, clock=clock)
        self.uplink: Uplink | None = None
        self.metrics = StatsCollector() if config.metrics.enabled else None

    def _load_registry(self) -> tuple[Registry, list[str]]:
        if self.config.registry is None:
            return Registry(), []
        registry, errors = load_registry(self.config.registry)
        log.info("registry: %d covers (%d rows refused)", len(registry.covers), len(errors))
        return registry, [str(e) for e in errors]

    # --- the drivers' sink ---

    def _heard(self, source: str, at: float, item: Item) -> None:
        self.tap.publish(Heard(source, at, item))

    def submit(self, event: Input, critical: bool) -> None:
        """Never blocks a reader; sheds telemetry under overload, never an alarm."""
        if critical:
            self._critical.append(event)
        else:
            try:
                self._inputs.put_nowait(event)
            except asyncio.QueueFull:
                self.stats.shed_telemetry += 1
                return
        self._input_ready.set()

    # --- running ---

    async def run(self, stop: asyncio.Event) -> None:
        with self.queue:
            saved = self.queue.get_state(STATE_KEY)
            if saved:
                self.engine.restore(json.loads(saved))
            self.uplink = Uplink(
                self.config.uplink,
                topic_root=self.config.topic_root,
                queue=self.queue,
                wakeup=self._wakeup,
                birth=self.birth,
                stats_payload=self.stats_payload,
                stats_interval_s=self.config.uplink.stats_interval_s,
                on_command=self.commands.handle,
            )
            drivers_stop = asyncio.Event()
            pipeline_stop = asyncio.Event()
            uplink_stop = asyncio.Event()
            control = ControlServer(
                self.config.control_path,
                {"status": self.local_status},
                {"tail": self.tail_lines},
            )
            if self.metrics is not None:
                self.metrics.snapshot = self.stats_payload()
                serve_metrics(self.metrics, self.config.metrics.host, self.config.metrics.port)
            async with control, asyncio.TaskGroup() as tasks:
                for driver in self.drivers:
                    tasks.create_task(driver.run(drivers_stop), name=f"driver-{driver.name}")
                pipeline = tasks.create_task(self._pipeline(pipeline_stop), name="pipeline")
                uplink = tasks.create_task(self.uplink.run(uplink_stop), name="uplink")
                await asyncio.sleep(0)  # drivers and uplink have started
                self.notifier.ready()
                log.info("covergw %s running as %s", __version__, self.config.gateway_id)
                await stop.wait()
                self.notifier.stopping()
                log.info("stopping: draining inputs and committing the queue")
                drivers_stop.set()
                await asyncio.sleep(0)
                pipeline_stop.set()
                await pipeline
                uplink_stop.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(uplink), self.config.uplink.publish_timeout_s
                    )
                if not uplink.done():
                    uplink.cancel()
        log.info("stopped")

    async def _pipeline(self, stop: asyncio.Event) -> None:
        """The only writer: engine → pending → one commit per batch."""
        flush_every = self.config.queue.flush_interval_s
        first_pending: float | None = None
        next_tick = time.monotonic() + TICK_S
        while True:
            urgent = False
            if self._reload_requested:
                self._reload()
            for event in self._take():
                out = self.engine.handle(event)
                urgent |= any(m.lane is Lane.ALARM for m in out)
                self._pending += out
            self.notifier.watchdog()  # from this loop: if it hangs, systemd restarts us
            if time.monotonic() >= next_tick:
                if self.notifier.enabled or self.metrics is not None:
                    snapshot = self.stats_payload()  # once, for whoever reads it
                    self.notifier.status(status_line(snapshot))
                    if self.metrics is not None:
                        self.metrics.snapshot = snapshot
                out = self.engine.tick(self.clock())
                urgent |= bool(out)
                self._pending += out
                next_tick = time.monotonic() + TICK_S
            if self._pending and first_pending is None:
                first_pending = time.monotonic()
            due = first_pending is not None and time.monotonic() - first_pending >= flush_every
            full = len(self._pending) >= self.config.queue.flush_max
            if (urgent or due or full or self.engine.dirty) and self._flush():
                first_pending = None
            if stop.is_set() and self._inputs.empty() and not self._critical:
                self._flush()
                return
            self._input_ready.clear()
            if self._inputs.empty() and not self._critical and not stop.is_set():
                wait = flush_every if self._pending else TICK_S
                if self.notifier.watchdog_interval_s is not None:
                    wait = min(wait, self.notifier.watchdog_interval_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._input_ready.wait(), wait)
            else:
                await asyncio.sleep(0)

    def _take(self, limit: int = 1000) -> list[Input]:
        events: list[Input] = []
        while self._critical and len(events) < limit:
            events.append(self._critical.popleft())
        while len(events) < limit:
            try:
                events.append(self._inputs.get_nowait())
            except asyncio.QueueEmpty:
                break
        return events

    def _flush(self) -> bool:
        state = None
        if self.engine.dirty:
            state = {STATE_KEY: json.dumps(self.engine.snapshot())}
        if not self._pending and not state:
            return True
        try:
            self.queue.put_many(self._pending, state=state)
        except QueueError as err:
            # Disk full or failing: keep going, keep alarms in memory, say so.
            self.stats.queue_write_errors += 1
            self.engine.dirty = True
            log.error(  # noqa: TRY400 - the reason is the message; no traceback wanted
                "queue write failed, holding %d messages in memory: %s", len(self._pending), err
            )
            self._trim_backlog()
            return False
        self._pending.clear()
        self._wakeup.set()
        return True

    def _trim_backlog(self) -> None:
        excess = len(self._pending) - MEMORY_BACKLOG
        if excess <= 0:
            return
        kept: list[Outgoing] = []
        for message in self._pending:
            if excess > 0 and message.lane is Lane.TELEMETRY:
                excess -= 1
                self.stats.dropped_unwritten += 1
                continue
            kept.append(message)
        self._pending = kept

    # --- reloading (SIGHUP) ---

    def reload_now(self) -> dict[str, Any]:
        """For the reload command: carry it out and report the outcome."""
        self._reload()
        return dict(self.last_reload or {"ok": False, "reason": "no configuration file to reload"})

    def request_reload(self) -> None:
        """Reload registry and thresholds at the pipeline's next turn (it owns the engine)."""
        self._reload_requested = True
        self._input_ready.set()

    def _reload(self) -> None:
        self._reload_requested = False
        at = iso(self.clock())
        if self.config_path is None:
            self.last_reload = {"ok": False, "at": at, "reason": "started without a config file"}
            return
        try:
            new = load_config(self.config_path)
            registry, errors = load_registry(new.registry) if new.registry else (Registry(), [])
        except (ConfigError, OSError) as err:
            log.error("reload refused, the configuration in force stays: %s", err)  # noqa: TRY400
            self.last_reload = {"ok": False, "at": at, "reason": str(err)}
        else:
            restart = [
                name
                for name in (
                    "gateway_id",
                    "state_dir",
                    "uplink",
                    "queue",
                    "radios",
                    "udp",
                    "modbus",
                )
                if getattr(new, name) != getattr(self.config, name)
            ]
            if restart:
                log.warning("reload: %s changed; that takes effect at restart", ", ".join(restart))
            self.engine.reconfigure(
                registry, new.thresholds, new.kind_thresholds, self.engine.slaves
            )
            self.config = replace(
                self.config,
                registry=new.registry,
                thresholds=new.thresholds,
                kind_thresholds=new.kind_thresholds,
                digest=new.digest,
            )
            self.registry_errors = [str(e) for e in errors]
            self.last_reload = {"ok": True, "at": at, "restart_needed": restart}
            log.info("reloaded: %d covers, config %s", len(registry.covers), new.digest)
        if self.uplink is not None:
            self.uplink.announce()

    # --- what people and the platform are told ---

    def local_status(self) -> dict[str, Any]:
        """For ``covergw status`` on the box: the stats, plus alarms and nodes by name."""
        seen = sorted(self.engine.frames_seen(), key=lambda item: item[1], reverse=True)
        return {
            "stats": self.stats_payload(),
            "config_digest": self.config.digest,
            "active_alarms": self.engine.active_alarms(),
            "nodes_last_seen": [{"node": node, "at": iso(at)} for node, at in seen[:50]],
            "nodes_seen": len(seen),
            "last_reload": self.last_reload,
        }

    def covers(self) -> list[dict[str, Any]]:
        out = []
        for cover in self.engine.registry.covers.values():
            sensors = [f"{cover.node_id:08X}"] if cover.node_id is not None else []
            sensors += [f"{bus}:{slave}" for bus, slave in cover.modbus]
            out.append({**cover.identity(), "sensor": " ".join(sensors) or "-"})
        return out

    def run_command(self, request: dict[str, Any]) -> dict[str, Any]:
        """The same path as the platform's commands: validated, idempotent, logged."""
        answer: dict[str, Any] = json.loads(self.commands.handle(json.dumps(request).encode()))
        return answer

    async def modbus_read(self, bus: str, slave: int) -> dict[str, float]:
        for driver in self.drivers:
            if isinstance(driver, ModbusBus) and driver.name == bus:
                return await driver.read_now(slave)
        raise SlaveError(f"no bus named {bus!r}")

    async def tail_lines(self, request: dict[str, Any]) -> AsyncIterator[str]:
        """Everything the ports hear, as it is heard (``{"node": "00C0FFEE", "raw": true}``)."""
        node = str(request.get("node") or "").upper() or None
        raw = bool(request.get("raw"))
        async with self.tap.listen() as heard:
            while True:
                item = await heard.get()
                if node is None or item.node_hex == node:
                    yield item.line(raw=raw)

    def birth(self) -> dict[str, Any]:
        return {
            "gateway": self.config.gateway_id,
            "version": __version__,
            "config_digest": self.config.digest,
            "started_at": iso(self.started_at),
            "registry_covers": len(self.engine.registry.covers),
            "registry_errors": self.registry_errors[:20],
            **({"reload": self.last_reload} if self.last_reload else {}),
        }

    def stats_payload(self) -> dict[str, Any]:
        q = self.queue.stats()
        uplink = self.uplink.stats if self.uplink else None
        edge = self.engine.stats
        return {
            "gateway": self.config.gateway_id,
            "time": iso(self.clock()),
            "uptime_s": round(self.clock() - self.started_at, 1),
            "ports": {d.name: d.status() for d in self.drivers},
            "edge": {
                "tail_dropped_lines": self.tap.dropped,
                "duplicates": edge.duplicates,
                "lost_frames": edge.lost_frames,
                "lost_frames_by_node": dict(edge.lost_by_node.most_common(50)),
                "unregistered_frames": edge.unregistered_frames,
                "shed_telemetry": self.stats.shed_telemetry,
                "active_alarms": len(self.engine.active_alarms()),
            },
            "queue": {
                "depth_alarm": q.depth[Lane.ALARM],
                "depth_telemetry": q.depth[Lane.TELEMETRY],
                "bytes": q.bytes,
                "oldest_age_s": None if q.oldest_age_s is None else round(q.oldest_age_s, 1),
                "evicted_alarm": q.evicted[Lane.ALARM],
                "evicted_telemetry": q.evicted[Lane.TELEMETRY],
                "write_errors": self.stats.queue_write_errors,
                "dropped_unwritten": self.stats.dropped_unwritten,
                "pending_in_memory": len(self._pending),
            },
            "uplink": uplink.report()
            if uplink
            else {"state": "stopped", "connects": 0, "reconnects": 0},
        }
