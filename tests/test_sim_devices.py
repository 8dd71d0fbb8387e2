"""The shipped real-sensor scenarios, played by the simulator through the gateway to a real broker.

The simulated ChirpStack publishes on the same Mosquitto the platform reads
(as in the demo); the NB-IoT device sends its cellular frames over UDP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_sim.__main__ import resolve_scenario
from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import load_scenario
from firmware_sim.wiring import census, gateway_config
from gateway.config import parse_config
from gateway.daemon import Gateway
from tests.harness import Broker, Collector, free_udp_port

SPEED = 12.0  # 40 scenario seconds in 3.3


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


async def play(tmp_path: Path, broker: Broker, name: str, collector: Collector) -> None:
    scenario = load_scenario(resolve_scenario(name))
    udp_port = free_udp_port()
    async with ScenarioRunner(
        scenario,
        speed=SPEED,
        udp_target=("127.0.0.1", udp_port),
        ns_broker=("127.0.0.1", broker.port),
    ) as sim:
        data = gateway_config(
            tmp_path,
            broker_port=broker.port,
            endpoints=sim.endpoints(),
            scenario=scenario,
            registry_csv=census(scenario),
            udp_port=udp_port,
        )
        gateway = Gateway(parse_config(data, base_dir=tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        async with asyncio.timeout(10):
            while any(d.status()["state"] != "open" for d in gateway.drivers):
                await asyncio.sleep(0.05)
        await sim.run()
        await collector.wait_for(lambda: bool(collector.readings()))
        stop.set()
        await asyncio.wait_for(task, 15)


def states(collector: Collector, kind: str) -> list[tuple[str, str]]:
    return [
        (a["source"].get("device_id", ""), a["state"])
        for a in collector.alarms()
        if a["kind"] == kind
    ]


async def test_em310_lifted(tmp_path: Path, broker: Broker) -> None:
    async with Collector(broker.port) as collector:
        await play(tmp_path, broker, "em310_lifted", collector)
        await collector.wait_for(
            lambda: states(collector, "cover_open")[-1:] == [("24e124710c401234", "cleared")]
        )
    assert states(collector, "cover_open") == [
        ("24e124710c401234", "raised"),
        ("24e124710c401234", "cleared"),
    ]
    raised = next(a for a in collector.alarms() if a["kind"] == "cover_open")
    assert raised["cover"]["cover_id"].startswith("HZ-XH-")
    assert raised["evidence"]["tilt_deg"] > 40
    assert collector.errors == []


async def test_em400_flood(tmp_path: Path, broker: Broker) -> None:
    async with Collector(broker.port) as collector:
        await play(tmp_path, broker, "em400_flood", collector)
        await collector.wait_for(
            lambda: (
                {("water_overflow", d, "cleared") for d in ("24e124713d105678", "868508064807350")}
                <= {
                    (a["kind"], a["source"].get("device_id"), a["state"])
                    for a in collector.alarms()
                }
            )
        )
    seen = {(a["kind"], a["source"].get("device_id"), a["state"]) for a in collector.alarms()}
    for device in ("24e124713d105678", "868508064807350"):  # LoRaWAN and NB-IoT
        for kind in ("water_high", "water_overflow"):
            assert (kind, device, "raised") in seen
    assert not [a for a in collector.alarms() if a["kind"] == "cover_open"]
    assert collector.errors == []
