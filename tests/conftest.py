"""Shared fixtures: scenarios built inline, simulated hardware started per test."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
import serial_asyncio_fast

from firmware_sim.scenario import Scenario, parse_scenario
from gateway.protocol.framing import Item, StreamFramer, make_framer

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture
def make_scenario() -> Callable[..., Scenario]:
    def build(**tables: Any) -> Scenario:
        data: dict[str, Any] = {"scenario": {"name": "test", "duration_s": 30, "seed": 1}}
        data.update(tables)
        return parse_scenario(data)

    return build


async def read_items(
    path: str,
    *,
    dialect: str = "transparent",
    rssi_append: bool = False,
    want: int,
    limit_s: float = 10.0,
) -> tuple[list[Item], StreamFramer | Any]:
    """Open a pty like the gateway does and frame what arrives until ``want`` frames."""
    reader, writer = await serial_asyncio_fast.open_serial_connection(url=path, baudrate=9600)
    framer = make_framer(dialect, rssi_append=rssi_append)
    items: list[Item] = []
    try:
        async with asyncio.timeout(limit_s):
            while framer.stats.frames < want:
                try:
                    data = await asyncio.wait_for(reader.read(4096), 0.5)
                except TimeoutError:
                    items += framer.idle()
                    continue
                items += framer.feed(data)
    finally:
        writer.close()
    return items, framer
