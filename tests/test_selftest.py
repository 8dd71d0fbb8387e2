"""``covergw selftest``: one line per check with the fix, against real parts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from firmware_sim.broker import Broker, free_port
from firmware_sim.modbus_slaves import Qdy30aLevel, SimBus
from firmware_sim.ptys import PtyPort
from tests.harness import to_toml


def _selftest(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "selftest", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _config(tmp: Path, broker_port: int, radio: str, bus: str) -> Path:
    registry = tmp / "covers.csv"
    registry.write_text("cover_id,owner_unit,modbus\nHZ-1,drainage,rs485:1\n", encoding="utf-8")
    data: dict[str, Any] = {
        "gateway": {"id": "gw-st", "state_dir": str(tmp / "state"), "registry": str(registry)},
        "uplink": {"host": "127.0.0.1", "port": broker_port},
        "radio": [
            {"name": "lora0", "port": radio},
            {"name": "lora1", "port": str(tmp / "ttyUSB-unplugged")},
        ],
        "modbus": [
            {"name": "rs485", "port": bus, "timeout_s": 0.3, "retries": 0,
             "slaves": [{"address": 1, "profile": "qdy30a_level"},
                        {"address": 2, "profile": "qdy30a_level"}]}
        ],
    }  # fmt: skip
    path = tmp / "gw.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


async def test_selftest_says_what_works_and_how_to_fix_the_rest(tmp_path: Path) -> None:
    radio = PtyPort()
    bus = SimBus("rs485", slaves=[Qdy30aLevel(address=1, level=0.5)])
    await bus.start()
    try:
        with Broker(tmp_path / "broker") as broker:
            config = _config(tmp_path, broker.port, radio.path, bus.path)
            up = await asyncio.to_thread(_selftest, config)
            as_json = await asyncio.to_thread(_selftest, config, "--json")
        down = await asyncio.to_thread(_selftest, config)  # the broker is gone now
    finally:
        await bus.stop()
        radio.close()
    assert "Traceback" not in up.stderr + down.stderr, up.stderr + down.stderr
    by_name = {c["check"]: c for c in json.loads(as_json.stdout)}
    assert by_name["config"]["verdict"] == "ok"
    assert by_name["registry"]["verdict"] == "ok"
    assert by_name["state dir"]["verdict"] == "ok"
    assert by_name["port lora0"]["verdict"] == "ok"
    assert by_name["port rs485"]["verdict"] == "ok"
    assert by_name["port lora1"]["verdict"] == "FAIL"
    assert "plug the adapter in" in by_name["port lora1"]["fix"]
    assert by_name["slave rs485:1"]["verdict"] == "ok"
    assert "level=0.5" in by_name["slave rs485:1"]["detail"]
    assert by_name["slave rs485:2"]["verdict"] == "FAIL"  # nobody at 2: the bus is silent
    assert "diag modbus scan" in by_name["slave rs485:2"]["fix"]
    assert by_name["broker"]["verdict"] == "ok"
    assert by_name["clock"]["verdict"] in ("ok", "warn")
    assert up.returncode == 1  # a check failed
    assert "[FAIL] port lora1" in up.stdout
    assert "checks: 2 failed" in up.stdout
    assert "[FAIL] broker" in down.stdout
    assert "check the network path" in down.stdout


def test_selftest_with_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nid = "x"\n[uplink]\nport = {free_port()}\nbogus = 1\n')
    result = _selftest(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("[FAIL] config")
    assert "check-config --config" in result.stdout
