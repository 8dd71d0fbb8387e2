"""``python -m firmware_sim --scenario FILE``: simulated cover nodes and RS-485 sensors.

Prints where it serves (pty paths, UDP target, Modbus buses) so a gateway or
a technician's tool can be pointed at them, then plays the timeline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from firmware_sim.runner import ScenarioRunner, scenario_dir
from firmware_sim.scenario import Step, load_scenario
from gateway.confcheck import hostport
from gateway.errors import ConfigError


def resolve_scenario(name: str) -> Path:
    """A path, or the name of a shipped scenario (``lorry``, ``city_block``)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = Path(scenario_dir()) / f"{name.removesuffix('.toml')}.toml"
    if shipped.exists():
        return shipped
    raise FileNotFoundError(name)


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in Path(scenario_dir()).glob("*.toml"))


async def _serve(args: argparse.Namespace) -> int:
    scenario = load_scenario(resolve_scenario(args.scenario))
    udp_target = hostport(args.udp_target) if args.udp_target else None
    ns_broker = hostport(args.ns_broker) if args.ns_broker else None

    def on_step(step: Step) -> None:
        print(f"[sim] {step.describe()}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ScenarioRunner(
        scenario, speed=args.speed, udp_target=udp_target, on_step=on_step, ns_broker=ns_broker
    ) as runner:
        endpoints = runner.endpoints()
        if args.json:
            print(json.dumps({"scenario": scenario.name, **endpoints.as_dict()}), flush=True)
        else:
            print(f"scenario {scenario.name}: {len(scenario.nodes)} nodes", flush=True)
            for name, radio in endpoints.radios.items():
                extra = ", rssi-append" if radio["rssi_append"] else ""
                print(f"radio {name}: {radio['path']} ({radio['dialect']}{extra})", flush=True)
            for name, udp in endpoints.udp.items():
                print(f"udp {name}: sending to {udp['target']}", flush=True)
            for name, bus in endpoints.buses.items():
                slaves = ", ".join(f"0x{a:02X}" for a in bus["slaves"])
                print(f"modbus {name}: {bus['path']} ({bus['baudrate']} 8N1, slaves {slaves})")
            if endpoints.network_server:
                ns = endpoints.network_server
                print(
                    f"network server: ChirpStack events on {ns['broker']} "
                    f"(application {ns['application_id']}, {len(ns['devices'])} devices)",
                    flush=True,
                )
            sys.stdout.flush()
        await runner.run(stop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_sim", description=__doc__)
    parser.add_argument("--scenario", help="scenario file, or a shipped name")
    parser.add_argument("--speed", type=float, default=1.0, help="time scale (2 = twice as fast)")
    parser.add_argument("--udp-target", metavar="HOST:PORT", help="where NB-IoT nodes send")
    parser.add_argument(
        "--ns-broker", metavar="HOST:PORT", help="where the simulated ChirpStack publishes"
    )
    parser.add_argument("--json", action="store_true", help="print endpoints as one JSON line")
    parser.add_argument("--list", action="store_true", help="list shipped scenarios")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.list:
        print("\n".join(shipped_scenarios()))
        return 0
    if not args.scenario:
        parser.error("--scenario is required")
    if args.speed <= 0:
        parser.error("--speed must be positive")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_serve(args))
    except FileNotFoundError as err:
        print(
            f"no such scenario: {err} (shipped: {', '.join(shipped_scenarios())})", file=sys.stderr
        )
    except (ConfigError, ValueError) as err:
        print(f"scenario refused: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
