"""What every driver shares: the sink it feeds, its port state, and reopen backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from gateway.backoff import Backoff, sleep_or_stop
from gateway.events import Input
from gateway.protocol.framing import Item

log = logging.getLogger(__name__)

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


@runtime_checkable
class PolledBus(Protocol):
    """A bus whose polls may be kept from the sink while they repeat a quiet reading."""

    name: str

    def hush(
        self, address: int, values: dict[str, float], until: float, still: Callable[[], bool]
    ) -> None:
        """Readings of VALUES from ADDRESS need not be handed on before UNTIL (wall clock)
        while ``still()`` holds; ``still`` is called from the bus's poll thread."""


class PortHealth:
    """A port's state, its last error, and when to try again: the reopen rules in one place.

    The first failure after a good spell is logged at WARNING, repeats at DEBUG,
    so a pulled adapter does not fill the journal.
    """

    def __init__(self, label: str, *, reopen_min_s: float, reopen_max_s: float) -> None:
        self.label = label
        self.state = PortState.CLOSED
        self.last_error: str | None = None
        self.opens = 0
        self._backoff = Backoff(reopen_min_s, reopen_max_s)

    def opening(self) -> None:
        self.state = PortState.OPENING

    def opened(self) -> None:
        self.state = PortState.OPEN
        self.opens += 1
        self._backoff.reset()
        log.info("%s open", self.label)

    def failed(self, err: BaseException) -> None:
        first = self.state is PortState.OPEN or self.last_error is None
        self.state = PortState.DOWN
        self.last_error = str(err) or type(err).__name__
        log.log(
            logging.WARNING if first else logging.DEBUG, "%s down: %s", self.label, self.last_error
        )

    def closed(self) -> None:
        self.state = PortState.CLOSED

    async def pause(self, stop: asyncio.Event) -> bool:
        """Wait before the next attempt; True if ``stop`` was set meanwhile."""
        return await sleep_or_stop(stop, self._backoff.next_delay())
