"""Real pseudo-terminals for the simulated hardware.

``PtyPort``: the simulator holds the master end and writes what a radio
module would put on its UART; the gateway opens ``path`` like any serial port.

``NullModem``: two ptys joined by a relay, so that two programs that each
open a *path* (pymodbus's server and the gateway's Modbus master) talk over a
real tty on both sides, the way a USB-RS485 adapter pair would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import tty
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


class PtyPort:
    """One pty pair; the far end is ``path`` (``/dev/pts/N``)."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        # Raw on the slave so nothing is echoed or line-edited before the
        # gateway opens it; the open slave fd keeps the pty alive across the
        # gateway's reopen.
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)

    def write(self, data: bytes) -> None:
        """Write what the module hears; bytes the tty cannot take are lost, as on a UART."""
        try:
            os.write(self.master, data)
        except BlockingIOError:
            pass
        except OSError as err:
            log.debug("pty %s write failed: %s", self.path, err)

    def read_nowait(self) -> bytes:
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class NullModem:
    """Two ptys with a relay between their masters (an async context manager)."""

    def __init__(self) -> None:
        self.a = PtyPort()
        self.b = PtyPort()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.a.master, self._relay, self.a, self.b)
        self._loop.add_reader(self.b.master, self._relay, self.b, self.a)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.a.master)
            self._loop.remove_reader(self.b.master)
        self.a.close()
        self.b.close()

    @staticmethod
    def _relay(src: PtyPort, dst: PtyPort) -> None:
        data = src.read_nowait()
        if data:
            dst.write(data)
