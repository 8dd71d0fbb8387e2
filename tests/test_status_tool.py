"""``covergw status`` against a running daemon's control socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from firmware_sim.broker import Broker
from gateway.cli import main
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.events import FrameHeard, SlaveFailed
from gateway.protocol.framing import Received
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType


async def test_status_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Broker(tmp_path / "broker") as broker:
        data = {
            "gateway": {"id": "gw-s", "state_dir": str(tmp_path / "s")},
            "uplink": {"host": "127.0.0.1", "port": broker.port},
            "modbus": [
                {"name": "rs485-0", "port": str(tmp_path / "no-such-adapter"), "reopen_min_s": 0.05,
                 "slaves": [{"address": 1, "profile": "qdy30a_level"}]},
            ],
            "alarms": {"fault_after_failures": 1},
        }  # fmt: skip
        gateway = Gateway(parse_config(data, base_dir=tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await asyncio.sleep(0.5)
        frame = Frame(
            0x00C0FFEE,
            4,
            MessageType.EVENT,
            FrameFlags.NODE_ALARM,
            (Event(EventCode.COVER_OPENED, 0, 0),),
        )
        gateway.submit(FrameHeard("lora0", 0.0, Received(frame, b"")), critical=True)
        gateway.submit(SlaveFailed("rs485-0", 1, 0.0, "no reply", 1), critical=True)
        await asyncio.sleep(0.3)
        socket_path = str(gateway.config.control_path)
        code_table = await asyncio.to_thread(main, ["status", "--socket", socket_path])
        table = capsys.readouterr().out
        code_json = await asyncio.to_thread(main, ["status", "--socket", socket_path, "--json"])
        reply = json.loads(capsys.readouterr().out)
        stop.set()
        await task
    assert (code_table, code_json) == (0, 0)
    assert "covergw gw-s" in table
    assert "uplink   connected" in table
    assert "rs485-0" in table
    assert "down" in table  # the adapter is missing: said plainly
    assert "active alarms: 2" in table
    assert "node:00C0FFEE" in table
    assert "00C0FFEE" in [n["node"] for n in reply["nodes_last_seen"]]
    assert not Path(socket_path).exists()  # removed on shutdown


def test_status_when_daemon_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--socket", str(tmp_path / "nothing.sock")]) == 1
    assert "not answering" in capsys.readouterr().err


async def test_tail_streams_what_the_ports_hear(tmp_path: Path) -> None:
    from firmware_sim.ptys import PtyPort  # noqa: PLC0415
    from gateway.control import follow  # noqa: PLC0415
    from tests.vectors import vector  # noqa: PLC0415

    radio = PtyPort()
    with Broker(tmp_path / "broker") as broker:
        data = {
            "gateway": {"id": "gw-t", "state_dir": str(tmp_path / "s")},
            "uplink": {"host": "127.0.0.1", "port": broker.port},
            "radio": [{"name": "lora0", "port": radio.path}],
        }
        gateway = Gateway(parse_config(data, base_dir=tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await asyncio.sleep(0.5)
        path = gateway.config.control_path

        async def first(n: int, request: dict[str, object]) -> list[str]:
            lines = []
            async for line in follow(path, request):
                lines.append(line)
                if len(lines) == n:
                    break
            return lines

        everything = asyncio.create_task(first(3, {"cmd": "tail"}))
        one_node = asyncio.create_task(first(1, {"cmd": "tail", "node": "00c0ffee", "raw": True}))
        await asyncio.sleep(0.2)
        radio.write(vector("heartbeat") + b"\xa5\x5a\x03junk" + vector("report"))
        lines = await asyncio.wait_for(everything, 5)
        (mine,) = await asyncio.wait_for(one_node, 5)
        stop.set()
        await task
    radio.close()
    assert "0000002A #65535 HEARTBEAT" in lines[0]
    assert "REJECTED bad_length" in lines[1]
    assert "00C0FFEE #1" in lines[2]
    assert "lora0" in mine
    assert "00C0FFEE" in mine
    assert "A5 5A 1F" in mine


async def test_status_per_cover_and_tail_of_readings_and_alarms(tmp_path: Path) -> None:
    """A technician's glance: per cover, worst first; tail shows readings and decisions."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415

    from firmware_sim.modbus_slaves import Qdy30aLevel, SimBus  # noqa: PLC0415
    from firmware_sim.ptys import PtyPort  # noqa: PLC0415
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.control import follow  # noqa: PLC0415
    from tests.harness import to_toml  # noqa: PLC0415
    from tests.vectors import vector  # noqa: PLC0415

    radio = PtyPort()
    bus = SimBus("rs485", slaves=[Qdy30aLevel(address=1, level=1.0)])
    await bus.start()
    registry = tmp_path / "covers.csv"
    registry.write_text(
        "cover_id,owner_unit,node_id,modbus,sensor_depth_mm\n"
        "HZ-1,drainage,00C0FFEE,,\nHZ-2,drainage,,rs485:1,2500\nHZ-3,drainage,,rs485:2,\n",
        encoding="utf-8",
    )
    state = tmp_path / "state"
    with Broker(tmp_path / "broker") as broker:
        data = {
            "gateway": {"id": "gw-g", "state_dir": str(state), "registry": str(registry)},
            "uplink": {"host": "127.0.0.1", "port": broker.port},
            "radio": [{"name": "lora0", "port": radio.path, "rssi_append": True}],
            "modbus": [
                {"name": "rs485", "port": bus.path, "timeout_s": 0.3,
                 "slaves": [{"address": 1, "profile": "qdy30a_level", "poll_interval_s": 0.3},
                            {"address": 2, "profile": "qdy30a_level", "poll_interval_s": 0.3}]}
            ],
        }  # fmt: skip
        config = tmp_path / "gw.toml"
        config.write_text(to_toml(data), encoding="utf-8")
        gateway = Gateway(load_config(config), config_path=config)
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        path = gateway.config.control_path
        async with asyncio.timeout(10):
            while not path.exists():
                await asyncio.sleep(0.05)

        async def until(request: dict[str, object], needle: str) -> list[str]:
            lines = []
            async for line in follow(path, request):
                lines.append(line)
                if needle in line:
                    return lines
            return lines

        wired = asyncio.create_task(until({"cmd": "tail", "cover": "HZ-2", "json": True}, "modbus"))
        alarm = asyncio.create_task(until({"cmd": "tail", "cover": "HZ-1"}, "ALARM"))
        await asyncio.sleep(0.3)  # both listening (a missed reading repeats; the alarm would not)
        radio.write(vector("report") + b"\xa1")
        radio.write(vector("event_open") + b"\x9c")
        wired_lines = await asyncio.wait_for(wired, 10)
        alarm_lines = await asyncio.wait_for(alarm, 10)
        async with asyncio.timeout(15):  # slave 2 is not on the bus: it faults
            while not any(a["kind"] == "sensor_fault" for a in gateway.engine.active_alarms()):
                await asyncio.sleep(0.1)
        later = datetime.fromtimestamp(gateway.clock() + 3600, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z"
        )
        answer = gateway.run_command(
            {"request_id": "m-1", "cmd": "maintenance",
             "args": {"cover_id": "HZ-2", "on": True, "until": later}}
        )  # fmt: skip
        assert answer["ok"], answer["error"]
        config.write_text("[gateway\n", encoding="utf-8")  # a broken edit, then SIGHUP
        gateway.request_reload()
        async with asyncio.timeout(10):
            while gateway.last_reload is None:
                await asyncio.sleep(0.05)
        # A config that would be refused whole still tells the tool where the socket is.
        minimal = tmp_path / "minimal.toml"
        minimal.write_text(
            f'[gateway]\nstate_dir = "{state}"\n[uplink]\nport = "not a number"\n',
            encoding="utf-8",
        )
        table, as_json = await asyncio.gather(
            asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway.cli", "status", "--config", str(minimal)],
                capture_output=True, text=True, timeout=30, check=False,
            ),
            asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway.cli", "status", "--socket", str(path), "--json"],
                capture_output=True, text=True, timeout=30, check=False,
            ),
        )  # fmt: skip
        stop.set()
        await task
    await bus.stop()
    radio.close()

    records = [json.loads(line) for line in wired_lines]
    assert records[-1]["what"] == "modbus"
    assert "level=1" in records[-1]["text"]
    assert all(r["node"] == "rs485:1" for r in records)  # HZ-2 only: no radio frames
    assert "cover_open RAISED HZ-1" in alarm_lines[-1]
    assert all("0000002A" not in line for line in alarm_lines)

    assert table.returncode == 0, table.stderr
    first = table.stdout.splitlines()[0]
    assert first.startswith("!! reload refused"), table.stdout  # shown before anything else
    covers_table = table.stdout.split("\ncovers: ")[1].splitlines()
    hz1 = next(line for line in covers_table if line.startswith("HZ-1 "))
    assert "00C0FFEE" in hz1
    assert "3.61 V" in hz1
    assert "RSSI -100 dBm" in hz1  # the last frame's
    hz3 = next(line for line in covers_table if line.startswith("HZ-3 "))
    assert "rs485:2!" in hz3  # a failing device is marked
    assert "sensor_fault rs485:2" in hz3
    hz2 = next(line for line in covers_table if line.startswith("HZ-2 "))
    # Alarms first, the gravest (cover_open, critical) before a sensor fault (minor).
    assert covers_table.index(hz1) < covers_table.index(hz3) < covers_table.index(hz2)
    assert "rs485:1" in hz2
    assert "never" not in hz2
    assert later[:19] in hz2  # maintenance until

    reply = json.loads(as_json.stdout)
    covers = {c["cover_id"]: c for c in reply["covers"]}
    assert covers["HZ-1"]["battery_mv"] == 3612
    assert covers["HZ-1"]["devices"][0]["rssi_dbm"] == -100
    assert covers["HZ-3"]["active_alarms"] == ["sensor_fault rs485:2"]
    assert covers["HZ-2"]["maintenance"] is True
    assert reply["attention"][0].startswith("reload refused")


async def test_status_of_a_city_block_fits_through_the_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Thousands of covers make a reply of megabytes: the tool reads it whole."""
    registry = tmp_path / "covers.csv"
    registry.write_text(
        "cover_id,owner_unit,address,node_id\n"
        + "".join(f"HZ-{i:05d},drainage,文三路 {i} 号,{0x00A00000 + i:08X}\n" for i in range(3000)),
        encoding="utf-8",
    )
    data = {
        "gateway": {"id": "gw-big", "state_dir": str(tmp_path / "s"), "registry": str(registry)}
    }
    gateway = Gateway(parse_config(data, base_dir=tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    socket_path = gateway.config.control_path
    async with asyncio.timeout(20):
        while not socket_path.exists():
            await asyncio.sleep(0.05)
    code = await asyncio.to_thread(main, ["status", "--socket", str(socket_path), "--json"])
    out = capsys.readouterr().out
    stop.set()
    await task
    assert code == 0
    assert len(out) > 64 * 1024  # past asyncio's default line limit, which used to end it
    reply = json.loads(out)
    assert len(reply["covers"]) >= 2000
