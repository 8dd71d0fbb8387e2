"""Process-level concerns of the daemon: signals, refusing bad config, exit codes.

Exit statuses (``deploy/covergw.service`` keeps systemd from restarting into
the same failure with ``RestartPreventExitStatus=2 3``):

- 0: stopped cleanly (SIGTERM, SIGINT).
- 1: an unexpected crash; systemd restarts the daemon.
- 2: the configuration or registry was refused (``check-config`` says the same).
- 3: cannot start: something the daemon needs is unavailable (a port in use,
  the state dir not writable, the control socket path unusable).
- 4: a stop that did not finish within ``HARD_STOP_S``; the process ended itself
  (what the queue had committed is safe: it is SQLite with ``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio

# The uplink's connect resolves the broker's name (``socket.getaddrinfo``, which
# encodes any ``str`` host with the IDNA codec, an IP literal too) inside
# asyncio's executor thread, where paho connects. Imported there, the codec's
# modules (encodings.idna, stringprep, unicodedata) grew that thread's own malloc
# arena by ~0.25 MiB that nothing else used; imported here, on the main thread at
# start, they take room the main heap has (docs/performance.md, idle memory).
import encodings.idna  # noqa: F401
import gc
import logging
import os
import signal
import threading
from pathlib import Path

from gateway.daemon import Gateway
from gateway.errors import ConfigError, StartupError
from gateway.sdnotify import Notifier
from gateway.validation import validate

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_START = 3
EXIT_STOP_FORCED = 4
HARD_STOP_S = 9.5  # SIGTERM to exit, whatever a part does; systemd's own limit is longer
# The cycle collector's thresholds while serving. Python's (700, 10, 10) ran a
# collection every ~700 allocations, a dozen objects a frame: 10 % of the
# daemon's CPU under load went to collections that found next to nothing (the
# per-frame values are freed by reference counting). A young generation of
# 20 000 collects ~50 times less often; what cyclic garbage waits is bounded
# by it (a few MiB at worst).
GC_THRESHOLDS = (20_000, 20, 20)


async def serve(
    gateway: Gateway, stop: asyncio.Event | None = None, *, hard_stop_s: float | None = None
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``, for tests and embedding).

    With ``hard_stop_s`` (the process entry point sets it), a stop that has not
    finished that long after the signal ends the process from a thread: a part
    that swallows cancellation cannot keep the daemon alive.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop() -> None:
        if not stop.is_set() and hard_stop_s is not None:
            timer = threading.Timer(hard_stop_s, _hard_exit, args=(hard_stop_s,))
            timer.daemon = True
            timer.start()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    try:
        await gateway.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _hard_exit(after_s: float) -> None:
    log.error("stop did not finish within %.1f s; exiting now", after_s)
    logging.shutdown()
    os._exit(EXIT_STOP_FORCED)


def run_daemon(path: Path) -> int:
    # The command line's parser is garbage now, in reference cycles: collected
    # here, or ``gc.freeze`` below would keep it for the life of the process.
    gc.collect()
    try:
        validated = validate(path)
    except ConfigError as err:
        for line in err.lines():
            log.error("config refused: %s", line)  # noqa: TRY400 - the reason is the message
        return EXIT_CONFIG
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    notifier = Notifier.from_env()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        # The census as validated: read once (a city's registry is 100k rows), held once.
        gateway = Gateway(
            validated.config,
            notifier=notifier,
            config_path=path,
            census=(validated.registry, [str(e) for e in validated.registry_errors]),
        )
        del validated  # the engine holds the registry; after a reload nothing keeps the old one
        # What start-up made lives as long as the process: frozen, a full collection
        # no longer walks it (100k covers are a million objects), and no longer
        # pauses the event loop (and an alarm) for 20-25 ms during a drain.
        gc.freeze()
        asyncio.run(serve(gateway, hard_stop_s=HARD_STOP_S))
    except ConfigError as err:  # the registry changed between validation and start
        log.error("config refused: %s", err)  # noqa: TRY400
        return EXIT_CONFIG
    except StartupError as err:
        log.error("cannot start: %s", err)  # noqa: TRY400 - one clear line, no traceback
        return EXIT_START
    finally:
        notifier.close()
    return EXIT_OK
