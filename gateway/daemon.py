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
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.buffer.queue import DurableQueue, Lane, Outgoing, QueueError
from gateway.commands import Answer, CommandHandler, Delivery
from gateway.config import GatewayConfig, SlaveConfig
from gateway.control import ControlServer
from gateway.downlinks import Downlinks
from gateway.drivers.base import Driver, PolledBus
from gateway.drivers.serial_radio import SerialRadio
from gateway.edge import state as engine_state
from gateway.edge.engine import EdgeEngine, iso
from gateway.errors import ConfigError, StartupError, TransportError
from gateway.events import Input, SlaveRead, origin
from gateway.observation import DeviceRef
from gateway.protocol.framing import Item
from gateway.registry import Registry
from gateway.sdnotify import Notifier
from gateway.supervisor import Supervisor
from gateway.tap import Heard, Tap
from gateway.tools.board import NodeBoard, attention, cover_rows
from gateway.tools.status import status_line
from gateway.tools.tailing import TailFilter, Watch, tail_record
from gateway.uplink import Uplink, UplinkState
from gateway.validation import read_registry, validate

if TYPE_CHECKING:
    from gateway.cover_records import CoverRecords
    from gateway.drivers.lorawan import LorawanInput
    from gateway.metrics import MetricsServer, StatsCollector

# Inputs, the console and metrics are imported when the configuration has them:
# a gateway with one radio does not carry pymodbus, Prometheus or the LoRaWAN codecs.

log = logging.getLogger(__name__)
_ALARM = Lane.ALARM  # per message in the pipeline: a global, not an Enum class attribute

INPUT_QUEUE = 20_000
MEMORY_BACKLOG = 50_000  # messages held in memory while the disk refuses writes
MEMORY_ALARMS = 10_000  # of which alarms; past it the oldest held alarm goes, counted
TICK_S = 1.0  # stats refreshed for metrics and systemd's status line; storage rechecked
IDLE_TICK_MAX_S = 10.0  # the longest an idle pipeline sleeps: storage and clock steps seen then
# A quiet polled reading repeated is kept from the engine for at most this long (the
# last-heard time ``covergw status`` shows for the slave lags by as much).
HUSH_MAX_S = IDLE_TICK_MAX_S
# The queue's state row naming the covers that may hold a retained record (compact encodings).
HELD_RECORDS_KEY = "uplink.cover_records_held"
DEADLINE_SLACK_S = 0.001  # wake a hair after a deadline: timers may fire a hair early
STOP_BUDGET_S = 8.0  # SIGTERM to exit: inside systemd's and the promise's 10 s
UNCONNECTED_STOP_S = 0.5  # the uplink's share of a stop while it is not connected


@dataclass
class PipelineStats:
    shed_telemetry: int = 0
    dropped_unwritten_telemetry: int = 0  # held in memory while the disk refused, then dropped
    dropped_unwritten_alarm: int = 0  # only past MEMORY_ALARMS, never while telemetry can go
    queue_write_errors: int = 0


class _WakingCommands:
    """The command handler as the uplink sees it, waking the pipeline after each command.

    What a command changes in the engine (thresholds, maintenance, an
    acknowledgement) is committed at the pipeline's next turn; an idle
    pipeline sleeps for seconds, so a command wakes it.
    """

    def __init__(self, handler: CommandHandler, wake: asyncio.Event) -> None:
        self._handler = handler
        self._wake = wake
        self.changed = handler.changed

    def answer(self, payload: bytes, delivery: Delivery | None = None) -> Answer | None:
        try:
            return self._handler.answer(payload, delivery)
        finally:
            self._wake.set()

    def overrides_message(self) -> bytes:
        return self._handler.overrides_message()


def slave_map(config: GatewayConfig) -> dict[tuple[str, int], SlaveConfig]:
    return {(bus.name, s.address): s for bus in config.modbus for s in bus.slaves}


class Gateway:
    _committing = False  # the pipeline waits for a commit: alarms are judged at once

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
        census: tuple[Registry, list[str]] | None = None,
    ) -> None:
        """``census``: the registry and its refused rows as ``validate`` read them (read again
        from ``config.registry`` when not given)."""
        self.config = config
        self.config_path = config_path
        self.last_reload: dict[str, Any] | None = None
        self._reload_requested = False
        self.clock = clock
        self.started_at = clock()
        self.stats = PipelineStats()
        self.notifier = notifier or Notifier(None)
        # (arrival number, input): alarms jump the queue, but never ahead of what
        # the same device said before them (a flat REPORT must not clear a later EVENT).
        self._inputs: deque[tuple[int, Input]] = deque()
        self._critical: deque[tuple[int, Input]] = deque()
        self._arrivals = 0
        self._input_ready = asyncio.Event()
        self._asleep_until: float | None = None  # monotonic: when the idle pipeline wakes
        self._idle_error: Exception | None = None  # judging a reading while it slept failed
        self._wakeup = asyncio.Event()
        self._pending: list[Outgoing] = []
        self._alarms_pending = False  # an alarm in _pending: flush now
        self._expedited: dict[str, asyncio.Future[bool]] = {}  # msg_id → its commit, for the uplink
        self._flush_failing = False
        self._storage_said: str | None = None
        registry, errors = census or self._load_registry()
        if config.registry is not None:
            log.info("registry: %d covers (%d rows refused)", len(registry.covers), len(errors))
        self.registry_errors = errors
        self.engine = EdgeEngine(
            gateway_id=config.gateway_id,
            registry=registry,
            thresholds=config.thresholds,
            kind_thresholds=config.kind_thresholds,
            slaves=slave_map(config),
            started_at=self.started_at,
            limits=config.limits,
        )
        # Engine state rows taken but not yet committed (a failed write keeps them).
        self._pending_state: dict[str, str | None] = {}
        self.tap = Tap()
        self.downlinks = Downlinks(
            gateway_id=config.gateway_id,
            topic_root=config.topic_root,
            registry=lambda: self.engine.registry,
            emit=self.emit,
        )
        lorawan = self._lorawan_inputs(clock)
        self.downlinks.inputs = lorawan
        self.board = NodeBoard()
        self.watch = Watch(self.tap, self.board, clock)
        self.drivers: list[Driver] = [
            *(SerialRadio(r, self.submit, clock=clock, tap=self._heard) for r in config.radios),
            *self._other_inputs(clock, lorawan),
        ]
        # A device bound to an input that is no longer configured may bind again.
        self.engine.admission.known_inputs = frozenset(d.name for d in self.drivers)
        self._buses = {d.name: d for d in self.drivers if isinstance(d, PolledBus)}
        if config.console is not None:
            from gateway.console import Console  # noqa: PLC0415 - only when configured

            self.drivers.append(Console(config.console, self, gateway_id=config.gateway_id))
        # After a crash the queue's integrity check runs beside the start (_check_queue),
        # so a large backlog does not delay READY and the retained ``online``.
        # A telemetry row holds what fits in one uplink batch (acknowledged whole).
        self.queue = DurableQueue(
            config.queue_path,
            max_bytes=config.queue.max_bytes,
            clock=clock,
            check_at_open=False,
            chunk_readings=config.uplink.telemetry_batch_max,
            chunk_bytes=config.uplink.telemetry_batch_bytes,
        )
        self.commands = CommandHandler(
            self,
            gateway_id=config.gateway_id,
            clock=clock,
            limits=config.commands,
            store=self.queue,
            secrets=lambda: [self.config.uplink.password or ""],
        )
        self.uplink: Uplink | None = None
        self.metrics: StatsCollector | None = None
        self.metrics_server: MetricsServer | None = None
        if config.metrics.enabled:
            from gateway.metrics import MetricsServer, StatsCollector  # noqa: PLC0415

            self.metrics = StatsCollector()
            self.metrics_server = MetricsServer(
                self.metrics,
                config.metrics.host,
                config.metrics.port,
                max_clients=config.metrics.max_clients,
            )
        self.supervisor = Supervisor(clock=clock)
        self.control: ControlServer | None = None

    def _lorawan_inputs(self, clock: Callable[[], float]) -> list[LorawanInput]:
        if not self.config.lorawan:
            return []
        from gateway.drivers.lorawan import LorawanInput  # noqa: PLC0415 - only when configured

        return [
            LorawanInput(
                lw,
                self.submit,
                lookup=self.device_lookup,
                on_outcome=self.downlinks.outcome,
                clock=clock,
            )
            for lw in self.config.lorawan
        ]

    def _other_inputs(
        self, clock: Callable[[], float], lorawan: list[LorawanInput]
    ) -> list[Driver]:
        """UDP, Modbus, LoRaWAN and TCP inputs, in that order; each module imported if used."""
        config = self.config
        out: list[Driver] = []
        if config.udp:
            from gateway.drivers.udp import UdpListener  # noqa: PLC0415

            out += (
                UdpListener(u, self.submit, clock=clock, tap=self._heard, lookup=self.device_lookup)
                for u in config.udp
            )
        if config.modbus:
            from gateway.drivers.modbus import ModbusBus  # noqa: PLC0415

            out += (ModbusBus(b, self.submit, clock=clock) for b in config.modbus)
        out += lorawan
        if config.tcp:
            from gateway.drivers.tcp import TcpListener  # noqa: PLC0415

            out += (
                TcpListener(t, self.submit, lookup=self.device_lookup, clock=clock)
                for t in config.tcp
            )
        return out

    def cover_record(self, cover_id: str) -> dict[str, Any] | None:
        """The record a telemetry batch carries for a cover, from the registry as loaded now."""
        cover = self.engine.registry.covers.get(cover_id)
        return None if cover is None else cover.identity()

    def _cover_records(self) -> CoverRecords | None:
        """The retained cover records of a compact encoding; JSON batches carry them instead."""
        if self.config.uplink.telemetry_encoding.carries_covers:
            return None
        from gateway.cover_records import CoverRecords  # noqa: PLC0415 - compact encodings only

        return CoverRecords(
            topic_root=self.config.topic_root,
            covers=lambda: self.engine.registry.covers,
            held=self._held_records(),
            store=self._store_held_records,
        )

    def _held_records(self) -> list[str]:
        """The covers the last run kept as maybe holding a retained record (``CoverRecords``)."""
        text = self.queue.get_state(HELD_RECORDS_KEY)
        if text is None:
            return []
        try:
            held = json.loads(text)
        except ValueError:
            held = None
        if not isinstance(held, list) or not all(isinstance(c, str) for c in held):
            log.error("the kept list of retained cover records is unreadable; not cleared")
            return []
        return held

    async def _store_held_records(self, held: list[str]) -> bool:
        try:
            await self.queue.put_many_async([], state={HELD_RECORDS_KEY: json.dumps(held)})
        except QueueError as err:
            log.warning("cover records: cannot keep which are retained: %s", err)
            return False  # again at the next housekeeping round
        return True

    def _load_registry(self) -> tuple[Registry, list[str]]:
        if self.config.registry is None:
            return Registry(), []
        registry, errors = read_registry(self.config.registry)
        return registry, [str(e) for e in errors]

    # --- the drivers' sink ---

    def _heard(self, source: str, at: float, item: Item) -> None:
        if self.tap.watched:  # nobody tailing: no record built per frame
            self.tap.publish(Heard(source, at, item))
        self.watch.frame(source, at, item)

    def submit(self, event: Input, critical: bool) -> None:
        """Never blocks a reader; sheds telemetry under overload, never an alarm."""
        self.watch.input(event)
        # Asleep, and nothing has woken it yet: a polled reading is judged at once.
        asleep = self._asleep_until is not None and not self._input_ready.is_set()
        if asleep and type(event) is SlaveRead:
            self._judge_while_asleep(event)
            return
        self._arrivals += 1
        if critical:
            self._critical.append((self._arrivals, event))
            if self._committing:
                self._judge_while_committing()
                return
        elif len(self._inputs) >= INPUT_QUEUE:
            self.stats.shed_telemetry += 1
            return
        else:
            self._inputs.append((self._arrivals, event))
        self._input_ready.set()

    def _judge_while_asleep(self, event: SlaveRead) -> None:
        """A polled reading while the pipeline sleeps with nothing queued: judged now.

        The pipeline is woken only for what the reading left it to do (a
        message to commit, an alarm, state owed to disk, an earlier deadline):
        a sensor that reads the same each second costs the engine's judgement,
        not a turn of the pipeline. Judged in arrival order (nothing else is
        queued), in the driver's callback, while the pipeline is parked in its
        sleep, like the commands that change the engine between its turns.
        """
        alarms = self._judge_now([event])
        if alarms is None:
            return
        owed = alarms or self._pending or self.engine.dirty or self._pending_state
        if owed or self._deadline_before(self._asleep_until):
            self._input_ready.set()
        else:
            self._hush(event)

    def _judge_while_committing(self) -> None:
        """An alarm's input while the pipeline waits for a commit: judged and published now.

        A commit can take a while (a slow SD card, a large batch, a lock held by
        a tool); the alarm does not wait for it, as it does not wait for a drain
        round. What the device said before it is judged first (as ``_take``
        does), the messages go into the next commit, which the pipeline starts
        as soon as this one is in. Judged in the driver's callback while the
        pipeline is parked in its ``await``, like a polled reading while it sleeps.
        """
        self._judge_now(self._take_critical())
        self._input_ready.set()

    def _judge_now(self, events: list[Input]) -> bool | None:
        """``_handle`` between the pipeline's turns; None: it raised, and the pipeline
        raises that at its next turn (the supervisor restarts it, as for its own)."""
        try:
            return self._handle(events)
        except Exception as err:  # a bug
            self._idle_error = err
            self._input_ready.set()
            return None

    def _hush(self, event: SlaveRead) -> None:
        """A reading that changed nothing: its bus keeps the same again from the engine.

        While ``quiet_until`` says the engine would take the quiet path for it
        (nothing it was judged with has moved: ``epoch``), at most until its
        next telemetry is due and for ``HUSH_MAX_S``, and never while somebody
        tails: the poll thread polls and counts, and the event loop sleeps on.
        """
        bus = self._buses.get(event.bus)
        if bus is None or self.tap.watched:
            return
        until = self.engine.quiet_until((event.bus, event.address), event.values)
        if until is None:
            return
        engine, tap, epoch = self.engine, self.tap, self.engine.epoch
        bus.hush(
            event.address,
            event.values,
            min(until, event.at + HUSH_MAX_S),
            lambda: engine.epoch == epoch and not tap.watched,
        )

    def _deadline_before(self, until: float | None) -> bool:
        """Does the engine's next deadline fall before ``until`` (monotonic), by more than
        the two clocks' readings can differ by? (The deadline the pipeline planned its
        sleep with is no reason to wake it.)"""
        due = self.engine.next_deadline()
        if due is None or until is None:
            return False
        return time.monotonic() + max(0.0, due - self.clock()) + 2 * DEADLINE_SLACK_S < until

    def device_lookup(self, device_id: str) -> tuple[DeviceRef, str | None] | None:
        """A LoRaWAN DevEUI or NB-IoT IMEI → its registered device and cover (reloads included)."""
        found = self.engine.registry.device(device_id)
        return None if found is None else (found[0], found[1].cover_id)

    def emit(self, message: Outgoing) -> None:
        """A message rendered outside the engine (a downlink outcome), for the next flush."""
        self._pending.append(message)
        self._input_ready.set()

    def device_downlink(self, args: dict[str, Any], *, request_id: str | None) -> dict[str, Any]:
        """The ``device_downlink`` command (see gateway/downlinks.py)."""
        return self.downlinks.request(args, request_id=request_id)

    # --- running ---

    async def run(self, stop: asyncio.Event) -> None:
        """Start every part, serve until ``stop``, then end in order within ``STOP_BUDGET_S``.

        What the daemon cannot run without (the state dir, the queue, its UDP
        ports, the control socket, the metrics port) is taken before READY; a
        failure there raises ``StartupError``. After that every part runs under
        the supervisor: a failing part is restarted, never the end of the daemon.
        """
        self._open_queue()
        try:
            await self._serve(stop)
        finally:
            self.queue.close()
        log.info("stopped")

    def _open_queue(self) -> None:
        state_dir = self.config.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            probe = state_dir / ".covergw-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StartupError(
                "gateway.state_dir", f"{state_dir} is not writable: {err.strerror or err}"
            ) from err
        try:
            self.queue.open()
        except (QueueError, OSError, sqlite3.Error) as err:
            where = self.config.queue_path
            raise StartupError("gateway.state_dir", f"queue {where}: {err}") from err

    async def _take_ports(self, control: ControlServer) -> None:
        """Bind what others reach us on before READY, so a port in use ends the start."""
        try:
            await control.start()
            if self.config.udp:
                from gateway.drivers.udp import UdpListener  # noqa: PLC0415 - imported if used

                for driver in self.drivers:
                    if isinstance(driver, UdpListener):
                        await driver.bind()
            if self.metrics_server is not None:
                await self.metrics_server.start()
        except TransportError as err:
            await control.close()
            raise StartupError("ports", str(err)) from err

    async def _serve(self, stop: asyncio.Event) -> None:
        self._restore_engine()
        self.commands.restore()
        self.uplink = Uplink(
            self.config.uplink,
            topic_root=self.config.topic_root,
            queue=self.queue,
            wakeup=self._wakeup,
            birth=self.birth,
            stats_payload=self.stats_payload,
            stats_interval_s=self.config.uplink.stats_interval_s,
            # Answers whatever a handler does (``internal`` at worst).
            on_command=_WakingCommands(self.commands, self._input_ready),
            covers=self.cover_record,
            cover_records=self._cover_records(),
        )
        drivers_stop = asyncio.Event()
        pipeline_stop = asyncio.Event()
        uplink_stop = asyncio.Event()
        self.control = ControlServer(
            self.config.control_path,
            {"status": self.local_status},
            {"tail": self.tail_lines, "modbus": self.modbus_lines},
            max_clients=self.config.control_max_clients,
        )
        if self.metrics is not None:
            self.metrics.snapshot = self.stats_payload()
        await self._take_ports(self.control)
        supervise = self.supervisor.run
        async with asyncio.TaskGroup() as tasks:
            for driver in self.drivers:
                name = f"driver-{driver.name}"
                tasks.create_task(supervise(name, driver.run, drivers_stop), name=name)
            tasks.create_task(
                supervise("control", self.control.serve, drivers_stop), name="control"
            )
            if self.metrics_server is not None:
                tasks.create_task(
                    supervise("metrics", self.metrics_server.serve, drivers_stop), name="metrics"
                )
            pipeline = tasks.create_task(
                supervise("pipeline", self._pipeline, pipeline_stop), name="pipeline"
            )
            uplink = tasks.create_task(
                supervise("uplink", self.uplink.run, uplink_stop), name="uplink"
            )
            await asyncio.sleep(0)  # drivers and uplink have started
            self.notifier.ready()
            check = (
                tasks.create_task(self._check_queue(), name="queue-check")
                if self.queue.unchecked
                else None
            )
            log.info("covergw %s running as %s", __version__, self.config.gateway_id)
            await stop.wait()
            deadline = time.monotonic() + STOP_BUDGET_S
            self.notifier.stopping()
            log.info("stopping: draining inputs and committing the queue")
            if check is not None:
                check.cancel()  # not finished: still owed, the next start runs it
            drivers_stop.set()
            await asyncio.sleep(0)
            pipeline_stop.set()
            self._input_ready.set()  # the pipeline may be asleep until its next deadline
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pipeline), deadline - time.monotonic())
            uplink_stop.set()
            budget = min(self.config.uplink.publish_timeout_s, deadline - time.monotonic())
            if self.uplink.stats.state is not UplinkState.CONNECTED:
                budget = min(
                    budget, UNCONNECTED_STOP_S
                )  # nothing to deliver: do not wait on a connect
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(uplink), max(0.0, budget))
            for task in (pipeline, uplink):
                if not task.done():
                    log.warning("stopping: %s did not finish in time; cancelled", task.get_name())
                    task.cancel()
        # An uplink cut short (mid-connect) is stopped all the same.
        self.uplink.stats.state = UplinkState.STOPPED

    async def _check_queue(self) -> None:
        """The check an unclean stop owes, on a thread of its own; damage is set aside
        and salvaged by the queue itself, so nothing here can end the daemon."""
        try:
            sound = await self.queue.check_async()
        except QueueError as err:
            log.error("queue integrity check failed: %s", err)  # noqa: TRY400 - one line
            return
        if sound:
            log.info("queue integrity check after an unclean stop: ok")
        self._wakeup.set()  # a salvaged queue has rows to publish

    async def _pipeline(self, stop: asyncio.Event) -> None:
        """The only writer: engine → pending → one commit per batch.

        Idle, it sleeps until something is due: an input, a flush, the next
        offline deadline, the watchdog, the metrics endpoint's figures (each
        second, when it is enabled); never longer than ``IDLE_TICK_MAX_S``.
        systemd's status line is refreshed at most each second, at these wakes.
        """
        flush_every = self.config.queue.flush_interval_s
        first_pending: float | None = None
        next_tick = time.monotonic() + TICK_S
        next_status = 0.0
        while True:
            urgent = False
            self._start_turn()
            urgent |= self._handle(self._take())
            urgent |= self._alarms_pending
            self.notifier.watchdog()  # from this loop: if it hangs, systemd restarts us
            now = time.monotonic()
            if self._stats_read and now >= next_status:
                self._refresh_stats()
                next_status = now + TICK_S
            if self._flush_failing or self.queue.degraded is not None:
                next_tick = min(next_tick, now + TICK_S)  # look for room each second
            if now >= next_tick:
                out = self.engine.tick(self.clock())
                urgent |= bool(out)
                self._expedite(out)
                self._pending += out
                await self._watch_storage()
                next_tick = time.monotonic() + IDLE_TICK_MAX_S
            due = self.engine.next_deadline()  # inputs and reloads move it
            if due is not None:
                next_tick = min(next_tick, time.monotonic() + max(0.0, due - self.clock()))
            if self._pending and first_pending is None:
                first_pending = time.monotonic()
            due_flush = (
                first_pending is not None and time.monotonic() - first_pending >= flush_every
            )
            full = len(self._pending) >= self.config.queue.flush_max
            owed = self.engine.dirty or bool(self._pending_state)  # state rows not yet on disk
            if (urgent or due_flush or full or owed) and await self._flush():
                first_pending = None
            if stop.is_set() and not self._inputs and not self._critical:
                await self._last_commit()
                return
            self._input_ready.clear()
            # A reload asked for during a commit set the event this clear() just
            # took back: the flag itself says there is work.
            idle = (
                not self._inputs
                and not self._critical
                and not self._reload_requested
                # Judged during that commit: the next one now (a failing disk waits a flush).
                and not (self._alarms_pending and not self._flush_failing)
            )
            if idle and not stop.is_set():
                wakes = [next_tick + DEADLINE_SLACK_S]
                if self._pending:
                    wakes.append(time.monotonic() + flush_every)
                if self.metrics is not None:  # scrapes want figures a second old at most
                    wakes.append(next_status)
                await self._sleep_until(min(wakes))
            else:
                await asyncio.sleep(0)

    async def _last_commit(self) -> None:
        """At a stop: what is pending goes to disk, and what cannot is said."""
        flushed = await self._flush()
        if flushed and self._pending:  # an alarm judged while that commit ran
            flushed = await self._flush()
        if not flushed and self._pending:
            alarms = sum(m.lane is _ALARM for m in self._pending)
            log.error(
                "stopping with %d alarms and %d readings the disk never took: lost",
                alarms,
                len(self._pending) - alarms,
            )

    def _start_turn(self) -> None:
        """A turn of the pipeline: what judging a reading raised while it slept is raised
        here (the supervisor restarts the pipeline, as for its own failures); a reload
        asked for is carried out."""
        err, self._idle_error = self._idle_error, None
        if err is not None:
            raise err
        if self._reload_requested:
            self._reload()

    @property
    def _stats_read(self) -> bool:
        """Is anyone reading the stats each second (the metrics endpoint, systemd's status)?"""
        return self.notifier.enabled or self.metrics is not None

    def _refresh_stats(self) -> None:
        snapshot = self.stats_payload()  # once, for whoever reads it
        self.notifier.status(status_line(snapshot))
        if self.metrics is not None:
            self.metrics.snapshot = snapshot

    async def _sleep_until(self, when: float) -> None:
        """Until an input arrives or ``when`` (monotonic), pinging the watchdog in time."""
        now = time.monotonic()
        wait = when - now
        if self.notifier.watchdog_interval_s is not None:
            wait = min(wait, self.notifier.watchdog_interval_s)
        if wait > 0:
            self._asleep_until = now + wait  # polled readings are judged meanwhile: submit
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):  # no task per wait, unlike wait_for
                        await self._input_ready.wait()
            finally:
                self._asleep_until = None

    def _handle(self, events: list[Input]) -> bool:
        """Through the engine into pending; alarms also straight to the uplink. True: alarms."""
        alarms = False
        for event in events:
            alarms |= self._took(self.engine.handle(event))
        return alarms

    def _took(self, out: list[Outgoing]) -> bool:
        """What the engine said of one input into pending; alarms also straight to the uplink.
        True: alarms. (Nearly every polled reading says nothing.)"""
        if not out:
            return False
        alarms = _ALARM in [m.lane for m in out]
        if alarms:
            self._alarms_pending = True
            self._expedite(out)
        self._pending += out
        return alarms

    def _expedite(self, out: list[Outgoing]) -> None:
        """Hand new alarms to the uplink now: published while the commit that takes them
        runs (and deleted only after it: ``_flush`` resolves the future)."""
        alarms = [m for m in out if m.lane is _ALARM and m.msg_id not in self._expedited]
        if not alarms or self.uplink is None:
            return
        committed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.uplink.expedite(alarms, committed)
        # Offered once; resolved by the flush that writes them, taken or not (some of
        # a batch may have been published before the connection failed).
        for m in alarms:
            self._expedited[m.msg_id] = committed

    def _take(self, limit: int = 1000) -> list[Input]:
        """Alarms first, each after what its own device said before it; then the rest."""
        events = self._take_critical(limit)
        while self._inputs and len(events) < limit:
            events.append(self._inputs.popleft()[1])
        return events

    def _take_critical(self, limit: int | None = None) -> list[Input]:
        """The alarms' inputs, each after what its own device said before it."""
        events: list[Input] = []
        while self._critical and (limit is None or len(events) < limit):
            arrived, event = self._critical.popleft()
            events += self._earlier_from(origin(event), arrived)
            events.append(event)
        return events

    def _earlier_from(self, device: object, before: int) -> list[Input]:
        """Take out of the queue what DEVICE said before arrival BEFORE (rare: one scan)."""
        earlier = [e for n, e in self._inputs if n < before and origin(e) == device]
        if earlier:
            self._inputs = deque(
                (n, e) for n, e in self._inputs if not (n < before and origin(e) == device)
            )
        return earlier

    def _restore_engine(self) -> None:
        """State rows; or, once, the whole-state blob an earlier version wrote."""
        self.engine.load_state(self.queue.state_items(engine_state.PREFIX))
        legacy = self.queue.get_state(engine_state.LEGACY_KEY)
        if legacy:
            try:
                self.engine.restore(json.loads(legacy))
            except (ValueError, KeyError, TypeError) as err:
                log.error("the saved engine state is unreadable, starting afresh: %s", err)  # noqa: TRY400
            self._pending_state[engine_state.LEGACY_KEY] = None  # written as rows at the next flush

    async def _flush(self) -> bool:
        """One commit on the queue's writer thread; the loop goes on decoding meanwhile.

        Engine state rows changed since the last commit go with the messages they
        belong to; a failed write keeps both for the next attempt.
        """
        self._pending_state.update(self.engine.take_state())
        state = dict(self._pending_state)
        self._alarms_pending = False  # those pending go now; a failed write says so again
        if not self._pending and not state:
            return True
        batch = list(self._pending)
        # Alarms are published while they are committed (the uplink deletes them
        # only once this commit is in): latency is the slower of the two, not the sum.
        self._expedite(batch)
        on_disk = False
        self._committing = True
        try:
            await self.queue.put_many_async(batch, state=state)
            on_disk = True
            self.watch.committed(batch)
        except QueueError as err:
            # Disk full or failing: keep going, keep alarms in memory, say so.
            self.stats.queue_write_errors += 1
            self._flush_failing = True
            log.error(  # noqa: TRY400 - the reason is the message; no traceback wanted
                "queue write failed, holding %d messages in memory: %s", len(self._pending), err
            )
            self.watch.storage(f"write FAILED, {len(self._pending)} messages held: {err}")
            self._alarms_pending = _ALARM in [m.lane for m in self._pending]
            self._trim_backlog()
            return False
        finally:
            self._committing = False
            for m in batch if self._expedited else ():  # nearly every commit: no alarm
                committed = self._expedited.pop(m.msg_id, None)
                if committed is not None and not committed.done():
                    committed.set_result(on_disk)
        del self._pending[: len(batch)]  # what was added meanwhile stays
        self._pending_state = {}
        if self._flush_failing:
            self.watch.storage(f"written again: {len(batch)} messages held in memory")
        self._flush_failing = False
        self._wakeup.set()
        return True

    def _trim_backlog(self) -> None:
        """Bound what waits in memory: the oldest telemetry goes first, an alarm only
        when more than MEMORY_ALARMS of them wait; each one dropped is counted."""
        alarms = sum(1 for m in self._pending if m.lane is Lane.ALARM)
        drop_alarms = max(0, alarms - MEMORY_ALARMS)
        drop_telemetry = max(0, len(self._pending) - drop_alarms - MEMORY_BACKLOG)
        if not drop_alarms and not drop_telemetry:
            return
        kept: list[Outgoing] = []
        for message in self._pending:
            if message.lane is Lane.TELEMETRY and drop_telemetry > 0:
                drop_telemetry -= 1
                self.stats.dropped_unwritten_telemetry += 1
                continue
            if message.lane is Lane.ALARM and drop_alarms > 0:
                drop_alarms -= 1
                self.stats.dropped_unwritten_alarm += 1
                committed = self._expedited.pop(message.msg_id, None)
                if committed is not None and not committed.done():
                    committed.set_result(False)
                continue
            kept.append(message)
        self._pending = kept

    def storage_degraded(self) -> str | None:
        """Why storage is degraded: the queue's own reason, or writes held in memory."""
        if self.queue.degraded is not None:
            return self.queue.degraded
        if self._flush_failing:
            return "queue writes failing; messages held in memory"
        return None

    async def _watch_storage(self) -> None:
        """Once a tick: let a degraded queue look for room; say so when the state changes."""
        if self.queue.degraded is not None:
            with contextlib.suppress(QueueError):
                await self.queue.recover_async()
        now = self.storage_degraded()
        if (now is None) != (self._storage_said is None) and self.uplink is not None:
            self.uplink.announce()  # the retained status carries the storage state
        self._storage_said = now

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
            validated = validate(self.config_path)
            new, registry, errors = validated.config, validated.registry, validated.registry_errors
        except ConfigError as err:
            reason = self.commands.mask(str(err))  # the retained status must not show a secret
            log.error("reload refused, the configuration in force stays: %s", reason)  # noqa: TRY400
            self.last_reload = {"ok": False, "at": at, "reason": reason}
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
                    "lorawan",
                    "tcp",
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
        active, acknowledged = self.commands.alarm_views()
        status: dict[str, Any] = {
            "stats": self.stats_payload(),
            "config_digest": self.config.digest,
            "active_alarms": active,  # acknowledged ones are not repeated here
            "acknowledged_alarms": acknowledged,  # kept until they clear
            "overrides": self.commands.overrides(),
            "nodes_last_seen": [{"node": node, "at": iso(at)} for node, at in seen[:50]],
            "nodes_seen": len(seen),
            "last_reload": self.last_reload,
        }
        status["registry_errors"] = self.registry_errors[:20]
        status["covers"] = cover_rows(
            self.engine.registry.covers.values(),
            self.board,
            status["active_alarms"],
            self.engine.maintenance_until,
            self.clock(),
        )
        status["attention"] = attention(status)
        return status

    def covers(self) -> list[dict[str, Any]]:
        out = []
        for cover in self.engine.registry.covers.values():
            sensors = [f"{cover.node_id:08X}"] if cover.node_id is not None else []
            sensors += [f"{bus}:{slave}" for bus, slave in cover.modbus]
            sensors += [str(device) for device in cover.devices]
            out.append({**cover.identity(), "sensor": " ".join(sensors) or "-"})
        return out

    def run_command(self, request: dict[str, Any]) -> dict[str, Any]:
        """The same path as the platform's commands: validated, idempotent, logged."""
        raw = self.commands.handle(json.dumps(request).encode())
        self._input_ready.set()  # what it changed is committed at the pipeline's next turn
        if raw is None:  # dropped under a command flood
            return {"ok": False, "error": {"code": "busy", "message": "too many commands"}}
        answer: dict[str, Any] = json.loads(raw)
        return answer

    async def modbus_read(self, bus: str, slave: int) -> dict[str, float]:
        from gateway.drivers.modbus import ModbusBus, SlaveError  # noqa: PLC0415 - a tool's

        for driver in self.drivers:
            if isinstance(driver, ModbusBus) and driver.name == bus:
                return await driver.read_now(slave)
        raise SlaveError(f"no bus named {bus!r}")

    def modbus_lines(self, request: dict[str, Any]) -> AsyncIterator[str]:
        """``covergw diag modbus`` through the daemon: probes run between the bus's own polls."""
        from gateway.drivers.modbus import ModbusBus  # noqa: PLC0415 - a tool's
        from gateway.tools import busscan  # noqa: PLC0415

        buses = [d for d in self.drivers if isinstance(d, ModbusBus)]
        return busscan.serve(buses, request)

    async def tail_lines(self, request: dict[str, Any]) -> AsyncIterator[str]:
        """Radio frames, Modbus readings and alarm decisions, as they happen.

        ``{"node": "00C0FFEE" | "BUS:ADDR", "cover": "HZ-1", "bus": "rs485-0",
        "raw": true, "json": true}``; the filters combine (all must match).
        """
        wanted = TailFilter.from_request(request, self.engine.registry)
        raw, as_json = bool(request.get("raw")), bool(request.get("json"))
        async with self.tap.listen() as heard:
            while True:
                item = await heard.get()
                if wanted.matches(item):
                    yield json.dumps(tail_record(item)) if as_json else item.line(raw=raw)

    def birth(self) -> dict[str, Any]:
        return {
            "gateway": self.config.gateway_id,
            "version": __version__,
            "config_digest": self.config.digest,
            "started_at": iso(self.started_at),
            "registry_covers": len(self.engine.registry.covers),
            "registry_errors": self.registry_errors[:20],
            **({"reload": self.last_reload} if self.last_reload else {}),
            "storage": self._storage_status(),
        }

    def supervision_stats(self) -> dict[str, Any]:
        """Restarts per supervised part, and what the local servers refused."""
        out: dict[str, Any] = {"parts": self.supervisor.stats()}
        if self.control is not None:
            out["control"] = self.control.stats()
        if self.metrics_server is not None:
            out["metrics"] = self.metrics_server.stats()
        return out

    def _storage_status(self) -> dict[str, Any]:
        reason = self.storage_degraded()
        return {"state": "ok"} if reason is None else {"state": "degraded", "reason": reason}

    def stats_payload(self) -> dict[str, Any]:
        q = self.queue.stats()
        storage = self.storage_degraded()
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
                "sequence_anomalies": edge.sequence_anomalies,
                "wrong_input": edge.wrong_input,
                "rate_limited": edge.rate_limited,
                "partial_readings": edge.partial_readings,
                "devices_tracked": len(self.engine.devices),
                "unregistered_forgotten": self.engine.devices.forgotten,
                "shed_telemetry": self.stats.shed_telemetry,
                "active_alarms": self.engine.active_count,
            },
            "queue": {
                "depth_alarm": q.depth[Lane.ALARM],
                "depth_telemetry": q.depth[Lane.TELEMETRY],
                "bytes": q.bytes,
                "oldest_age_s": None if q.oldest_age_s is None else round(q.oldest_age_s, 1),
                "evicted_alarm": q.evicted[Lane.ALARM],
                "evicted_telemetry": q.evicted[Lane.TELEMETRY],
                "write_errors": self.stats.queue_write_errors,
                "dropped_unwritten": self.stats.dropped_unwritten_telemetry
                + self.stats.dropped_unwritten_alarm,
                "dropped_unwritten_telemetry": self.stats.dropped_unwritten_telemetry,
                "dropped_unwritten_alarm": self.stats.dropped_unwritten_alarm,
                "pending_in_memory": len(self._pending),
                "held_acks": q.held_acks,
                "salvaged_alarm": q.counters.get("salvaged_alarm", 0),
                "salvaged_telemetry": q.counters.get("salvaged_telemetry", 0),
                "lost_unreadable": q.counters.get("lost_unreadable", 0),
                "storage": "ok" if storage is None else "degraded",
                "storage_reason": storage,
            },
            "commands": self.commands.stats_payload(),
            "supervision": self.supervision_stats(),
            "uplink": uplink.report()
            if uplink
            else {"state": "stopped", "connects": 0, "reconnects": 0},
        }
