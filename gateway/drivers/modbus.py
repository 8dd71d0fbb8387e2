"""The RS-485 Modbus RTU master: polls each slave through its device profile.

One transaction at a time on the bus. A slave that fails (no reply, CRC
error, exception reply, wrong slave) is reported on every failure with its
count of consecutive failures (the edge logic decides when that is a fault)
and is polled with backoff until it answers, never holding up the others.
A bus adapter that cannot be opened or vanishes is reopened with backoff, and
every attempt counts as one failed poll for every slave on it: a pulled USB
adapter is a fault on each sensor behind it (``sensor_fault`` after
``fault_after_failures``), cleared by the first good reading once it returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config import ModbusConfig, SlaveConfig
from gateway.drivers.base import PortHealth, PortState, Sink
from gateway.drivers.rtu import ModbusLinkError, RtuMaster
from gateway.errors import GatewayError, RegisterDecodeError, TransportError
from gateway.events import SlaveFailed, SlaveRead
from gateway.protocol.modbus_profiles import DeviceProfile, registers_from_blocks
from gateway.protocol.modbus_rtu import RegisterReply, read_request

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[RtuMaster], Awaitable[Any]]

EXCEPTION_MEANINGS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "slave device failure",
    5: "acknowledge (busy with a long command)",
    6: "slave device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


def reply_timeout_s(baudrate: int) -> float:
    """How long to wait for a short reply at this baud rate before calling an address silent.

    A probe and its reply are under 20 characters of 11 bits; slaves answer
    within a few character times plus their own turnaround (25 ms covers the
    parts in the spec). At 9600 baud: 48 ms, so 247 addresses take ~12 s.
    """
    return round(20 * 11 / baudrate + 0.025, 3)


@dataclass(frozen=True, slots=True)
class Probe:
    """What one address said to a one-register read: nothing, a value, or an exception."""

    address: int
    answered: bool
    exception_code: int | None = None
    note: str | None = None  # a garbled reply: somebody is there, but not well

    @property
    def meaning(self) -> str | None:
        if self.exception_code is None:
            return None
        return EXCEPTION_MEANINGS.get(self.exception_code, "unknown exception")


class AdapterGoneError(TransportError):
    """The bus adapter went away during a tool's transaction (pulled, or the port closed)."""


async def probe(client: RtuMaster, address: int, *, timeout_s: float, register: int = 0) -> Probe:
    """One short read of ``register``: anything that comes back means somebody is there."""
    try:  # the master's own timer, no retry: a silent address costs one timeout
        reply = await client.read_holding_registers(
            register, count=1, device_id=address, timeout_s=timeout_s, retries=0
        )
    except TimeoutError:  # NoReplyError
        reply = None
    except ModbusLinkError as err:
        if not client.connected:
            raise AdapterGoneError(f"adapter gone: {err}") from err
        return Probe(address, answered=True, note=str(err))
    if not client.connected:
        raise AdapterGoneError("adapter gone (port closed)")
    if reply is None:
        return Probe(address, answered=False)
    if reply.exception_code is not None:
        return Probe(address, answered=True, exception_code=reply.exception_code)
    return Probe(address, answered=True)


async def read_profile(
    client: RtuMaster, address: int, profile: DeviceProfile
) -> tuple[dict[int, int], dict[str, float]]:
    """The registers a profile's plan reads from ``address``, and what they decode to."""
    plan = profile.read_plan()
    replies = []
    read = client.read_input_registers if profile.function == 4 else client.read_holding_registers
    for block in plan:
        try:
            reply: RegisterReply | ModbusLinkError = await read(
                block.address, count=block.count, device_id=address
            )
        except ModbusLinkError as err:
            reply = err
        replies.append(registers_of(reply, address))
    return decoded(profile, replies)


def registers_of(reply: RegisterReply | ModbusLinkError, address: int) -> tuple[int, ...]:
    """A read's registers, or ``SlaveError`` saying why there are none."""
    if isinstance(reply, ModbusLinkError):
        raise SlaveError(f"no valid reply: {reply}") from reply
    code = reply.exception_code
    if code is not None:
        meaning = EXCEPTION_MEANINGS.get(code, "")
        raise SlaveError(f"exception reply {code} {meaning}".rstrip())
    if reply.dev_id != address:
        raise SlaveError(f"reply from slave {reply.dev_id}")
    return reply.registers


def decoded(
    profile: DeviceProfile, replies: Sequence[Sequence[int]]
) -> tuple[dict[int, int], dict[str, float]]:
    """The plan's replies joined and decoded; ``SlaveError`` if they do not fit the profile."""
    try:
        registers = registers_from_blocks(profile.read_plan(), replies)
        return registers, profile.decode(registers)
    except RegisterDecodeError as err:
        raise SlaveError(str(err)) from err


@dataclass
class _Slave:
    config: SlaveConfig
    next_due: float = 0.0
    consecutive: int = 0
    reads: int = 0
    failures: int = 0
    last_error: str | None = None
    requests: tuple[bytes, ...] = ()  # the plan's read requests, as sent every poll
    # The last good poll's registers and what they decoded to: the same registers
    # again (a level that holds, a cover at rest) are not decoded again.
    last_read: tuple[list[tuple[int, ...]], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        profile, address = self.config.profile, self.config.address
        self.requests = tuple(
            read_request(address, profile.function, b.address, b.count) for b in profile.read_plan()
        )

    def decode(self, replies: list[tuple[int, ...]]) -> dict[str, float]:
        """A poll's replies decoded by the profile (``SlaveError`` if they do not fit it)."""
        last = self.last_read
        if last is not None and last[0] == replies:
            return dict(last[1])
        _, values = decoded(self.config.profile, replies)
        self.last_read = (replies, dict(values))
        return values


@dataclass(slots=True)
class _Cycle:
    """One poll cycle in flight: the slaves still due, the readings taken so far."""

    client: RtuMaster
    start: float
    due: list[_Slave]
    readings: list[SlaveRead] = field(default_factory=list)
    slave: _Slave | None = None  # the one being read
    replies: list[tuple[int, ...]] = field(default_factory=list)


def _why_not(port: str) -> str:
    """What a technician needs to hear when pymodbus only says the port did not open."""
    return "" if os.path.exists(port) else " (no such device)"


def _closed_why(client: RtuMaster) -> str:
    return f": {client.last_error}" if client.last_error else ""


class SlaveError(TransportError):
    """One failed transaction; the reason is what a technician needs to read."""


DUE_SLACK_S = 0.001  # a slave due this soon is polled now (timers may fire a hair early)
MAX_LENT_JOBS = 16  # tool transactions waiting for the bus; more are refused
LEND_TIMEOUT_S = 5.0  # plus the bus's own reply time: how long a tool waits for its turn


class ModbusBus:
    def __init__(
        self,
        config: ModbusConfig,
        sink: Sink,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = config.name
        self.config = config
        self._sink = sink
        self._clock = clock
        self._monotonic = monotonic
        self.health = PortHealth(
            f"modbus {config.name} ({config.port})",
            reopen_min_s=config.reopen_min_s,
            reopen_max_s=config.reopen_max_s,
        )
        self.slaves = {s.address: _Slave(s) for s in config.slaves}
        self._requests: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue(
            maxsize=MAX_LENT_JOBS
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Future[None] | None = None  # the poll task's sleep
        self._idle: asyncio.Future[None] | None = None  # it waits for a cycle to end
        self._timer: asyncio.TimerHandle | None = None  # the next cycle's start
        self._cycle: _Cycle | None = None

    async def read_now(self, address: int) -> dict[str, float]:
        """One reading for a person (console, command), taken between the scheduled polls."""
        if address not in self.slaves:
            raise SlaveError(f"slave {address} is not configured on bus {self.name}")
        profile = self.slaves[address].config.profile
        _, values = await self.lend(lambda client: read_profile(client, address, profile))
        return values

    async def lend(self, job: Callable[[RtuMaster], Awaitable[T]]) -> T:
        """Run ``job`` on the bus between the scheduled polls: the tools' way onto a busy bus.

        One transaction at a time: the poll loop runs the job itself, so a
        job never overlaps a poll. At most ``MAX_LENT_JOBS`` wait; a job that
        is not done within ``LEND_TIMEOUT_S`` is abandoned by its caller.
        """
        if self.health.state is not PortState.OPEN:
            state, error = self.health.state.value, self.health.last_error or ""
            raise SlaveError(f"bus {self.name} is {state}: {error}".rstrip(": "))
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            self._requests.put_nowait((job, future))
        except asyncio.QueueFull as err:
            raise SlaveError(f"bus {self.name} is busy with other tools") from err
        self._nudge()
        limit = LEND_TIMEOUT_S + self.config.timeout_s * (self.config.retries + 1) * 4
        try:
            return await asyncio.wait_for(future, limit)
        except TimeoutError as err:
            raise SlaveError(f"bus {self.name}: no turn on the bus in time") from err

    def status(self) -> dict[str, Any]:
        return {
            "kind": "modbus",
            "port": self.config.port,
            "state": self.health.state.value,
            "last_error": self.health.last_error,
            "slaves": {
                str(a): {
                    "profile": s.config.profile.name,
                    "reads": s.reads,
                    "failures": s.failures,
                    "consecutive_failures": s.consecutive,
                    "last_error": s.last_error,
                }
                for a, s in self.slaves.items()
            },
        }

    def _client(self) -> RtuMaster:
        c = self.config
        return RtuMaster(
            c.port, baudrate=c.baudrate, parity=c.parity, timeout_s=c.timeout_s, retries=c.retries
        )

    async def run(self, stop: asyncio.Event) -> None:
        if not self.slaves:
            return
        while not stop.is_set():
            self.health.opening()
            client = self._client()  # opened exclusively (flock): the tools see who holds it
            try:
                await self._open(client)
                self.health.opened()
                await self._poll(client, stop)
            except OSError as err:
                self.health.failed(err)
                self._port_failed(self.health.last_error or "port failed")
            finally:
                client.close()
            if not stop.is_set() and await self.health.pause(stop):
                break
        self.health.closed()

    async def _open(self, client: RtuMaster) -> None:
        if not await client.connect():
            why = _why_not(self.config.port) or f": {client.last_error}"
            raise OSError(f"cannot open {self.config.port}{why}")

    async def _poll(self, client: RtuMaster, stop: asyncio.Event) -> None:
        """Poll each slave when due; between cycles, serve the tools' jobs.

        A cycle runs in the event loop's callbacks, not in this task: a timer
        starts it, each reply starts the next transaction, and the readings
        are handed on together at its end; the next timer is set then. This
        task wakes only for a tool's job, stop, or a failure: it lets a cycle
        in flight finish first, so a job never overlaps a poll. Slaves due at
        the same moment are polled in one cycle, and their next polls are
        counted from its start, so slaves with one interval stay on one
        schedule: one wake-up per interval for the bus.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        stopper = loop.create_task(stop.wait(), name=f"modbus-{self.name}-stop")
        stopper.add_done_callback(lambda _: self._nudge())
        try:
            while not stop.is_set():
                await self._serve_requests(client)
                if not client.connected:
                    raise OSError(f"adapter closed{_closed_why(client)}")
                wake: asyncio.Future[None] = loop.create_future()
                self._wake = wake
                self._arm(client)
                try:
                    await wake  # raises what ended a cycle: the adapter gone, or a bug
                finally:
                    self._disarm()
                if self._cycle is not None and not stop.is_set():
                    idle: asyncio.Future[None] = loop.create_future()
                    self._idle = idle
                    try:
                        await idle  # the cycle stops after its transaction in flight
                    finally:
                        self._idle = None
        finally:
            stopper.cancel()
            self._halt(client)

    def _nudge(self) -> None:
        """Wake the poll task (a tool's job, or stop)."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _arm(self, client: RtuMaster) -> None:
        assert self._loop is not None
        self._disarm()
        due = min([s.next_due for s in self.slaves.values()])
        delay = max(0.0, due - self._monotonic())
        self._timer = self._loop.call_later(delay, self._begin, client)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _halt(self, client: RtuMaster) -> None:
        """The poll task ends: no timer, no transaction; what a cycle read is handed on."""
        self._disarm()
        if self._cycle is not None:
            client.cancel()
            self._end_cycle(arm=False)
        self._wake = self._idle = None

    def _begin(self, client: RtuMaster) -> None:
        self._timer = None
        try:
            now = self._monotonic()
            due = [s for s in self.slaves.values() if s.next_due - now <= DUE_SLACK_S]
            if not due:
                self._arm(client)  # the timer fired a hair early
                return
            self._cycle = _Cycle(client, now, due)
            self._next_slave(self._cycle)
        except Exception as err:  # a callback's bug must reach the supervised task
            self._crash(err)

    def _next_slave(self, cycle: _Cycle) -> None:
        wake = self._wake
        if not cycle.due or wake is None or wake.done():
            self._end_cycle(arm=True)  # done, or a tool waits: the rest stay due
            return
        if not cycle.client.connected:
            self._crash(OSError(f"adapter closed{_closed_why(cycle.client)}"))
            return
        cycle.slave = cycle.due.pop(0)
        cycle.replies = []
        self._request(cycle)

    def _request(self, cycle: _Cycle) -> None:
        assert cycle.slave is not None
        request = cycle.slave.requests[len(cycle.replies)]
        try:
            cycle.client.start(request, self._answered)
        except ModbusLinkError as err:
            self._answered(err)

    def _answered(self, reply: RegisterReply | ModbusLinkError) -> None:
        try:
            cycle = self._cycle
            if cycle is None or cycle.slave is None:
                return
            slave = cycle.slave
            try:
                cycle.replies.append(registers_of(reply, slave.config.address))
                if len(cycle.replies) < len(slave.requests):
                    self._request(cycle)
                    return
                values = slave.decode(cycle.replies)
            except SlaveError as err:
                self._failed(slave, str(err), cycle=cycle.start)
            else:
                cycle.readings.append(self._succeeded(slave, values, cycle=cycle.start))
            cycle.slave = None
            self._next_slave(cycle)
        except Exception as err:  # a callback's bug must reach the supervised task
            self._crash(err)

    def _end_cycle(self, *, arm: bool) -> None:
        """Hand the cycle's readings on together (one wake-up of the pipeline), then go on."""
        cycle, self._cycle = self._cycle, None
        if cycle is not None:
            for reading in cycle.readings:
                self._sink(reading, False)
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        elif arm and cycle is not None and self._wake is not None and not self._wake.done():
            self._arm(cycle.client)

    def _crash(self, err: Exception) -> None:
        """A cycle cannot go on: the poll task raises ``err`` (an OSError reopens the port;
        anything else is a bug, and the supervisor restarts the bus)."""
        self._end_cycle(arm=False)
        for waiter in (self._wake, self._idle):
            if waiter is not None and not waiter.done():
                waiter.set_exception(err)
                return
        # The task is already awake (a tool's job): it finds a closed port itself.
        if not isinstance(err, OSError):
            log.error("modbus %s: poll cycle failed", self.name, exc_info=err)

    async def _serve_requests(self, client: RtuMaster) -> None:
        while not self._requests.empty():
            job, future = self._requests.get_nowait()
            if future.done():
                continue  # its caller gave up
            try:
                result = await job(client)
            except (GatewayError, OSError) as err:
                if not future.done():
                    future.set_exception(err)
            else:
                if not future.done():
                    future.set_result(result)
            if not client.connected:
                raise OSError("adapter closed")

    def _port_failed(self, error: str) -> None:
        """The adapter is gone or will not open: one failed poll for each slave behind it."""
        reason = f"bus {self.name} port {self.config.port}: {error}"
        for slave in self.slaves.values():
            self._failed(slave, reason, log_level=logging.DEBUG)
            slave.next_due = 0.0  # polled as soon as the adapter is back

    def _succeeded(self, slave: _Slave, values: dict[str, float], *, cycle: float) -> SlaveRead:
        if slave.consecutive:
            log.info("modbus %s slave %d answers again", self.name, slave.config.address)
        slave.consecutive = 0
        slave.reads += 1
        slave.last_error = None
        slave.next_due = cycle + slave.config.poll_interval_s
        return SlaveRead(self.name, slave.config.address, self._clock(), values)

    def _failed(
        self,
        slave: _Slave,
        reason: str,
        *,
        cycle: float | None = None,
        log_level: int | None = None,
    ) -> None:
        slave.consecutive += 1
        slave.failures += 1
        slave.last_error = reason
        interval = slave.config.poll_interval_s
        delay = min(self.config.backoff_max_s, interval * 2 ** min(slave.consecutive - 1, 16))
        start = self._monotonic() if cycle is None else cycle
        slave.next_due = start + max(interval, delay)
        level = logging.WARNING if slave.consecutive == 1 else logging.DEBUG
        level = level if log_level is None else log_level  # the port said it once already
        log.log(level, "modbus %s slave %d: %s", self.name, slave.config.address, reason)
        self._sink(
            SlaveFailed(self.name, slave.config.address, self._clock(), reason, slave.consecutive),
            True,
        )
