"""The daemon as a process: kill -9 under load loses nothing accepted; bad config is refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import parse_scenario
from firmware_sim.wiring import gateway_config
from gateway.wire import unpack_row
from tests.harness import Broker, Collector, free_udp_port, spawn_daemon, to_toml

REGISTRY = "cover_id,owner_unit,node_id\nHZ-0001,drainage,00C0FFEE\n"


def accepted_ids(db: Path) -> set[str]:
    """What the queue has committed, read the way any other SQLite reader would."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        # An alarm row by its id (a uuid hex id is stored as its 16 bytes,
        # gateway.buffer.queue.encode_id); a telemetry row holds a chunk of
        # readings, packed JSON joined by newlines: each reading by its id.
        ids: set[str] = set()
        for msg_id, lane, payload in conn.execute("SELECT msg_id, lane, payload FROM outbox"):
            if lane == 0:
                ids.add(msg_id.hex() if isinstance(msg_id, bytes) else msg_id)
            else:
                ids |= {json.loads(r)["reading_id"] for r in unpack_row(payload).split(b"\n")}
        return ids
    finally:
        conn.close()


async def test_sigkill_under_load_loses_nothing_the_queue_accepted(tmp_path: Path) -> None:
    scenario = parse_scenario(
        {
            "scenario": {"name": "load", "duration_s": 60, "seed": 9},
            "radio": [{"name": "lora0"}],
            "nodes": [{"id": "00C0FFEE", "link": "lora0", "report_interval_s": 0.5}],
            "node_groups": [
                {"first_id": "00A00000", "count": 30, "link": "lora0", "report_interval_s": 0.3}
            ],
            "timeline": [
                {"at_s": 2.0, "do": "set", "node": "00C0FFEE", "tilt_deg": [60.0, 0.0]},
                {"at_s": 2.1, "do": "event", "node": "00C0FFEE", "event": "cover_opened"},
            ],
        }
    )
    log = tmp_path / "daemon.log"
    with Broker(tmp_path / "broker") as broker:
        async with Collector(broker.port) as collector, ScenarioRunner(scenario) as sim:
            config = tmp_path / "gw.toml"
            data = gateway_config(
                tmp_path,
                broker_port=broker.port,
                endpoints=sim.endpoints(),
                scenario=scenario,
                registry_csv=REGISTRY,
                udp_port=free_udp_port(),
            )
            config.write_text(to_toml(data), encoding="utf-8")
            proc = spawn_daemon(config, log)
            await asyncio.sleep(1.0)
            run = asyncio.create_task(sim.run())
            await asyncio.sleep(1.0)
            broker.stop()  # from now on everything stays in the queue
            await asyncio.sleep(3.0)
            snapshot = accepted_ids(tmp_path / "state" / "queue.db")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            run.cancel()
            await sim.quiesce()
            broker.start()
            proc = spawn_daemon(config, log)

            def delivered() -> set[str]:
                return {r["reading_id"] for r in collector.readings()} | {
                    a["msg_id"] for a in collector.alarms()
                }

            try:
                await collector.wait_for(lambda: snapshot <= delivered(), timeout=30)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(15)

            def said_goodbye() -> bool:
                last = [m.payload for m in collector.messages if m.topic.endswith("/status")][-1]
                return bool(last["state"] == "offline")

            await collector.wait_for(said_goodbye, timeout=5)
    assert code == 0, log.read_text()
    assert len(snapshot) > 100  # it really was under load
    assert any(a["kind"] == "cover_open" for a in collector.alarms())
    assert snapshot <= delivered()
    assert collector.errors == []
    status = [m.payload for m in collector.messages if m.topic.endswith("/status")]
    assert status[-1]["state"] == "offline"
    assert status[-1]["reason"] == "shutdown"


def test_bad_config_is_refused_with_key_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[gateway]\nid = "gw"\nstate_dir = "s"\n[uplink]\nport = 70000\n')
    for argv in (["check-config", str(config)], ["run", "--config", str(config)]):
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2
        assert "uplink.port: must be 1–65535, got 70000" in result.stderr
    assert not (tmp_path / "s").exists()  # refused before anything opened
