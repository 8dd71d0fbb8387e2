"""Durable queue figures (not a test): throughput, bytes on disk per reading, open time.

.venv/bin/python scripts/bench_queue.py [--messages N] [--batch B]
.venv/bin/python scripts/bench_queue.py --disk [--messages N]     bytes on disk per queued reading
.venv/bin/python scripts/bench_queue.py --open [--messages N]     time to open a queue of N readings
.venv/bin/python scripts/bench_queue.py --online STATE_DIR        spawn → retained ``online``, the
    real daemon on a local Mosquitto, with the queue already in STATE_DIR/queue.db
    (make one with ``--keep STATE_DIR --open``); ``--src DIR`` runs another tree's daemon
.venv/bin/python scripts/bench_queue.py --cpu [--messages N]    CPU µs per reading of the
    daemon's cycle: ``put_many`` of 500, ``peek_lane`` of 2000, ``ack`` per round

``--chunk K`` (with ``--cpu`` or ``--disk``): the queue stores telemetry in rows
of up to K readings, as the daemon does with K = ``[uplink] telemetry_batch_max``
(100); the readings are handed over as rendered JSON and the queue packs each
chunk (``put`` then includes the packing the engine did per reading before).
Without it, one row per reading, handed over packed, as schema 3 had it.

``--disk`` and ``--open`` use a reading shaped like the engine's (601 bytes of
JSON with a uuid hex id); ``--open`` builds the queue once, closes it cleanly,
and times a fresh process-like open (``DurableQueue.open`` plus the first
``peek``, which is what stands between start and the retained ``online``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from gateway.buffer.queue import DurableQueue, Lane, Outgoing


def reading() -> tuple[str, bytes]:
    """A registered cover's node reading as the engine renders it today (601 bytes)."""
    reading_id = uuid.uuid4().hex
    body = {
        "reading_id": reading_id,
        "time": "2026-11-30T03:52:06.123Z",
        "registered": True,
        "cover": {
            "cover_id": "HZ-XH-000123",
            "owner_unit": "drainage",
            "cover_kind": "rainwater",
        },
        "source": {
            "type": "node",
            "port": "lora0",
            "node": "00C0FFEE",
            "seq": 12345,
            "msg_type": "REPORT",
            "flags": {"node_alarm": False, "low_battery": False, "retransmission": False},
            "rx_rssi_dbm": -97,
            "rx_snr_db": 7,
        },
        "records": [
            {"type": "tilt", "x_deg": 1.53, "y_deg": -0.42},
            {"type": "water_depth", "distance_mm": 1850},
            {"type": "battery", "voltage_mv": 3612},
            {"type": "temperature", "celsius": 18.5},
        ],
        "derived": {"tilt_deg": 1.58, "water_depth_mm": 650},
    }
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return reading_id, text + b" " * max(0, 601 - len(text))


def fill(path: Path, n: int, batch: int = 500, chunk: int = 1) -> int:
    """``n`` readings in batches; returns the payload size."""
    size = 0
    with DurableQueue(path, max_bytes=1 << 40, chunk_readings=chunk) as q:
        for b in range(0, n, batch):
            rows = []
            for _ in range(min(batch, n - b)):
                msg_id, payload = reading()
                rows.append(Outgoing(msg_id, Lane.TELEMETRY, "covers/gw/telemetry", payload))
                size = len(payload)
            q.put_many(rows)
    return size


def disk(n: int, chunk: int = 1) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.db"
        size = fill(path, n, chunk=chunk)
        on_disk = sum(os.stat(p).st_size for p in (path, Path(f"{path}-wal")) if os.path.exists(p))
    print(f"{n} readings of {size} B payload: {on_disk / n:.0f} B on disk per reading")


def open_time(n: int, keep: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = (keep or Path(tmp)) / "queue.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        fill(path, n)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with DurableQueue(path, max_bytes=1 << 40) as q:
                q.peek(2000)
                times.append(time.perf_counter() - start)
    print(f"open + first peek with {n} readings queued: best {min(times) * 1e3:.0f} ms")


def cpu(n: int, rounds: int = 5, chunk: int = 1) -> None:
    """The queue's CPU per reading in the daemon's own cycle, median of ``rounds``.

    The pipeline commits ``flush_max`` (500) packed readings with the engine's
    24-hex-digit ids; the uplink reads 2000 telemetry rows a round and acks
    them in the order their batches were acknowledged (not sorted).
    """
    import random  # noqa: PLC0415 - only this mode needs it
    import statistics  # noqa: PLC0415

    from gateway.wire import pack_row  # noqa: PLC0415

    _, text = reading()
    texts = [text.replace(b"12345", str(i).encode()) for i in range(64)]
    payloads = texts if chunk > 1 else [pack_row(t) for t in texts]
    results: dict[str, list[float]] = {"put": [], "peek": [], "ack": []}
    for r in range(rounds):
        with (
            tempfile.TemporaryDirectory() as tmp,
            DurableQueue(Path(tmp) / "q.db", chunk_readings=chunk) as q,
        ):
            spent = dict.fromkeys(results, 0.0)
            rnd = random.Random(r)
            for b in range(0, n, 500):
                rows = [
                    Outgoing(
                        f"{r:08x}{i:016x}", Lane.TELEMETRY, "covers/gw/telemetry", payloads[i % 64]
                    )
                    for i in range(b, min(n, b + 500))
                ]
                start = time.process_time()
                q.put_many(rows)
                spent["put"] += time.process_time() - start
            while True:
                start = time.process_time()
                got = q.peek_lane(Lane.TELEMETRY, 2000)
                spent["peek"] += time.process_time() - start
                if not got:
                    break
                seqs = [m.seq for m in got]
                units = [seqs[i : i + 100] for i in range(0, len(seqs), 100)]
                rnd.shuffle(units)
                acked = [s for u in units for s in u]
                start = time.process_time()
                q.ack(acked)
                spent["ack"] += time.process_time() - start
        for key, s in spent.items():
            results[key].append(s / n * 1e6)
    total = [sum(v[i] for v in results.values()) for i in range(rounds)]
    what = f"in chunks of {chunk}" if chunk > 1 else f"of {len(payloads[0])} B packed"
    print(f"queue CPU per reading, {n} readings {what}, {rounds} runs:")
    for key, values in [*results.items(), ("total", total)]:
        print(
            f"  {key:<6} median {statistics.median(values):6.2f} µs"
            f"  (min {min(values):.2f}, max {max(values):.2f})"
        )


def online(state: Path, src: Path | None, runs: int = 3) -> None:
    """Wall time from spawning ``covergw run`` to the retained online status at a subscriber."""
    import subprocess  # noqa: PLC0415 - only this mode needs them
    import sys  # noqa: PLC0415

    import paho.mqtt.client as mqtt  # noqa: PLC0415

    from firmware_sim.broker import Broker  # noqa: PLC0415

    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        config = Path(tmp) / "gw.toml"
        config.write_text(
            f'[gateway]\nid = "gw-bench"\nstate_dir = "{state}"\n'
            f'[uplink]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f"[queue]\nmax_bytes = {1 << 40}\n"
        )
        times = []
        got: list[float] = []
        for _ in range(runs):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            client.on_message = lambda _c, _u, m: (
                got.append(time.perf_counter()) if b'"online"' in m.payload else None
            )
            client.connect("127.0.0.1", broker.port)
            client.subscribe("covers/gw-bench/status", qos=1)
            client.loop_start()
            time.sleep(0.5)  # the retained offline of the last run has arrived
            got.clear()
            start = time.perf_counter()
            proc = subprocess.Popen(  # noqa: S603 - our own daemon
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                env=env,
                cwd=src,  # ``-m`` puts the working directory first on the path
                stderr=subprocess.DEVNULL,
            )
            while not got and time.perf_counter() - start < 60:
                time.sleep(0.005)
            times.append(got[0] - start if got else float("nan"))
            proc.terminate()
            proc.wait(30)
            client.loop_stop()
            client.disconnect()
    print(f"spawn to retained online ({state}): {', '.join(f'{t * 1e3:.0f}' for t in times)} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--disk", action="store_true", help="bytes on disk per queued reading")
    parser.add_argument("--open", action="store_true", help="open time with N readings queued")
    parser.add_argument("--keep", type=Path, help="with --open: build the queue in this dir")
    parser.add_argument("--cpu", action="store_true", help="CPU per reading, the daemon's cycle")
    parser.add_argument("--chunk", type=int, default=1, help="readings per telemetry row")
    parser.add_argument("--online", type=Path, help="state dir for the spawn-to-online figure")
    parser.add_argument("--src", type=Path, help="with --online: source tree of the daemon")
    args = parser.parse_args()
    if args.online:
        online(args.online.resolve(), args.src)
        return
    if args.cpu:
        cpu(args.messages, chunk=args.chunk)
        return
    if args.disk:
        disk(args.messages, chunk=args.chunk)
        return
    if args.open:
        open_time(args.messages, args.keep)
        return
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
