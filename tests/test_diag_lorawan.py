"""`covergw diag lorawan` as a technician runs it: real broker, simulated ChirpStack."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from firmware_sim.netserver import NetworkServer, event_topic, status_event
from tests.harness import Broker

TILT = "24e124710c401234"
MUD = "24e124713d105678"


async def test_decoded_uplinks_and_events_one_per_line(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "diag",
            "lorawan",
            "--port",
            str(broker.port),
            "--json",
            "--count",
            "5",
            "--duration",
            "30",
            "--device",
            f"{TILT.upper()}=em310-tilt",
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert first.startswith(b"listening on")
        async with NetworkServer("127.0.0.1", broker.port) as ns:
            await ns.up(TILT, bytes.fromhex("01756403cf3a0218fc7a2300"), f_port=85, f_cnt=1207)
            # No --device for this one: the ChirpStack device profile names the model.
            await ns.up(
                MUD, bytes.fromhex("8367e800018482410601"), f_port=85, f_cnt=388, model="em400-mud"
            )
            await ns.up(MUD, bytes.fromhex("0482"), f_port=85, f_cnt=389, model="em400-mud")
            await ns.publish(MUD, "status", status_event(MUD, battery_level=77))
            await ns.publish_raw(event_topic(MUD, "up"), b"{not json")
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
    tilt, mud, short, status, bad = (json.loads(line) for line in out.splitlines())
    assert tilt["model"] == "em310-tilt"
    assert tilt["fields"]["tilt_x_deg"] == 5.7
    assert tilt["fields"]["tilt_y_deg"] == -10
    assert (tilt["f_cnt"], tilt["rssi_dbm"]) == (1207, -87)
    assert mud["model"] == "em400-mud"
    assert mud["fields"]["distance_mm"] == 1601
    assert short["rejected"] == "truncated"
    assert (status["event"], status["battery_pct"]) == ("status", 77)
    assert bad["rejected"] == "bad_json"
