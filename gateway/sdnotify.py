"""systemd's notify protocol (sd_notify(3)), without libsystemd.

A datagram to ``$NOTIFY_SOCKET``: READY=1 once the gateway is serving,
WATCHDOG=1 at half of ``$WATCHDOG_USEC`` from the pipeline loop (a hung loop
stops pinging and systemd restarts the service), STATUS=<one line>, and
STOPPING=1. Outside systemd every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = (
            None if not address else ("\0" + address[1:] if address[0] == "@" else address)
        )
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.watchdog_interval_s = watchdog_usec / 2e6 if watchdog_usec else None
        self._monotonic = monotonic
        self._last_ping = 0.0
        self._last_status = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(env.get("NOTIFY_SOCKET"), watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, message: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as err:  # systemd gone or socket full: never fatal
            log.debug("sd_notify %r failed: %s", message, err)

    def ready(self) -> None:
        self.send("READY=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, line: str) -> None:
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def watchdog(self) -> None:
        """Ping if due; cheap enough to call on every loop iteration."""
        if self.watchdog_interval_s is None:
            return
        now = self._monotonic()
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
