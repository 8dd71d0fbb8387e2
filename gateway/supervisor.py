"""Supervised parts: one part's bug must not end the daemon or silence the others.

Each long-running part of the daemon (a driver, the pipeline, the uplink, the
control socket, the metrics endpoint) runs under ``Supervisor.run``. An
unexpected exception is logged with its part's name (a traceback the first
time a given error is seen, one line for repeats), counted per part for stats,
and the part is started again after a capped, jittered backoff while the rest
runs on. Cancellation is never swallowed: it is how the daemon ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.backoff import Backoff, sleep_or_stop

log = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0  # a part that ran this long before failing starts again from the minimum

SEEN_MAX = 256  # distinct errors remembered, to log each one's traceback once

Part = Callable[[asyncio.Event], Awaitable[None]]
"""A part's body: runs until ``stop`` is set, then returns."""


@dataclass
class PartHealth:
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


class Supervisor:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        restart_min_s: float = RESTART_MIN_S,
        restart_max_s: float = RESTART_MAX_S,
    ) -> None:
        self.parts: dict[str, PartHealth] = {}
        self._clock = clock
        self._min_s = restart_min_s
        self._max_s = restart_max_s
        self._seen: set[str] = set()

    async def run(self, name: str, body: Part, stop: asyncio.Event) -> None:
        """Run ``body(stop)`` until it returns with ``stop`` set; restart it on any failure."""
        health = self.parts.setdefault(name, PartHealth())
        backoff = Backoff(self._min_s, self._max_s)
        while True:
            started = time.monotonic()
            try:
                await body(stop)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # supervision exists to catch what nobody expected
                self._failed(name, health, err)
            else:
                if stop.is_set():
                    return
                self._failed(name, health, None)
            if stop.is_set():
                return
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                backoff.reset()
            delay = backoff.next_delay()
            log.info("%s: restarting in %.1f s", name, delay)
            if await sleep_or_stop(stop, delay):
                return

    def _failed(self, name: str, health: PartHealth, err: Exception | None) -> None:
        text = "ended on its own" if err is None else f"{type(err).__name__}: {err}"
        health.restarts += 1
        health.last_error = text
        health.last_error_at = self._clock()
        fingerprint = f"{name}|{text}"
        if err is not None and fingerprint not in self._seen:
            if len(self._seen) >= SEEN_MAX:
                self._seen.clear()  # bounded: an error whose text varies must not grow memory
            self._seen.add(fingerprint)
            log.error("%s failed (failure %d): %s", name, health.restarts, text, exc_info=err)
        else:
            log.error("%s failed again (failure %d): %s", name, health.restarts, text)

    def stats(self) -> dict[str, Any]:
        """Per part: restarts and the last error (for status, stats and metrics)."""
        return {
            name: {"restarts": h.restarts, "last_error": h.last_error}
            for name, h in sorted(self.parts.items())
        }
