"""The technician's bus tools over real ptys and a real Modbus RTU slave."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from firmware_sim.ptys import PtyPort
from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import Scenario
from gateway.cli import main
from tests.vectors import vector


async def test_sniff_decodes_live_and_saves_a_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = PtyPort()
    capture = tmp_path / "capture.bin"
    argv = ["diag", "sniff", "--port", port.path, "--rssi-append", "--raw", "--save", str(capture)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *argv, "--count", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(1.0)
    port.write(b"\xa5\x5a\x07noise" + vector("report") + b"\xa1" + vector("event_open") + b"\x9c")
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
    port.close()
    assert proc.returncode == 0
    lines = stdout.decode().splitlines()
    assert "REJECTED bad_length" in lines[0]
    assert "00C0FFEE #1" in lines[1]
    assert "REPORT" in lines[1]
    assert "rssi=-95" in lines[1]
    assert "A5 5A 1F 01 01" in lines[1]  # --raw
    assert "[node_alarm]" in lines[2]
    assert "event=cover_opened" in lines[2]
    assert "frames': 2" in stderr.decode()
    assert main(["decode", "--file", str(capture), "--rssi-append"]) == 0  # the capture replays
    assert capsys.readouterr().out.count('"node": "00C0FFEE"') == 2


def test_sniff_says_plainly_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    port = PtyPort()
    holder = serial.Serial(port.path, exclusive=True)  # as the daemon holds it
    try:
        assert main(["diag", "sniff", "--port", port.path, "--duration", "1"]) == 3
    finally:
        holder.close()
        port.close()
    assert "held by another program" in capsys.readouterr().err


async def test_modbus_scan_and_read(
    make_scenario: Callable[..., Scenario], capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = make_scenario(
        buses=[
            {
                "name": "bus",
                "slaves": [
                    {"model": "wit_inclinometer", "address": 0x50, "roll_deg": -12.5},
                    {"model": "qdy30a_level", "address": 1, "level": 1.25, "decimals": 2},
                ],
            }
        ]
    )
    async with ScenarioRunner(scenario) as sim:
        path = sim.endpoints().buses["bus"]["path"]
        scan = await asyncio.to_thread(
            main, ["diag", "modbus", "scan", "--port", path, "--slaves", "1-3,80"]
        )
        scan_out = capsys.readouterr()
        read = await asyncio.to_thread(
            main,
            [
                "diag",
                "modbus",
                "read",
                "--port",
                path,
                "--slave",
                "0x50",
                "--profile",
                "wit_inclinometer",
            ],
        )
        read_out = capsys.readouterr().out
    assert (scan, read) == (0, 0)
    assert scan_out.out.splitlines() == ["0x01 (  1)  answers", "0x50 ( 80)  answers"]
    assert "2 of 4 addresses answered" in scan_out.err
    assert "roll_deg" in read_out
    assert "-12.5" in read_out
    assert "003D=" in read_out  # the raw registers


async def test_modbus_tools_say_when_the_daemon_owns_the_bus(
    tmp_path: Path, make_scenario: Callable[..., Scenario], capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.config import parse_config  # noqa: PLC0415
    from gateway.daemon import Gateway  # noqa: PLC0415

    scenario = make_scenario(
        buses=[{"name": "bus", "slaves": [{"model": "qdy30a_level", "address": 1}]}]
    )
    async with ScenarioRunner(scenario) as sim:
        path = sim.endpoints().buses["bus"]["path"]
        data = {
            "gateway": {"id": "gw-d", "state_dir": str(tmp_path / "s")},
            "uplink": {"port": 1},  # no broker needed here
            "modbus": [
                {"name": "bus", "port": path, "slaves": [{"address": 1, "profile": "qdy30a_level"}]}
            ],
        }
        gateway = Gateway(parse_config(data, base_dir=tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await asyncio.sleep(0.5)
        busy = await asyncio.to_thread(
            main, ["diag", "modbus", "scan", "--port", path, "--slaves", "1"]
        )
        err = capsys.readouterr().err
        stop.set()
        await task
        free = await asyncio.to_thread(
            main, ["diag", "modbus", "scan", "--port", path, "--slaves", "1"]
        )
    assert busy == 3
    assert "held by another program" in err
    assert free == 0  # released when the daemon stopped
