"""A live copy of everything the ports hear, for people watching (tail, console).

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


class Tap:
    def __init__(self) -> None:
        self._listeners: set[asyncio.Queue[Heard]] = set()
        self.dropped = 0

    def publish(self, heard: Heard) -> None:
        for queue in self._listeners:
            try:
                queue.put_nowait(heard)
            except asyncio.QueueFull:
                self.dropped += 1

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[Heard]]:
        queue: asyncio.Queue[Heard] = asyncio.Queue(maxsize=LISTENER_QUEUE)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)
