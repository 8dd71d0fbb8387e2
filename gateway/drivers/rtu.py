"""A lean Modbus RTU master on a serial port: one read transaction at a time.

What the gateway asks of a bus is small (register reads, one at a time, a
timeout and a few retries), and it asks it every second for years: the
general-purpose client (pymodbus) spent several times the CPU of the whole
rest of the daemon on it. Here a transaction is one ``write`` of the request,
the reply gathered by the event loop's reader callback until its length is
known and reached, one timer for the timeout; nothing else runs per poll.

The port is opened exclusively (the same ``flock`` every tool checks), non
blocking. A reader error or end of file (the adapter pulled, the pty closed)
closes the link: ``connected`` turns false and the transaction in flight fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import serial

from gateway.errors import ProtocolError, TransportError
from gateway.protocol.modbus_rtu import (
    READ_HOLDING,
    READ_INPUT,
    RegisterReply,
    parse_reply,
    read_request,
    reply_length,
)

log = logging.getLogger(__name__)

RX_LIMIT = 512  # bytes gathered for one reply at most (a reply is at most 255)


class ModbusLinkError(TransportError):
    """A transaction that got no usable reply: silence, a garbled reply, or the port gone."""


class NoReplyError(ModbusLinkError, TimeoutError):
    """Silence: nothing came back within the timeout, on any attempt."""


class RtuMaster:
    """Modbus RTU over ``port``: ``read_holding_registers`` / ``read_input_registers``.

    Callers take turns (the bus driver runs one transaction at a time); a
    transaction cancelled by its caller leaves the link ready for the next.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        timeout_s: float = 0.5,
        retries: int = 0,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.timeout_s = timeout_s
        self.retries = retries
        self.last_error: str | None = None
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx = bytearray()
        self._waiter: asyncio.Future[bytes | None] | None = None

    @property
    def connected(self) -> bool:
        return self._fd >= 0

    async def connect(self) -> bool:
        """Open the port exclusively; False (and ``last_error``) when it cannot be had."""
        if self.connected:
            return True
        try:
            port = serial.Serial(
                self.port,
                baudrate=self.baudrate,
                parity=self.parity,
                bytesize=8,
                stopbits=1,
                timeout=0,
                exclusive=True,
            )
        except (OSError, ValueError, serial.SerialException) as err:
            self.last_error = str(err)
            return False
        self._serial = port
        self._fd = port.fileno()
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)
        return True

    def close(self) -> None:
        self._lost(None)

    async def read_holding_registers(
        self, address: int, *, count: int = 1, device_id: int = 1
    ) -> RegisterReply:
        return await self._transact(read_request(device_id, READ_HOLDING, address, count))

    async def read_input_registers(
        self, address: int, *, count: int = 1, device_id: int = 1
    ) -> RegisterReply:
        return await self._transact(read_request(device_id, READ_INPUT, address, count))

    async def _transact(self, request: bytes) -> RegisterReply:
        if self._waiter is not None:
            raise ModbusLinkError("a transaction is already in flight")
        function = request[1]
        silent = f"no reply from slave {request[0]} within {self.timeout_s} s"
        for attempt in range(self.retries + 1):
            frame = await self._exchange(request)
            if frame is not None:
                try:
                    return parse_reply(frame, function)
                except ProtocolError as err:
                    why = f"garbled reply: {err}"
            else:
                why = f"garbled reply: {len(self._rx)} bytes that are no frame" if self._rx else ""
            if attempt == self.retries:
                raise ModbusLinkError(why) if why else NoReplyError(silent)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _exchange(self, request: bytes) -> bytes | None:
        """Send ``request``; the reply frame, or None on silence (or bytes that never framed)."""
        loop = self._loop
        if self._fd < 0 or loop is None:
            raise ModbusLinkError(f"port {self.port} is not open")
        self._rx.clear()
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(self.timeout_s, _expire, waiter)
        try:
            try:
                os.write(self._fd, request)  # 8 bytes: a serial driver always takes them
            except OSError as err:
                self._waiter = None  # failed here and now, not through the future
                self._lost(err)
                raise ModbusLinkError(f"port {self.port}: {err.strerror or err}") from err
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 256)
        except BlockingIOError:
            return
        except OSError as err:
            self._lost(err)
            return
        if not data:
            self._lost(None)
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody asked: a late reply or line noise, dropped
        rx = self._rx
        rx += data
        length = reply_length(rx)
        if length is not None and len(rx) >= length:
            waiter.set_result(bytes(rx[:length]))
        elif len(rx) > RX_LIMIT:
            waiter.set_result(None)

    def _lost(self, err: OSError | None) -> None:
        """The port closed (by us, or under us): stop reading, fail what is in flight."""
        if self._fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._fd = -1
        if err is not None:
            self.last_error = err.strerror or str(err)
        if self._serial is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                self._serial.close()
            self._serial = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            reason = f"port {self.port} closed" + (f": {self.last_error}" if err else "")
            waiter.set_exception(ModbusLinkError(reason))


def _expire(waiter: asyncio.Future[bytes | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
