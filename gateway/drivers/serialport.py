"""Keep a serial port open: open it exclusively, run a session on it, reopen when it fails.

Shared by the radio driver and the technician's console, so both survive an
adapter pulled out and plugged back in the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import serial
import serial_asyncio_fast

from gateway.drivers.base import PortHealth

Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def keep_open(
    health: PortHealth, stop: asyncio.Event, *, url: str, baudrate: int, session: Session
) -> None:
    """Until ``stop``: open ``url`` (exclusive flock, so other tools are told it is taken),
    run ``session`` until it ends or the port fails, then reopen with backoff."""
    while not stop.is_set():
        health.opening()
        try:
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=url, baudrate=baudrate, exclusive=True
            )
        except (OSError, serial.SerialException) as err:
            health.failed(err)
            if await health.pause(stop):
                break
            continue
        health.opened()
        try:
            await session(reader, writer)
        except (OSError, serial.SerialException, ConnectionError) as err:
            health.failed(err)
        finally:
            writer.close()
        if not stop.is_set() and await health.pause(stop):
            break
    health.closed()
