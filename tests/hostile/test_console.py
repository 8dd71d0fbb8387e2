"""The console never blocks (issue 8.7): a terminal that never reads, against the real daemon.

The laptop end of the console cable is a real pty whose master is written to
(commands, long listings, garbage) but never read, so the tty's queue fills
and every write the daemon makes would block. The daemon must keep
forwarding a cover's real alarm, count the output it dropped, and not loop
on errors (before: 100 % CPU, ~8,000 tracebacks/s).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from firmware_sim.ptys import PtyPort
from tests.harness import Broker, Collector, spawn_daemon, to_toml
from tests.vectors import vector

COVERS = 3000


def _registry(path: Path) -> Path:
    rows = ["cover_id,owner_unit,node_id,address", "C-1,drainage,00C0FFEE,文三路 88 号"]
    rows += [f"C-{n:05d},drainage,,学院路 {n} 号 a long address to make the listing long" for n in
             range(2, COVERS + 1)]  # fmt: skip
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _config(tmp: Path, broker_port: int, console: str, radio: str) -> Path:
    data: dict[str, Any] = {
        "gateway": {
            "id": "gw-con",
            "state_dir": str(tmp / "state"),
            "registry": str(_registry(tmp / "covers.csv")),
        },
        "uplink": {
            "host": "127.0.0.1",
            "port": broker_port,
            "stats_interval_s": 1,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
        },
        "queue": {"flush_interval_s": 0.05},
        "console": {"port": console},
        "radio": [{"name": "lora0", "port": radio}],
    }
    path = tmp / "gw.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


async def test_a_terminal_that_never_reads_cannot_stop_the_alarms(tmp_path: Path) -> None:
    laptop = PtyPort()  # the far end never reads its master
    radio = PtyPort()
    log = tmp_path / "daemon.log"
    with Broker(tmp_path / "broker") as broker:
        async with Collector(broker.port) as collector:
            proc = spawn_daemon(_config(tmp_path, broker.port, laptop.path, radio.path), log)

            def console_stats() -> dict[str, Any]:
                stats = collector.of("stats")
                return stats[-1]["ports"]["console"] if stats else {}

            try:
                await collector.wait_for(lambda: console_stats().get("state") == "open", 30)
                for _ in range(20):  # long listings, far more than a tty queue holds
                    laptop.write(f"covers {COVERS}\r".encode())
                    await asyncio.sleep(0.05)
                laptop.write(b"nonsense\r" * 200 + b"\x00\xff\x1b[A" * 50)
                radio.write(vector("event_open"))

                def opened() -> bool:
                    return any(a["kind"] == "cover_open" for a in collector.alarms())

                await collector.wait_for(opened, 20)
                await collector.wait_for(
                    lambda: console_stats().get("dropped_output_bytes", 0) > 0, 20
                )
                # Refusals are rate limited: most garbage lines get no answer, counted.
                await collector.wait_for(lambda: console_stats()["unanswered_lines"] > 100, 20)
                # Still alive and still serving: the stats keep coming.
                seen = len(collector.of("stats"))
                await collector.wait_for(lambda: len(collector.of("stats")) > seen + 1, 15)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 15)
    laptop.close()
    radio.close()
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert len(text) < 100_000  # no error loop filling the journal
    assert collector.errors == []
