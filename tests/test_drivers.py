"""Drivers against real ptys: an adapter that vanishes and comes back under its by-id link."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from firmware_sim.ptys import PtyPort
from gateway.config import Dialect, RadioConfig
from gateway.drivers.base import PortState
from gateway.drivers.serial_radio import SerialRadio
from gateway.events import FrameHeard, Input
from tests.vectors import vector


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_unplugged_adapter_is_reopened_through_its_link(tmp_path: Path) -> None:
    link = tmp_path / "usb-1a86_USB_Serial-if00-port0"  # as under /dev/serial/by-id
    first = PtyPort()
    os.symlink(first.path, link)
    heard: list[Input] = []
    radio = SerialRadio(
        RadioConfig("lora0", str(link), reopen_min_s=0.05, reopen_max_s=0.2),
        lambda event, critical: heard.append(event),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(radio.run(stop))
    await wait_until(lambda: radio.state is PortState.OPEN)
    first.write(vector("report"))
    await wait_until(lambda: len(heard) == 1)

    first.close()  # pulled out
    await wait_until(lambda: radio.state is not PortState.OPEN)
    assert radio.status()["last_error"]
    await asyncio.sleep(0.3)  # retrying against a dead link meanwhile
    assert not task.done()

    second = PtyPort()  # plugged back in: a new tty, the same by-id name
    os.unlink(link)
    os.symlink(second.path, link)
    await wait_until(lambda: radio.state is PortState.OPEN and radio.opens == 2)
    second.write(vector("boot"))
    await wait_until(lambda: len(heard) == 2)
    stop.set()
    await asyncio.wait_for(task, 5)
    second.close()
    assert all(isinstance(e, FrameHeard) for e in heard)
    assert [e.received.frame.seq for e in heard if isinstance(e, FrameHeard)] == [1, 0]
    assert radio.state is PortState.CLOSED


async def test_at_dialect_sends_init_commands_on_open(tmp_path: Path) -> None:
    port = PtyPort()
    radio = SerialRadio(
        RadioConfig("lora1", port.path, dialect=Dialect.AT, init=("AT+PRECV=65534",)),
        lambda event, critical: None,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(radio.run(stop))
    received = b""
    async with asyncio.timeout(5):
        while b"\r\n" not in received:
            await asyncio.sleep(0.02)
            received += port.read_nowait()
    stop.set()
    await task
    port.close()
    assert received == b"AT+PRECV=65534\r\n"
