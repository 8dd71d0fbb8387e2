"""Durable queue throughput: accepted and acknowledged messages a second (not a test).

.venv/bin/python scripts/bench_queue.py [--messages N] [--batch B]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gateway.buffer.queue import DurableQueue, Lane, Outgoing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    payload = b'{"cover":"HZ-SC-000123","tilt_deg":1.53,"water_mm":1850,"battery_mv":3612}' * 2
    with tempfile.TemporaryDirectory() as tmp, DurableQueue(Path(tmp) / "q.db") as q:
        start = time.perf_counter()
        for b in range(0, args.messages, args.batch):
            q.put_many(
                Outgoing(f"m{i}", Lane(i % 50 == 0), "covers/gw/telemetry", payload)
                for i in range(b, min(b + args.batch, args.messages))
            )
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        while batch := q.peek(args.batch):
            q.ack([m.seq for m in batch])
        drain_s = time.perf_counter() - start
    n = args.messages
    print(f"{n} messages of {len(payload)} bytes, batches of {args.batch}, synchronous=FULL")
    per_commit_ms = put_s / (n / args.batch) * 1e3
    print(f"accept (put_many):  {n / put_s:>10,.0f} msg/s  ({per_commit_ms:.2f} ms a commit)")
    print(f"drain (peek+ack):   {n / drain_s:>10,.0f} msg/s")


if __name__ == "__main__":
    main()
