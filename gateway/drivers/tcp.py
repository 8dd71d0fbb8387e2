"""NB-IoT devices over TCP (``[[tcp]]``): a device connects, sends frames, goes away.

Milesight's cellular devices can report over TCP instead of UDP. A frame
delimits itself: its header's ``length`` field (bytes 3–4, big-endian) counts
the bytes after it, so a connection is read as header, then body, frame after
frame. Every limit is fixed by config (documented in deploy/covergw.toml):
connections at once (more are closed at once and counted), the idle time
before a silent connection is closed, and the largest frame (a bigger length
closes the connection: nothing after a bad length can be trusted). A bad
frame whose length was sane is counted and the connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from gateway.config import TcpConfig
from gateway.drivers.base import PortState, Sink
from gateway.drivers.nbiot import NbReceiver
from gateway.drivers.observe import DeviceLookup

log = logging.getLogger(__name__)

PREFIX = 5  # start flag, id, length: enough to know the frame's size


class TcpListener:
    def __init__(
        self,
        config: TcpConfig,
        sink: Sink,
        *,
        lookup: DeviceLookup,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.config = config
        self.state = PortState.CLOSED
        self.bound: tuple[str, int] | None = None
        self.receiver = NbReceiver(config.name, sink, lookup=lookup, clock=clock)
        self.connections = 0
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    def status(self) -> dict[str, Any]:
        return {
            "kind": "tcp",
            "bind": f"{self.config.host}:{self.config.port}",
            "state": self.state.value,
            "connections": self.connections,
            "accepted_connections": self.counts["accepted"],
            "refused_connections": self.counts["refused"],
            "idle_closed": self.counts["idle_closed"],
            "oversize_closed": self.counts["oversize_closed"],
            **self.receiver.as_dict(),
        }

    async def run(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(
            self._connection, self.config.host, self.config.port, limit=self.config.max_frame_bytes
        )
        self.bound = server.sockets[0].getsockname()[:2]
        self.state = PortState.OPEN
        log.info("tcp %s listening on %s", self.name, self.bound)
        try:
            await stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await server.wait_closed()
            self.state = PortState.CLOSED

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        if self.connections >= self.config.max_connections:
            self.counts["refused"] += 1
            log.debug("tcp %s: %s refused, %d connections open", self.name, peer, self.connections)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.counts["accepted"] += 1
        try:
            await self._frames(reader, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the device hung up, perhaps mid-frame: what came whole was taken
        finally:
            self.connections -= 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _frames(self, reader: asyncio.StreamReader, peer: str) -> None:
        timeout = self.config.idle_timeout_s
        while True:
            try:
                prefix = await asyncio.wait_for(reader.readexactly(PREFIX), timeout)
            except TimeoutError:
                self.counts["idle_closed"] += 1
                return
            size = PREFIX + int.from_bytes(prefix[3:5], "big")
            if size > self.config.max_frame_bytes:
                self.counts["oversize_closed"] += 1
                log.debug("tcp %s: %s announced a %d-byte frame; closing", self.name, peer, size)
                return
            try:
                body = await asyncio.wait_for(reader.readexactly(size - PREFIX), timeout)
            except TimeoutError:
                self.counts["idle_closed"] += 1
                return
            self.receiver.frame(prefix + body, peer)
