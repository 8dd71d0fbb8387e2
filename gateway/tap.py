"""A live copy of everything the ports hear, for people watching (tail, console).

Radio frames and rejections (``Heard``), Modbus readings and alarm decisions
(``Noted``).

Listeners get bounded queues: a slow terminal loses lines (counted), the
daemon never waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.protocol.framing import Item, Received
from gateway.protocol.render import describe

LISTENER_QUEUE = 1000


@dataclass(frozen=True, slots=True)
class Heard:
    source: str
    at: float
    item: Item

    @property
    def node_hex(self) -> str | None:
        return self.item.frame.node_hex if isinstance(self.item, Received) else None

    def line(self, *, raw: bool = False) -> str:
        stamp = datetime.fromtimestamp(self.at, UTC).strftime("%H:%M:%S.%f")[:-3]
        return f"{stamp}  {self.source:<8} {describe(self.item, raw=raw)}"


@dataclass(frozen=True, slots=True)
class Noted:
    """Something the daemon decided or read that is not a radio frame: a Modbus
    reading or failure (``what`` "modbus"), an alarm decision ("alarm"), or the
    queue's writes failing or written again ("queue")."""

    what: str
    at: float
    source: str  # the bus or input name
    text: str
    node: str | None = None
    cover: str | None = None

    @property
    def node_hex(self) -> str | None:
        return self.node

    def line(self, *, raw: bool = False) -> str:
        stamp = datetime.fromtimestamp(self.at, UTC).strftime("%H:%M:%S.%f")[:-3]
        return f"{stamp}  {self.source:<8} {self.what.upper():<6} {self.text}"


Seen = Heard | Noted


class Tap:
    def __init__(self) -> None:
        self._listeners: set[asyncio.Queue[Seen]] = set()
        self.dropped = 0

    @property
    def watched(self) -> bool:
        """Whether anybody listens: lines nobody reads are not even formatted."""
        return bool(self._listeners)

    def publish(self, heard: Seen) -> None:
        for queue in self._listeners:
            try:
                queue.put_nowait(heard)
            except asyncio.QueueFull:
                self.dropped += 1

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[Seen]]:
        queue: asyncio.Queue[Seen] = asyncio.Queue(maxsize=LISTENER_QUEUE)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)
