"""How long a full 247-address scan takes at 9600 baud on the simulated bus (target ≤ 15 s).

Measures both paths: the tool holding the port, and the running daemon lending
its bus between its own polls. Run: ``.venv/bin/python scripts/bench_modbus_scan.py``.
Not part of the test suite (it takes about half a minute).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from firmware_sim.modbus_slaves import Qdy30aLevel, SimBus, WitInclinometer
from gateway.config import parse_config
from gateway.daemon import Gateway


async def _scan(*args: str) -> tuple[int, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "diag", "modbus", "scan", *args,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await proc.wait(), time.monotonic() - started


async def main() -> None:
    bus = SimBus("bus", slaves=[Qdy30aLevel(address=1), WitInclinometer(address=0x50)])
    await bus.start()
    code, direct = await _scan("--port", bus.path, "--socket", "/nonexistent")
    print(f"direct: exit {code}, {direct:.1f} s for 247 addresses")
    with tempfile.TemporaryDirectory() as tmp:
        data = {
            "gateway": {"id": "gw-bench", "state_dir": str(Path(tmp) / "s")},
            "uplink": {"port": 1},
            "modbus": [
                {"name": "bus", "port": bus.path, "timeout_s": 0.3,
                 "slaves": [{"address": 1, "profile": "qdy30a_level", "poll_interval_s": 1.0}]}
            ],
        }  # fmt: skip
        gateway = Gateway(parse_config(data, base_dir=Path(tmp)))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await asyncio.sleep(1.0)
        socket = str(gateway.config.control_path)
        code, lent = await _scan("--port", bus.path, "--socket", socket)
        stop.set()
        await task
    print(f"through the daemon: exit {code}, {lent:.1f} s for 247 addresses")
    await bus.stop()


if __name__ == "__main__":
    asyncio.run(main())
