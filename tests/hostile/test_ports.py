"""Failing parts raise alarms (issue 8.6): a pulled or missing adapter, against the real daemon.

The daemon runs as a process with a real Mosquitto; the RS-485 bus is a real
pymodbus RTU server on a pty pair. The configured port is a symlink, so the
test can pull the adapter (close the pty: the device node disappears) and
plug one back in (point the link at a new bus) the way udev's by-id links
behave on the box.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from firmware_sim.modbus_slaves import Qdy30aLevel, SimBus, WitInclinometer
from tests.harness import Broker, Collector, spawn_daemon, to_toml

SLAVES = [Qdy30aLevel(address=1), WitInclinometer(address=0x50)]
REGISTRY = "cover_id,owner_unit,modbus\nHZ-L,drainage,rs485:1\nHZ-T,drainage,rs485:80\n"


def _config(tmp: Path, broker_port: int, port: Path, radio_port: Path) -> Path:
    registry = tmp / "covers.csv"
    registry.write_text(REGISTRY, encoding="utf-8")
    data: dict[str, Any] = {
        "gateway": {"id": "gw-ports", "state_dir": str(tmp / "state"), "registry": str(registry)},
        "uplink": {
            "host": "127.0.0.1",
            "port": broker_port,
            "stats_interval_s": 1,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
        },
        "queue": {"flush_interval_s": 0.05},
        "radio": [
            {"name": "lora0", "port": str(radio_port), "reopen_min_s": 0.1, "reopen_max_s": 0.5}
        ],
        "modbus": [
            {
                "name": "rs485",
                "port": str(port),
                "timeout_s": 0.2,
                "retries": 0,
                "backoff_max_s": 1.0,
                "reopen_min_s": 0.1,
                "reopen_max_s": 0.5,
                "slaves": [
                    {"address": 1, "profile": "qdy30a_level", "poll_interval_s": 0.25},
                    {"address": 0x50, "profile": "wit_inclinometer", "poll_interval_s": 0.25},
                ],
            }
        ],
    }
    path = tmp / "gw.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def _faults(collector: Collector, state: str) -> set[str]:
    return {
        a["sub"] for a in collector.alarms() if a["kind"] == "sensor_fault" and a["state"] == state
    }


def _plug(link: Path, target: str) -> None:
    tmp = link.with_suffix(".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)  # atomic, as udev does it


async def test_missing_then_pulled_adapter_faults_every_slave_and_clears(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB-rs485"  # nothing there yet: the adapter is not plugged in
    radio = tmp_path / "ttyUSB-radio"  # never there: the radio input is reported down
    log = tmp_path / "daemon.log"
    everyone = {"rs485:1", "rs485:80"}
    with Broker(tmp_path / "broker") as broker:
        async with Collector(broker.port) as collector:
            proc = spawn_daemon(_config(tmp_path, broker.port, link, radio), log)
            bus = SimBus("rs485", slaves=list(SLAVES))
            try:
                # 1. A port that does not exist: every slave behind it faults.
                await collector.wait_for(lambda: _faults(collector, "raised") == everyone, 30)
                fault = next(a for a in collector.alarms() if a["kind"] == "sensor_fault")
                assert "no such device" in fault["reason"]

                # ...and a radio input whose port is gone is in the stats.
                def radio_down() -> bool:
                    stats = collector.of("stats")
                    return bool(stats) and stats[-1]["ports"]["lora0"]["state"] == "down"

                await collector.wait_for(radio_down, 15)
                assert collector.of("stats")[-1]["ports"]["lora0"]["last_error"]

                # 2. The adapter is plugged in: the faults clear.
                await bus.start()
                _plug(link, bus.path)
                await collector.wait_for(lambda: _faults(collector, "cleared") == everyone, 30)

                # 3. The adapter is pulled mid-run (pty closed): they fault again.
                before = len(collector.alarms())
                await bus.stop()
                await collector.wait_for(
                    lambda: (
                        {
                            a["sub"]
                            for a in collector.alarms()[before:]
                            if a["kind"] == "sensor_fault" and a["state"] == "raised"
                        }
                        == everyone
                    ),
                    30,
                )
            finally:
                await bus.stop()
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 15)
    assert code == 0, log.read_text()
    assert collector.errors == []
    assert os.path.islink(link)
