"""The technician's bus tools over real ptys and a real Modbus RTU slave."""

from __future__ import annotations

import asyncio
import json
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
    assert proc.stderr is not None
    listening = await asyncio.wait_for(proc.stderr.readline(), 30)  # the port is open
    assert b"listening on" in listening
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
    summary = [line.split() for line in stderr.decode().splitlines()]
    assert ["frames", "2"] in summary  # a table, not a Python dict
    assert ["rejected", "bad", "length", "1"] in summary
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
    rows = [line.split() for line in scan_out.out.splitlines()[1:]]
    assert rows == [
        ["0x01", "1", "answers", "qdy30a_level"],
        ["0x50", "80", "answers", "wit_inclinometer"],
    ]
    assert "2 of 4 addresses answered" in scan_out.err
    assert "pymodbus" not in scan_out.err  # the library's log lines are kept out of the table
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


async def test_modbus_scan_and_read_through_the_running_daemon(
    tmp_path: Path, make_scenario: Callable[..., Scenario], capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon lends its bus: the tools work with the service running, polls go on."""
    from gateway.config import parse_config  # noqa: PLC0415
    from gateway.daemon import Gateway  # noqa: PLC0415
    from gateway.drivers.modbus import ModbusBus  # noqa: PLC0415

    scenario = make_scenario(
        buses=[
            {
                "name": "bus",
                "slaves": [
                    {"model": "qdy30a_level", "address": 1, "level": 1.5},
                    {"model": "wit_inclinometer", "address": 0x50, "roll_deg": 3.0},
                ],
            }
        ]
    )
    async with ScenarioRunner(scenario) as sim:
        path = sim.endpoints().buses["bus"]["path"]
        data = {
            "gateway": {"id": "gw-d", "state_dir": str(tmp_path / "s")},
            "uplink": {"port": 1},  # no broker needed here
            "modbus": [
                {"name": "bus", "port": path, "timeout_s": 0.3,
                 "slaves": [{"address": 1, "profile": "qdy30a_level", "poll_interval_s": 0.2}]}
            ],
        }  # fmt: skip
        gateway = Gateway(parse_config(data, base_dir=tmp_path))
        bus = next(d for d in gateway.drivers if isinstance(d, ModbusBus))
        socket = str(gateway.config.control_path)
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        async with asyncio.timeout(10):
            while bus.slaves[1].reads == 0:  # the daemon holds the port and polls
                await asyncio.sleep(0.05)
        scan = await asyncio.to_thread(
            main,
            ["diag", "modbus", "scan", "--port", path, "--slaves", "1-4,80", "--socket", socket],
        )
        scan_out = capsys.readouterr()
        reads_before = bus.slaves[1].reads
        as_json = await asyncio.to_thread(
            main, ["diag", "modbus", "scan", "--bus", "bus", "--slaves", "2-40,80", "--json",
                   "--socket", socket],
        )  # fmt: skip
        json_out = capsys.readouterr().out
        reads_after = bus.slaves[1].reads
        read = await asyncio.to_thread(
            main, ["diag", "modbus", "read", "--port", path, "--slave", "0x50",
                   "--profile", "wit_inclinometer", "--socket", socket],
        )  # fmt: skip
        read_out = capsys.readouterr().out
        stop.set()
        await task
    assert (scan, as_json, read) == (0, 0, 0), scan_out.err
    rows = [line.split() for line in scan_out.out.splitlines()[1:]]
    assert rows[0][:4] == ["0x01", "1", "answers", "qdy30a_level"]
    assert "(configured:" in scan_out.out
    assert rows[1][:4] == ["0x50", "80", "answers", "wit_inclinometer"]
    assert len(rows) == 2  # 2, 3, 4 are silent
    assert "2 of 5 addresses answered" in scan_out.err
    lines = [json.loads(line) for line in json_out.splitlines()]
    assert [(r["address"], r["answered"]) for r in lines] == [
        *((a, False) for a in range(2, 41)),
        (80, True),
    ]
    assert "roll_deg" in read_out
    assert "2.999" in read_out  # 3.0 deg through the int16 register
    # ~2 s of probes at 48 ms each; the 0.2 s poll loop carried on between them.
    assert reads_after - reads_before >= 2
    assert bus.slaves[1].failures == 0  # and no poll failed because of them


async def test_a_pulled_adapter_ends_the_scan_with_a_reason(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(
        buses=[{"name": "bus", "slaves": [{"model": "qdy30a_level", "address": 1}]}]
    )
    async with ScenarioRunner(scenario) as sim:
        path = sim.endpoints().buses["bus"]["path"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "diag", "modbus", "scan", "--port", path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            while b"0x01" not in await proc.stdout.readline():  # scanning, found slave 1
                pass
        await sim.buses["bus"].stop()  # the adapter is pulled
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("scan stopped at address ")
    assert "Traceback" not in stderr.decode()


async def test_a_pulled_adapter_ends_a_scan_through_the_daemon(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
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
            "uplink": {"port": 1},
            "modbus": [
                {"name": "bus", "port": path, "timeout_s": 0.3, "reopen_min_s": 5,
                 "slaves": [{"address": 1, "profile": "qdy30a_level", "poll_interval_s": 0.5}]}
            ],
        }  # fmt: skip
        gateway = Gateway(parse_config(data, base_dir=tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        socket = gateway.config.control_path
        async with asyncio.timeout(10):
            while not socket.exists():
                await asyncio.sleep(0.05)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "diag", "modbus", "scan", "--bus", "bus",
            "--socket", str(socket),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            while b"0x01" not in await proc.stdout.readline():  # the daemon is scanning
                pass
        await sim.buses["bus"].stop()  # the adapter is pulled
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        stop.set()
        await task
    assert proc.returncode == 1
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("daemon: "), lines
