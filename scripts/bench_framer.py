"""How many REPORT frames a second the framer plus decoder handle on one core.

Not a test: numbers for the closing note and for comparing changes. Feeds a
pre-built stream of realistic REPORT frames (tilt, water, battery,
temperature, link) in serial-read-sized chunks, as a port would.

    .venv/bin/python scripts/bench_framer.py [--frames N]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from gateway.protocol.codec import decode_frame, encode_frame
from gateway.protocol.framing import AtLineFramer, StreamFramer
from gateway.protocol.messages import (
    Battery,
    Frame,
    FrameFlags,
    Link,
    MessageType,
    Temperature,
    Tilt,
    WaterDepth,
)


def reports(n: int) -> list[bytes]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        frame = Frame(
            node_id=0x00A00000 + i % 5000,
            seq=i & 0xFFFF,
            msg_type=MessageType.REPORT,
            flags=FrameFlags.NONE,
            records=(
                Tilt(rng.randint(-300, 300) / 100, rng.randint(-300, 300) / 100),
                WaterDepth(rng.randint(300, 3000)),
                Battery(rng.randint(3200, 3650)),
                Temperature(rng.randint(-100, 300) / 10),
                Link(rng.randint(-120, -60), rng.randint(-10, 12)),
            ),
        )
        out.append(encode_frame(frame))
    return out


def best_of(runs: int, func: object) -> float:
    assert callable(func)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=256, help="bytes per serial read")
    args = parser.parse_args()
    frames = reports(args.frames)
    stream = b"".join(frames)
    at_stream = b"".join(f"+EVT:RXP2P:-90:7:{f.hex().upper()}\r\n".encode() for f in frames)
    n = len(frames)

    def transparent() -> None:
        framer = StreamFramer()
        for i in range(0, len(stream), args.chunk):
            framer.feed(stream[i : i + args.chunk])
        assert framer.stats.frames == n

    def at_lines() -> None:
        framer = AtLineFramer()
        for i in range(0, len(at_stream), args.chunk):
            framer.feed(at_stream[i : i + args.chunk])
        assert framer.stats.frames == n

    def datagrams() -> None:
        for f in frames:
            decode_frame(f)

    print(f"{n} REPORT frames of {len(frames[0])} bytes, {args.chunk}-byte reads, one core")
    print(f"{'path':<34}{'frames/s':>12}{'us/frame':>10}")
    for name, func in (
        ("transparent stream (framer+decode)", transparent),
        ("AT lines (framer+decode)", at_lines),
        ("datagram decode_frame", datagrams),
    ):
        seconds = best_of(3, func)
        print(f"{name:<34}{n / seconds:>12,.0f}{seconds / n * 1e6:>10.1f}")

    tracemalloc.start()
    framer = StreamFramer()
    for i in range(0, len(stream), args.chunk):
        framer.feed(stream[i : i + args.chunk])
    _, peak = tracemalloc.get_traced_memory()
    print(f"framer peak traced memory while streaming: {peak / 1024:.0f} KiB")
    tracemalloc.stop()
    compare_devices(frames, min(n, 20_000))


def compare_devices(scn1_frames: list[bytes], n: int) -> None:
    """A commercial payload's decode against an SCN-1 frame's (target: no dearer)."""
    from gateway.protocol.devices import (  # noqa: PLC0415 - only this comparison needs them
        MODELS,
        build_nb_frame,
        dds75_lb,
        decode_nb_frame,
        em310_tilt,
        em400,
    )

    rng = random.Random(2)
    tilt = [
        em310_tilt.build_reading(
            battery_pct=rng.randint(0, 100),
            tilt_deg=(rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(85, 95)),
        )
        for _ in range(n)
    ]
    level = [
        em400.build_reading(
            battery_pct=rng.randint(0, 100),
            temperature_c=rng.randint(-100, 300) / 10,
            distance_mm=rng.randint(300, 3000),
            position=0,
        )
        for _ in range(n)
    ]
    dragino = [
        dds75_lb.build_periodic(
            battery_mv=rng.randint(3000, 3600), distance_mm=rng.randint(300, 3000)
        )
        for _ in range(n)
    ]
    nb = [build_nb_frame(p) for p in level[: n // 4]]

    def run(decode: object, payloads: list[bytes]) -> float:
        assert callable(decode)

        def loop() -> None:
            for p in payloads:
                decode(p)

        return best_of(3, loop) / len(payloads) * 1e6

    tilt_model, mud_model, dds_model = MODELS["em310-tilt"], MODELS["em400-mud"], MODELS["dds75-lb"]
    rows = (
        (
            "SCN-1 decode_frame, 5 TLVs + CRC",
            run(decode_frame, scn1_frames[:n]),
            len(scn1_frames[0]),
        ),
        (
            "em310-tilt, battery + angles",
            run(lambda p: tilt_model.decode(p, fport=85, at=0.0), tilt),
            len(tilt[0]),
        ),
        (
            "em400-mud, 4 records",
            run(lambda p: mud_model.decode(p, fport=85, at=0.0), level),
            len(level[0]),
        ),
        (
            "dds75-lb fPort 2",
            run(lambda p: dds_model.decode(p, fport=2, at=0.0), dragino),
            len(dragino[0]),
        ),
        (
            "em400 NB-IoT frame, 1 reading",
            run(lambda p: decode_nb_frame(p, at=0.0), nb),
            len(nb[0]),
        ),
    )
    print(f"\n{'decode, one payload':<34}{'bytes':>6}{'us':>8}{'vs SCN-1':>10}")
    for name, us, size in rows:
        print(f"{name:<34}{size:>6}{us:>8.1f}{us / rows[0][1]:>10.2f}")


if __name__ == "__main__":
    main()
