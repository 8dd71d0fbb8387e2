"""What the peer's work costs before any of the daemon's code: the floor under `peer_cpu`.

The peer's work (two Modbus slaves polled at 1 Hz, `./dev bench --only peer`)
is three wake-ups a second: the cycle's start and two replies. This script
makes exactly the same RTU transactions against the same simulated bus, with
nothing else, three ways, and prints each one's CPU-s/min from schedstat:

- ``asyncio``: the event loop's reader and a sleep, as the daemon polls;
- ``thread``: a thread blocking in ``poll``/``read``, the loop asleep;
- ``thread+loop``: the same, and the loop woken once per cycle
  (``call_soon_threadsafe``) to be handed its readings.

Run: ``.venv/bin/python scripts/bench_peer_floor.py [--window 30]``. A minute
or two; not part of the suite (docs/performance.md, "the peer's work").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite import proc_sched_ns, sched_cpu_s

from gateway.protocol.modbus_rtu import read_request

# The daemon's two requests for the peer's slaves (wit_inclinometer at 80, qdy30a_level at 1).
REQUESTS = (read_request(80, 3, 0x3D, 4), read_request(1, 3, 0x03, 2))

POLLER = """
import asyncio, os, select, sys, threading, time, tty
path, how, requests = sys.argv[1], sys.argv[2], [bytes.fromhex(r) for r in sys.argv[3:]]

def blocking(loop):
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    due = time.monotonic()
    while True:
        for request in requests:
            os.write(fd, request)
            poller.poll(500)
            os.read(fd, 256)
        if loop is not None:
            loop.call_soon_threadsafe(len, requests)
        due += 1
        time.sleep(max(0.0, due - time.monotonic()))

async def main():
    loop = asyncio.get_running_loop()
    if how != "asyncio":
        woken = loop if how == "thread+loop" else None
        threading.Thread(target=blocking, args=(woken,), daemon=True).start()
        await asyncio.sleep(1e9)
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    replies = asyncio.Queue()
    loop.add_reader(fd, lambda: replies.put_nowait(os.read(fd, 256)))
    while True:
        started = loop.time()
        for request in requests:
            os.write(fd, request)
            await replies.get()
        await asyncio.sleep(1 - (loop.time() - started))

asyncio.run(main())
"""

SCENARIO = """[scenario]
name = "peer-floor"
duration_s = 100000
seed = 1
[[buses]]
name = "rs485-0"
[[buses.slaves]]
model = "wit_inclinometer"
address = 80
[[buses.slaves]]
model = "qdy30a_level"
address = 1
level = 0.5
decimals = 3
"""


def measure(path: str, how: str, window: float) -> float:
    argv = [sys.executable, "-c", POLLER, path, how, *(r.hex() for r in REQUESTS)]
    proc = subprocess.Popen(argv)  # noqa: S603 - our own script
    try:
        time.sleep(2)  # its first polls
        before = proc_sched_ns(proc.pid)
        time.sleep(window)
        cpu, _ = sched_cpu_s(before, proc_sched_ns(proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
    return cpu / window * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="covergw-floor-") as tmp:
        scenario = Path(tmp) / "peer.toml"
        scenario.write_text(SCENARIO, encoding="utf-8")
        sim = subprocess.Popen(  # noqa: S603 - our own simulator
            [sys.executable, "-m", "firmware_sim", "--scenario", str(scenario), "--json"],
            stdout=subprocess.PIPE,
        )
        try:
            assert sim.stdout is not None
            path = json.loads(sim.stdout.readline())["buses"]["rs485-0"]["path"]
            for how in ("asyncio", "thread", "thread+loop"):
                print(f"{how:12} {measure(path, how, args.window):.4f} CPU-s/min", flush=True)
        finally:
            sim.terminate()
            sim.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
