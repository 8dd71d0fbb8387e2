"""The per-frame CPU path in one process: pty bytes → framer → engine → packed row.

What the daemon does per radio frame before the queue: ``SerialRadio._emit``
with the daemon's tap and sink (the console's board), the pipeline's
``EdgeEngine.handle`` and the engine's state rows taken per batch. No I/O, no
queue, no uplink. The frames are those of ``bench_suite.py --only e2e_rate``
(2000 unregistered nodes, REPORTs with five records).

    .venv/bin/python scripts/bench_hotpath.py [--frames 40000] [--repeat 3]

Prints the best process CPU per frame of REPEAT runs (each a fresh engine).
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from typing import Any

from bench_e2e import report

from gateway.config import RadioConfig, Thresholds
from gateway.drivers.serial_radio import SerialRadio
from gateway.edge.engine import EdgeEngine
from gateway.registry import Registry
from gateway.tap import Heard, Tap
from gateway.tools.board import NodeBoard
from gateway.tools.tailing import Watch

READ = 4096  # bytes per pty read, as SerialRadio reads them
BATCH = 1000  # events per pipeline pass, as Daemon._take takes them


def run(stream: bytes, count: int) -> float:
    tap = Tap()
    board = NodeBoard()
    clock = time.time
    watch = Watch(tap, board, clock)
    engine = EdgeEngine(
        gateway_id="gw-bench",
        registry=Registry(),
        thresholds=Thresholds(),
        kind_thresholds={},
        slaves={},
        started_at=clock(),
    )
    inputs: deque[Any] = deque()

    def heard(source: str, at: float, item: Any) -> None:  # Daemon._heard
        if tap.watched:
            tap.publish(Heard(source, at, item))
        watch.frame(source, at, item)

    def submit(event: Any, critical: bool) -> None:  # Daemon.submit, minus shedding
        watch.input(event)
        inputs.append(event)

    radio = SerialRadio(RadioConfig("lora0", "/dev/null"), submit, clock=clock, tap=heard)
    out = 0
    start = time.process_time()
    for i in range(0, len(stream), READ):
        radio._emit(radio.framer.feed(stream[i : i + READ]))
        while len(inputs) >= BATCH or (inputs and i + READ >= len(stream)):
            for _ in range(min(BATCH, len(inputs))):
                out += len(engine.handle(inputs.popleft()))
            engine.take_state()
    spent = time.process_time() - start
    assert out == count, (out, count)
    return spent / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    nodes = 2000
    stream = b"".join(report(0x00A00000 + i % nodes, i // nodes) for i in range(args.frames))
    results = sorted(run(stream, args.frames) for _ in range(args.repeat))
    print(
        f"per-frame path CPU: best {results[0] * 1e6:.1f} µs, "
        f"median {results[len(results) // 2] * 1e6:.1f} µs over {args.repeat} runs"
    )


if __name__ == "__main__":
    main()
