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
