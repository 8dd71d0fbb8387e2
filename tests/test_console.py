"""The diagnostic console on a serial port, driven as a technician's terminal would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from firmware_sim.broker import Broker
from firmware_sim.ptys import PtyPort
from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import Scenario
from gateway.config import parse_config
from gateway.daemon import Gateway
from tests.vectors import vector


class Terminal:
    """The laptop end of the cable: types, and reads what the console prints."""

    def __init__(self, port: PtyPort) -> None:
        self.port = port
        self.screen = ""

    async def type(self, text: str | bytes) -> None:
        self.port.write(text.encode() if isinstance(text, str) else text)
        await asyncio.sleep(0.05)

    async def run(self, command: str) -> str:
        """Type a command line and return everything up to the next prompt."""
        await self.type(command + "\r")
        return await self.wait_for("\n> ")

    async def wait_for(self, needle: str, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            while needle not in self.screen:
                self.screen += self.port.read_nowait().decode("utf-8", "replace")
                await asyncio.sleep(0.02)
        seen, _, self.screen = self.screen.partition(needle)
        return seen + needle


async def test_console_session(tmp_path: Path, make_scenario: Callable[..., Scenario]) -> None:
    cable = tmp_path / "usb-FTDI_debug-if00-port0"
    laptop = PtyPort()
    os.symlink(laptop.path, cable)
    radio = PtyPort()
    covers = tmp_path / "covers.csv"
    covers.write_text(
        "cover_id,owner_unit,node_id,address\nC-1,drainage,00C0FFEE,文三路 88 号\n",
        encoding="utf-8",
    )
    scenario = make_scenario(
        buses=[
            {"name": "rs485-0", "slaves": [{"model": "qdy30a_level", "address": 1, "level": 1.5}]}
        ]
    )
    async with ScenarioRunner(scenario) as sim:
        with Broker(tmp_path / "broker") as broker:
            data = {
                "gateway": {"id": "gw-con", "state_dir": str(tmp_path / "s"),
                            "registry": str(covers)},
                "uplink": {"host": "127.0.0.1", "port": broker.port},
                "console": {"port": str(cable)},
                "radio": [{"name": "lora0", "port": radio.path}],
                "modbus": [
                    {"name": "rs485-0", "port": sim.endpoints().buses["rs485-0"]["path"],
                     "timeout_s": 0.3,
                     "slaves": [{"address": 1, "profile": "qdy30a_level", "poll_interval_s": 5}]}
                ],
            }  # fmt: skip
            gateway = Gateway(parse_config(data, base_dir=tmp_path))
            stop = asyncio.Event()
            task = asyncio.create_task(gateway.run(stop))
            term = Terminal(laptop)
            await term.wait_for("Type help.")
            await term.wait_for("> ")

            assert "modbus read BUS SLAVE" in await term.run("help")
            await term.type(b"\x00\xff\x1b[A\x1b[B")  # line noise and arrow keys: ignored
            await term.type("stauts\x7f\x7f\x7ftus\r")  # typo fixed with backspace
            out = await term.wait_for("> ")
            assert "uplink connected" in out
            assert "lora0" in out

            covers_out = await term.run("covers")
            assert "C-1" in covers_out
            assert "1 covers" in covers_out

            radio.write(vector("event_open"))
            await asyncio.sleep(0.5)
            alarms_out = await term.run("alarms")
            assert "C-1" in alarms_out
            assert "1 active alarms" in alarms_out
            before = time.time()
            hour = await term.run("maintenance C-1")  # default: one hour
            until = re.search(r"maintenance until (\S+)", hour)
            assert until is not None, hour
            ends = datetime.fromisoformat(until.group(1).replace("Z", "+00:00")).timestamp()
            assert before + 3590 < ends < time.time() + 3610
            assert "maintenance until" in await term.run("maintenance C-1 30m")
            assert "at most 24h" in await term.run("maintenance C-1 25h")  # capped
            assert "maintenance over" in await term.run("maintenance C-1 off")
            assert "refused: no cover 'C-9'" in await term.run("maintenance C-9 on")

            frames = await term.run("frames 00c0ffee 5")
            assert "EVENT" in frames
            assert "1 frames from 00C0FFEE" in frames
            status = json.loads((await term.run("status json")).splitlines()[1])  # after the echo
            assert status["stats"]["gateway"] == "gw-con"

            await term.type("rezero C-1\r")
            await term.wait_for("Sure? [y/N] ")
            assert "left as it was" in await term.run("n")
            await term.type("rezero C-1\r")
            await term.wait_for("Sure? [y/N] ")
            assert "baseline will be the next normal reading" in await term.run("y")

            checks = await term.run("selftest")
            assert "[  ok] port lora0" in checks
            assert "[  ok] slave rs485-0:1" in checks
            assert "[  ok] broker" in checks
            assert "checks, 0 failed" in checks
            assert "None" not in await term.run("queue")  # never "oldest None s"

            await term.type("tail 00C0FFEE\r")
            await term.wait_for("any key stops")
            radio.write(vector("heartbeat") + vector("report"))
            tail = await term.wait_for("REPORT")
            assert "0000002A" not in tail  # another node: filtered out
            await term.type("q")
            await term.wait_for("\n> ")
            assert "1.5000" in await term.run("modbus read rs485-0 1")
            assert "not configured" in await term.run("modbus read rs485-0 7")

            await term.type("queue")  # the cable is pulled mid-command
            laptop.close()
            await asyncio.sleep(0.3)
            laptop = PtyPort()
            os.unlink(cable)
            os.symlink(laptop.path, cable)
            term = Terminal(laptop)
            await term.wait_for("Type help.", timeout=15)  # plugged back: a fresh prompt
            await term.wait_for("> ")
            assert "connected" in await term.run("uplink")

            stop.set()
            await task
    laptop.close()
    radio.close()
