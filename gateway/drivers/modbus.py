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
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config import ModbusConfig, SlaveConfig
from gateway.drivers.base import PortHealth, PortState, Sink
from gateway.drivers.rtu import ModbusLinkError, RtuMaster
from gateway.errors import GatewayError, RegisterDecodeError, TransportError
from gateway.events import Input, SlaveFailed, SlaveRead
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
    hush: _Hush | None = None  # set by the loop, read by the poll thread
    hushed: int = 0  # good reads kept from the sink as quiet repeats

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


@dataclass(frozen=True, slots=True)
class _Hush:
    """``PolledBus.hush``: these values need not be handed on before ``until`` while ``still``."""

    values: dict[str, float]
    until: float
    still: Callable[[], bool]


@dataclass
class _Session:
    """The poll thread's turn on the bus: it ends when a tool's job or stop wants the bus."""

    ended: asyncio.Future[None]  # settled on the loop when the thread has left the port
    # Held from the start: the thread sleeps in ``acquire(timeout=...)``, ``end`` releases it.
    wake: threading.Lock = field(default_factory=threading.Lock)
    over: bool = False

    def __post_init__(self) -> None:
        self.wake.acquire()

    def end(self) -> None:
        self.over = True
        with contextlib.suppress(RuntimeError):  # released already
            self.wake.release()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


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
        self._session: _Session | None = None  # the poll thread's turn, while it has one

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
                    "kept_as_quiet": s.hushed,
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
        """Poll each slave when due; between turns of the poll thread, serve the tools' jobs.

        The polls run in a thread of the bus's own, with the port lent to it
        (``RtuMaster.park``): it sleeps until the next slave is due, sends,
        blocks for the reply, and hands a cycle's readings to the loop
        together (one wake-up of the loop per cycle, none per transaction).
        A tool's job or stop ends its turn after the transaction in flight,
        so a job never overlaps a poll. Slaves due at the same moment are
        polled in one cycle, and their next polls are counted from its start,
        so slaves with one interval stay on one schedule.
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
                if self._requests.empty() and not stop.is_set():
                    await self._lend_to_thread(client, loop)
        finally:
            stopper.cancel()

    async def _lend_to_thread(self, client: RtuMaster, loop: asyncio.AbstractEventLoop) -> None:
        """One turn of the poll thread; raises what ended it early (the port failed, a bug)."""
        session = _Session(loop.create_future())
        self._session = session
        client.park()
        thread = threading.Thread(
            target=self._polling, args=(client, session, loop), name=f"modbus-{self.name}"
        )
        thread.daemon = True  # never holds the process up; it leaves within one transaction
        thread.start()
        try:
            await asyncio.shield(session.ended)
        finally:
            self._session = None
            session.end()
            if not session.ended.done():  # cancelled: the port is not closed under the thread
                await session.ended
            client.unpark()

    def _nudge(self) -> None:
        """End the poll thread's turn (a tool's job, or stop)."""
        if self._session is not None:
            self._session.end()

    def _polling(
        self, client: RtuMaster, session: _Session, loop: asyncio.AbstractEventLoop
    ) -> None:
        """The poll thread: cycles until its turn ends. Touches the loop only through
        ``call_soon_threadsafe``, and the slaves' counters only while it runs."""
        error: BaseException | None = None
        slaves = self.slaves.values()
        try:
            due_at = min([s.next_due for s in slaves])
            while not session.over:
                now = self._monotonic()
                if due_at - now > DUE_SLACK_S:
                    session.wake.acquire(timeout=due_at - now)
                    continue
                events: list[tuple[Input, bool]] = []
                try:
                    self._cycle(client, session, now, events)
                finally:
                    if events:
                        loop.call_soon_threadsafe(self._deliver, events)
                due_at = min([s.next_due for s in slaves])
        except BaseException as err:  # an OSError reopens the port; anything else is a bug
            error = err
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, session.ended, error)

    def _cycle(
        self, client: RtuMaster, session: _Session, start: float, events: list[tuple[Input, bool]]
    ) -> None:
        """Read each slave due at START; a tool's job or stop leaves the rest due."""
        for slave in [s for s in self.slaves.values() if s.next_due - start <= DUE_SLACK_S]:
            if session.over:
                return
            address = slave.config.address
            try:
                replies = [registers_of(client.transact(r), address) for r in slave.requests]
                values = slave.decode(replies)
            except SlaveError as err:
                events.append((self._failed(slave, str(err), cycle=start), True))
                continue
            hush = slave.hush
            if hush is not None and hush.values == values and hush.still():
                at = self._clock()
                if at < hush.until:  # a quiet repeat: counted here, and that is all
                    slave.reads += 1
                    slave.hushed += 1
                    slave.next_due = start + slave.config.poll_interval_s
                    continue
            events.append((self._succeeded(slave, values, cycle=start), False))

    def hush(
        self, address: int, values: dict[str, float], until: float, still: Callable[[], bool]
    ) -> None:
        """``PolledBus.hush`` (gateway/daemon.py decides when): a quiet repeat costs the
        poll thread's work alone, no wake-up of the event loop."""
        slave = self.slaves.get(address)
        if slave is not None:
            slave.hush = _Hush(dict(values), until, still)

    def _deliver(self, events: list[tuple[Input, bool]]) -> None:
        for event, critical in events:
            self._sink(event, critical)

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
            self._sink(self._failed(slave, reason, log_level=logging.DEBUG), True)
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
    ) -> SlaveFailed:
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
        return SlaveFailed(
            self.name, slave.config.address, self._clock(), reason, slave.consecutive
        )
