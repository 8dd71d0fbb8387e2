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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from gateway.config import ModbusConfig, SlaveConfig
from gateway.drivers.base import PortHealth, PortState, Sink
from gateway.errors import RegisterDecodeError, TransportError
from gateway.events import SlaveFailed, SlaveRead
from gateway.protocol.modbus_profiles import registers_from_blocks

log = logging.getLogger(__name__)


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
        self._requests: asyncio.Queue[tuple[int, asyncio.Future[dict[str, float]]]] = (
            asyncio.Queue()
        )
        self._request_ready = asyncio.Event()

    async def read_now(self, address: int) -> dict[str, float]:
        """One reading for a person (console, command), taken between the scheduled polls."""
        if self.health.state is not PortState.OPEN:
            state, error = self.health.state.value, self.health.last_error or ""
            raise SlaveError(f"bus {self.name} is {state}: {error}")
        if address not in self.slaves:
            raise SlaveError(f"slave {address} is not configured on bus {self.name}")
        future: asyncio.Future[dict[str, float]] = asyncio.get_running_loop().create_future()
        self._requests.put_nowait((address, future))
        self._request_ready.set()
        limit = 2 + self.config.timeout_s * (self.config.retries + 1) * 4
        return await asyncio.wait_for(future, limit)

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
            address, future = self._requests.get_nowait()
            if future.done():
                continue
            try:
                future.set_result(await self._read(client, self.slaves[address].config))
            except SlaveError as err:
                future.set_exception(err)

    async def _read(self, client: AsyncModbusSerialClient, slave: SlaveConfig) -> dict[str, float]:
        profile = slave.profile
        plan = profile.read_plan()
        replies = []
        read = (
            client.read_input_registers if profile.function == 4 else client.read_holding_registers
        )
        for block in plan:
            try:
                reply = await read(block.address, count=block.count, device_id=slave.address)
            except ModbusException as err:
                raise SlaveError(f"no valid reply: {err}") from err
            if reply.isError():
                raise SlaveError(f"exception reply {getattr(reply, 'exception_code', '?')}")
            if reply.dev_id != slave.address:
                raise SlaveError(f"reply from slave {reply.dev_id}")
            replies.append(reply.registers)
        try:
            return profile.decode(registers_from_blocks(plan, replies))
        except RegisterDecodeError as err:
            raise SlaveError(str(err)) from err

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
