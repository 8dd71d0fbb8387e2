"""Issue 8.4 against the real daemon: a full disk while the broker is down is a state, not a crash.

A tmpfs of a few MiB holds the state directory. With the broker stopped,
readings fill the queue, then something else fills the disk, and covers
open and close meanwhile. When the broker returns every alarm transition
must arrive, the process must still be the same one, the readings that
could not be kept must be counted exactly, and the retained status must
say "storage degraded" and then, once space is freed, recover by itself.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.control import request
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import Battery, Event, EventCode, Frame, FrameFlags, MessageType
from tests.harness import Broker, Collector, free_udp_port, spawn_daemon, to_toml
from tests.smallfs import fill, small_fs

COVERS = {f"HZ-{i:04d}": 0x00A00000 + i for i in range(1, 6)}
REGISTRY = "cover_id,owner_unit,node_id\n" + "".join(
    f"{cover},drainage,{node:08X}\n" for cover, node in COVERS.items()
)
READING_NODES = [0x00B00000 + i for i in range(40)]


class Radio:
    """The covers' side: SCN-1 frames over real UDP, each frame distinct, counted."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.target = ("127.0.0.1", port)
        self.seq: dict[int, int] = {}
        self.frames = 0

    def send(self, node: int, records: tuple[Any, ...], *, event: bool = False) -> None:
        seq = self.seq.get(node, 0)
        self.seq[node] = (seq + 1) % 65536
        frame = Frame(
            node,
            seq,
            MessageType.EVENT if event else MessageType.REPORT,
            FrameFlags.NODE_ALARM if event else FrameFlags.NONE,
            records,
        )
        self.sock.sendto(encode_frame(frame), self.target)
        self.frames += 1

    def readings(self, n: int) -> Iterator[None]:
        for i in range(n):
            self.send(READING_NODES[i % len(READING_NODES)], (Battery(3600 + i % 50),))
            yield None

    def cover(self, node: int, *, opened: bool) -> None:
        code = EventCode.COVER_OPENED if opened else EventCode.COVER_CLOSED
        self.send(node, (Event(code, 0, 4500),), event=True)


async def status(sock: Path) -> dict[str, Any]:
    return await request(sock, "status")


async def until(check: Callable[[], Any], *, sock: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the daemon's own control socket until its stats satisfy ``check``."""
    async with asyncio.timeout(timeout):
        while True:
            reply = await status(sock)
            if check(reply["stats"]):  # type: ignore[no-untyped-call]
                return reply
            await asyncio.sleep(0.05)


async def test_disk_full_with_broker_down_loses_no_alarm_and_counts_every_reading(
    tmp_path: Path,
) -> None:
    log = tmp_path / "daemon.log"
    udp_port = free_udp_port()
    registry = tmp_path / "covers.csv"
    registry.write_text(REGISTRY, encoding="utf-8")
    with small_fs(tmp_path / "state", 4096) as state, Broker(tmp_path / "broker") as broker:
        config = tmp_path / "gw.toml"
        config.write_text(
            to_toml(
                {
                    "gateway": {
                        "id": "gw-disk",
                        "state_dir": str(state),
                        "registry": str(registry),
                    },
                    "uplink": {
                        "host": "127.0.0.1",
                        "port": broker.port,
                        "stats_interval_s": 1,
                        "reconnect_min_s": 0.1,
                        "reconnect_max_s": 0.5,
                        "publish_timeout_s": 3,
                    },
                    "queue": {"flush_interval_s": 0.05, "max_bytes": 3 << 20},
                    # 40 nodes send thousands of readings within a minute: the engine's
                    # per-device rate (tested in tests/hostile/test_engine.py) is opened
                    # wide so every reading is forwarded or lost where the queue counts it.
                    "limits": {"device_frames_per_minute": 1_000_000},
                    # One trusted source sends everything here: no per-source limit.
                    "udp": [
                        {
                            "name": "nb0",
                            "bind": f"127.0.0.1:{udp_port}",
                            "source_rate": 100_000.0,
                            "source_burst": 100_000,
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        sock = state / "control.sock"
        radio = Radio(udp_port)
        async with Collector(broker.port) as collector:
            proc = spawn_daemon(config, log)
            try:
                await collector.wait_for(lambda: bool(collector.of("status")), timeout=20)
                broker.stop()  # from now on everything stays on the box

                async def send_readings(n: int) -> None:
                    for i, _ in enumerate(radio.readings(n)):
                        if i % 50 == 49:  # paced by what the daemon took in, not by a clock
                            await until(
                                lambda s: s["ports"]["nb0"]["frames"] >= radio.frames, sock=sock
                            )

                await send_readings(1000)
                fill(state / "filler")  # the logs ate the disk
                transitions = []
                for _ in range(2):
                    for cover, node in COVERS.items():
                        for opened in (True, False):
                            radio.cover(node, opened=opened)
                            transitions.append((cover, "raised" if opened else "cleared"))
                            await send_readings(150)
                sent = radio.frames
                full = await until(
                    lambda s: (
                        s["ports"]["nb0"]["frames"] >= sent and s["queue"]["storage"] == "degraded"
                    ),
                    sock=sock,
                )
                assert full["stats"]["queue"]["evicted_telemetry"] > 0  # it made room
                told = await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "gateway.cli", "status", "--socket", str(sock)),
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await told.communicate()
                assert b"storage  degraded: " in out  # what the technician sees
                broker.start()

                def alarms_arrived() -> bool:
                    got = [
                        ((a["cover"] or {}).get("cover_id"), a["state"])
                        for a in collector.alarms()
                        if a["kind"] == "cover_open"
                    ]
                    return sorted(got) == sorted(transitions)

                await collector.wait_for(alarms_arrived, timeout=30)
                said_degraded = [
                    s
                    for s in collector.of("status")
                    if s.get("storage", {}).get("state") == "degraded"
                ]
                assert said_degraded, collector.of("status")
                (state / "filler").unlink()  # space comes back

                def recovered() -> bool:
                    last = collector.of("status")[-1]
                    return bool(last["state"] == "online" and last["storage"]["state"] == "ok")

                await collector.wait_for(recovered, timeout=20)
                drained = await until(
                    lambda s: (
                        s["queue"]["depth_telemetry"] == 0
                        and s["queue"]["pending_in_memory"] == 0
                        and s["queue"]["storage"] == "ok"
                    ),
                    sock=sock,
                )
                final = drained["stats"]
                await collector.wait_for(
                    lambda: len(collector.readings()) + lost(final) >= sent, timeout=20
                )
                assert proc.poll() is None, log.read_text()  # the same process all along
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(15)
    assert code == 0, log.read_text()
    assert final["queue"]["evicted_alarm"] == final["queue"]["dropped_unwritten_alarm"] == 0
    assert final["edge"]["duplicates"] == 0
    assert final["ports"]["nb0"]["frames"] == sent
    # every frame made one reading: delivered, or counted where it was lost
    assert len(collector.readings()) + lost(final) == sent
    assert lost(final) > 0
    assert collector.errors == []


def lost(stats: dict[str, Any]) -> int:
    q = stats["queue"]
    return int(
        q["evicted_telemetry"] + q["dropped_unwritten_telemetry"] + stats["edge"]["shed_telemetry"]
    )
