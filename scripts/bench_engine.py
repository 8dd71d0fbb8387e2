"""The edge engine alone: cost per frame, idle tick cost and state-row volume at N nodes.

    .venv/bin/python scripts/bench_engine.py [--nodes 100000]

No I/O: frames are decoded once up front, then handed to the engine as the
pipeline would. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import resource
import time

from gateway.config import Thresholds
from gateway.edge.engine import EdgeEngine
from gateway.events import FrameHeard
from gateway.protocol.codec import decode_frame, encode_frame
from gateway.protocol.framing import Received
from gateway.protocol.messages import Battery, Frame, FrameFlags, MessageType, Tilt
from gateway.registry import parse_registry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=100_000)
    args = parser.parse_args()
    n = args.nodes
    rows = "\n".join(f"C-{i},drainage,{i + 1:08X}" for i in range(n))
    registry, _ = parse_registry("cover_id,owner_unit,node_id\n" + rows + "\n")
    engine = EdgeEngine(
        gateway_id="gw",
        registry=registry,
        thresholds=Thresholds(),
        kind_thresholds={},
        slaves={},
        started_at=time.time(),
    )
    now = time.time()

    def frames(seq: int) -> list[FrameHeard]:
        out = []
        for i in range(n):
            records = (Tilt(0.5, 0.1), Battery(3600))
            raw = encode_frame(Frame(i + 1, seq, MessageType.REPORT, FrameFlags.NONE, records))
            out.append(FrameHeard("lora0", now + seq, Received(decode_frame(raw), raw)))
        return out

    first, second = frames(1), frames(2)
    start = time.process_time()
    for event in first:
        engine.handle(event)
    per_frame = (time.process_time() - start) / n
    start = time.process_time()
    for event in second:
        engine.handle(event)
    per_next = (time.process_time() - start) / n
    rows_written = len(engine.take_state())
    start = time.process_time()
    ticks = 60
    for k in range(ticks):
        engine.tick(now + 3 + k)
    per_tick = (time.process_time() - start) / ticks
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"nodes                     {n}")
    print(f"engine CPU per frame      {per_frame * 1e6:.1f} us (first frame of each node)")
    print(f"engine CPU per frame      {per_next * 1e6:.1f} us (a node already known)")
    print(f"state rows after them     {rows_written} (one per device + one baseline each)")
    print(f"idle tick                 {per_tick * 1e3:.3f} ms ({per_tick * 60:.4f} CPU-s/min)")
    print(f"peak RSS (whole process)  {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
