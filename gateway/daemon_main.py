"""Process-level concerns of the daemon: signals, refusing bad config, exit codes."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.errors import ConfigError
from gateway.sdnotify import Notifier

log = logging.getLogger(__name__)

EXIT_CONFIG = 2


async def serve(gateway: Gateway, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``, for tests and embedding)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    try:
        await gateway.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def run_daemon(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as err:
        log.error("config refused: %s", err)  # noqa: TRY400 - the reason is the message
        return EXIT_CONFIG
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    notifier = Notifier.from_env()
    try:
        asyncio.run(serve(Gateway(config, notifier=notifier, config_path=path)))
    finally:
        notifier.close()
    return 0
