"""An advisory lock on a serial device: who owns a port is visible to every tool.

The same ``flock`` that pyserial's ``exclusive=True`` takes, held on a file
descriptor of our own, so ports opened by libraries that cannot lock
(pymodbus) are claimed too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os


class PortBusyError(OSError):
    """Another program holds the port (most likely the covergw daemon, or a technician's tool)."""


class PortLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PortBusyError(f"{self.path} is held by another program") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PortLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
