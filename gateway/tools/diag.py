"""``covergw diag``: bus tools for a technician with a laptop and a USB adapter.

``sniff`` decodes what a radio module delivers, live; ``modbus scan`` finds
which addresses answer; ``modbus read`` takes one reading through a device
profile. A port the daemon holds is not fought over: the tools say so.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import BinaryIO, TextIO

import serial
import serial_asyncio_fast
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from gateway.drivers.portlock import PortBusyError, PortLock
from gateway.protocol.framing import IDLE_GAP_S, Item, Received, make_framer
from gateway.protocol.modbus_profiles import DeviceProfile, registers_from_blocks
from gateway.protocol.render import describe

EXIT_BUSY = 3
BUSY_HINT = (
    "{port} is held by another program, most likely the covergw daemon.\n"
    "Ask the daemon instead:  covergw diag tail  (radio),  covergw status,  or on its console "
    "'modbus read BUS SLAVE'  (or stop it: systemctl stop covergw)"
)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


async def sniff(
    port: str,
    *,
    baudrate: int,
    dialect: str,
    rssi_append: bool,
    raw: bool,
    save: BinaryIO | None,
    count: int | None,
    duration_s: float | None,
    out: TextIO,
    err: TextIO,
) -> int:
    try:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=port, baudrate=baudrate, exclusive=True
        )
    except serial.SerialException as error:
        if "exclusively lock" in str(error) or "Resource temporarily unavailable" in str(error):
            print(BUSY_HINT.format(port=port), file=err)
            return EXIT_BUSY
        print(f"cannot open {port}: {error}", file=err)
        return 2
    framer = make_framer(dialect, rssi_append=rssi_append)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    frames = 0
    try:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                data = await asyncio.wait_for(reader.read(4096), IDLE_GAP_S)
            except TimeoutError:
                items: Iterable[Item] = framer.idle()
            else:
                if not data:
                    print(f"{port} closed", file=err)
                    break
                if save is not None:
                    save.write(data)
                    save.flush()
                items = framer.feed(data)
            for item in items:
                print(f"{_stamp()}  {describe(item, raw=raw)}", file=out, flush=True)
                frames += isinstance(item, Received)
            if count is not None and frames >= count:
                break
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        writer.close()
    summary = {k: v for k, v in framer.stats.as_dict().items() if v}
    print(f"summary: {summary}", file=err)
    return 0


def parse_slaves(text: str) -> list[int]:
    """``1-247``, ``1,80,81``, or a mix."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        first, last = int(low, 0), int(high or low, 0)
        if not 1 <= first <= last <= 247:
            raise ValueError(f"slave addresses are 1–247, got {part!r}")
        out.extend(range(first, last + 1))
    return out


def _client(port: str, baudrate: int, timeout_s: float) -> AsyncModbusSerialClient:
    return AsyncModbusSerialClient(
        port, baudrate=baudrate, timeout=timeout_s, retries=0, reconnect_delay=0
    )


def _busy(port: str, err: TextIO) -> int | None:
    """Why the port cannot be had (the exit status), or None if it is free.

    pymodbus opens ports exclusively too, so this only probes the lock to be
    able to say who holds the port, then lets go before pymodbus opens it.
    """
    try:
        with PortLock(port):
            return None
    except PortBusyError:
        print(BUSY_HINT.format(port=port), file=err)
        return EXIT_BUSY
    except OSError as error:
        print(f"cannot open {port}: {error.strerror}", file=err)
        return 2


async def modbus_scan(
    port: str, *, baudrate: int, slaves: list[int], timeout_s: float, out: TextIO, err: TextIO
) -> int:
    if (busy := _busy(port, err)) is not None:
        return busy
    client = _client(port, baudrate, timeout_s)
    if not await client.connect():
        print(f"cannot open {port}", file=err)
        return 2
    found = []
    try:
        for address in slaves:
            try:
                reply = await client.read_holding_registers(0, count=1, device_id=address)
            except ModbusException:
                continue
            # Any reply, an exception reply included, means somebody is at that address.
            note = (
                "answers" if not reply.isError() else f"answers (exception {reply.exception_code})"
            )
            found.append(address)
            print(f"0x{address:02X} ({address:3d})  {note}", file=out, flush=True)
    finally:
        client.close()
    print(f"{len(found)} of {len(slaves)} addresses answered", file=err)
    return 0


async def modbus_read(
    port: str,
    *,
    baudrate: int,
    slave: int,
    profile: DeviceProfile,
    timeout_s: float,
    out: TextIO,
    err: TextIO,
) -> int:
    if (busy := _busy(port, err)) is not None:
        return busy
    client = _client(port, baudrate, timeout_s)
    if not await client.connect():
        print(f"cannot open {port}", file=err)
        return 2
    try:
        plan = profile.read_plan()
        read = (
            client.read_input_registers if profile.function == 4 else client.read_holding_registers
        )
        replies = []
        for block in plan:
            try:
                reply = await read(block.address, count=block.count, device_id=slave)
            except ModbusException as error:
                print(f"slave {slave}: no valid reply ({error})", file=err)
                return 1
            if reply.isError():
                print(f"slave {slave}: exception reply {reply.exception_code}", file=err)
                return 1
            replies.append(reply.registers)
    finally:
        client.close()
    registers = registers_from_blocks(plan, replies)
    print(f"slave 0x{slave:02X} ({slave}) through profile {profile.name}:", file=out)
    for field in profile.fields:
        value = field.decode(registers)
        words = " ".join(f"{registers[a]:04X}" for a in field.addresses())
        where = f"0x{field.address:04X}: {words}"
        print(f"  {field.name:<16} {value:>12.4f} {field.unit:<6}  registers {where}", file=out)
    raw = " ".join(f"{a:04X}={v:04X}" for a, v in sorted(registers.items()))
    print(f"  raw: {raw}", file=out)
    return 0
