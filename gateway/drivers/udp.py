"""NB-IoT nodes over UDP: the operator's APN delivers one frame per datagram.

Before a datagram is decoded its source must pass the input's ``SourceGate``
(``allow`` networks, a token bucket per source); what does not is dropped and
counted in the port's status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.config import UdpConfig, UdpFormat
from gateway.drivers.base import PortState, Sink, Tap
from gateway.drivers.ingress import SourceGate, Verdict
from gateway.drivers.nbiot import NbReceiver
from gateway.drivers.observe import DeviceLookup
from gateway.drivers.serial_radio import is_critical
from gateway.errors import ProtocolError, TransportError
from gateway.events import FrameHeard
from gateway.protocol.codec import decode_frame
from gateway.protocol.framing import FramerStats, Received, Rejected

log = logging.getLogger(__name__)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpListener) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner.datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp %s: %s", self.owner.name, exc)


class UdpListener:
    def __init__(
        self,
        config: UdpConfig,
        sink: Sink,
        *,
        clock: Callable[[], float] = time.time,
        tap: Tap | None = None,
        lookup: DeviceLookup | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self._sink = sink
        self._tap = tap
        self._clock = clock
        self.stats = FramerStats()
        self.gate = SourceGate(
            config.allow,
            rate=config.source_rate,
            burst=config.source_burst,
            max_sources=config.max_sources,
        )
        self.state = PortState.CLOSED
        self.bound: tuple[str, int] | None = None
        # format = "milesight-nb": NB-IoT cellular frames, one per datagram.
        self.nb: NbReceiver | None = None
        if config.format is UdpFormat.MILESIGHT_NB:
            self.nb = NbReceiver(
                config.name, sink, lookup=lookup or (lambda _id: None), clock=clock
            )
        self._transport: asyncio.DatagramTransport | None = None

    def status(self) -> dict[str, Any]:
        return {
            "kind": "udp",
            "bind": f"{self.config.host}:{self.config.port}",
            "state": self.state.value,
            **(self.nb.as_dict() if self.nb is not None else self.stats.as_dict()),
            **self.gate.stats.as_dict(),
            "sources": self.gate.sources,
        }

    def datagram(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.gate.admit(str(addr[0])) is not Verdict.ADMIT:
            return
        if self.nb is not None:
            self.nb.frame(data, f"{addr[0]}:{addr[1]}")
            return
        at = self._clock()
        try:
            received = Received(decode_frame(data), data)
        except ProtocolError as err:
            rejected = Rejected(err, data)
            self.stats.record(rejected)
            if self._tap is not None:
                self._tap(self.name, at, rejected)
            return
        self.stats.record(received)
        if self._tap is not None:
            self._tap(self.name, at, received)
        self._sink(FrameHeard(self.name, at, received), is_critical(received))

    async def bind(self) -> None:
        """Take the port (before READY, so a port in use stops the start, not a task)."""
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(self.config.host, self.config.port)
            )
        except OSError as err:
            self.state = PortState.DOWN
            where = f"{self.config.host}:{self.config.port}"
            reason = err.strerror or str(err)
            raise TransportError(f"udp {self.name}: cannot bind {where}: {reason}") from err
        self._transport = transport
        self.bound = transport.get_extra_info("sockname")[:2]
        self.state = PortState.OPEN
        log.info("udp %s listening on %s", self.name, self.bound)

    async def run(self, stop: asyncio.Event) -> None:
        await self.bind()
        try:
            await stop.wait()
        finally:
            if self._transport is not None:
                self._transport.close()
            self._transport = None
            self.state = PortState.CLOSED
