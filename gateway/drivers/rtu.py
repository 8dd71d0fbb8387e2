"""A lean Modbus RTU master on a serial port: one read transaction at a time.

What the gateway asks of a bus is small (register reads, one at a time, a
timeout and a few retries), and it asks it every second for years: the
general-purpose client (pymodbus) spent several times the CPU of the whole
rest of the daemon on it, in its transaction manager and transport. Here the
transport is ours and the frames stay pymodbus's (built and parsed through its
RTU framer in ``gateway/protocol/modbus_rtu.py``): a transaction is one
``write`` of the request, the reply gathered by the event loop's reader
callback until its length is known and reached, one timer for the timeout
(shared by the transactions a poll cycle chains: each moves it on), and a
reply that repeats the last one to the same request byte for byte is not
parsed again (when it comes in one read, as it nearly always does, it is
not even gathered or measured: the read is compared with it); nothing else
runs per poll.
``start`` is that transaction in callback form; the ``read_*_registers``
coroutines, for tools, await the same. ``transact`` is the same transaction
blocking, for the bus driver's poll thread: while the port is ``park``-ed with
it, the loop does not read the port, and a poll costs that thread's wake-ups
instead of the event loop's (docs/performance.md, the peer's work).

The port is opened exclusively (the same ``flock`` every tool checks), non
blocking. A reader error or end of file (the adapter pulled, the pty closed)
closes the link: ``connected`` turns false and the transaction in flight fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass

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

Done = Callable[["RegisterReply | ModbusLinkError"], None]
"""Where a transaction's outcome goes: the reply (an exception reply too), or the error."""

RX_LIMIT = 512  # bytes gathered for one reply at most (a reply is at most 255)
ANSWERS_KEPT = 64  # requests whose last good reply is remembered (a bus's plan, not a scan)
TIMER_SLACK_S = 0.001  # a timeout timer this close to its deadline has reached it


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
        self._pending: _Transaction | None = None
        # One timeout timer for a chain of transactions: a transaction started from the
        # one before it keeps that one's timer, which moves on to its deadline when it fires.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # request → the last good reply's frame and what it parsed to: a slave that says
        # the same as last time is not parsed again (the same bytes, CRC included).
        self._answers: dict[bytes, tuple[bytes, RegisterReply]] = {}
        self._parked: select.poll | None = None  # the poll thread's, while it has the port
        self._stale = False  # an attempt failed: a late reply may still come in

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

    def park(self) -> None:
        """Lend the port to one thread's ``transact`` calls: the loop stops reading it."""
        if self._fd >= 0 and self._loop is not None and self._parked is None:
            self._loop.remove_reader(self._fd)
            self._parked = select.poll()
            self._parked.register(self._fd, select.POLLIN)

    def unpark(self) -> None:
        """The thread is done with the port: the loop reads it again."""
        if self._parked is not None:
            self._parked = None
            if self._fd >= 0 and self._loop is not None:
                self._loop.add_reader(self._fd, self._readable)

    def transact(self, request: bytes) -> RegisterReply | ModbusLinkError:
        """One transaction with the master's timeout and retries, blocking; parked only.

        Raises ``OSError`` when the port fails under it (the adapter pulled, the
        pty closed): the caller ends its polling and the port is closed and
        reopened from the loop.
        """
        poller, fd = self._parked, self._fd
        if poller is None or fd < 0:
            raise OSError(f"port {self.port} is not lent to a poll thread")
        why = ""
        for _ in range(self.retries + 1):
            if self._stale:
                self._drain(fd)
            os.write(fd, request)  # 8 bytes: a serial driver always takes them
            outcome = self._gather(poller, fd, request, time.monotonic() + self.timeout_s)
            if isinstance(outcome, RegisterReply):
                return outcome
            why = outcome
            self._stale = True
        silent = f"no reply from slave {request[0]} within {self.timeout_s} s"
        return ModbusLinkError(why) if why else NoReplyError(silent)

    def _gather(
        self, poller: select.poll, fd: int, request: bytes, deadline: float
    ) -> RegisterReply | str:
        """One attempt's reply, or why there is none ("" for silence)."""
        rx = bytearray()
        known = self._answers.get(request)
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(math.ceil(left * 1000)):
                break
            try:
                data = os.read(fd, 256)
            except BlockingIOError:
                continue
            if not data:
                raise OSError(f"port {self.port} closed (end of file)")
            if not rx and known is not None and data == known[0]:
                return known[1]  # nearly every poll: the last reply again, in one read
            rx += data
            length = reply_length(rx)
            if length is not None and len(rx) >= length:
                try:
                    return self._parsed(request, bytes(rx[:length]))
                except ProtocolError as err:
                    return f"garbled reply: {err}"
            if len(rx) > RX_LIMIT:
                break
        return f"garbled reply: {len(rx)} bytes that are no frame" if rx else ""

    def _drain(self, fd: int) -> None:
        """Drop what came in since a failed attempt (a late reply must not open the next)."""
        self._stale = False
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 256):
                pass

    def _parsed(self, request: bytes, frame: bytes) -> RegisterReply:
        """FRAME as a reply to REQUEST, from memory when it repeats the last good one."""
        known = self._answers.get(request)
        if known is not None and known[0] == frame:
            return known[1]
        result = parse_reply(frame, request[1])
        if known is not None or len(self._answers) < ANSWERS_KEPT:
            self._answers[request] = (frame, result)
        return result

    async def read_holding_registers(
        self,
        address: int,
        *,
        count: int = 1,
        device_id: int = 1,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> RegisterReply:
        """Function 3; ``timeout_s`` and ``retries`` default to the master's own."""
        request = read_request(device_id, READ_HOLDING, address, count)
        return await self._transact(request, timeout_s, retries)

    async def read_input_registers(
        self,
        address: int,
        *,
        count: int = 1,
        device_id: int = 1,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> RegisterReply:
        """Function 4; ``timeout_s`` and ``retries`` default to the master's own."""
        request = read_request(device_id, READ_INPUT, address, count)
        return await self._transact(request, timeout_s, retries)

    def start(
        self,
        request: bytes,
        done: Done,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> None:
        """One transaction in callback form: ``done`` gets the reply or the error, once.

        Called from the event loop (the reader callback or the timer) with no
        transaction in flight, so ``done`` may start the next one. Raises
        ``ModbusLinkError`` at once when the port is closed or busy.
        """
        if self._pending is not None:
            raise ModbusLinkError("a transaction is already in flight")
        if self._fd < 0 or self._loop is None:
            raise ModbusLinkError(f"port {self.port} is not open")
        self._pending = _Transaction(
            request,
            done,
            self.retries if retries is None else retries,
            self.timeout_s if timeout_s is None else timeout_s,
        )
        self._send(self._pending, self._loop)

    def cancel(self) -> None:
        """Abandon the transaction in flight: ``done`` is not called; a late reply is dropped."""
        self._pending = None
        self._stop_timer()

    async def _transact(
        self, request: bytes, timeout_s: float | None, retries: int | None
    ) -> RegisterReply:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[RegisterReply | ModbusLinkError] = loop.create_future()

        def done(result: RegisterReply | ModbusLinkError) -> None:
            if not outcome.done():
                outcome.set_result(result)

        self.start(request, done, timeout_s=timeout_s, retries=retries)
        try:
            result = await outcome
        except asyncio.CancelledError:
            if self._pending is not None and self._pending.done is done:
                self.cancel()
            raise
        if isinstance(result, ModbusLinkError):
            raise result
        return result

    def _send(self, pending: _Transaction, loop: asyncio.AbstractEventLoop) -> None:
        self._rx.clear()
        pending.deadline = loop.time() + pending.timeout_s
        if self._timer is None or self._timer_at > pending.deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(pending.deadline, self._expired)
            self._timer_at = pending.deadline
        try:
            os.write(self._fd, pending.request)  # 8 bytes: a serial driver always takes them
        except OSError as err:
            self._lost(err)

    def _expired(self) -> None:
        """The timeout timer: the transaction in flight timed out, or it is a later one's."""
        self._timer = None
        pending, loop = self._pending, self._loop
        if pending is None or loop is None:
            return
        if pending.deadline - loop.time() > TIMER_SLACK_S:
            self._timer = loop.call_at(pending.deadline, self._expired)
            self._timer_at = pending.deadline
            return
        self._answered(None)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _answered(self, frame: bytes | None) -> None:
        """One attempt ended: a frame, or None (the timer: silence, or bytes that never framed)."""
        pending = self._pending
        if pending is None:
            return
        why = ""
        if frame is not None:
            try:
                result = self._parsed(pending.request, frame)
            except ProtocolError as err:
                why = f"garbled reply: {err}"
            else:
                self._finish(result)
                return
        elif self._rx:
            why = f"garbled reply: {len(self._rx)} bytes that are no frame"
        if pending.retries_left > 0 and self._loop is not None:
            pending.retries_left -= 1
            self._stop_timer()  # the retry sets its own
            # At the next turn: a caller that gave up meanwhile (its timeout fell in this
            # turn) cancels first, and no stray request goes out ahead of the next one.
            self._loop.call_soon(self._retry, pending)
            return
        silent = f"no reply from slave {pending.request[0]} within {pending.timeout_s} s"
        self._finish(ModbusLinkError(why) if why else NoReplyError(silent))

    def _retry(self, pending: _Transaction) -> None:
        if self._pending is pending and self._loop is not None:
            self._send(pending, self._loop)

    def _finish(self, result: RegisterReply | ModbusLinkError) -> None:
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending.done(result)  # may start the next transaction, on this timer
        finally:
            if self._pending is None:
                self._stop_timer()  # nothing followed: no timer left behind

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
        pending = self._pending
        if pending is None:
            return  # nobody asked: a late reply or line noise, dropped
        rx = self._rx
        if not rx:
            # Nearly every poll: the whole reply in one read, byte for byte the last one.
            known = self._answers.get(pending.request)
            if known is not None and data == known[0]:
                self._finish(known[1])
                return
        rx += data
        length = reply_length(rx)
        if length is not None and len(rx) >= length:
            self._answered(bytes(rx[:length]))
        elif len(rx) > RX_LIMIT:
            self._answered(None)

    def _lost(self, err: OSError | None) -> None:
        """The port closed (by us, or under us): stop reading, fail what is in flight."""
        if self._fd >= 0 and self._loop is not None and self._parked is None:
            self._loop.remove_reader(self._fd)
        self._fd = -1
        self._parked = None
        if err is not None:
            self.last_error = err.strerror or str(err)
        if self._serial is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                self._serial.close()
            self._serial = None
        pending = self._pending
        self._stop_timer()
        if pending is not None:
            reason = f"port {self.port} closed" + (f": {self.last_error}" if err else "")
            self._finish(ModbusLinkError(reason))


@dataclass(slots=True)
class _Transaction:
    request: bytes
    done: Done
    retries_left: int
    timeout_s: float
    deadline: float = 0.0  # on the loop's clock: the timeout of the attempt in flight
