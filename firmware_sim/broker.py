"""A Mosquitto of our own on a free loopback port, for the demo and the tests.

Persistence is on, so ``stop()`` then ``start()`` is a real outage that
subscribers' sessions survive.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, *, within_s: float = 20.0, what: str = "server") -> None:
    """Until something accepts on 127.0.0.1:``port``: the brokers' readiness, not a sleep."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not open port {port} within {within_s} s")


class Broker:
    """A Mosquitto on a free loopback port; ``stop()``/``start()`` make an outage."""

    def __init__(self, workdir: Path, *, extra_conf: str = "", port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        default = (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"  # the subscriber's session survives an outage
            f"persistence_location {workdir}/\n"
            "max_queued_messages 0\n"
        )
        # Started as root, mosquitto drops to its own user, which cannot read our
        # private temp dirs; stay whoever started it (ignored when not root).
        self.conf.write_text(f"user {getpass.getuser()}\n" + (extra_conf or default))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our binary, our config file
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "mosquitto.log").open("ab"),
            # Its own session: Ctrl-C at a terminal (covergw demo) must not end the
            # broker before the daemon that publishes to it; stop() ends it.
            start_new_session=True,
        )
        try:
            wait_port(self.port, within_s=10, what="mosquitto")
        except RuntimeError as err:
            log = (self.workdir / "mosquitto.log").read_text()
            raise RuntimeError(f"mosquitto did not start: {log}") from err

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
