"""Watch a scenario through the gateway's own decoders: every radio port, UDP, every slave.

This is the foundation's demo (``./dev demo``) until the daemon lands: it
shows what the gateway will hear, decoded, one line a frame or reading.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import serial_asyncio_fast
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from firmware_sim.__main__ import resolve_scenario
from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import Step, load_scenario
from gateway.errors import ProtocolError
from gateway.protocol.codec import decode_frame
from gateway.protocol.framing import Item, Received, make_framer
from gateway.protocol.modbus_profiles import BUILTIN_PROFILES, registers_from_blocks
from gateway.protocol.render import describe

counts: Counter[str] = Counter()


def _line(source: str, text: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S.%f}"[:-3] + f"  {source:<8} {text}", flush=True)


def _show(source: str, item: Item, quiet: bool) -> None:
    if isinstance(item, Received):
        counts["frames"] += 1
        routine = item.frame.msg_type.name == "REPORT" and not item.frame.flags
        if quiet and routine:
            return
    else:
        counts["rejected"] += 1
    _line(source, describe(item))


async def _radio(name: str, path: str, dialect: str, rssi_append: bool, quiet: bool) -> None:
    reader, _writer = await serial_asyncio_fast.open_serial_connection(url=path, baudrate=9600)
    framer = make_framer(dialect, rssi_append=rssi_append)
    while True:
        try:
            data = await asyncio.wait_for(reader.read(4096), 0.5)
        except TimeoutError:
            items = framer.idle()
        else:
            items = framer.feed(data)
        for item in items:
            _show(name, item, quiet)


async def _udp(sock: socket.socket, quiet: bool) -> None:
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(sock, 1024)
        try:
            _show("udp", Received(decode_frame(data), data), quiet)
        except ProtocolError as err:
            _line("udp", f"REJECTED {err}")


async def _bus(name: str, path: str, slaves: dict[int, str]) -> None:
    client = AsyncModbusSerialClient(path, baudrate=9600, timeout=0.3, retries=0)
    await client.connect()
    while True:
        for address, model in slaves.items():
            profile = BUILTIN_PROFILES[model]
            try:
                plan = profile.read_plan()
                regs = [
                    (
                        await client.read_holding_registers(
                            b.address, count=b.count, device_id=address
                        )
                    ).registers
                    for b in plan
                ]
                values = profile.decode(registers_from_blocks(plan, regs))
                shown = " ".join(f"{k}={v:.2f}" for k, v in values.items())
                _line(name, f"slave 0x{address:02X} {model}: {shown}")
            except ModbusException as err:
                counts["modbus_failures"] += 1
                _line(name, f"slave 0x{address:02X} NO ANSWER ({err.__class__.__name__})")
        await asyncio.sleep(1.0)


async def _main(args: argparse.Namespace) -> int:
    scenario = load_scenario(resolve_scenario(args.scenario))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)

    def on_step(step: Step) -> None:
        _line("timeline", step.describe())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with (
        ScenarioRunner(
            scenario, speed=args.speed, udp_target=sock.getsockname(), on_step=on_step
        ) as sim,
        asyncio.TaskGroup() as tasks,
    ):
        ends = sim.endpoints()
        print(f"scenario {scenario.name}: {scenario.description}", flush=True)
        for name, r in ends.radios.items():
            tasks.create_task(_radio(name, r["path"], r["dialect"], r["rssi_append"], args.quiet))
        tasks.create_task(_udp(sock, args.quiet))
        for name, b in ends.buses.items():
            models = {s.address: s.model for spec in scenario.buses for s in spec.slaves}
            tasks.create_task(_bus(name, b["path"], {a: models[a] for a in b["slaves"]}))
        await sim.run(stop)
        raise asyncio.CancelledError  # leave the TaskGroup, cancelling the listeners
    return 0  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_sim.listen", description=__doc__)
    parser.add_argument("--scenario", default="city_block")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--quiet", action="store_true", help="hide routine REPORT frames")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(_main(args))
    print(f"summary: {dict(counts)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
