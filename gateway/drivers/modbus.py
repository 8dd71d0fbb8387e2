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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from gateway.config import ModbusConfig, SlaveConfig
from gateway.drivers.base import PortHealth, PortState, Sink
from gateway.errors import GatewayError, RegisterDecodeError, TransportError
from gateway.events import SlaveFailed, SlaveRead
from gateway.protocol.modbus_profiles import DeviceProfile, registers_from_blocks

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[AsyncModbusSerialClient], Awaitable[Any]]

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


async def probe(
    client: AsyncModbusSerialClient, address: int, *, timeout_s: float, register: int = 0
) -> Probe:
    """One short read of ``register``: anything that comes back means somebody is there."""
    try:
        reply = await asyncio.wait_for(
            client.read_holding_registers(register, count=1, device_id=address), timeout_s
        )
    except TimeoutError:
        reply = None
    except ModbusException as err:
        if not client.connected:
            raise AdapterGoneError(f"adapter gone: {err}") from err
        return Probe(address, answered=True, note=f"garbled reply: {err}")
    if not client.connected:
        raise AdapterGoneError("adapter gone (port closed)")
    if reply is None:
        return Probe(address, answered=False)
    if reply.isError():
        return Probe(address, answered=True, exception_code=int(reply.exception_code))
    return Probe(address, answered=True)


async def read_profile(
    client: AsyncModbusSerialClient, address: int, profile: DeviceProfile
) -> tuple[dict[int, int], dict[str, float]]:
    """The registers a profile's plan reads from ``address``, and what they decode to."""
    plan = profile.read_plan()
    replies = []
    read = client.read_input_registers if profile.function == 4 else client.read_holding_registers
    for block in plan:
        try:
            reply = await read(block.address, count=block.count, device_id=address)
        except ModbusException as err:
            raise SlaveError(f"no valid reply: {err}") from err
        if reply.isError():
            code = getattr(reply, "exception_code", None)
            meaning = EXCEPTION_MEANINGS.get(code, "") if isinstance(code, int) else ""
            raise SlaveError(f"exception reply {code} {meaning}".rstrip())
        if reply.dev_id != address:
            raise SlaveError(f"reply from slave {reply.dev_id}")
        replies.append(reply.registers)
    registers = registers_from_blocks(plan, replies)
    try:
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


def _why_not(port: str) -> str:
    """What a technician needs to hear when pymodbus only says the port did not open."""
    return "" if os.path.exists(port) else " (no such device)"


class SlaveError(TransportError):
    """One failed transaction; the reason is what a technician needs to read."""


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
        self._request_ready = asyncio.Event()

    async def read_now(self, address: int) -> dict[str, float]:
        """One reading for a person (console, command), taken between the scheduled polls."""
        if address not in self.slaves:
            raise SlaveError(f"slave {address} is not configured on bus {self.name}")
        profile = self.slaves[address].config.profile
        _, values = await self.lend(lambda client: read_profile(client, address, profile))
        return values

    async def lend(self, job: Callable[[AsyncModbusSerialClient], Awaitable[T]]) -> T:
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
        self._request_ready.set()
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

    def _client(self) -> AsyncModbusSerialClient:
        c = self.config
        return AsyncModbusSerialClient(
            c.port,
            baudrate=c.baudrate,
            parity=c.parity,
            timeout=c.timeout_s,
            retries=c.retries,
            reconnect_delay=0,  # reopening is ours, with our backoff and our state
            name=f"modbus-{c.name}",
        )

    async def run(self, stop: asyncio.Event) -> None:
        if not self.slaves:
            return
        while not stop.is_set():
            self.health.opening()
            client = self._client()  # pymodbus opens the port exclusively (flock)
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

    async def _open(self, client: AsyncModbusSerialClient) -> None:
        if not await client.connect():
            raise OSError(f"cannot open {self.config.port}{_why_not(self.config.port)}")

    async def _poll(self, client: AsyncModbusSerialClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._serve_requests(client)
            slave = min(self.slaves.values(), key=lambda s: s.next_due)
            wait = slave.next_due - self._monotonic()
            if wait > 0:
                self._request_ready.clear()
                stopper = asyncio.ensure_future(stop.wait())
                request = asyncio.ensure_future(self._request_ready.wait())
                try:
                    await asyncio.wait(
                        {stopper, request}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    stopper.cancel()
                    request.cancel()
                if stop.is_set():
                    return
                if self._request_ready.is_set() or self._monotonic() < slave.next_due:
                    continue
            if not client.connected:
                raise OSError("adapter closed")
            try:
                values = await self._read(client, slave.config)
            except SlaveError as err:
                self._failed(slave, str(err))
            else:
                self._succeeded(slave, values)

    async def _serve_requests(self, client: AsyncModbusSerialClient) -> None:
        while not self._requests.empty():
            job, future = self._requests.get_nowait()
            if future.done():
                continue  # its caller gave up
            try:
                result = await job(client)
            except (GatewayError, ModbusException, OSError) as err:
                if not future.done():
                    future.set_exception(err)
            else:
                if not future.done():
                    future.set_result(result)
            if not client.connected:
                raise OSError("adapter closed")

    async def _read(self, client: AsyncModbusSerialClient, slave: SlaveConfig) -> dict[str, float]:
        _, values = await read_profile(client, slave.address, slave.profile)
        return values

    def _port_failed(self, error: str) -> None:
        """The adapter is gone or will not open: one failed poll for each slave behind it."""
        reason = f"bus {self.name} port {self.config.port}: {error}"
        for slave in self.slaves.values():
            self._failed(slave, reason, log_level=logging.DEBUG)
            slave.next_due = 0.0  # polled as soon as the adapter is back

    def _succeeded(self, slave: _Slave, values: dict[str, float]) -> None:
        if slave.consecutive:
            log.info("modbus %s slave %d answers again", self.name, slave.config.address)
        slave.consecutive = 0
        slave.reads += 1
        slave.last_error = None
        slave.next_due = self._monotonic() + slave.config.poll_interval_s
        self._sink(SlaveRead(self.name, slave.config.address, self._clock(), values), False)

    def _failed(self, slave: _Slave, reason: str, *, log_level: int | None = None) -> None:
        slave.consecutive += 1
        slave.failures += 1
        slave.last_error = reason
        interval = slave.config.poll_interval_s
        delay = min(self.config.backoff_max_s, interval * 2 ** min(slave.consecutive - 1, 16))
        slave.next_due = self._monotonic() + max(interval, delay)
        level = logging.WARNING if slave.consecutive == 1 else logging.DEBUG
        level = level if log_level is None else log_level  # the port said it once already
        log.log(level, "modbus %s slave %d: %s", self.name, slave.config.address, reason)
        self._sink(
            SlaveFailed(self.name, slave.config.address, self._clock(), reason, slave.consecutive),
            True,
        )
