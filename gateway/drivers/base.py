"""What every driver shares: the sink it feeds, its port state, and reopen backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from gateway.events import Input
from gateway.protocol.framing import Item

Sink = Callable[[Input, bool], None]
"""``sink(event, critical)``: never blocks; a critical event (an alarm) is never shed."""

Tap = Callable[[str, float, Item], None]
"""``tap(port, at, item)``: every frame and rejection, for people watching; never blocks."""


class PortState(StrEnum):
    OPENING = "opening"
    OPEN = "open"
    DOWN = "down"  # failed or vanished; reopening with backoff
    CLOSED = "closed"


class Driver(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None: ...
    def status(self) -> dict[str, Any]: ...
