"""A LoRa radio module on a serial port (transparent or AT-line dialect).

The port is opened by path (``/dev/serial/by-id/...`` links work). If it
errors or disappears (a USB adapter pulled), it is reopened with backoff while
the rest of the gateway carries on; ``status()`` says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.config import RadioConfig
from gateway.drivers.base import PortHealth, PortState, Sink, Tap
from gateway.drivers.serialport import keep_open
from gateway.events import FrameHeard
from gateway.protocol.framing import IDLE_GAP_S, Received, make_framer
from gateway.protocol.messages import FrameFlags, MessageType
from gateway.values import maker

log = logging.getLogger(__name__)

READ_SIZE = 4096


_NODE_ALARM_BIT = int(FrameFlags.NODE_ALARM)
_EVENT = MessageType.EVENT  # a global: an Enum class attribute is slow on 3.11
_make_frame_heard = maker(FrameHeard)  # one per frame: without ``type.__call__``


def is_critical(received: Received) -> bool:
    frame = received.frame
    # int(): IntFlag membership is a Python-level call, on every frame
    return frame.msg_type is _EVENT or bool(int(frame.flags) & _NODE_ALARM_BIT)


class SerialRadio:
    def __init__(
        self,
        config: RadioConfig,
        sink: Sink,
        *,
        clock: Callable[[], float] = time.time,
        tap: Tap | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self._sink = sink
        self._tap = tap
        self._clock = clock
        self.framer = make_framer(config.dialect.value, rssi_append=config.rssi_append)
        self.health = PortHealth(
            f"radio {config.name} ({config.port})",
            reopen_min_s=config.reopen_min_s,
            reopen_max_s=config.reopen_max_s,
        )

    @property
    def state(self) -> PortState:
        return self.health.state

    @property
    def opens(self) -> int:
        return self.health.opens

    def status(self) -> dict[str, Any]:
        return {
            "kind": "radio",
            "port": self.config.port,
            "dialect": self.config.dialect.value,
            "state": self.health.state.value,
            "opens": self.health.opens,
            "last_error": self.health.last_error,
            **self.framer.stats.as_dict(),
        }

    async def run(self, stop: asyncio.Event) -> None:
        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for command in self.config.init:
                writer.write(command.encode("ascii") + b"\r\n")
                await writer.drain()
            await self._read(reader, stop)

        await keep_open(
            self.health, stop, url=self.config.port, baudrate=self.config.baudrate, session=session
        )

    async def _read(self, reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                read = asyncio.ensure_future(reader.read(READ_SIZE))
                done, _ = await asyncio.wait(
                    {read, stopper}, timeout=IDLE_GAP_S, return_when=asyncio.FIRST_COMPLETED
                )
                if read not in done:
                    read.cancel()
                    self._emit(self.framer.idle())
                    continue
                data = read.result()
                if not data:
                    raise ConnectionError("port closed (end of file)")
                self._emit(self.framer.feed(data))
        finally:
            stopper.cancel()

    def _emit(self, items: list[Any]) -> None:
        at = self._clock()
        for item in items:
            if self._tap is not None:
                self._tap(self.name, at, item)
            if isinstance(item, Received):
                self._sink(_make_frame_heard(self.name, at, item), is_critical(item))
